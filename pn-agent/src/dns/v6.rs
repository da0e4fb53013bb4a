//! The server over IPv6, on the gateway every container's link holds
//! (`fe80::1`). A link-local address exists once per link, so the sockets
//! are bound to `[::]` (IPv6 only: IPv4 has its own) and a query counts
//! only when it was addressed to the gateway ([`Server::client`]): only
//! pn's container links hold that address, and the kernel takes a
//! link-local destination only on its own link, so nothing from the
//! underlay's neighbours gets in, whatever source it claims. The source
//! is a container's own IPv6 address (its programs bind its sources to its
//! veth), which names it as its IPv4 address does.
//!
//! UDP reads each datagram's destination and interface
//! (`IPV6_RECVPKTINFO`) and answers from the gateway through the same
//! interface: the host's routes alone would pick a global source, which a
//! container's program would not take for its gateway.

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
};

use nix::sys::socket::{
    self as sock, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, SockaddrIn6, setsockopt, sockopt,
};
use tokio::{
    io::Interest,
    net::{TcpListener, UdpSocket},
};

use super::{
    limits::Backoff,
    pipeline::{Answer, Server, Transport},
    stats::bump,
};

/// A socket of `kind` on `[::]:port`, IPv6 only, not blocking.
fn bound(kind: SockType, port: u16) -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = sock::socket(AddressFamily::Inet6, kind, flags, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    if kind == SockType::Stream {
        // As tokio's IPv4 listener: a restart does not wait for TIME_WAIT.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    } else {
        setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    sock::bind(fd.as_raw_fd(), &any)?;
    if kind == SockType::Stream {
        sock::listen(&fd, Backlog::new(1024)?)?;
    }
    Ok(fd)
}

pub(super) fn udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(bound(SockType::Datagram, port)?))
}

pub(super) fn tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::from_std(std::net::TcpListener::from(bound(SockType::Stream, port)?))
}

/// One datagram as it came: its source, the address it was sent to and
/// the interface it came in on.
struct Received {
    len: usize,
    from: SocketAddrV6,
    to: Ipv6Addr,
    ifindex: u32,
}

fn receive(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = sock::recvmsg::<SockaddrIn6>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )?;
    let from = msg
        .address
        .map(SocketAddrV6::from)
        .ok_or_else(|| io::Error::other("a datagram without a source"))?;
    let info = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv6PacketInfo(i) => Some(i),
        _ => None,
    });
    // Without its packet information, a datagram has no destination:
    // `::` is nobody's gateway.
    let (to, ifindex) = info.map_or((Ipv6Addr::UNSPECIFIED, 0), |i| {
        (Ipv6Addr::from(i.ipi6_addr.s6_addr), i.ipi6_ifindex)
    });
    Ok(Received {
        len: msg.bytes,
        from,
        to,
        ifindex,
    })
}

/// Sends `reply` to `q`'s source, from the address it asked and through
/// the interface it came in on.
async fn send(sock: &UdpSocket, reply: &[u8], q: &Received) {
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: q.to.octets(),
        },
        ipi6_ifindex: q.ifindex,
    };
    let to = SockaddrIn6::from(q.from);
    let _ = sock
        .async_io(Interest::WRITABLE, || {
            sock::sendmsg(
                sock.as_raw_fd(),
                &[IoSlice::new(reply)],
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&to),
            )
            .map_err(io::Error::from)
        })
        .await;
}

/// `udp::run` over IPv6: the same pipeline, what comes in read with its
/// packet information.
pub(super) async fn run_udp(sock: Arc<UdpSocket>, srv: Arc<Server>) {
    let mut buf = vec![0u8; 65535];
    let mut backoff = Backoff::new(srv.limits.accept_backoff);
    loop {
        let q = match sock
            .async_io(Interest::READABLE, || receive(&sock, &mut buf))
            .await
        {
            Ok(q) => {
                backoff.succeeded();
                q
            }
            Err(e) => {
                bump(&srv.stats.limited.accept_error);
                if backoff.failures() == 0 {
                    log::warn!(
                        "DNS over UDP (IPv6): receiving failed ({e}); pausing while it lasts"
                    );
                }
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        let Some(client) = srv.client(IpAddr::V6(*q.from.ip()), IpAddr::V6(q.to)) else {
            continue;
        };
        match srv.answer(client, &buf[..q.len], Transport::Udp) {
            Answer::Silence => {}
            Answer::Now(r) => send(&sock, &r, &q).await,
            Answer::Later(pending) => {
                let (sock, srv) = (sock.clone(), srv.clone());
                tokio::spawn(async move {
                    if let Some(r) = pending.resolve(&srv).await {
                        send(&sock, &r, &q).await;
                    }
                    // The client's slot until its answer is sent.
                    drop(pending);
                });
            }
        }
    }
}
