//! Long TCP transfers checked byte by byte: a server that sends a fixed
//! pattern, a client that downloads and compares every byte.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use crate::{
    Namespace,
    net::{Server, spawn_server},
};

/// Length of the pattern [`tcp_source_server`] repeats: not a power of
/// two, so a lost or repeated stretch shows as a misaligned pattern.
const PATTERN_LEN: usize = 1_000_003;

fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..PATTERN_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// TCP on `0.0.0.0:port`: sends each client `bytes` bytes of a fixed
/// pattern, then closes (a thread per connection).
pub fn tcp_source_server(ns: &Namespace, port: u16, bytes: u64) -> Server {
    spawn_server(ns, move |stop, ready| {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("tcp bind");
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        let pat = Arc::new(pattern());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let pat = pat.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        let mut left = bytes;
                        let mut at = 0usize;
                        while left > 0 {
                            let n = (PATTERN_LEN - at).min(left as usize);
                            if s.write_all(&pat[at..at + n]).is_err() {
                                return;
                            }
                            left -= n as u64;
                            at = (at + n) % PATTERN_LEN;
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// Downloads everything a [`tcp_source_server`] sends, from `ns`, checking
/// every byte against the pattern; returns how many bytes came, or the
/// offset of the first wrong one.
pub fn tcp_download(ns: &Namespace, dst: SocketAddr, timeout: Duration) -> std::io::Result<u64> {
    ns.run(move || {
        let pat = pattern();
        let mut s = TcpStream::connect_timeout(&dst, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut at) = (0u64, 0usize);
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            let mut got = &buf[..n];
            while !got.is_empty() {
                let k = got.len().min(PATTERN_LEN - at);
                if got[..k] != pat[at..at + k] {
                    return Err(std::io::Error::other(format!(
                        "wrong bytes at offset {total}"
                    )));
                }
                total += k as u64;
                at = (at + k) % PATTERN_LEN;
                got = &got[k..];
            }
        }
    })
}
