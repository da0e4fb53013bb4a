//! The messages of the data path: UDP segmentation (GSO) on send,
//! coalescing (GRO) and the socket's overflow count on receive, and the
//! TUN device's writes behind their vnet header.

use std::net::SocketAddr;

use crate::offload;

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

/// One (possibly coalesced) read of the UDP socket.
pub(super) struct Received {
    pub(super) len: usize,
    pub(super) from: SocketAddr,
    /// The size of each datagram in it when the kernel coalesced several
    /// (UDP GRO).
    pub(super) segment: Option<usize>,
    /// Datagrams the socket dropped so far for want of room (SO_RXQ_OVFL).
    pub(super) overflow: Option<u32>,
}

/// Receives one (possibly coalesced) read.
pub(super) fn recv_segments(fd: i32, buf: &mut [u8]) -> std::io::Result<Received> {
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
        let (mut segment, mut overflow) = (None, None);
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_UDP, libc::UDP_GRO) => {
                    segment = Some(std::ptr::read_unaligned(data.cast::<libc::c_int>()) as usize)
                }
                (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                    overflow = Some(std::ptr::read_unaligned(data.cast::<u32>()))
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ));
        Ok(Received {
            len: n as usize,
            from,
            segment,
            overflow,
        })
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
