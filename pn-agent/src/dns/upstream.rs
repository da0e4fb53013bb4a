//! Queries to one upstream over UDP, through sockets shared by a few
//! queries each: a socket on a fresh random port carries at most
//! [`PORT_QUERIES`] queries, started within [`PORT_LIFE`], then the next
//! query opens another one; the old one closes once its last query ends.
//!
//! A socket per query cost a dozen system calls and a registration with the
//! runtime per forward (socket, bind, connect, send, the reads, close);
//! here a forward costs one send, and the answers are read by one task per
//! socket, as many as are waiting at each wake-up.
//!
//! What an off-path spoofer must guess stays what it was: a source port
//! chosen at random by the kernel (`bind` to port 0), connected to the
//! upstream (the kernel drops datagrams from any other source), a random
//! id unique among the socket's queries in flight, and the question. Each
//! forged datagram still hits a query in flight with the same odds as
//! before, for the same number of queries in flight — n sockets of one
//! query each or n / k sockets of k queries each offer n (port, id) pairs —
//! and a port found out through a side channel (as SAD DNS does, with ICMP
//! rate limits) serves for at most [`PORT_QUERIES`] queries and
//! [`PORT_LIFE`], each query with its own id still to guess.

use std::{
    collections::{HashMap, hash_map::Entry},
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{Notify, oneshot},
};

use super::cache::question_end;

/// Queries one socket carries in its life.
pub const PORT_QUERIES: usize = 32;
/// How long a socket takes new queries.
pub const PORT_LIFE: Duration = Duration::from_secs(1);
/// The largest UDP payload: every answer is read whole.
const ANSWER_MAX: usize = 65535;

/// One upstream resolver, asked over UDP.
pub struct Upstream {
    addr: SocketAddr,
    current: Mutex<Option<Arc<Port>>>,
    id: fn() -> u16,
}

/// A socket and the queries it carries.
struct Port {
    sock: UdpSocket,
    born: Instant,
    /// Queries started on it.
    started: AtomicUsize,
    /// Queries started and not yet ended; the socket closes at 0 once
    /// retired.
    open: AtomicUsize,
    retired: AtomicBool,
    /// Wakes the reader to look at `retired` and `open`.
    wake: Notify,
    waiting: Mutex<HashMap<u16, Waiter>>,
}

struct Waiter {
    /// The question the answer must carry (its wire form, after the header).
    question: Box<[u8]>,
    tx: oneshot::Sender<Vec<u8>>,
}

