//! The per-connection table: turns the datapath's boundary and HTTP events
//! into outcomes (opened, refused, timed out, closed with its bytes, requests
//! matched with their responses). Pure: time is the events' own (monotonic
//! ns), expiry is driven by the caller.
//!
//! A connection is tracked where its client is: on the client's host, from
//! the events of the client's interface only. When both ends are local, the
//! server side's copies of the same segments are ignored, and a server whose
//! client is on another host leaves the connection to that host's agent: each
//! connection is counted once in the fleet.
//!
//! Generic over the family's address ([`Ip4`] or [`Ip6`]): the agent keeps
//! one table per family, so IPv4's keys stay 12 bytes.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use pn_common::{
    Ip4, Ip6,
    conn::{self, ConnEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    event::Direction,
    ip4_octets,
};

/// Connections tracked at most per family; further SYNs are counted as
/// untracked.
pub const MAX_TRACKED: usize = 65_536;
/// Requests waiting for a response on one connection, at most.
const MAX_PIPELINED: usize = 64;
/// An established connection with no boundary or request event for this
/// long is forgotten (its bytes are not counted).
pub const IDLE_NS: u64 = 3_600 * 1_000_000_000;
/// A response whose end is not seen (idle keep-alive) is logged after this.
pub const RESPONSE_LOG_NS: u64 = 5 * 1_000_000_000;

/// The client and server ends of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key<A = Ip4> {
    pub client: A,
    pub client_port: u16,
    pub server: A,
    pub server_port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Request<A = Ip4> {
    pub key: Key<A>,
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    /// Request's first byte to response's first byte, both seen at the client.
    pub duration_ns: u64,
    /// When the request left the client (monotonic ns).
    pub ts_ns: u64,
    /// Response bytes (headers and body), when its end was seen.
    pub bytes: Option<u64>,
}

/// What the metrics take of a request once its response starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer<A = Ip4> {
    pub key: Key<A>,
    pub method: &'static str,
    pub status: u16,
    /// Request's first byte to response's first byte, both seen at the client.
    pub duration_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<A = Ip4> {
    Opened {
        key: Key<A>,
        connect_ns: u64,
    },
    Refused {
        key: Key<A>,
    },
    TimedOut {
        key: Key<A>,
    },
    /// Bytes sent by the client and by the server (payload, both ways).
    Closed {
        key: Key<A>,
        to_server: u64,
        to_client: u64,
    },
    /// A response's first byte: for the metrics (no path: the log's
    /// record follows as `Logged`, so nothing is copied per request).
    Responded(Answer<A>),
    /// The same request once its response's size is known: for the log.
    Logged(Request<A>),
    /// A SYN not tracked because the table was full.
    Untracked,
}

#[derive(Debug)]
struct Pending {
    ts_ns: u64,
    method: &'static str,
    path: String,
}

#[derive(Debug)]
struct Conn<A> {
    syn_ns: u64,
    last_ns: u64,
    client_isn: u32,
    server_isn: Option<u32>,
    /// Sequence number just past each side's data, as far as seen (from
    /// FINs, RSTs and the other side's ACKs).
    client_end: Option<u32>,
    server_end: Option<u32>,
    client_fin: bool,
    server_fin: bool,
    requests: VecDeque<Pending>,
    /// The response being received: its record and first sequence number.
    response: Option<(Request<A>, u32, u64)>,
}

/// An address of either family, as the table keys connections by it.
pub trait Addr: Copy + Eq + Hash + Debug {
    fn ip(self) -> IpAddr;
}

impl Addr for Ip4 {
    fn ip(self) -> IpAddr {
        Ipv4Addr::from(ip4_octets(self)).into()
    }
}

impl Addr for Ip6 {
    fn ip(self) -> IpAddr {
        Ipv6Addr::from(self).into()
    }
}

