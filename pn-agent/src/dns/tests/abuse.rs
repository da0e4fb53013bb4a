//! Hostile clients over loopback: strangers, piles of TCP connections,
//! silent and slow connections, floods of forwarded names and of queries.
//! Each bound is tightened so a few sockets hit it.

use std::time::Instant;

use tokio::net::TcpSocket;

use super::*;

const C2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn limited(stats: &DnsStats) -> Vec<(&'static str, u64)> {
    stats
        .limits_snapshot()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn tcp_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind((from, 0).into()).unwrap();
    s.connect(server).await.unwrap()
}

/// One query over an open connection; None when the server closed it.
async fn tcp_ask(s: &mut TcpStream, q: &[u8]) -> Option<Message> {
    let exchange = async {
        s.write_all(&(q.len() as u16).to_be_bytes()).await.ok()?;
        s.write_all(q).await.ok()?;
        let len = s.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .expect("an answer or a close, not silence")
}

/// Whether the server has closed the connection (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn own_name() -> String {
    names::app_name(&net(1), &app(1))
}

#[tokio::test]
async fn strangers_get_nothing_not_even_the_world() {
    let (up, _t) = fake_upstream().await;
    let (h, stats) = start(1, vec![up]).await;
    let world = query_bytes("example.com.", RecordType::A, true);
    assert_eq!(udp_raw(h.local_udp, STRANGER, &world).await, None);
    let zone = query_bytes(&own_name(), RecordType::A, false);
    assert_eq!(udp_raw(h.local_udp, STRANGER, &zone).await, None);
    // Not even FORMERR for garbage.
    assert_eq!(udp_raw(h.local_udp, STRANGER, &[0u8; 20]).await, None);
    // Over TCP: closed with nothing read.
    let mut s = tcp_from(STRANGER, h.local_tcp).await;
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    assert_eq!(stats.not_member.load(Ordering::Relaxed), 4);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 0);
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 0);
    // A member still gets the world.
    assert_eq!(
        ips(&ask(h.local_udp, C1, "example.com.", RecordType::A).await),
        [Ipv4Addr::new(192, 0, 2, 7)]
    );
}