/// A query's hold on its port: ends the query when dropped (answered,
/// timed out, or its task gone), so nothing is left waiting.
struct Ticket {
    port: Arc<Port>,
    id: Option<u16>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    /// `id` draws the ids sent (random; see `forward::upstream_id`).
    pub fn new(addr: SocketAddr, id: fn() -> u16) -> Upstream {
        Upstream {
            addr,
            current: Mutex::new(None),
            id,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The answer to `query` (whose id is the client's) from this upstream,
    /// the client's id back in it; None when it sent none that answers the
    /// query in time, or cannot be asked.
    pub async fn ask(&self, query: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let qend = question_end(query)?;
        let mut ticket = self.ticket()?;
        let (tx, rx) = oneshot::channel();
        let mut sent = query.to_vec();
        let id = ticket.port.register(
            Waiter {
                question: query[12..qend].into(),
                tx,
            },
            self.id,
        );
        ticket.id = Some(id);
        sent[..2].copy_from_slice(&id.to_be_bytes());
        ticket.port.sock.send(&sent).await.ok()?;
        let mut answer = tokio::time::timeout(timeout, rx).await.ok()?.ok()?;
        answer[..2].copy_from_slice(&query[..2]);
        Some(answer)
    }

    /// A place on the current socket, or on a new one when it is full or
    /// old (or there is none yet).
    fn ticket(&self) -> Option<Ticket> {
        let mut current = lock(&self.current);
        if let Some(p) = current.as_ref() {
            if p.started.load(Ordering::Relaxed) < PORT_QUERIES
                && p.born.elapsed() < PORT_LIFE
                && !p.retired.load(Ordering::Acquire)
            {
                return Some(p.ticket());
            }
            p.retire();
        }
        *current = None;
        let p = Port::open(self.addr).ok()?;
        let t = p.ticket();
        *current = Some(p);
        Some(t)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.current).take() {
            p.retire();
        }
    }
}

impl Port {
    /// A socket on a random port, connected to `up`, and its reader.
    fn open(up: SocketAddr) -> io::Result<Arc<Port>> {
        let any: SocketAddr = if up.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(any)?;
        s.connect(up)?;
        s.set_nonblocking(true)?;
        let port = Arc::new(Port {
            sock: UdpSocket::from_std(s)?,
            born: Instant::now(),
            started: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            wake: Notify::new(),
            waiting: Mutex::default(),
        });
        tokio::spawn(port.clone().read());
        Ok(port)
    }

    fn ticket(self: &Arc<Self>) -> Ticket {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ticket {
            port: self.clone(),
            id: None,
        }
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn done(&self) -> bool {
        self.retired.load(Ordering::Acquire) && self.open.load(Ordering::Acquire) == 0
    }

    /// Files `w` under an id no other query in flight here has.
    fn register(&self, w: Waiter, draw: fn() -> u16) -> u16 {
        let mut waiting = lock(&self.waiting);
        // At most PORT_QUERIES ids are taken: a free one comes quickly.
        loop {
            let id = draw();
            if let Entry::Vacant(v) = waiting.entry(id) {
                v.insert(w);
                return id;
            }
        }
    }

    /// Reads answers until retired with no query left.
    async fn read(self: Arc<Self>) {
        let mut buf = vec![0u8; ANSWER_MAX];
        while !self.done() {
            tokio::select! {
                got = self.sock.recv(&mut buf) => match got {
                    Ok(n) => self.deliver(&buf[..n]),
                    // The upstream said its port is closed (ICMP): its
                    // queries here fail now, so the next upstream is tried
                    // at once, as with a socket per query.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        lock(&self.waiting).clear();
                    }
                    // Anything else (never seen on a UDP socket) would
                    // come back at every read: the socket is given up, its
                    // queries fail, the next query opens another.
                    Err(e) => {
                        log::warn!("DNS: reading answers from an upstream failed ({e}); opening another socket");
                        self.retire();
                        lock(&self.waiting).clear();
                        break;
                    }
                },
                () = self.wake.notified() => {}
            }
        }
    }

    /// Hands `answer` to the query it answers: its id, a response, its
    /// question. Anything else is ignored; the query waits on.
    fn deliver(&self, answer: &[u8]) {
        if answer.len() < 12 || answer[2] & 0x80 == 0 {
            return;
        }
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let mut waiting = lock(&self.waiting);
        let Entry::Occupied(e) = waiting.entry(id) else {
            return;
        };
        let q = &e.get().question;
        let same = question_end(answer)
            .is_some_and(|end| end - 12 == q.len() && answer[12..end].eq_ignore_ascii_case(q));
        if !same {
            return;
        }
        let w = e.remove();
        drop(waiting);
        let _ = w.tx.send(answer.to_vec());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.port.waiting).remove(&id);
        }
        if self.port.open.fetch_sub(1, Ordering::AcqRel) == 1
            && self.port.retired.load(Ordering::Acquire)
        {
            self.port.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU16;

    use super::*;

    /// A query for `name` (type A) with id `id`.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// The answer to `q`: its header with QR set, its question, `extra`
    /// bytes standing for records.
    fn answer(q: &[u8], extra: u8) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a.push(extra);
        a
    }

    fn id() -> u16 {
        static N: AtomicU16 = AtomicU16::new(1);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// An upstream that answers the queries it gets, `batch` at a time, in
    /// reverse order, each preceded by strays: the same id with another
    /// question, another id, the query itself (no response).
    async fn upstream(batch: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let t = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let mut got = Vec::new();
                while got.len() < batch {
                    let (n, from) = s.recv_from(&mut buf).await.unwrap();
                    got.push((buf[..n].to_vec(), from));
                }
                for (q, from) in got.into_iter().rev() {
                    let mut other = answer(&q, 0xee);
                    other[13] ^= 0x20 ^ 0x01;
                    let mut wrong_id = answer(&q, 0xee);
                    wrong_id[0] ^= 0xff;
                    for stray in [other, wrong_id, q.clone()] {
                        s.send_to(&stray, from).await.unwrap();
                    }
                    s.send_to(&answer(&q, 0x42), from).await.unwrap();
                }
            }
        });
        (addr, t)
    }

    #[tokio::test]
    async fn each_query_gets_its_own_answer_with_its_id_strays_ignored() {
        let (addr, t) = upstream(8).await;
        let up = Arc::new(Upstream::new(addr, id));
        let asks = (0..8u16).map(|i| {
            let up = up.clone();
            tokio::spawn(async move {
                let q = query(0x1000 + i, &format!("n{i}.example"));
                let a = up.ask(&q, Duration::from_secs(5)).await.unwrap();
                assert_eq!(a, answer(&q, 0x42), "query {i}");
            })
        });
        for a in asks.collect::<Vec<_>>() {
            a.await.unwrap();
        }
        t.abort();
    }

    #[tokio::test]
    async fn a_port_carries_its_share_of_queries_then_a_fresh_one_opens() {
        let (addr, t) = upstream(1).await;
        let up = Upstream::new(addr, id);
        let mut first = None;
        for i in 0..PORT_QUERIES {
            let q = query(i as u16, "a.example");
            assert!(up.ask(&q, Duration::from_secs(5)).await.is_some());
            let p = lock(&up.current).clone().unwrap();
            let first = first.get_or_insert_with(|| p.clone());
            assert!(Arc::ptr_eq(first, &p), "query {i} on the first port");
        }
        let old = Arc::downgrade(&first.take().unwrap());
        assert!(
            up.ask(&query(7, "a.example"), Duration::from_secs(5))
                .await
                .is_some()
        );
        let p = lock(&up.current).clone().unwrap();
        assert!(!std::ptr::eq(old.as_ptr(), Arc::as_ptr(&p)), "a new port");
        drop(p);
        // The retired port, its queries over, is closed (its reader gone).
        let closed = async {
            while old.upgrade().is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), closed)
            .await
            .expect("the old port closes");
        t.abort();
    }

    #[tokio::test]
    async fn an_unanswered_query_times_out_and_leaves_nothing_behind() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream::new(silent.local_addr().unwrap(), id);
        let q = query(1, "a.example");
        assert_eq!(up.ask(&q, Duration::from_millis(50)).await, None);
        let p = lock(&up.current).clone().unwrap();
        assert!(lock(&p.waiting).is_empty());
        assert_eq!(p.open.load(Ordering::Relaxed), 0);
        // Nor can a query with no single question be matched: not sent.
        assert_eq!(up.ask(&q[..12], Duration::from_secs(5)).await, None);
    }

    #[tokio::test]
    async fn a_closed_upstream_port_fails_the_query_at_once() {
        let gone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let up = Upstream::new(addr, id);
        let started = Instant::now();
        assert_eq!(
            up.ask(&query(1, "a.example"), Duration::from_secs(5)).await,
            None
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "not the timeout"
        );
    }

    #[tokio::test]
    async fn ids_are_unique_among_a_ports_queries_in_flight() {
        // A draw that repeats itself: the port draws again.
        fn stuck() -> u16 {
            static N: AtomicU16 = AtomicU16::new(0);
            N.fetch_add(1, Ordering::Relaxed) / 3
        }
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream::new(silent.local_addr().unwrap(), stuck);
        let t = up.ticket().unwrap();
        let ids: Vec<u16> = (0..4)
            .map(|_| {
                let (tx, _rx) = oneshot::channel();
                let w = Waiter {
                    question: Box::new([]),
                    tx,
                };
                t.port.register(w, stuck)
            })
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{ids:?}");
    }
}
