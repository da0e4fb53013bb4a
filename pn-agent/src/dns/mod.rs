//! DNS for the zone `private-network.internal.`, served by every agent on its
//! gateway address, answering from the membership the agent follows.
//!
//! A client is identified by its source address: it gets answers only for the
//! network its container belongs to. Names of another network — existing or
//! not, well-formed or not — get REFUSED, so membership never leaks; unknown
//! names of its own network get NXDOMAIN; known names asked for another type
//! than A get NOERROR with no answer. Everything outside the zone is relayed
//! to the host's upstream resolvers, so containers keep resolving the world.
//!
//! hickory-proto does the wire format. The server loop is ours: hickory-server
//! answers from zones (catalogs and authorities), while every answer here
//! depends on who asks, and the forwarding is a plain relay of the query.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A, rdata::SOA},
};
use pn_common::{
    ids::NetworkId,
    names::{self, RecordQuery, ZoneName},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};

/// What the server needs to know of the membership.
pub trait Directory: Send + Sync + 'static {
    /// Network of the container that owns this address, if any.
    fn network_of(&self, client: Ipv4Addr) -> Option<NetworkId>;
    /// Appends the addresses a record query designates; false when none.
    fn resolve(&self, q: &RecordQuery, out: &mut Vec<Ipv4Addr>) -> bool;
}

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: SocketAddrV4,
    pub ttl: u32,
    /// Resolvers for names outside the zone, tried in order.
    pub upstreams: Vec<SocketAddr>,
}

/// Counters of query outcomes, exported as `pn_dns_queries_total{outcome}`.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub answered: AtomicU64,
    pub nodata: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failed: AtomicU64,
    pub malformed: AtomicU64,
    pub not_implemented: AtomicU64,
}

