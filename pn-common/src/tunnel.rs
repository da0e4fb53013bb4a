//! The tunnel's wire layout, as far as the kernel must know it: the XDP guard
//! on the underlay reads the message type and the network tag of data packets
//! before they cost the agent anything. The `pn-tunnel` crate builds and
//! parses the full messages on this layout.

/// UDP port of the tunnel when `--advertise` gives none.
pub const DEFAULT_PORT: u16 = 51871;

/// Message types (first byte of every datagram).
pub const MSG_INITIATION: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE: u8 = 3;
pub const MSG_DATA: u8 = 4;

/// Data header: `type u8 | flags u8 | reserved [u8; 2] | tag u32 BE |
/// receiver u32 LE | counter u64 LE`, authenticated as associated data.
pub const DATA_HEADER_LEN: usize = 20;
/// Offset of the flags byte in a data message.
pub const FLAGS_OFFSET: usize = 1;
/// Flag: the inner TCP/UDP checksum is partial (pseudo-header sum only);
/// the integrity of the packet rests on the AEAD, and the receiver hands it
/// to its kernel as "checksum to complete if ever needed".
pub const FLAG_CSUM_PARTIAL: u8 = 1;
/// Offset of the big-endian network tag in a data message.
pub const TAG_OFFSET: usize = 4;
pub const RECEIVER_OFFSET: usize = 8;
pub const COUNTER_OFFSET: usize = 12;
/// AEAD tag after the ciphertext (Poly1305 or GCM, both 16 bytes).
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes the tunnel adds to an inner packet on an IPv4 underlay: outer IPv4
/// and UDP headers, the data header and the AEAD tag. Container MTU =
/// underlay MTU − OVERHEAD.
pub const OVERHEAD: usize = 20 + 8 + DATA_HEADER_LEN + AEAD_TAG_LEN;
/// The same over an IPv6 underlay: its fixed header is 40 bytes, not 20.
pub const OVERHEAD6: usize = 40 + 8 + DATA_HEADER_LEN + AEAD_TAG_LEN;

/// The overhead over an underlay of this family (a host's peers are all
/// of its advertised endpoint's family).
pub const fn overhead(ipv6: bool) -> usize {
    if ipv6 { OVERHEAD6 } else { OVERHEAD }
}

const _: () = assert!(OVERHEAD == 64);
const _: () = assert!(OVERHEAD6 == 84);
