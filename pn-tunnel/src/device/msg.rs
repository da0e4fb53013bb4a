//! The messages of the data path: UDP segmentation (GSO) on send,
//! coalescing (GRO) and the socket's overflow count on receive, and the
//! TUN device's writes behind their vnet header.

use std::net::SocketAddr;

use crate::offload;

/// A socket address as the kernel takes it, IPv4 or IPv6 (the tunnel's
/// sockets are of the advertised endpoint's family, and so are its peers').
pub(super) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: u32,
}

pub(super) fn sockaddr(to: SocketAddr) -> RawAddr {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any
            // sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    RawAddr {
        storage,
        len: len as u32,
    }
}

/// The address the kernel wrote into `raw` (a datagram's sender), IPv4 or
/// IPv6; an IPv4-mapped IPv6 one as IPv4 (one peer, one address).
pub(super) fn socket_addr(raw: &libc::sockaddr_storage) -> SocketAddr {
    match i32::from(raw.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((raw as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            SocketAddr::new(ip.to_canonical(), u16::from_be(sin6.sin6_port))
        }
        _ => {
            // SAFETY: an AF_INET (or unset: zeroes) sockaddr_in fits.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((raw as *const libc::sockaddr_storage).cast()) };
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
    }
}

/// A message header over one address and one buffer (no control data yet).
fn msghdr(addr: &mut RawAddr, iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr.len;
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
    let mut addr = sockaddr(to);
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
    let mut addr = sockaddr(to);
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
/// of `bufs` and [`READS`], with one call; `wait`: sleeps until the first
/// (or a signal), then takes only what is there.
pub(super) fn recv_many(
    fd: i32,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<Received>,
    wait: bool,
) -> std::io::Result<()> {
    let n = bufs.len().min(READS);
    // SAFETY: all-zero iovec and mmsghdr are valid values (empty buffers,
    // empty headers).
    let (mut iovs, mut msgs): ([libc::iovec; READS], [libc::mmsghdr; READS]) =
        unsafe { std::mem::zeroed() };
    // Room for either family's sender address.
    let mut addrs: [RawAddr; READS] = std::array::from_fn(|_| RawAddr {
        // SAFETY: an all-zero sockaddr_storage is a valid value.
        storage: unsafe { std::mem::zeroed() },
        len: size_of::<libc::sockaddr_storage>() as u32,
    });
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
            match wait {
                true => libc::MSG_WAITFORONE,
                false => libc::MSG_DONTWAIT,
            },
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
            from: socket_addr(&addr.storage),
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

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd};

    use super::*;

    /// Datagrams go out and come back with their sender's address over
    /// either family (the underlay is IPv4 or IPv6), on loopback.
    #[test]
    fn send_and_receive_over_either_family() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let to = super::super::sys::bind_udp(local.parse().unwrap()).unwrap();
            let from = UdpSocket::bind(local).unwrap();
            let (to_addr, from_addr) = (to.local_addr().unwrap(), from.local_addr().unwrap());
            send_each(from.as_raw_fd(), b"onetwo", &[(0, 3), (3, 3)], to_addr).unwrap();
            send_segments(from.as_raw_fd(), b"three", 16, to_addr).unwrap();
            to.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut bufs = vec![vec![0u8; 64]; READS];
            for _ in 0..100 {
                recv_many(to.as_raw_fd(), &mut bufs, &mut got, false).ok();
                if got.len() >= 3 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let lens: Vec<usize> = got.iter().map(|r| r.len).collect();
            assert_eq!(lens, [3, 3, 5], "{local}");
            assert!(got.iter().all(|r| r.from == from_addr), "{local}");
        }
    }

    #[test]
    fn an_ipv4_mapped_sender_is_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:51871".parse().unwrap();
        let raw = sockaddr(mapped);
        assert_eq!(
            socket_addr(&raw.storage),
            "192.0.2.1:51871".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:51871".parse().unwrap();
        assert_eq!(socket_addr(&sockaddr(v6).storage), v6);
    }
}