impl DnsStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("answered", l(&self.answered)),
            ("nodata", l(&self.nodata)),
            ("nxdomain", l(&self.nxdomain)),
            ("refused", l(&self.refused)),
            ("forwarded", l(&self.forwarded)),
            ("forward_failed", l(&self.forward_failed)),
            ("malformed", l(&self.malformed)),
            ("not_implemented", l(&self.not_implemented)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS server on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddrV4,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Largest UDP answer when the client did not say (RFC 1035), and the most
/// we offer with EDNS (the DNS flag day 2020 recommendation).
const PLAIN_UDP_MAX: usize = 512;
const EDNS_UDP_MAX: u16 = 1232;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; past it, SERVFAIL at once, so a
/// container flooding names of the world cannot pile up tasks and sockets.
const MAX_FORWARDS: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Rotation state is per name; forget it all past this many names.
const ROTATION_NAMES: usize = 65_536;

/// Reads `nameserver` lines of a resolv.conf, skipping our own address (a
/// host pointing at itself would loop) and IPv6 link-local scoped entries.
pub fn upstreams_from_resolv_conf(text: &str, own: Ipv4Addr) -> Vec<SocketAddr> {
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

/// What to do with one query.
enum Action {
    Reply(Vec<u8>),
    Forward,
    Drop,
}

struct Responder {
    dir: Arc<dyn Directory>,
    stats: Arc<DnsStats>,
    ttl: u32,
    recursion: bool,
    rotation: Mutex<HashMap<RecordQuery, u32>>,
    soa: Record,
}

impl Responder {
    fn new(cfg: &DnsConfig, dir: Arc<dyn Directory>, stats: Arc<DnsStats>) -> Responder {
        let zone = Name::from_ascii(format!("{}.", names::ZONE)).expect("valid zone name");
        let soa = SOA::new(
            Name::from_ascii(format!("ns.{}.", names::ZONE)).expect("valid name"),
            Name::from_ascii(format!("hostmaster.{}.", names::ZONE)).expect("valid name"),
            1,
            60,
            60,
            60,
            // Negative answers are cached for the TTL, like positive ones.
            cfg.ttl,
        );
        Responder {
            dir,
            stats,
            ttl: cfg.ttl,
            recursion: !cfg.upstreams.is_empty(),
            rotation: Mutex::new(HashMap::new()),
            soa: Record::from_rdata(zone, cfg.ttl, RData::SOA(soa)),
        }
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Next rotation offset for this name.
    fn rotate(&self, q: &RecordQuery) -> usize {
        let mut r = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= ROTATION_NAMES && !r.contains_key(q) {
            r.clear();
        }
        let n = r.entry(q.clone()).or_insert(0);
        let out = *n;
        *n = n.wrapping_add(1);
        out as usize
    }

    fn answer(&self, client: Ipv4Addr, raw: &[u8], udp: bool) -> Action {
        let req = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(_) => {
                self.count(&self.stats.malformed);
                // Answer FORMERR when there is at least a header to answer to.
                if raw.len() >= 12 && raw[2] & 0x80 == 0 {
                    let id = u16::from_be_bytes([raw[0], raw[1]]);
                    let op = OpCode::from_u8((raw[2] >> 3) & 0x0f);
                    let resp = Message::error_msg(id, op, ResponseCode::FormErr);
                    return resp.to_vec().map_or(Action::Drop, Action::Reply);
                }
                return Action::Drop;
            }
        };
        if req.metadata.message_type != MessageType::Query {
            // Never answer a response: that is how reflection loops start.
            self.count(&self.stats.malformed);
            return Action::Drop;
        }
        if req.metadata.op_code != OpCode::Query {
            self.count(&self.stats.not_implemented);
            return self.reply(&req, ResponseCode::NotImp, Vec::new(), false, udp);
        }
        let [query] = req.queries.as_slice() else {
            self.count(&self.stats.malformed);
            return self.reply(&req, ResponseCode::FormErr, Vec::new(), false, udp);
        };
        let zone_name = names::parse_labels(query.name().iter());
        if zone_name == ZoneName::Outside {
            if self.recursion {
                return Action::Forward;
            }
            self.count(&self.stats.refused);
            return self.reply(&req, ResponseCode::Refused, Vec::new(), false, udp);
        }
        let Some(own) = self.dir.network_of(client) else {
            // Not a container: the zone is not for it.
            self.count(&self.stats.refused);
            return self.reply(&req, ResponseCode::Refused, Vec::new(), false, udp);
        };
        let refuse = || {
            self.count(&self.stats.refused);
            self.reply(&req, ResponseCode::Refused, Vec::new(), false, udp)
        };
        let qtype = query.query_type();
        match zone_name {
            // Answered above without looking at membership; refusing is safe.
            ZoneName::Outside => refuse(),
            ZoneName::Apex => {
                let answers = if qtype == RecordType::SOA {
                    vec![self.soa.clone()]
                } else {
                    Vec::new()
                };
                self.count(if answers.is_empty() {
                    &self.stats.nodata
                } else {
                    &self.stats.answered
                });
                self.reply(&req, ResponseCode::NoError, answers, true, udp)
            }
            ZoneName::Network(net) if net != own => refuse(),
            ZoneName::Network(_) => {
                self.count(&self.stats.nodata);
                self.reply(&req, ResponseCode::NoError, Vec::new(), true, udp)
            }
            ZoneName::Invalid { network } if network != Some(own) => refuse(),
            ZoneName::Invalid { .. } => {
                self.count(&self.stats.nxdomain);
                self.reply(&req, ResponseCode::NXDomain, Vec::new(), true, udp)
            }
            ZoneName::Record(q) if q.network != own => refuse(),
            ZoneName::Record(q) => {
                let mut ips = Vec::new();
                if !self.dir.resolve(&q, &mut ips) || ips.is_empty() {
                    self.count(&self.stats.nxdomain);
                    return self.reply(&req, ResponseCode::NXDomain, Vec::new(), true, udp);
                }
                if qtype != RecordType::A {
                    self.count(&self.stats.nodata);
                    return self.reply(&req, ResponseCode::NoError, Vec::new(), true, udp);
                }
                ips.sort_unstable();
                let n = ips.len();
                ips.rotate_left(self.rotate(&q) % n);
                let name = query.name().clone();
                let answers = ips
                    .into_iter()
                    .map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip))))
                    .collect();
                self.count(&self.stats.answered);
                self.reply(&req, ResponseCode::NoError, answers, true, udp)
            }
        }
    }

    fn reply(
        &self,
        req: &Message,
        code: ResponseCode,
        answers: Vec<Record>,
        authoritative: bool,
        udp: bool,
    ) -> Action {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.response_code = code;
        resp.metadata.authoritative = authoritative;
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = self.recursion;
        resp.add_queries(req.queries.iter().cloned());
        let negative = authoritative && answers.is_empty();
        resp.add_answers(answers);
        if negative {
            resp.add_authority(self.soa.clone());
        }
        let limit = match &req.edns {
            Some(e) => {
                let mut edns = Edns::new();
                edns.set_max_payload(EDNS_UDP_MAX);
                resp.set_edns(edns);
                usize::from(e.max_payload().clamp(PLAIN_UDP_MAX as u16, EDNS_UDP_MAX))
            }
            None => PLAIN_UDP_MAX,
        };
        let Ok(bytes) = resp.to_vec() else {
            return Action::Drop;
        };
        if udp && bytes.len() > limit {
            // Too many addresses for a datagram: the client retries over TCP.
            return resp.truncate().to_vec().map_or(Action::Drop, Action::Reply);
        }
        Action::Reply(bytes)
    }
}