#[tokio::test]
async fn tcp_connections_are_bounded_per_client_and_in_all() {
    let limits = Limits {
        tcp_per_client: 2,
        tcp_total: 4,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
    let q = query_bytes(&own_name(), RecordType::A, false);
    let mut c1 = Vec::new();
    for _ in 0..3 {
        let mut s = tcp_from(C1, h.local_tcp).await;
        let answered = tcp_ask(&mut s, &q).await.is_some();
        c1.push((s, answered));
    }
    let answered: Vec<bool> = c1.iter().map(|(_, a)| *a).collect();
    assert_eq!(answered, [true, true, false], "C1's third is closed");
    // Other clients have their own share…
    let mut others = Vec::new();
    for c in [C2, C3] {
        let mut s = tcp_from(c, h.local_tcp).await;
        assert!(tcp_ask(&mut s, &q).await.is_some());
        others.push(s);
    }
    // …until the total is reached.
    let mut s = tcp_from(C3, h.local_tcp).await;
    assert!(tcp_ask(&mut s, &q).await.is_none());
    assert_eq!(stats.tcp_open(), 4);
    assert_eq!(limited(&stats), [("tcp_client", 1), ("tcp_global", 1)]);
    // Connections closed give their places back.
    c1.clear();
    assert!(
        crate_eventually(|| stats.tcp_open() == 2).await,
        "{}",
        stats.tcp_open()
    );
    let mut again = tcp_from(C1, h.local_tcp).await;
    assert!(tcp_ask(&mut again, &q).await.is_some());
}

async fn crate_eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn a_pile_of_connections_from_one_client_keeps_its_bound() {
    let (h, stats) = start(1, vec![]).await;
    let mut pile = Vec::new();
    for _ in 0..100 {
        pile.push(tcp_from(C1, h.local_tcp).await);
    }
    let per_client = Limits::default().tcp_per_client as u64;
    assert!(
        crate_eventually(|| stats.limited.tcp_client.load(Ordering::Relaxed) == 100 - per_client)
            .await
    );
    assert_eq!(stats.tcp_open(), per_client);
    // Another client resolves over TCP meanwhile.
    let mut s = tcp_from(C3, h.local_tcp).await;
    let q = query_bytes(&names::app_name(&net(2), &app(2)), RecordType::A, false);
    assert_eq!(ips(&tcp_ask(&mut s, &q).await.unwrap()).len(), 1);
}

#[tokio::test]
async fn silent_half_sent_and_unread_connections_are_closed() {
    let limits = Limits {
        tcp_idle: Duration::from_millis(200),
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
    // Silent from the start.
    let mut s = tcp_from(C1, h.local_tcp).await;
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    // Half a query, then nothing (slowloris).
    let mut s = tcp_from(C1, h.local_tcp).await;
    s.write_all(&[0, 40, 0x12, 0x34]).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    // Silent after an answer.
    let mut s = tcp_from(C1, h.local_tcp).await;
    let q = query_bytes(&own_name(), RecordType::A, false);
    assert!(tcp_ask(&mut s, &q).await.is_some());
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    assert_eq!(limited(&stats), [("tcp_idle", 3)]);
}

#[tokio::test]
async fn a_connection_ends_after_its_queries_or_its_lifetime() {
    let limits = Limits {
        tcp_queries: 3,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
    let q = query_bytes(&own_name(), RecordType::A, false);
    let mut s = tcp_from(C1, h.local_tcp).await;
    for _ in 0..3 {
        assert!(tcp_ask(&mut s, &q).await.is_some());
    }
    assert!(tcp_ask(&mut s, &q).await.is_none());
    assert_eq!(limited(&stats), [("tcp_queries", 1)]);

    let limits = Limits {
        tcp_lifetime: Duration::from_millis(500),
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
    let mut s = tcp_from(C1, h.local_tcp).await;
    let t0 = Instant::now();
    // Busy, never idle: still closed at the end of its lifetime.
    while tcp_ask(&mut s, &q).await.is_some() {
        assert!(t0.elapsed() < Duration::from_secs(2), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(450));
    assert_eq!(limited(&stats), [("tcp_deadline", 1)]);
}

#[tokio::test]
async fn a_flood_of_forwards_leaves_slots_for_other_clients() {
    let (up, _t) = fake_upstream().await;
    let limits = Limits {
        forwards_per_client: 4,
        forwards_total: 8,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![up], limits).await;
    // C1 asks ten names the upstream never answers: four hold a slot, six
    // get SERVFAIL at once.
    let flood = UdpSocket::bind((C1, 0)).await.unwrap();
    for i in 0..10 {
        let q = query_bytes(&format!("slow{i}.example."), RecordType::A, false);
        flood.send_to(&q, h.local_udp).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    for _ in 0..6 {
        let n = tokio::time::timeout(Duration::from_secs(1), flood.recv(&mut buf))
            .await
            .expect("an immediate SERVFAIL")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }
    // Over TCP too, C1's share is spent.
    let mut s = tcp_from(C1, h.local_tcp).await;
    let q = query_bytes("slow-tcp.example.", RecordType::A, false);
    let m = tcp_ask(&mut s, &q).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // C3's names of the world are answered meanwhile.
    let t0 = Instant::now();
    let m = ask(h.local_udp, C3, "example.com.", RecordType::A).await;
    assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
    assert!(t0.elapsed() < UPSTREAM_TIMEOUT);
    assert_eq!(limited(&stats), [("forward_client", 7)]);
}

#[tokio::test]
async fn queries_past_a_clients_rate_are_dropped() {
    let limits = Limits {
        queries_per_sec: 1,
        query_burst: 3,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![], limits).await;
    let q = query_bytes(&own_name(), RecordType::A, true);
    let mut answered = 0;
    for _ in 0..6 {
        if udp_wait(h.local_udp, C1, &q, Duration::from_millis(200))
            .await
            .is_some()
        {
            answered += 1;
        }
    }
    assert!((3..=4).contains(&answered), "{answered}");
    // Another client is not affected.
    let theirs = names::app_name(&net(2), &app(2));
    assert_eq!(
        ips(&ask(h.local_udp, C3, &theirs, RecordType::A).await).len(),
        1
    );
    let dropped = stats.limited.query_rate.load(Ordering::Relaxed);
    assert_eq!(dropped, 6 - answered);
}

/// A sealed network's names of the world would be a tunnel out (a name
/// carries data to whoever serves its domain): REFUSED over UDP and TCP,
/// never served from the cache nor relayed, counted; its own names are
/// still answered, and the other networks still get the world.
#[tokio::test]
async fn a_sealed_network_is_refused_the_world_even_from_the_cache() {
    let (up, count, _t) = super::cache::counting_upstream(Duration::ZERO, 1).await;
    let (h, stats) = start(1, vec![up]).await;
    let world = query_bytes("example.com.", RecordType::A, true);
    let m = ask(h.local_udp, C1, "example.com.", RecordType::A).await;
    assert_eq!(ips(&m).len(), 1, "an open network gets the world");
    assert!(m.metadata.recursion_available);
    // Now cached: still refused to the sealed network.
    for name in ["example.com.", "data-to-smuggle.example."] {
        let m = ask(h.local_udp, SEALED, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!m.metadata.recursion_available);
    }
    let mut s = tcp_from(SEALED, h.local_tcp).await;
    let m = tcp_ask(&mut s, &world).await.expect("an answer over TCP");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the upstream was asked once"
    );
    assert_eq!(stats.sealed.load(Ordering::Relaxed), 3);
    assert_eq!(stats.cache.hits.load(Ordering::Relaxed), 0);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    // Its own zone is answered.
    let own = names::app_name(&net(3), &app(3));
    let m = ask(h.local_udp, SEALED, &own, RecordType::A).await;
    assert_eq!(ips(&m), [Ipv4Addr::new(10, 240, 8, 1)]);
    // The others still get the world, from the cache.
    assert_eq!(
        udp_raw(h.local_udp, C2, &world).await.map(|r| r.is_empty()),
        Some(false)
    );
    assert_eq!(stats.cache.hits.load(Ordering::Relaxed), 1);
}
