//! A paced stream of numbered UDP datagrams from one container to several,
//! to measure what an event (an agent restart, an upgrade, a crash) costs
//! the traffic: datagrams lost and the longest silence at each receiver.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Namespace;

/// What one receiver saw.
#[derive(Clone, Debug)]
pub struct Received {
    pub to: SocketAddr,
    pub sent: u32,
    /// Distinct sequence numbers that never arrived.
    pub lost: u32,
    /// Longest time between two consecutive arrivals (or between the first
    /// send and the first arrival).
    pub longest_gap: Duration,
    /// When (after the stream's start) that gap began.
    pub gap_at: Duration,
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} lost of {}, longest gap {:.1} ms (at {:.2} s)",
            self.to,
            self.lost,
            self.sent,
            self.longest_gap.as_secs_f64() * 1e3,
            self.gap_at.as_secs_f64()
        )
    }
}

/// Sequence numbers and when they arrived.
type Arrivals = Vec<(u32, Instant)>;

/// A stream in progress; [`Stream::finish`] waits for its end.
pub struct Stream {
    sender: Option<JoinHandle<u32>>,
    receivers: Vec<(SocketAddr, JoinHandle<Arrivals>)>,
    stop: Arc<AtomicBool>,
    start: Instant,
}

/// A UDP socket on `port` of every address of `a`'s family, and of that
/// family only (IPv6 sockets take IPv4 too by default).
fn bind_family(a: &SocketAddr, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let (domain, any) = if a.is_ipv6() {
        (Domain::IPV6, SocketAddr::from(([0u16; 8], port)))
    } else {
        (Domain::IPV4, SocketAddr::from(([0u8; 4], port)))
    };
    let s = Socket::new(domain, Type::DGRAM, None)?;
    if a.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&any.into())?;
    Ok(s.into())
}

fn enter(ns: &std::path::Path) {
    let f = std::fs::File::open(ns).expect("namespace file");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

impl Stream {
    /// Sends `count` datagrams at `rate` per second from `from` to each of
    /// `to` (a receiver namespace and the address it is reached at; the
    /// receiver binds that port on all addresses of the address's family
    /// only, so one namespace may take both families on one port).
    pub fn start(
        from: &Namespace,
        to: &[(&Namespace, SocketAddr)],
        rate: u32,
        count: u32,
    ) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        for (ns, addr) in to {
            let (path, stop, port, addr) = (ns.path(), stop.clone(), addr.port(), *addr);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = std::thread::spawn(move || {
                enter(&path);
                let s = bind_family(&addr, port).expect("stream receiver bind");
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                ready_tx.send(()).unwrap();
                let mut got = Vec::with_capacity(count as usize);
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = s.recv(&mut buf)
                        && n >= 4
                    {
                        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                        got.push((seq, Instant::now()));
                    }
                }
                got
            });
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("stream receiver did not start");
            receivers.push((addr, t));
        }
        let path = from.path();
        let dests: Vec<SocketAddr> = to.iter().map(|(_, a)| *a).collect();
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            enter(&path);
            // One socket per family the destinations have.
            let socket = |v6: bool| {
                let s = UdpSocket::bind((if v6 { "::" } else { "0.0.0.0" }, 0))
                    .expect("stream sender bind");
                // A real-time sender: a datagram the kernel cannot take at
                // once (a full socket buffer) is lost, never sent late.
                s.set_nonblocking(true).unwrap();
                s
            };
            let (s4, s6) = (socket(false), socket(true));
            let mut payload = [0u8; 64];
            for i in 0..count {
                let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                payload[..4].copy_from_slice(&i.to_be_bytes());
                for d in &dests {
                    // A missing route or a full buffer shows as a lost
                    // datagram, not an error.
                    let s = if d.is_ipv6() { &s6 } else { &s4 };
                    let _ = s.send_to(&payload, d);
                }
            }
            count
        });
        Stream {
            sender: Some(sender),
            receivers,
            stop,
            start,
        }
    }

    /// When the stream started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Waits for the last datagram to be sent (and a moment for it to
    /// arrive), then reports per receiver.
    pub fn finish(mut self) -> Vec<Received> {
        let sent = self.sender.take().map_or(0, |s| s.join().expect("sender"));
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let start = self.start;
        self.receivers
            .drain(..)
            .map(|(to, t)| summarise(to, sent, start, t.join().expect("receiver")))
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn summarise(to: SocketAddr, sent: u32, start: Instant, got: Arrivals) -> Received {
    let mut seen = vec![false; sent as usize];
    for (seq, _) in &got {
        if let Some(s) = seen.get_mut(*seq as usize) {
            *s = true;
        }
    }
    let lost = seen.iter().filter(|s| !**s).count() as u32;
    let mut longest_gap = Duration::ZERO;
    let mut gap_at = Duration::ZERO;
    let mut prev = start;
    for (_, at) in &got {
        let gap = at.saturating_duration_since(prev);
        if gap > longest_gap {
            longest_gap = gap;
            gap_at = prev.saturating_duration_since(start);
        }
        prev = *at;
    }
    Received {
        to,
        sent,
        lost,
        longest_gap,
        gap_at,
    }
}

/// One TCP connection kept busy through an event: a small message echoed
/// every 20 ms, for as long as it runs. TCP retransmits what an event
/// loses, so a connection that lives through it shows as echoes after it
/// and no error.
pub struct TcpTicker {
    echoes: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl TcpTicker {
    /// Connects from `from` to `to` (an echo server) and starts ticking.
    pub fn start(from: &Namespace, to: SocketAddr) -> TcpTicker {
        use std::io::{Read as _, Write as _};
        let echoes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (path, count, halt) = (from.path(), echoes.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let connected = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5));
            let _ = ready_tx.send(connected.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let mut s = connected.map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut i = 0u64;
            while !halt.load(Ordering::Relaxed) {
                let msg = i.to_be_bytes();
                let mut got = [0u8; 8];
                s.write_all(&msg)
                    .and_then(|()| s.read_exact(&mut got))
                    .map_err(|e| format!("echo {i} to {to}: {e}"))?;
                if got != msg {
                    return Err(format!("echo {i} to {to} came back as {got:?}"));
                }
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the ticker did not start")
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        TcpTicker {
            echoes,
            stop,
            thread: Some(thread),
        }
    }

    /// Echoes that came back so far.
    pub fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }

    /// Stops; the connection's first error, if it had one.
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().map_or(Ok(()), |t| {
            t.join()
                .unwrap_or_else(|_| Err("the ticker panicked".into()))
        });
        r.map(|()| self.echoes())
    }
}

impl Drop for TcpTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
