//! The system calls of the device: the TUN device, socket options, and
//! UDP segmentation (GSO) on send and coalescing (GRO) on receive.

use std::{fs::File, net::SocketAddr, os::fd::FromRawFd};

use crate::offload;

/// Opens a queue of the TUN device `name` (no packet info header), creating
/// it if needed, and makes it persistent: it stays (with its routes, and
/// dropping what is routed to it) when no agent holds it.
pub(super) fn open_tun(name: &str) -> std::io::Result<File> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() > 15 {
        return Err(std::io::Error::other("interface name too long"));
    }
    // SAFETY: plain syscalls; the descriptor is owned by the File below.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let file = File::from_raw_fd(fd);
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel may hand us TCP super-packets with partial checksums,
        // and take them from us: the segmentation happens once, in bulk.
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
        if libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }
}

/// Socket buffer each way of the tunnel's UDP socket (as wireguard-go's).
pub(super) const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Sets an int socket option; whether the kernel took it.
pub(super) fn set_int(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt with a valid int option on a descriptor we own.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        ) == 0
    }
}

/// Wakes the device's threads at once when it stops (an eventfd, which
/// stays readable once written: every thread sees it).
pub(super) struct Waker(std::os::fd::OwnedFd);

impl Waker {
    pub(super) fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a valid descriptor nobody else owns.
        Ok(Waker(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn wake(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until woken or `d` passes.
    pub(super) fn wait(&self, d: std::time::Duration) {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, d.as_millis() as i32) };
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// Waits until `fd` is readable, the waker is woken, or `ms` pass.
pub(super) fn readable(fd: i32, waker: &Waker, ms: i32) -> bool {
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds.
    let ready = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } > 0;
    // Any event but the waker's (an error too: the read that follows
    // reports and clears it, rather than a poll that returns at once again).
    ready && p[0].revents != 0 && p[1].revents == 0
}

fn sockaddr(to: SocketAddr) -> Option<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = to else {
        return None;
    };
    Some(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    })
}

/// A message header over one address and one buffer (no control data yet).
fn msghdr(addr: &mut libc::sockaddr_in, iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

/// Sends `buf` as datagrams of `segment` bytes (the last may be shorter)
/// with one syscall.
pub(super) fn send_segments(
    fd: i32,
    buf: &[u8],
    segment: usize,
    to: SocketAddr,
) -> std::io::Result<()> {
    let Some(mut addr) = sockaddr(to) else {
        return Err(std::io::Error::other("IPv6 underlay not supported"));
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE has no preconditions.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; every pointer below outlives the call.
    unsafe {
        let mut msg = msghdr(&mut addr, &mut iov);
        if buf.len() > segment {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one (possibly coalesced) read: length, source, and the size of
/// each datagram in it when the kernel coalesced several (UDP GRO).
pub(super) fn recv_segments(
    fd: i32,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<usize>)> {
    // SAFETY: an all-zero sockaddr_in is a valid (unspecified) address.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; every pointer outlives the call; cmsg
    // walking stays within `control` as the macros check.
    unsafe {
        let mut msg = msghdr(&mut addr, &mut iov);
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut gso = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                gso = Some(
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) as usize,
                );
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ));
        Ok((n as usize, from, gso))
    }
}

/// Writes one packet to the TUN device behind its vnet header.
pub(super) fn write_plain(tun_fd: i32, packet: &[u8], partial: bool) -> bool {
    let mut hdr = [0u8; offload::VNET_HDR_LEN];
    offload::receive_header(packet, partial).write(&mut hdr);
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        },
    ];
    // SAFETY: two valid iovecs over live buffers.
    unsafe { libc::writev(tun_fd, iov.as_ptr(), 2) >= 0 }
}