/// An HTTP/1.x request or response head at the start of a segment's
/// payload: requests queue (pipelined), a response answers the oldest and
/// ends the previous one.
fn http<A: Addr>(
    c: &mut Conn<A>,
    key: Key<A>,
    from_client: bool,
    ev: &ConnEvent<A>,
    out: &mut Vec<Outcome<A>>,
) {
    let payload = ev.payload();
    if from_client {
        if let Some(r) = conn::parse_request(payload) {
            // A keep-alive client asks again once it has read the
            // last response: what it acknowledges is that response's end.
            let server_end = c.server_end;
            if c.requests.is_empty()
                && let Some(done) = finish_response(c, Some(server_end))
            {
                out.push(Outcome::Logged(done));
            }
            if c.requests.len() < MAX_PIPELINED {
                c.requests.push_back(Pending {
                    ts_ns: ev.ts_ns,
                    method: r.method,
                    path: String::from_utf8_lossy(r.target).into_owned(),
                });
            }
        }
    } else if let Some(status) = conn::parse_status(payload) {
        if let Some(done) = finish_response(c, Some(Some(ev.seq))) {
            out.push(Outcome::Logged(done));
        }
        if let Some(p) = c.requests.pop_front() {
            let req = Request {
                key,
                method: p.method,
                path: p.path,
                status,
                duration_ns: ev.ts_ns.saturating_sub(p.ts_ns),
                ts_ns: p.ts_ns,
                bytes: None,
            };
            out.push(Outcome::Responded(Answer {
                key,
                method: req.method,
                status,
                duration_ns: req.duration_ns,
            }));
            c.response = Some((req, ev.seq, ev.ts_ns));
        }
    }
}

/// Payload bytes between a side's initial sequence number and an end.
fn span(isn: u32, end: Option<u32>) -> u64 {
    let n = end.map_or(0, |e| e.wrapping_sub(isn).wrapping_sub(1));
    // An end before the ISN is a stale or odd segment, not 4 GB.
    if n > u32::MAX / 2 { 0 } else { u64::from(n) }
}

fn later(cur: Option<u32>, new: u32) -> Option<u32> {
    match cur {
        Some(c) if (new.wrapping_sub(c) as i32) <= 0 => Some(c),
        _ => Some(new),
    }
}

#[derive(Debug)]
pub struct Tracker<A = Ip4> {
    conns: HashMap<Key<A>, Conn<A>>,
    timeout_ns: u64,
}

