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

/// Sends the datagrams at `bounds` (start, length) of `buf` to `to` with
/// one call (no segmentation: any sizes).
pub(super) fn send_each(
    fd: i32,
    buf: &[u8],
    bounds: &[(usize, usize)],
    to: SocketAddr,
) -> std::io::Result<()> {
    let Some(mut addr) = sockaddr(to) else {
        return Err(std::io::Error::other("IPv6 underlay not supported"));
    };
    let mut iovs: Vec<libc::iovec> = bounds
        .iter()
        .filter_map(|&(start, len)| buf.get(start..start + len))
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| libc::mmsghdr {
            msg_hdr: msghdr(&mut addr, iov),
            msg_len: 0,
        })
        .collect();
    let mut at = 0;
    while at < msgs.len() {
        // SAFETY: headers over live buffers and one address, all of which
        // outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs[at..].as_mut_ptr(), (msgs.len() - at) as u32, 0) };
        if n <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        at += n as usize;
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

/// Reads waiting per call: with GRO each is up to 64 datagrams already.
pub(super) const READS: usize = 8;

/// Reads the (possibly coalesced) datagrams waiting, up to one per buffer
/// of `bufs` and [`READS`], with one call (it does not wait: the caller
/// polled).
pub(super) fn recv_many(
    fd: i32,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<Received>,
) -> std::io::Result<()> {
    let n = bufs.len().min(READS);
    // SAFETY: all-zero sockaddr_in, iovec and mmsghdr are valid values
    // (unspecified address, empty buffers, empty headers).
    let (mut addrs, mut iovs, mut msgs): (
        [libc::sockaddr_in; READS],
        [libc::iovec; READS],
        [libc::mmsghdr; READS],
    ) = unsafe { std::mem::zeroed() };
    let mut control = [[0u64; 8]; READS];
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        msgs[i].msg_hdr = msghdr(&mut addrs[i], &mut iovs[i]);
        msgs[i].msg_hdr.msg_control = control[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = size_of_val(&control[i]) as _;
    }
    // SAFETY: `n` headers, each over live buffers, addresses and control
    // space that outlive the call.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (m, addr) in msgs.iter().zip(&addrs).take(got as usize) {
        let (segment, overflow) = control_of(&m.msg_hdr);
        out.push(Received {
            len: m.msg_len as usize,
            from: SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u16::from_be(addr.sin_port),
            )),
            segment,
            overflow,
        });
    }
    Ok(())
}

/// The GRO segment size and the overflow count a read came with.
fn control_of(msg: &libc::msghdr) -> (Option<usize>, Option<u32>) {
    let (mut segment, mut overflow) = (None, None);
    // SAFETY: walking the control data the kernel wrote, within its
    // length as the macros check.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
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
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (segment, overflow)
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
