//! The device's threads against a real TUN device and socket, in a network
//! namespace of the test's own thread (root only; skipped otherwise).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use pn_common::Reason;

use super::{Device, Options};
use crate::{Config, Member, Members, Tunnel, handshake::StaticKeys};

struct NoMembers;

impl Members for NoMembers {
    fn member(&self, _: Ipv4Addr) -> Option<Member> {
        None
    }
    fn member6(&self, _: Ipv6Addr) -> Option<Member> {
        None
    }
}

/// Moves the calling thread into a new network namespace with its loopback
/// up; false when it may not (not root).
fn private_namespace() -> bool {
    // SAFETY: unshare of this thread's network namespace only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: a socket for the ioctls, closed below; the ioctls read and
    // write a live ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        let ok = s >= 0 && libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req) == 0
        };
        libc::close(s);
        ok
    }
}

fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// The data threads sleep in their reads: stopping must still end them
/// all (the signal), give every descriptor back, and a device running on
/// them again must read the socket.
#[test]
fn stop_ends_threads_blocked_in_reads_and_the_descriptors_serve_again() {
    std::thread::spawn(|| {
        if !private_namespace() {
            eprintln!("skipped: no private network namespace (not root)");
            return;
        }
        let keys = StaticKeys::generate().unwrap();
        let options = Options {
            workers: 2,
            ..Options::default()
        };
        let dev = Device::new(
            Tunnel::new(Config::default(), keys, 7),
            Arc::new(NoMembers),
            options,
        );
        let listen: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let io = dev.open("pntest0", listen).unwrap();
        dev.run(io).unwrap();
        let to = dev.listen().unwrap();
        for round in 0..3 {
            // Let the threads reach their blocking reads.
            std::thread::sleep(Duration::from_millis(50));
            let io = dev.stop().expect("running");
            assert_eq!(io.queues.len(), 2, "round {round}");
            assert_eq!(io.local_addr().unwrap(), to);
            dev.run(io).unwrap();
        }
        // A datagram too short for any message: a worker read it.
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let malformed = || dev.counters.drops[Reason::Malformed as usize].load(Ordering::Relaxed);
        assert!(eventually(|| {
            s.send_to(b"x", to).unwrap();
            malformed() > 0
        }));
        assert!(dev.stop().is_some());
        assert!(dev.stop().is_none());
    })
    .join()
    .unwrap();
}
