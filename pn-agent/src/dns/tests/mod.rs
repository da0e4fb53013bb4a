//! The server over loopback: every answer of the zone, forwarding, garbage.
//! Clients are loopback addresses (127.0.0.x), so one test plays several
//! containers; `abuse` plays hostile ones.

mod aaaa;
mod abuse;
mod cache;
mod v6;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use pn_common::names::{self, RecordQuery, Selector};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    task::JoinHandle,
};

use super::{
    Directory, DnsConfig, DnsHandle, DnsStats, Limits, Member, UPSTREAM_TIMEOUT, serve, serve_with,
};
use crate::testing::model::{app_id as app, net_id as net};

/// Clients 127.0.0.1 and .2 are in network A, .3 in network B, .4 in the
/// sealed network C, .9 in none. Every `web` container has an IPv6 address
/// too (`fd00:N::I`), the worker none.
struct Fixed {
    clients: BTreeMap<Ipv4Addr, Member>,
    /// Clients' IPv6 addresses (none unless a test says).
    clients6: BTreeMap<Ipv6Addr, Ipv4Addr>,
    records: Vec<(RecordQuery, IpAddr)>,
}

impl Directory for Fixed {
    fn member(&self, client: Ipv4Addr) -> Option<Member> {
        self.clients.get(&client).copied()
    }
    fn by_ip6(&self, client: Ipv6Addr) -> Option<Ipv4Addr> {
        self.clients6.get(&client).copied()
    }
    fn resolve(&self, q: &RecordQuery, out: &mut Vec<IpAddr>) -> bool {
        let before = out.len();
        for (r, ip) in &self.records {
            let matches = r.network == q.network
                && r.app == q.app
                && match &r.selector {
                    Selector::Container(t, i) => q.selector.matches(t, *i),
                    other => *other == q.selector,
                };
            if matches {
                out.push(*ip);
            }
        }
        out.len() > before
    }
}

fn directory(webs: u8) -> Fixed {
    let mut records = Vec::new();
    let c = |t: &str, i| Selector::Container(t.parse().unwrap(), i);
    for i in 1..=webs {
        let q = RecordQuery {
            network: net(1),
            app: app(1),
            selector: c("web", u32::from(i)),
        };
        records.push((q.clone(), Ipv4Addr::new(10, 240, 0, i).into()));
        records.push((q, Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i.into()).into()));
    }
    records.push((
        RecordQuery {
            network: net(1),
            app: app(1),
            selector: c("worker", 1),
        },
        Ipv4Addr::new(10, 240, 1, 1).into(),
    ));
    for n in [2, 3] {
        let q = RecordQuery {
            network: net(n),
            app: app(n),
            selector: c("web", 1),
        };
        records.push((q.clone(), Ipv4Addr::new(10, 240, 4 * (n - 1), 1).into()));
        records.push((q, Ipv6Addr::new(0xfd00, n.into(), 0, 0, 0, 0, 0, 1).into()));
    }
    let member = |n, sealed| Member {
        network: net(n),
        sealed,
    };
    Fixed {
        clients: [
            (Ipv4Addr::new(127, 0, 0, 1), member(1, false)),
            (Ipv4Addr::new(127, 0, 0, 2), member(1, false)),
            (Ipv4Addr::new(127, 0, 0, 3), member(2, false)),
            (SEALED, member(3, true)),
        ]
        .into(),
        clients6: BTreeMap::new(),
        records,
    }
}

/// The server as the agent starts it: default limits, fitted to the
/// process's descriptors.
async fn start(webs: u8, upstreams: Vec<SocketAddr>) -> (DnsHandle, Arc<DnsStats>) {
    let stats = Arc::new(DnsStats::default());
    let cfg = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway6: None,
        ttl: 5,
        upstreams,
    };
    let h = serve(cfg, Arc::new(directory(webs)), stats.clone())
        .await
        .unwrap();
    (h, stats)
}

