//! The tunnel I/O loop (TUN device and UDP socket).
