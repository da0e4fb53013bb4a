//! Floods of hand-made packets from inside a namespace: forged tunnel
//! initiations, queries by the thousand.

use std::{
    net::Ipv4Addr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Sends `packets` (whole IPv4 packets) from namespace `ns` through one raw
/// socket, evenly over `over`; the thread returns how many were sent.
pub fn flood_raw(ns: &str, packets: Vec<Vec<u8>>, over: Duration) -> JoinHandle<usize> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        crate::run_in(&ns, move || {
            // SAFETY: plain socket syscalls on a descriptor we own and close.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0, "raw socket");
            let start = Instant::now();
            let n = packets.len();
            let mut sent = 0;
            for (i, p) in packets.iter().enumerate() {
                if i % 100 == 0 {
                    let due = start + over.mul_f64(i as f64 / n as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(dst.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: a live buffer and address for the call.
                let r = unsafe {
                    libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&addr as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if r >= 0 {
                    sent += 1;
                }
            }
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
            sent
        })
    })
}

/// A DNS query for `name`'s A records (id `id`, recursion desired).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}
