//! Real sockets inside namespaces: echo servers, clients, raw IPv4 and raw
//! Ethernet frames (`raw`), captures (`capture`). Every server stops when
//! its handle drops; every client call is bounded in time.

mod capture;
mod raw;

pub use capture::{Capture, pcap_frames, udp_payloads};
pub use raw::{checksum6, ipv4_packet, ipv6_frame, send_frame, send_raw_ipv4, udp_packet};

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::namespace::Namespace;

fn enter(ns_path: &std::path::Path) {
    let f = File::open(ns_path).expect("namespace file");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A background server inside a namespace; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn spawn_server(
    ns: &Namespace,
    body: impl FnOnce(Arc<AtomicBool>, mpsc::Sender<()>) + Send + 'static,
) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let path = ns.path();
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        enter(&path);
        body(s, ready_tx);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server did not start");
    Server {
        stop,
        thread: Some(thread),
    }
}

/// TCP echo on `0.0.0.0:port`: echoes each connection until it closes.
pub fn tcp_echo_server(ns: &Namespace, port: u16) -> Server {
    tcp_echo_server_on(ns, "0.0.0.0", port)
}

/// [`tcp_echo_server`] on `[::]:port` (both families).
pub fn tcp_echo_server6(ns: &Namespace, port: u16) -> Server {
    tcp_echo_server_on(ns, "::", port)
}

fn tcp_echo_server_on(ns: &Namespace, any: &'static str, port: u16) -> Server {
    spawn_server(ns, move |stop, ready| {
        let l = TcpListener::bind((any, port)).expect("tcp bind");
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    echo_back(&mut s, None);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// Writes back what `s` reads until it closes or fails; with `stop`, a
/// read timeout only checks it (the server is going away).
fn echo_back(s: &mut TcpStream, stop: Option<&AtomicBool>) {
    let mut buf = [0u8; 4096];
    while !stop.is_some_and(|f| f.load(Ordering::Relaxed)) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if stop.is_some()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
            Err(_) => break,
        }
    }
}

/// UDP echo on `0.0.0.0:port`.
pub fn udp_echo_server(ns: &Namespace, port: u16) -> Server {
    udp_echo_server_on(ns, "0.0.0.0", port)
}

/// [`udp_echo_server`] on `[::]:port` (both families).
pub fn udp_echo_server6(ns: &Namespace, port: u16) -> Server {
    udp_echo_server_on(ns, "::", port)
}

fn udp_echo_server_on(ns: &Namespace, any: &'static str, port: u16) -> Server {
    udp_server_on(ns, any, port, |data, _| data.to_vec())
}

/// UDP on `bind:port`, answering each datagram with `reply(data, from)`.
fn udp_server_on(
    ns: &Namespace,
    bind: &'static str,
    port: u16,
    reply: fn(&[u8], SocketAddr) -> Vec<u8>,
) -> Server {
    spawn_server(ns, move |stop, ready| {
        let s = UdpSocket::bind((bind, port)).expect("udp bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&reply(&buf[..n], from), from);
            }
        }
    })
}

/// Collects the payloads of UDP datagrams arriving on `port`.
pub struct UdpCollector {
    _server: Server,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl UdpCollector {
    /// Payloads received within `wait`.
    pub fn received(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(p) => out.push(p),
                Err(_) => break,
            }
        }
        out
    }
}

pub fn udp_collector(ns: &Namespace, port: u16) -> UdpCollector {
    udp_collector_on(ns, "0.0.0.0", port)
}

/// [`udp_collector`] on `[::]:port` (both families).
pub fn udp_collector6(ns: &Namespace, port: u16) -> UdpCollector {
    udp_collector_on(ns, "::", port)
}