async fn start_with(
    webs: u8,
    upstreams: Vec<SocketAddr>,
    limits: Limits,
) -> (DnsHandle, Arc<DnsStats>) {
    let stats = Arc::new(DnsStats::default());
    let cfg = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway6: None,
        ttl: 5,
        upstreams,
    };
    let h = serve_with(cfg, limits, Arc::new(directory(webs)), stats.clone())
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
const SEALED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
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
    // A client that is no container gets nothing at all.
    let q = query_bytes(&names::app_name(&net(1), &app(1)), RecordType::A, true);
    assert_eq!(udp_raw(s, STRANGER, &q).await, None);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 4);
    assert_eq!(stats.not_member.load(Ordering::Relaxed), 1);
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
    // The worker has no IPv6 address: its name exists, without AAAA.
    let worker = names::container_name(&net(1), &app(1), &"worker".parse().unwrap(), 1);
    for (name, t) in [
        (&worker, RecordType::AAAA),
        (&name, RecordType::TXT),
        (&name, RecordType::MX),
        (&name, RecordType::SRV),
    ] {
        let m = ask(h.local_udp, C1, name, t).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty());
    }
    assert_eq!(stats.nodata.load(Ordering::Relaxed), 4);
}

/// A tiny upstream that answers every A query with 192.0.2.7, except names
/// starting with `slow`, which it never answers (so forwards of them hold
/// their slot until the upstream timeout).
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
            let name = req.queries[0].name().clone();
            if name.to_ascii().starts_with("slow") {
                continue;
            }
            let mut resp = Message::response(req.metadata.id, OpCode::Query);
            resp.add_queries(req.queries.clone());
            resp.add_answer(Record::from_rdata(
                name,
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
    // The flood below is far past one client's query rate; that bound is
    // `abuse`'s business.
    let limits = Limits {
        query_burst: 100_000,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
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
    let r = Message::from_vec(&udp_raw(s, C1, &notify.to_vec().unwrap()).await.unwrap()).unwrap();
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

/// Found by the fuzz target: a request of many questions was refused with
/// all of them echoed, past the client's datagram size.
#[tokio::test]
async fn a_formerr_to_many_questions_fits_a_datagram() {
    let (h, stats) = start(1, vec![]).await;
    let mut m = Message::query();
    for i in 0..20 {
        let name = format!("{}.q{i}.example.", "x".repeat(60));
        m.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
    }
    let q = m.to_vec().unwrap();
    assert!(q.len() > 512);
    let r = udp_raw(h.local_udp, C1, &q).await.expect("FORMERR");
    assert!(r.len() <= 512, "{} bytes", r.len());
    let r = Message::from_vec(&r).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(r.metadata.truncation);
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 1);
}

/// The UDP loop takes what is waiting by the batch: garbage in the middle
/// of one (too short, a response, too long) is counted and dropped, and
/// every query around it, of the zone or of the world, is answered.
#[tokio::test]
async fn garbage_amid_a_batch_of_queries_spoils_none_of_them() {
    let (up, _count, _t) = cache::counting_upstream(Duration::ZERO, 1).await;
    let (h, stats) = start(1, vec![up]).await;
    let zone = names::app_name(&net(1), &app(1));
    let good: Vec<Vec<u8>> = (0..6u16)
        .map(|i| {
            let name = match i % 2 {
                0 => zone.clone(),
                _ => format!("w{i}.example.com."),
            };
            let mut m = Message::from_vec(&query_bytes(&name, RecordType::A, false)).unwrap();
            m.metadata.id = 100 + i;
            m.to_vec().unwrap()
        })
        .collect();
    let mut resp = Message::response(7, OpCode::Query);
    resp.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    let resp = resp.to_vec().unwrap();
    let long = vec![0u8; 5000];
    let burst: [&[u8]; 9] = [
        &good[0],
        b"\x01\x02\x03",
        &good[1],
        &resp,
        &good[2],
        &long,
        &good[3],
        &good[4],
        &good[5],
    ];
    // Sent without yielding: the server, on this test's one thread, finds
    // them all waiting.
    let client = std::net::UdpSocket::bind((C1, 0)).unwrap();
    for d in burst {
        client.send_to(d, h.local_udp).unwrap();
    }
    client.set_nonblocking(true).unwrap();
    let client = UdpSocket::from_std(client).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut ids = Vec::new();
    while ids.len() < good.len() {
        let n = tokio::time::timeout(Duration::from_secs(3), client.recv(&mut buf))
            .await
            .expect("an answer to every good query")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ips(&m).len(), 1, "{m:?}");
        ids.push(m.metadata.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (100..106).collect::<Vec<u16>>());
    let more = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await;
    assert!(more.is_err(), "nothing for the garbage");
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 3);
}
