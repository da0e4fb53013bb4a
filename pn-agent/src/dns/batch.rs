//! Datagrams by the batch over an IPv4 UDP socket: `recvmmsg` takes every
//! query waiting (up to [`BATCH`]) in one system call, `sendmmsg` sends the
//! answers computed meanwhile in one more. A cache hit costs the kernel's
//! work on two datagrams, not two system calls of its own.
//!
//! The only `unsafe` of the DNS server: the two calls and the headers they
//! read, built on the stack at each call from buffers owned here, so no
//! pointer outlives the call.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

/// Datagrams per system call: enough to drain what several clients keep
/// in flight, small enough that the first answer of a batch is not kept
/// waiting long.
pub const BATCH: usize = 32;
/// Longest query read whole (a plain query is under 300 bytes, EDNS
/// options included); a longer one is cut, counted and dropped.
pub const QUERY_MAX: usize = 4096;

/// One datagram received: where its bytes are, who sent it, whether it was
/// longer than [`QUERY_MAX`].
#[derive(Clone, Copy, Debug)]
pub struct Got {
    pub len: usize,
    /// None for a source that is no IPv4 address (never on an IPv4 socket).
    pub from: Option<SocketAddrV4>,
    pub cut: bool,
}

/// Room for one batch of queries, reused from batch to batch.
pub struct Inbox {
    bufs: Box<[u8]>,
    got: Vec<Got>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            bufs: vec![0u8; BATCH * QUERY_MAX].into_boxed_slice(),
            got: Vec::with_capacity(BATCH),
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data, all zeroes is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in, len: libc::socklen_t) -> Option<SocketAddrV4> {
    (s.sin_family == libc::AF_INET as libc::sa_family_t
        && len as usize >= size_of::<libc::sockaddr_in>())
    .then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
            u16::from_be(s.sin_port),
        )
    })
}

impl Inbox {
    /// Takes what is waiting on `sock` (at least one datagram, or
    /// `WouldBlock`), replacing the previous batch.
    pub fn receive(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.got.clear();
        // SAFETY: plain C structures, all zeroes is a valid value.
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
        // SAFETY: as above; the pointers are set below.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .chunks_exact_mut(QUERY_MAX)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        for ((h, a), iov) in hdrs.iter_mut().zip(addrs.iter_mut()).zip(iovs.iter_mut()) {
            h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        let slots = iovs.len().min(BATCH);
        // SAFETY: every header points at an address and a buffer of the
        // sizes it says, all alive until the call returns; `slots` headers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (h, a) in hdrs.iter().zip(addrs.iter()).take(n as usize) {
            self.got.push(Got {
                len: (h.msg_len as usize).min(QUERY_MAX),
                from: from_sockaddr(a, h.msg_hdr.msg_namelen),
                cut: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(self.got.len())
    }

    /// The datagrams of the last batch, with their bytes.
    pub fn iter(&self) -> impl Iterator<Item = (Got, &[u8])> {
        self.got
            .iter()
            .zip(self.bufs.chunks_exact(QUERY_MAX))
            .map(|(g, b)| (*g, &b[..g.len]))
    }
}

/// Answers waiting to be sent together.
#[derive(Default)]
pub struct Outbox {
    out: Vec<(Vec<u8>, SocketAddrV4)>,
    /// How many of `out` have been handed to the kernel (or given up on).
    done: usize,
}

impl Outbox {
    pub fn push(&mut self, answer: Vec<u8>, to: SocketAddrV4) {
        self.out.push((answer, to));
    }

    pub fn is_empty(&self) -> bool {
        self.done >= self.out.len()
    }

    /// Sends what is left in as few calls as the kernel takes; `WouldBlock`
    /// when the socket's buffer is full (call again once writable). An
    /// answer the kernel refuses is dropped, as a failed `send_to` was: the
    /// client asks again.
    pub fn send(&mut self, sock: &impl AsRawFd) -> io::Result<()> {
        while self.done < self.out.len() {
            let rest = &self.out[self.done..];
            let count = rest.len().min(BATCH);
            // SAFETY: plain C structures, all zeroes is a valid value.
            let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
            // SAFETY: as above; the pointers are set below.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            let mut iovs: Vec<libc::iovec> = rest[..count]
                .iter()
                .map(|(b, _)| libc::iovec {
                    // sendmmsg only reads through it.
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                })
                .collect();
            for (((h, a), iov), (_, to)) in hdrs
                .iter_mut()
                .zip(addrs.iter_mut())
                .zip(iovs.iter_mut())
                .zip(rest)
            {
                *a = sockaddr(*to);
                h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `count` headers, each pointing at an address and a
            // buffer alive until the call returns.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Err(e),
                    io::ErrorKind::Interrupted => continue,
                    // The first answer of the rest cannot be sent.
                    _ => self.done += 1,
                }
            } else {
                // 0 is not returned for a non-empty batch; never loop on it.
                self.done += (n as usize).max(1);
            }
        }
        self.out.clear();
        self.done = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn v4(s: &UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        }
    }

    #[test]
    fn a_batch_takes_everything_waiting_and_flags_what_is_too_long() {
        let (client, server) = pair();
        let to = server.local_addr().unwrap();
        let long = vec![7u8; QUERY_MAX + 100];
        let sent: Vec<&[u8]> = vec![b"first", b"", &long, b"last"];
        for d in &sent {
            client.send_to(d, to).unwrap();
        }
        let mut inbox = Inbox::default();
        assert_eq!(inbox.receive(&server).unwrap(), 4);
        let got: Vec<(Got, Vec<u8>)> = inbox.iter().map(|(g, b)| (g, b.to_vec())).collect();
        for ((g, bytes), want) in got.iter().zip(&sent) {
            assert_eq!(g.from, Some(v4(&client)));
            assert_eq!(g.cut, want.len() > QUERY_MAX);
            assert_eq!(bytes[..], want[..bytes.len()]);
            assert_eq!(bytes.len(), want.len().min(QUERY_MAX));
        }
        // Nothing left: WouldBlock, and the batch is empty.
        let e = inbox.receive(&server).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(inbox.iter().count(), 0);
    }

    #[test]
    fn more_answers_than_a_batch_all_go_out_in_order() {
        let (receiver, sender) = pair();
        let to = v4(&receiver);
        let mut outbox = Outbox::default();
        for i in 0..(BATCH as u8 * 2 + 3) {
            outbox.push(vec![i; usize::from(i) + 1], to);
        }
        assert!(!outbox.is_empty());
        outbox.send(&sender).unwrap();
        assert!(outbox.is_empty());
        let mut buf = [0u8; 512];
        for i in 0..(BATCH as u8 * 2 + 3) {
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(from, sender.local_addr().unwrap());
            assert_eq!(&buf[..n], &vec![i; usize::from(i) + 1][..]);
        }
    }

    #[test]
    fn an_answer_the_kernel_refuses_is_dropped_not_retried_forever() {
        let (receiver, sender) = pair();
        let mut outbox = Outbox::default();
        // Larger than any UDP datagram: EMSGSIZE, between two good ones.
        outbox.push(b"one".to_vec(), v4(&receiver));
        outbox.push(vec![0u8; 70_000], v4(&receiver));
        outbox.push(b"two".to_vec(), v4(&receiver));
        outbox.send(&sender).unwrap();
        assert!(outbox.is_empty());
        let mut buf = [0u8; 512];
        for want in [&b"one"[..], b"two"] {
            let (n, _) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