fn udp_collector_on(ns: &Namespace, any: &'static str, port: u16) -> UdpCollector {
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(ns, move |stop, ready| {
        let s = UdpSocket::bind((any, port)).expect("udp bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    });
    UdpCollector {
        _server: server,
        rx,
    }
}

/// Connects, sends `msg`, returns what comes back (up to `msg.len()` bytes).
pub fn tcp_echo(
    ns: &Namespace,
    dst: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    })
}

/// Sends `msg` over UDP and waits for the echo.
pub fn udp_echo(
    ns: &Namespace,
    dst: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    ns.run(move || {
        let s = UdpSocket::bind(if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(&msg, dst)?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = s.recv_from(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    })
}

/// TCP on `0.0.0.0:port`: tells each client the address it came from (one
/// line), then echoes what it sends; a thread per connection, so clients
/// may keep theirs open.
pub fn tcp_whoami_server(ns: &Namespace, port: u16) -> Server {
    tcp_line_server(ns, "0.0.0.0", port, false)
}

/// [`tcp_whoami_server`] on `[::]:port`, for IPv6 clients.
pub fn tcp_whoami_server6(ns: &Namespace, port: u16) -> Server {
    tcp_line_server(ns, "::", port, false)
}

/// Like [`tcp_whoami_server`], but tells each client the server's own
/// address (which backend a service address led to).
pub fn tcp_whoami_self_server(ns: &Namespace, port: u16) -> Server {
    tcp_line_server(ns, "0.0.0.0", port, true)
}

/// [`tcp_whoami_self_server`] on `[::]:port`: its IPv6 address to IPv6
/// clients.
pub fn tcp_whoami_self_server6(ns: &Namespace, port: u16) -> Server {
    tcp_line_server(ns, "::", port, true)
}

fn tcp_line_server(ns: &Namespace, bind: &'static str, port: u16, own: bool) -> Server {
    spawn_server(ns, move |stop, ready| {
        let l = TcpListener::bind((bind, port)).expect("tcp bind");
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(200)))
                            .unwrap();
                        let who = if own {
                            s.local_addr().map_or(peer.ip(), |a| a.ip())
                        } else {
                            peer.ip()
                        };
                        if writeln!(s, "{who}").is_err() {
                            return;
                        }
                        echo_back(&mut s, Some(&stop));
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// UDP on `0.0.0.0:port`: answers each datagram with the sender's address.
pub fn udp_whoami_server(ns: &Namespace, port: u16) -> Server {
    udp_whoami_server_on(ns, "0.0.0.0", port)
}

/// [`udp_whoami_server`] on `[::]:port`, for IPv6 clients.
pub fn udp_whoami_server6(ns: &Namespace, port: u16) -> Server {
    udp_whoami_server_on(ns, "::", port)
}

fn udp_whoami_server_on(ns: &Namespace, bind: &'static str, port: u16) -> Server {
    udp_server_on(ns, bind, port, |_, from| from.ip().to_string().into_bytes())
}

/// A connection to a [`tcp_whoami_server`], opened from `ns`: the address
/// the server saw, and the stream (still open, echoing).
pub fn tcp_whoami(
    ns: &Namespace,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(String, TcpStream)> {
    ns.run(move || read_line(TcpStream::connect_timeout(&dst, timeout)?, timeout))
}

/// [`tcp_whoami`] from source port `port` (bound with SO_REUSEADDR, so a
/// port whose earlier connection to another address is in TIME_WAIT can be
/// bound again).
pub fn tcp_whoami_from(
    ns: &Namespace,
    port: u16,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(String, TcpStream)> {
    use socket2::{Domain, Socket, Type};
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        s.connect_timeout(&dst.into(), timeout)?;
        read_line(s.into(), timeout)
    })
}

/// Closes with a reset rather than a FIN (linger 0).
pub fn reset(s: TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))
}

fn read_line(mut s: TcpStream, timeout: Duration) -> std::io::Result<(String, TcpStream)> {
    s.set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), s))
}

