//! The device's descriptors: one TUN queue and one UDP socket per worker,
//! all on one device and one address; and how they travel to a successor.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use super::sys::{SOCKET_BUFFER, bind_udp, open_tun, set_int, tun_of};

/// One worker's descriptors.
pub struct Queue {
    pub tun: File,
    pub udp: UdpSocket,
}

/// The device's descriptors (at least one queue).
pub struct Io {
    pub queues: Vec<Queue>,
}

impl Io {
    /// Opens (or creates) the persistent TUN device `tun_name` with
    /// `workers` queues, and as many UDP sockets on `listen`. A device an
    /// older agent created with a single queue keeps one.
    pub fn open(tun_name: &str, listen: SocketAddr, workers: usize) -> std::io::Result<Io> {
        let (tun, multi) = match open_tun(tun_name, true) {
            Ok(t) => (t, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "the TUN device {tun_name} has a single queue (made by an older agent): one \
                     tunnel worker until it is deleted"
                );
                (open_tun(tun_name, false)?, false)
            }
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "creating TUN {tun_name}: {e}"
                )));
            }
        };
        let udp = bind_udp(listen)
            .map_err(|e| std::io::Error::other(format!("binding the tunnel on {listen}: {e}")))?;
        tune(&udp);
        let mut io = Io {
            queues: vec![Queue { tun, udp }],
        };
        if multi {
            io.widen(workers);
        }
        Ok(io)
    }

    /// Adds queues (and sockets on the same address) up to `workers`; a
    /// hand-over from an agent with fewer workers, or a device or socket
    /// that cannot take more (made by an older agent), stays as it is.
    pub fn widen(&mut self, workers: usize) {
        let first = &self.queues[0];
        let (Ok((name, true)), Ok(listen)) = (tun_of(&first.tun), first.udp.local_addr()) else {
            return;
        };
        while self.queues.len() < workers {
            // The socket first: a socket without SO_REUSEPORT (an older
            // agent's) refuses it, and no queue is left unread.
            let added = bind_udp(listen).and_then(|udp| Ok((open_tun(&name, true)?, udp)));
            match added {
                Ok((tun, udp)) => {
                    tune(&udp);
                    self.queues.push(Queue { tun, udp });
                }
                Err(e) => {
                    log::warn!(
                        "tunnel: {} worker(s) rather than {workers}: adding a queue: {e}",
                        self.queues.len()
                    );
                    return;
                }
            }
        }
    }

    /// The descriptors in the order a successor takes them back
    /// ([`Io::from_fds`]): each queue's TUN, then its socket.
    pub fn fds(&self) -> Vec<RawFd> {
        self.queues
            .iter()
            .flat_map(|q| [q.tun.as_raw_fd(), q.udp.as_raw_fd()])
            .collect()
    }

    /// The descriptors a predecessor handed over ([`Io::fds`]); `None`
    /// unless they are pairs (one pair: an agent with one worker).
    pub fn from_fds(fds: Vec<OwnedFd>) -> Option<Io> {
        if fds.is_empty() || !fds.len().is_multiple_of(2) {
            return None;
        }
        let mut it = fds.into_iter();
        let mut queues = Vec::new();
        while let (Some(tun), Some(udp)) = (it.next(), it.next()) {
            queues.push(Queue {
                tun: File::from(tun),
                udp: UdpSocket::from(udp),
            });
        }
        Some(Io { queues })
    }

    /// The address the sockets share.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.queues[0].udp.local_addr()
    }
}

/// What every socket of the tunnel has from its start.
fn tune(udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    // Outer packets may be fragmented on an underlay with a smaller MTU
    // than planned (as WireGuard's): the inner path MTU stays right and
    // nothing is lost to a black hole. Over IPv6 the sender fragments.
    if udp.local_addr().is_ok_and(|a| a.is_ipv6()) {
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        );
    } else {
        set_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        );
    }
    // A coalesced read carries up to 64 datagrams: the default buffers
    // (about 200 KiB) overflow under one TCP stream's burst, and every
    // overflow is a train of inner segments lost. Root may exceed rmem_max
    // (the FORCE options); if not, the plain ones are capped.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !set_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
            set_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
}
