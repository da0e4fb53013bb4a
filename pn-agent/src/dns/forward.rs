//! Names outside the zone: answered from the cache of forwarded answers,
//! or relayed to the host's resolvers (one query for all the clients asking
//! the same question at once) over the transport the client used; the
//! answer cut to what the client can take over UDP.

use std::{
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::op::{Edns, Message, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    cache::{self, Cache, Entry, Question, same_question},
    coalesce::{Flights, Joined, Landed},
    limits::Limits,
    stats::{DnsStats, bump},
    upstream::Upstream,
    zone::EDNS_UDP_MAX,
};

/// How long one upstream has to answer before the next one is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads `nameserver` lines of a resolv.conf, skipping our own address (a
/// host pointing at itself would loop) and IPv6 link-local scoped entries.
pub fn upstreams_from_resolv_conf(text: &str, own: std::net::Ipv4Addr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != std::net::IpAddr::V4(own))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The transport the client asked on.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// UDP, whose answer must fit in this many bytes.
    Udp(usize),
    Tcp,
}

/// Where names of the world are answered from: the cache, the questions in
/// flight, the upstreams.
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    cache: Cache,
    flights: Arc<Flights>,
    stats: Arc<DnsStats>,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, limits: &Limits, stats: Arc<DnsStats>) -> Forwarder {
        Forwarder {
            upstreams: upstreams
                .into_iter()
                .map(|a| Upstream::new(a, upstream_id))
                .collect(),
            cache: Cache::new(limits.cache.clone(), stats.cache.clone()),
            flights: Flights::new(limits.followers_per_flight),
            stats,
        }
    }

    /// The answer to a name of the world from the cache, cut to the
    /// client's size; None when it is not there (or no longer). Counted as
    /// a hit.
    pub fn cached(&self, q: &Question, query: &[u8], via: Via) -> Option<Vec<u8>> {
        let now = Instant::now();
        let answer = self.cache.get(&q.key, now)?.reply(q, query, now)?;
        bump(&self.stats.cache.hits);
        bump(&self.stats.cached);
        fit(&self.stats, query, answer, via)
    }

    /// The answer to a name of the world (the zone sent it here): from the
    /// cache, from the same question already in flight, or from upstream;
    /// SERVFAIL when none came. Counted.
    pub async fn resolve(&self, query: &[u8], via: Via) -> Option<Vec<u8>> {
        let Some(q) = cache::question(query) else {
            // Not a plain query (a client subnet, an unknown EDNS version):
            // relayed as it is, never shared.
            return self.relay(query, via).await;
        };
        if let Some(r) = self.cached(&q, query, via) {
            return Some(r);
        }
        bump(&self.stats.cache.misses);
        let got = match self.flights.join(&q.key, matches!(via, Via::Tcp)) {
            Joined::Follow(f) => {
                bump(&self.stats.cache.coalesced);
                match f.wait().await {
                    Landed::Answer(e) => e.reply(&q, query, Instant::now()),
                    Landed::Failed => None,
                }
            }
            Joined::Lead(lead) => {
                let got = self.exchange(query, via).await;
                let entry = got.as_deref().and_then(|a| {
                    Entry::from_answer(&q.key, a, Instant::now(), self.cache.limits())
                });
                match entry {
                    Some(e) => {
                        let e = Arc::new(e);
                        self.cache.insert(q.key.clone(), e.clone());
                        lead.land(Landed::Answer(e));
                    }
                    None => lead.land(Landed::Failed),
                }
                got
            }
            Joined::Alone => self.exchange(query, via).await,
        };
        answered(&self.stats, query, got, via)
    }

    /// Relays `query` upstream; what to send the client back (the answer,
    /// or SERVFAIL when no upstream answered), counted.
    pub async fn relay(&self, query: &[u8], via: Via) -> Option<Vec<u8>> {
        let got = self.exchange(query, via).await;
        answered(&self.stats, query, got, via)
    }

    /// One exchange with the upstreams, tried in order, under a fresh id;
    /// the answer (to the same question, or it is ignored) with the
    /// client's id back.
    async fn exchange(&self, query: &[u8], via: Via) -> Option<Vec<u8>> {
        match via {
            Via::Udp(_) => {
                for up in &self.upstreams {
                    if let Some(a) = up.ask(query, UPSTREAM_TIMEOUT).await {
                        return Some(a);
                    }
                }
                None
            }
            Via::Tcp => {
                let mut sent = query.to_vec();
                sent.get_mut(..2)?
                    .copy_from_slice(&upstream_id().to_be_bytes());
                for up in &self.upstreams {
                    if let Some(mut answer) = forward_tcp(up.addr(), &sent).await {
                        answer[..2].copy_from_slice(&query[..2]);
                        return Some(answer);
                    }
                }
                None
            }
        }
    }
}

/// What the client gets for an upstream's answer, or for none.
fn answered(stats: &DnsStats, query: &[u8], got: Option<Vec<u8>>, via: Via) -> Option<Vec<u8>> {
    let Some(answer) = got else {
        bump(&stats.forward_failed);
        return servfail(query);
    };
    bump(&stats.forwarded);
    fit(stats, query, answer, via)
}

