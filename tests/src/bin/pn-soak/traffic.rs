//! The soak's steady traffic: numbered UDP streams between members of one
//! network (their losses are charged to the fault running when each
//! datagram was due), streams toward another network (none may arrive),
//! and TCP connections opened and closed all along. Every payload carries
//! [`MARKER`], which no capture of the underlay may ever see.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pn_tests::Namespace;

pub const MARKER: &[u8] = b"PN-SOAK-CLEAR-TEXT-MARKER-5e0c";

fn enter(ns: &std::path::Path) {
    let f = std::fs::File::open(ns).expect("namespace file");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A stream's destination.
pub struct Target<'a> {
    pub ns: &'a Namespace,
    pub to: SocketAddr,
    pub same_host: bool,
    /// False for another network's member: nothing may arrive.
    pub allowed: bool,
}

struct Flow {
    to: SocketAddr,
    same_host: bool,
    allowed: bool,
    /// Arrivals per sequence number.
    seen: Arc<Mutex<Vec<bool>>>,
    arrivals: Arc<AtomicU32>,
    receiver: Option<JoinHandle<()>>,
}

/// Streams from one sender to several targets at `rate` a second, until
/// stopped.
pub struct Streams {
    flows: Vec<Flow>,
    rate: u32,
    start: Instant,
    sent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    stop_sending: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
}

/// Losses once the streams stopped: each lost datagram's due time, and
/// whether it was going to the same host.
pub struct Losses {
    pub lost: Vec<(Instant, bool)>,
    pub sent: u64,
    /// Datagrams another network's member received (must be 0).
    pub crossed: u64,
}

impl Streams {
    pub fn start(from: &Namespace, targets: &[Target<'_>], rate: u32) -> Streams {
        let stop = Arc::new(AtomicBool::new(false));
        let mut flows = Vec::new();
        for t in targets {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let arrivals = Arc::new(AtomicU32::new(0));
            let receiver = receive(t.ns.path(), t.to.port(), &stop, &seen, &arrivals);
            flows.push(Flow {
                to: t.to,
                same_host: t.same_host,
                allowed: t.allowed,
                seen,
                arrivals,
                receiver: Some(receiver),
            });
        }
        let dests: Vec<SocketAddr> = flows.iter().map(|f| f.to).collect();
        let stop_sending = Arc::new(AtomicBool::new(false));
        let (path, stop2, sent) = (
            from.path(),
            stop_sending.clone(),
            Arc::new(AtomicU32::new(0)),
        );
        let sent2 = sent.clone();
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            enter(&path);
            let s = UdpSocket::bind("0.0.0.0:0").expect("stream sender bind");
            s.set_nonblocking(true).unwrap();
            let mut payload = [&[0u8; 4][..], MARKER].concat();
            let mut i = 0u32;
            while !stop2.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                payload[..4].copy_from_slice(&i.to_be_bytes());
                for d in &dests {
                    // A missing route or a full buffer shows as a loss.
                    let _ = s.send_to(&payload, d);
                }
                i += 1;
                sent2.store(i, Ordering::Relaxed);
            }
        });
        Streams {
            flows,
            rate,
            start,
            sent,
            stop,
            stop_sending,
            sender: Some(sender),
        }
    }

    /// Datagrams another network's member received so far.
    pub fn crossed(&self) -> u64 {
        self.flows
            .iter()
            .filter(|f| !f.allowed)
            .map(|f| u64::from(f.arrivals.load(Ordering::Relaxed)))
            .sum()
    }

    /// Stops sending, lets the last datagrams arrive, and counts.
    pub fn finish(mut self) -> Losses {
        self.stop_sending.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        let mut out = Losses {
            lost: Vec::new(),
            sent: 0,
            crossed: self.crossed(),
        };
        for f in &mut self.flows {
            if let Some(r) = f.receiver.take() {
                let _ = r.join();
            }
            if !f.allowed {
                continue;
            }
            out.sent += u64::from(sent);
            let seen = f.seen.lock().unwrap();
            for i in 0..sent {
                if !seen.get(i as usize).copied().unwrap_or(false) {
                    let due =
                        self.start + Duration::from_secs_f64(f64::from(i) / f64::from(self.rate));
                    out.lost.push((due, f.same_host));
                }
            }
        }
        out
    }
}

fn receive(
    path: PathBuf,
    port: u16,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Vec<bool>>>,
    arrivals: &Arc<AtomicU32>,
) -> JoinHandle<()> {
    let (stop, seen, arrivals) = (stop.clone(), seen.clone(), arrivals.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        enter(&path);
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("stream receiver bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    arrivals.fetch_add(1, Ordering::Relaxed);
                    let mut seen = seen.lock().unwrap();
                    if seen.len() <= seq {
                        seen.resize(seq + 1, false);
                    }
                    seen[seq] = true;
                }
                _ if stop.load(Ordering::Relaxed) => return,
                _ => {}
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stream receiver did not start");
    t
}

/// TCP connections opened, used and closed in a loop from one member to
/// its peers' echo servers: when each failed.
pub struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, Vec<Instant>)>>,
}

impl Churn {
    pub fn start(from: &Namespace, peers: Vec<SocketAddr>, every: Duration) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, stop2) = (from.path(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter(&path);
            let (mut opened, mut failed) = (0u64, Vec::new());
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let to = peers[i % peers.len()];
                i += 1;
                let t = Instant::now();
                opened += 1;
                if exchange(to).is_err() {
                    failed.push(t);
                }
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
            (opened, failed)
        });
        Churn {
            stop,
            thread: Some(thread),
        }
    }

    /// Connections opened, and when each failed one started.
    pub fn finish(mut self) -> (u64, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("churn thread"))
            .unwrap_or_default()
    }
}

fn exchange(to: SocketAddr) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(MARKER)?;
    let mut got = vec![0u8; MARKER.len()];
    s.read_exact(&mut got)?;
    if got != MARKER {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop_sending.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