async fn forward_udp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .ok()?;
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        // Ignore stray datagrams until the answer to this id comes.
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if n >= 12 && &buf[..2] == id {
                    return Some(n);
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

async fn forward_tcp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let attempt = async {
            let mut s = TcpStream::connect(up).await.ok()?;
            s.write_all(&(query.len() as u16).to_be_bytes())
                .await
                .ok()?;
            s.write_all(query).await.ok()?;
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        if let Ok(Some(r)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(r);
        }
    }
    None
}

/// SERVFAIL for a query we could not forward.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
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

/// A running server; stops when dropped.
pub struct DnsHandle {
    tasks: Vec<JoinHandle<()>>,
    pub local_udp: SocketAddr,
    pub local_tcp: SocketAddr,
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn serve(
    cfg: DnsConfig,
    dir: Arc<dyn Directory>,
    stats: Arc<DnsStats>,
) -> Result<DnsHandle, DnsError> {
    let udp = UdpSocket::bind(cfg.listen)
        .await
        .map_err(|source| DnsError::Bind {
            addr: cfg.listen,
            proto: "udp",
            source,
        })?;
    let local_udp = udp.local_addr().map_err(|source| DnsError::Bind {
        addr: cfg.listen,
        proto: "udp",
        source,
    })?;
    // TCP on the same port as UDP (it matters when the caller asked for port 0).
    let tcp_addr = SocketAddrV4::new(*cfg.listen.ip(), local_udp.port());
    let tcp = TcpListener::bind(tcp_addr)
        .await
        .map_err(|source| DnsError::Bind {
            addr: tcp_addr,
            proto: "tcp",
            source,
        })?;
    let local_tcp = tcp.local_addr().map_err(|source| DnsError::Bind {
        addr: tcp_addr,
        proto: "tcp",
        source,
    })?;
    let upstreams: Arc<[SocketAddr]> = cfg.upstreams.clone().into();
    let forwards = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    let responder = Arc::new(Responder::new(&cfg, dir, stats));
    let udp = Arc::new(udp);
    let udp_task = {
        let responder = responder.clone();
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let SocketAddr::V4(from4) = from else {
                    continue;
                };
                match responder.answer(*from4.ip(), &buf[..n], true) {
                    Action::Reply(r) => {
                        let _ = udp.send_to(&r, from).await;
                    }
                    Action::Drop => {}
                    Action::Forward => {
                        let query = buf[..n].to_vec();
                        let Ok(permit) = forwards.clone().try_acquire_owned() else {
                            responder.count(&responder.stats.forward_failed);
                            if let Some(r) = servfail(&query) {
                                let _ = udp.send_to(&r, from).await;
                            }
                            continue;
                        };
                        let (udp, upstreams, responder) =
                            (udp.clone(), upstreams.clone(), responder.clone());
                        tokio::spawn(async move {
                            let _permit = permit;
                            let reply = match forward_udp(&upstreams, &query).await {
                                Some(r) => {
                                    responder.count(&responder.stats.forwarded);
                                    Some(r)
                                }
                                None => {
                                    responder.count(&responder.stats.forward_failed);
                                    servfail(&query)
                                }
                            };
                            if let Some(r) = reply {
                                let _ = udp.send_to(&r, from).await;
                            }
                        });
                    }
                }
            }
        })
    };
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = tcp.accept().await else {
                continue;
            };
            let SocketAddr::V4(from4) = from else {
                continue;
            };
            let (responder, upstreams) = (responder.clone(), upstreams.clone());
            tokio::spawn(async move {
                let _ = serve_tcp(stream, *from4.ip(), &responder, &upstreams).await;
            });
        }
    });
    Ok(DnsHandle {
        tasks: vec![udp_task, tcp_task],
        local_udp,
        local_tcp,
    })
}