/// The answer cut to what the client can take over UDP.
fn fit(stats: &DnsStats, query: &[u8], answer: Vec<u8>, via: Via) -> Option<Vec<u8>> {
    match via {
        Via::Udp(limit) if answer.len() > limit => {
            bump(&stats.limited.truncated);
            truncated(query, &answer)
        }
        _ => Some(answer),
    }
}

/// A fresh id for a query sent upstream. The client's own is not used:
/// answers are shared with other clients now, and a client choosing the id
/// would leave an accomplice off-path only the source port to guess.
fn upstream_id() -> u16 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    // SipHash keyed at random, over a counter: unpredictable, never the same
    // twice in a row.
    KEYS.get_or_init(RandomState::new)
        .hash_one(N.fetch_add(1, Ordering::Relaxed)) as u16
}

/// Whether `answer` answers `sent`: its id, a response, its question.
fn answers(sent: &[u8], answer: &[u8]) -> bool {
    answer.len() >= 12
        && answer[..2] == sent[..2]
        && answer[2] & 0x80 != 0
        && same_question(sent, answer)
}

/// An upstream answer too long for the client's datagram, reduced to its
/// header and question with TC set, so the client asks again over TCP (RFC
/// 1035 4.2.1, RFC 7766): never more than the client said it can take.
pub fn truncated(query: &[u8], answer: &[u8]) -> Option<Vec<u8>> {
    let mut resp = match Message::from_vec(answer) {
        Ok(m) => m.truncate(),
        // An answer we cannot read: tell the client the same from its query.
        Err(_) => {
            let req = Message::from_vec(query).ok()?;
            let mut m = Message::response(req.metadata.id, req.metadata.op_code);
            m.metadata.recursion_desired = req.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.metadata.truncation = true;
            m.add_queries(req.queries);
            if req.edns.is_some() {
                m.set_edns(Edns::new());
            }
            m
        }
    };
    if let Some(e) = resp.edns.as_mut() {
        e.set_max_payload(EDNS_UDP_MAX);
    }
    resp.to_vec().ok()
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(query.len()).ok()?;
    let attempt = async {
        let mut s = TcpStream::connect(up).await.ok()?;
        s.write_all(&len.to_be_bytes()).await.ok()?;
        s.write_all(query).await.ok()?;
        let len = s.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.ok()?;
        answers(query, &buf).then_some(buf)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await.ok()?
}

/// SERVFAIL for a query we could not, or would not, forward.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut resp = Message::error_msg(
        req.metadata.id,
        req.metadata.op_code,
        ResponseCode::ServFail,
    );
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries);
    resp.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    use tokio::net::UdpSocket;

    use super::*;

    fn query(edns: Option<u16>) -> Message {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii("big.example.").unwrap(),
            RecordType::A,
        ));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    /// An upstream answer with `n` A records (16 bytes each, compressed).
    fn answer_to(q: &Message, n: u8) -> Vec<u8> {
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.add_queries(q.queries.clone());
        for i in 0..n {
            m.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
            ));
        }
        if let Some(e) = &q.edns {
            m.set_edns(e.clone());
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_long_answer_is_cut_to_the_header_and_question_with_tc() {
        let q = query(None);
        let big = answer_to(&q, 60);
        assert!(big.len() > 512);
        let cut = truncated(&q.to_vec().unwrap(), &big).unwrap();
        assert!(cut.len() <= 512);
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries, q.queries);
    }

    #[test]
    fn an_unreadable_long_answer_still_becomes_tc_for_the_client() {
        let q = query(Some(4096));
        let cut = truncated(&q.to_vec().unwrap(), &[0xff; 3000]).unwrap();
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.max_payload(), EDNS_UDP_MAX);
        // Nor does a query we cannot read get anything.
        assert_eq!(truncated(&[1, 2, 3], &[0xff; 3000]), None);
    }

    #[tokio::test]
    async fn relayed_answers_fit_the_clients_size() {
        // An upstream answering 60 records (about 1 kB) to anything.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = up.local_addr().unwrap();
        let t = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let _ = up.send_to(&answer_to(&q, 60), from).await;
            }
        });
        let stats = Arc::new(DnsStats::default());
        let fwd = Forwarder::new(vec![addr], &Limits::default(), stats.clone());
        for (edns, limit, whole) in [
            (None, 512, false),
            (Some(512), 512, false),
            (Some(4096), 1232, true),
        ] {
            let q = query(edns).to_vec().unwrap();
            let r = fwd.relay(&q, Via::Udp(limit)).await.unwrap();
            assert!(r.len() <= limit, "{edns:?}: {} bytes", r.len());
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(m.answers.len() == 60, whole, "{edns:?}");
            assert_eq!(m.metadata.truncation, !whole, "{edns:?}");
        }
        assert_eq!(
            stats
                .limited
                .truncated
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            stats.forwarded.load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        t.abort();
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text = "# comment\nnameserver 10.0.0.2\nnameserver 169.254.1.1\nsearch example\nnameserver ::1\nnameserver bogus\n";
        let ups = upstreams_from_resolv_conf(text, Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(
            ups,
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