/// Sends `msg` on an open echoing stream and reads it back.
pub fn echo_on(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

/// Asks a [`udp_whoami_server`] from `ns` which address it sees.
pub fn udp_whoami(ns: &Namespace, dst: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    ns.run(move || {
        let s = UdpSocket::bind(if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"?", dst)?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// Minimal HTTP/1.0 GET (for /metrics); the caller is inside the right namespace.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s =
        TcpStream::connect_timeout(&addr.parse().expect("address"), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    match body.split_once("\r\n\r\n") {
        Some((_, b)) => Ok(b.to_string()),
        None => Ok(body),
    }
}

/// A minimal upstream resolver on `0.0.0.0:port` (UDP) inside `ns`: answers
/// every query with one A record `answer`, TTL 60, by echoing the question.
pub fn fake_dns_upstream(ns: &Namespace, port: u16, answer: Ipv4Addr) -> Server {
    fake_dns_upstream_ignoring(ns, port, answer, "")
}

/// As [`fake_dns_upstream`], but queries whose first label starts with
/// `silent_prefix` (when not empty) never get an answer, as from an
/// upstream that times out.
pub fn fake_dns_upstream_ignoring(
    ns: &Namespace,
    port: u16,
    answer: Ipv4Addr,
    silent_prefix: &str,
) -> Server {
    fake_dns_upstream_on(
        ns,
        std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        answer,
        silent_prefix,
    )
}

/// As [`fake_dns_upstream_ignoring`], bound to `addr` only: its answers
/// leave from that address whichever way the query came (a socket on
/// `0.0.0.0` answers from the route's source, which a client asking another
/// of the host's addresses would not take).
pub fn fake_dns_upstream_on(
    ns: &Namespace,
    addr: std::net::SocketAddrV4,
    answer: Ipv4Addr,
    silent_prefix: &str,
) -> Server {
    let silent = silent_prefix.as_bytes().to_vec();
    spawn_server(ns, move |stop, ready| {
        let s = UdpSocket::bind(addr).expect("udp bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            let first_label = buf.get(13..13 + usize::from(buf[12])).unwrap_or(&[]);
            if !silent.is_empty() && first_label.starts_with(&silent) {
                continue;
            }
            let _ = s.send_to(&fake_dns_answer(&buf[..n], answer, 60), from);
        }
    })
}

/// The fake upstream's answer to `query`: its question and one A record
/// (`answer`, `ttl`), no EDNS.
fn fake_dns_answer(query: &[u8], answer: Ipv4Addr, ttl: u32) -> Vec<u8> {
    let mut r = question_only(query);
    r[3] = 0x80; // RA, NOERROR
    r[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&[0, 4]);
    r.extend_from_slice(&answer.octets());
    r
}

/// The header (QR set, no records) and question of `query`.
fn question_only(query: &[u8]) -> Vec<u8> {
    let mut r = query.to_vec();
    r[2] |= 0x80; // QR
    r[6..12].copy_from_slice(&[0; 6]); // no records (drops EDNS)
    let mut end = 12;
    while end < r.len() && r[end] != 0 {
        end += usize::from(r[end]) + 1;
    }
    r.truncate((end + 5).min(r.len()));
    r
}

/// A fake upstream resolver on `0.0.0.0:port` (UDP) inside `ns` that counts
/// the queries it gets (the returned counter) and answers by the first
/// label of the name: `nx…` NXDOMAIN with an SOA (TTL and MINIMUM 30 s),
/// `short…` an A record of TTL 2 s, anything else an A record of TTL 60 s;
/// the address is always `answer`.
pub fn counting_dns_upstream(
    ns: &Namespace,
    port: u16,
    answer: Ipv4Addr,
) -> (Server, Arc<std::sync::atomic::AtomicU64>) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = count.clone();
    let server = spawn_server(ns, move |stop, ready| {
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("udp bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let first_label = buf.get(13..13 + usize::from(buf[12])).unwrap_or(&[]);
            let r = if first_label.starts_with(b"nx") {
                let mut r = question_only(&buf[..n]);
                r[3] = 0x83; // RA, NXDOMAIN
                r[8..10].copy_from_slice(&1u16.to_be_bytes()); // NSCOUNT
                // SOA owned by the question's name, root names inside.
                r.extend_from_slice(&[0xc0, 0x0c, 0, 6, 0, 1, 0, 0, 0, 30, 0, 22, 0, 0]);
                for field in [1u32, 3600, 600, 86400, 30] {
                    r.extend_from_slice(&field.to_be_bytes());
                }
                r
            } else if first_label.starts_with(b"short") {
                fake_dns_answer(&buf[..n], answer, 2)
            } else {
                fake_dns_answer(&buf[..n], answer, 60)
            };
            let _ = s.send_to(&r, from);
        }
    });
    (server, count)
}

/// An HTTP server on `0.0.0.0:port` inside `ns` answering every request
/// with `body` (one request per connection).
pub fn http_server(ns: &Namespace, port: u16, body: &str) -> Server {
    let body = body.to_string();
    spawn_server(ns, move |stop, ready| {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("tcp bind");
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}