async fn serve_tcp(
    mut s: TcpStream,
    client: Ipv4Addr,
    responder: &Responder,
    upstreams: &[SocketAddr],
) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return Ok(());
        };
        let len = len?;
        let mut msg = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut msg))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let reply = match responder.answer(client, &msg, false) {
            Action::Reply(r) => Some(r),
            Action::Drop => return Ok(()),
            Action::Forward => match forward_tcp(upstreams, &msg).await {
                Some(r) => {
                    responder.count(&responder.stats.forwarded);
                    Some(r)
                }
                None => {
                    responder.count(&responder.stats.forward_failed);
                    servfail(&msg)
                }
            },
        };
        if let Some(r) = reply {
            s.write_all(&(r.len() as u16).to_be_bytes()).await?;
            s.write_all(&r).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hickory_proto::op::Query;
    use pn_common::{
        ids::{AppId, Uuid},
        names::Selector,
    };

    use super::*;

    /// Clients 127.0.0.1 and .2 are in network A, .3 in network B, .9 in none.
    struct Fixed {
        clients: BTreeMap<Ipv4Addr, NetworkId>,
        records: Vec<(RecordQuery, Ipv4Addr)>,
    }

    impl Directory for Fixed {
        fn network_of(&self, client: Ipv4Addr) -> Option<NetworkId> {
            self.clients.get(&client).copied()
        }
        fn resolve(&self, q: &RecordQuery, out: &mut Vec<Ipv4Addr>) -> bool {
            let before = out.len();
            for (r, ip) in &self.records {
                let matches = r.network == q.network
                    && r.app == q.app
                    && match (&q.selector, &r.selector) {
                        (Selector::Web, Selector::Container(t, _)) => t.as_str() == "web",
                        (Selector::Type(t), Selector::Container(rt, _)) => t == rt,
                        (a, b) => a == b,
                    };
                if matches {
                    out.push(*ip);
                }
            }
            out.len() > before
        }
    }

    fn net(n: u8) -> NetworkId {
        NetworkId(Uuid::from_random_bytes([n; 16]))
    }
    fn app(n: u8) -> AppId {
        AppId(Uuid::from_random_bytes([n; 16]))
    }

    fn directory(webs: u8) -> Fixed {
        let mut records = Vec::new();
        let c = |t: &str, i| Selector::Container(t.parse().unwrap(), i);
        for i in 1..=webs {
            records.push((
                RecordQuery {
                    network: net(1),
                    app: app(1),
                    selector: c("web", u32::from(i)),
                },
                Ipv4Addr::new(10, 240, 0, i),
            ));
        }
        records.push((
            RecordQuery {
                network: net(1),
                app: app(1),
                selector: c("worker", 1),
            },
            Ipv4Addr::new(10, 240, 1, 1),
        ));
        records.push((
            RecordQuery {
                network: net(2),
                app: app(2),
                selector: c("web", 1),
            },
            Ipv4Addr::new(10, 240, 4, 1),
        ));
        Fixed {
            clients: [
                (Ipv4Addr::new(127, 0, 0, 1), net(1)),
                (Ipv4Addr::new(127, 0, 0, 2), net(1)),
                (Ipv4Addr::new(127, 0, 0, 3), net(2)),
            ]
            .into(),
            records,
        }
    }

    async fn start(webs: u8, upstreams: Vec<SocketAddr>) -> (DnsHandle, Arc<DnsStats>) {
        let stats = Arc::new(DnsStats::default());
        let cfg = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ttl: 5,
            upstreams,
        };
        let h = serve(cfg, Arc::new(directory(webs)), stats.clone())
            .await
            .unwrap();
        (h, stats)
    }

    fn query_bytes(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    async fn udp_raw(server: SocketAddr, from: Ipv4Addr, bytes: &[u8]) -> Option<Vec<u8>> {
        udp_wait(server, from, bytes, Duration::from_millis(500)).await
    }

    async fn udp_wait(
        server: SocketAddr,
        from: Ipv4Addr,
        bytes: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        let s = UdpSocket::bind((from, 0)).await.unwrap();
        s.send_to(bytes, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        match tokio::time::timeout(wait, s.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    async fn ask(server: SocketAddr, from: Ipv4Addr, name: &str, t: RecordType) -> Message {
        let r = udp_raw(server, from, &query_bytes(name, t, true))
            .await
            .expect("an answer");
        Message::from_vec(&r).unwrap()
    }

    fn ips(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    const C1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    const C3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

    #[tokio::test]
    async fn every_name_form_answers_with_the_ttl() {
        let (h, stats) = start(2, vec![]).await;
        let s = h.local_udp;
        let app_name = names::app_name(&net(1), &app(1));
        let m = ask(s, C1, &app_name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        let mut got = ips(&m);
        got.sort();
        assert_eq!(
            got,
            [Ipv4Addr::new(10, 240, 0, 1), Ipv4Addr::new(10, 240, 0, 2)]
        );
        assert!(m.answers.iter().all(|r| r.ttl == 5));
        let web = "web".parse().unwrap();
        let worker = "worker".parse().unwrap();
        assert_eq!(
            ips(&ask(
                s,
                C1,
                &names::type_name(&net(1), &app(1), &web),
                RecordType::A
            )
            .await)
            .len(),
            2
        );
        assert_eq!(
            ips(&ask(
                s,
                C1,
                &names::container_name(&net(1), &app(1), &web, 2),
                RecordType::A
            )
            .await),
            [Ipv4Addr::new(10, 240, 0, 2)]
        );
        assert_eq!(
            ips(&ask(
                s,
                C1,
                &names::container_name(&net(1), &app(1), &worker, 1).to_uppercase(),
                RecordType::A
            )
            .await),
            [Ipv4Addr::new(10, 240, 1, 1)]
        );
        assert_eq!(stats.answered.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn order_rotates_from_query_to_query() {
        let (h, _) = start(3, vec![]).await;
        let name = names::app_name(&net(1), &app(1));
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let m = ask(h.local_udp, C1, &name, RecordType::A).await;
            assert_eq!(ips(&m).len(), 3);
            firsts.push(ips(&m)[0]);
        }
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "each address comes first once");
    }

    #[tokio::test]
    async fn membership_does_not_leak() {
        let (h, stats) = start(1, vec![]).await;
        let s = h.local_udp;
        let theirs = names::app_name(&net(2), &app(2));
        let unknown_net = names::app_name(&net(7), &app(7));
        let bad_in_theirs = format!("0.web.{}.{}.{}.", app(2), net(2), names::ZONE);
        for name in [
            &theirs,
            &unknown_net,
            &bad_in_theirs,
            &format!("{}.{}.", net(2), names::ZONE),
        ] {
            let m = ask(s, C1, name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(m.answers.is_empty());
        }
        // The other network's member gets its own names.
        assert_eq!(
            ips(&ask(s, C3, &theirs, RecordType::A).await),
            [Ipv4Addr::new(10, 240, 4, 1)]
        );
        // A client that is no container gets nothing of the zone.
        let m = ask(
            s,
            STRANGER,
            &names::app_name(&net(1), &app(1)),
            RecordType::A,
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn unknown_names_of_ones_own_network_are_nxdomain() {
        let (h, stats) = start(1, vec![]).await;
        let s = h.local_udp;
        let worker = "worker".parse().unwrap();
        for name in [
            names::app_name(&net(1), &app(9)),
            names::type_name(&net(1), &app(1), &"db".parse().unwrap()),
            names::container_name(&net(1), &app(1), &worker, 2),
            format!("0.web.{}.{}.{}.", app(1), net(1), names::ZONE),
            format!("nonsense.x.{}.{}.{}.", app(1), net(1), names::ZONE),
        ] {
            let m = ask(s, C1, &name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert_eq!(m.authorities.len(), 1, "SOA for negative caching");
        }
        assert_eq!(stats.nxdomain.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn other_types_of_known_names_are_empty_answers() {
        let (h, stats) = start(1, vec![]).await;
        let name = names::app_name(&net(1), &app(1));
        for t in [
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::SRV,
        ] {
            let m = ask(h.local_udp, C1, &name, t).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
            assert!(m.answers.is_empty());
        }
        assert_eq!(stats.nodata.load(Ordering::Relaxed), 4);
    }

    /// A tiny upstream that answers every A query with 192.0.2.7.
    async fn fake_upstream() -> (SocketAddr, JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let t = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    continue;
                };
                let req = Message::from_vec(&buf[..n]).unwrap();
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.add_queries(req.queries.clone());
                resp.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
                let _ = s.send_to(&resp.to_vec().unwrap(), from).await;
            }
        });
        (addr, t)
    }

    #[tokio::test]
    async fn the_world_is_forwarded_upstream() {
        let (up, _t) = fake_upstream().await;
        let (h, stats) = start(1, vec![up]).await;
        let m = ask(h.local_udp, C1, "example.com.", RecordType::A).await;
        assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(stats.forwarded.load(Ordering::Relaxed), 1);
        // Upstream down: SERVFAIL, counted.
        let dead: SocketAddr = {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.local_addr().unwrap()
        };
        let (h2, stats2) = start(1, vec![dead]).await;
        let wait = UPSTREAM_TIMEOUT + Duration::from_secs(1);
        let q = query_bytes("example.com.", RecordType::A, false);
        let r = udp_wait(h2.local_udp, C1, &q, wait)
            .await
            .expect("SERVFAIL once the upstream timed out");
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
        assert_eq!(stats2.forward_failed.load(Ordering::Relaxed), 1);
        // No upstream at all: names outside the zone are refused.
        let (h3, stats3) = start(1, vec![]).await;
        let m = ask(h3.local_udp, C1, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert_eq!(stats3.refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn garbage_never_stops_the_server() {
        let (h, stats) = start(1, vec![]).await;
        let s = h.local_udp;
        assert_eq!(
            udp_raw(s, C1, b"\x01\x02\x03").await,
            None,
            "no header, no answer"
        );
        // A header announcing one question that is not there: FORMERR.
        let mut truncated = query_bytes("example.com.", RecordType::A, false);
        truncated.truncate(14);
        let r = Message::from_vec(&udp_raw(s, C1, &truncated).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // Zero questions: FORMERR.
        let empty = Message::query().to_vec().unwrap();
        let r = Message::from_vec(&udp_raw(s, C1, &empty).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered (no reflection loops).
        let mut resp = Message::response(7, OpCode::Query);
        resp.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        assert_eq!(udp_raw(s, C1, &resp.to_vec().unwrap()).await, None);
        // Another opcode: NOTIMP.
        let mut notify = Message::new(9, MessageType::Query, OpCode::Notify);
        notify.add_query(Query::query(
            Name::from_ascii("x.").unwrap(),
            RecordType::SOA,
        ));
        let r =
            Message::from_vec(&udp_raw(s, C1, &notify.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        let flood = UdpSocket::bind((C1, 0)).await.unwrap();
        for seed in 0..2000u32 {
            let junk: Vec<u8> = (0..(seed % 60))
                .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7)) as u8)
                .collect();
            flood.send_to(&junk, s).await.unwrap();
        }
        assert!(stats.malformed.load(Ordering::Relaxed) >= 4);
        // Still answering.
        let m = ask(s, C1, &names::app_name(&net(1), &app(1)), RecordType::A).await;
        assert_eq!(ips(&m).len(), 1);
    }

    #[tokio::test]
    async fn big_answers_truncate_over_udp_and_come_whole_over_tcp() {
        let (h, _) = start(120, vec![]).await;
        let name = names::app_name(&net(1), &app(1));
        let r = udp_raw(h.local_udp, C1, &query_bytes(&name, RecordType::A, false))
            .await
            .unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty());
        let mut tcp = TcpStream::connect(h.local_tcp).await.unwrap();
        let q = query_bytes(&name, RecordType::A, false);
        tcp.write_all(&(q.len() as u16).to_be_bytes())
            .await
            .unwrap();
        tcp.write_all(&q).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(ips(&Message::from_vec(&buf).unwrap()).len(), 120);
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