impl<A: Addr> Tracker<A> {
    /// `timeout_ns`: a SYN unanswered for this long is a timed-out connection.
    pub fn new(timeout_ns: u64) -> Tracker<A> {
        Tracker {
            conns: HashMap::new(),
            timeout_ns,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A client's SYN: a new entry (a retransmitted SYN keeps the first
    /// one's time), unless the table is full.
    fn open(&mut self, key: Key<A>, ev: &ConnEvent<A>, out: &mut Vec<Outcome<A>>) {
        if self.conns.contains_key(&key) {
            return;
        }
        if self.conns.len() >= MAX_TRACKED {
            out.push(Outcome::Untracked);
            return;
        }
        self.conns.insert(
            key,
            Conn {
                syn_ns: ev.ts_ns,
                last_ns: ev.ts_ns,
                client_isn: ev.seq,
                server_isn: None,
                client_end: None,
                server_end: None,
                client_fin: false,
                server_fin: false,
                requests: VecDeque::new(),
                response: None,
            },
        );
    }

    pub fn feed(&mut self, ev: &ConnEvent<A>, out: &mut Vec<Outcome<A>>) {
        let from_container = ev.direction == Direction::FromContainer as u8;
        let fwd = Key {
            client: ev.src,
            client_port: ev.sport,
            server: ev.dst,
            server_port: ev.dport,
        };
        if ev.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // Only the client's own interface opens an entry.
            if from_container {
                self.open(fwd, ev, out);
            }
            return;
        }
        let rev = Key {
            client: ev.dst,
            client_port: ev.dport,
            server: ev.src,
            server_port: ev.sport,
        };
        // One lookup per direction tried (the key is hashed per lookup).
        let (key, from_client, c) = if let Some(c) = self.conns.get_mut(&fwd) {
            (fwd, true, c)
        } else if let Some(c) = self.conns.get_mut(&rev) {
            (rev, false, c)
        } else {
            return;
        };
        // The client's interface: its packets leave there, the server's
        // enter. Between two local members the datapath sends only the copy
        // leaving the sender, which then stands for both.
        if from_client != from_container && ev.both_local == 0 {
            return;
        }
        c.last_ns = ev.ts_ns;
        let end = ev.seq.wrapping_add(u32::from(ev.data_len));
        if !from_client && ev.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            if c.server_isn.is_none() {
                c.server_isn = Some(ev.seq);
                out.push(Outcome::Opened {
                    key,
                    connect_ns: ev.ts_ns.saturating_sub(c.syn_ns),
                });
            }
            return;
        }
        let Some(server_isn) = c.server_isn else {
            if !from_client && ev.flags & TCP_RST != 0 {
                self.conns.remove(&key);
                out.push(Outcome::Refused { key });
            }
            return;
        };
        // What one side acknowledges is what the other has sent.
        if ev.flags & TCP_ACK != 0 && ev.flags & TCP_RST == 0 {
            let acked = ev.ack;
            if from_client {
                let fin = u32::from(c.server_fin);
                c.server_end = later(c.server_end, acked.wrapping_sub(fin));
            } else {
                let fin = u32::from(c.client_fin);
                c.client_end = later(c.client_end, acked.wrapping_sub(fin));
            }
        }
        if ev.copied > 0 {
            http(c, key, from_client, ev, out);
        }
        let closing = ev.flags & (TCP_FIN | TCP_RST) != 0;
        if closing {
            if from_client {
                c.client_end = later(c.client_end, end);
                c.client_fin |= ev.flags & TCP_FIN != 0;
            } else {
                c.server_end = later(c.server_end, end);
                c.server_fin |= ev.flags & TCP_FIN != 0;
            }
        }
        if ev.flags & TCP_RST != 0 || (c.client_fin && c.server_fin) {
            let c = self.conns.remove(&key).expect("present");
            close(key, c, server_isn, out);
        }
    }

    /// Timed-out SYNs, idle connections, responses whose end is not coming.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Outcome<A>>) {
        let timeout = self.timeout_ns;
        let mut gone = Vec::new();
        for (key, c) in &mut self.conns {
            let age = now_ns.saturating_sub(c.last_ns);
            if c.server_isn.is_none() && now_ns.saturating_sub(c.syn_ns) >= timeout {
                gone.push(*key);
                out.push(Outcome::TimedOut { key: *key });
            } else if age >= IDLE_NS {
                gone.push(*key);
            } else if c
                .response
                .as_ref()
                .is_some_and(|(_, _, ts)| now_ns.saturating_sub(*ts) >= RESPONSE_LOG_NS)
                && let Some(done) = finish_response(c, None)
            {
                out.push(Outcome::Logged(done));
            }
        }
        for key in gone {
            self.conns.remove(&key);
        }
    }
}

/// Ends the response being received. `end`: `Some(e)` when it ended, `e`
/// the sequence number just past it if known; `None` when unknown.
fn finish_response<A>(c: &mut Conn<A>, end: Option<Option<u32>>) -> Option<Request<A>> {
    let (mut req, first, _) = c.response.take()?;
    req.bytes = end.flatten().map(|e| span(first.wrapping_sub(1), Some(e)));
    Some(req)
}

fn close<A>(key: Key<A>, mut c: Conn<A>, server_isn: u32, out: &mut Vec<Outcome<A>>) {
    let server_end = c.server_end;
    if let Some(done) = finish_response(&mut c, Some(server_end)) {
        out.push(Outcome::Logged(done));
    }
    out.push(Outcome::Closed {
        key,
        to_server: span(c.client_isn, c.client_end),
        to_client: span(server_isn, c.server_end),
    });
}

#[cfg(test)]
#[path = "track_tests.rs"]
mod tests;
