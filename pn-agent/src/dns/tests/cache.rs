//! The cache and the coalescing through the server: what reaches the
//! upstream, what the clients get back.

use std::sync::atomic::AtomicUsize;

use super::*;

/// An upstream that counts the queries it gets and answers each after
/// `delay` with `n` A records of TTL 60 (its own id and lowercase spelling).
pub(super) async fn counting_upstream(
    delay: Duration,
    n: u8,
) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = s.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let t = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = s.recv_from(&mut buf).await {
            seen.fetch_add(1, Ordering::SeqCst);
            let req = Message::from_vec(&buf[..len]).unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let name =
                    Name::from_ascii(req.queries[0].name().to_ascii().to_lowercase()).unwrap();
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.metadata.recursion_available = true;
                resp.add_query(Query::query(name.clone(), req.queries[0].query_type()));
                for i in 0..n {
                    resp.add_answer(Record::from_rdata(
                        name.clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                    ));
                }
                if req.edns.is_some() {
                    resp.set_edns(Edns::new());
                }
                let _ = s.send_to(&resp.to_vec().unwrap(), from).await;
            });
        }
    });
    (addr, count, t)
}

/// A query with EDNS offering 1232 bytes, or none.
fn with_id(name: &str, id: u16, edns: bool) -> Vec<u8> {
    let mut m = Message::from_vec(&query_bytes(name, RecordType::A, edns)).unwrap();
    m.metadata.id = id;
    if let Some(e) = m.edns.as_mut() {
        e.set_max_payload(1232);
    }
    m.to_vec().unwrap()
}

const C2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test]
async fn a_name_asked_again_is_answered_from_the_cache() {
    let (up, count, _t) = counting_upstream(Duration::ZERO, 1).await;
    let (h, stats) = start(1, vec![up]).await;
    let r = udp_raw(h.local_udp, C1, &with_id("example.com.", 7, false))
        .await
        .unwrap();
    let first = Message::from_vec(&r).unwrap();
    assert_eq!((first.metadata.id, ips(&first).len()), (7, 1));
    // Another client, another spelling, over UDP and TCP.
    let r = udp_raw(h.local_udp, C3, &with_id("EXAMPLE.Com.", 8, false))
        .await
        .unwrap();
    let again = Message::from_vec(&r).unwrap();
    assert_eq!(again.metadata.id, 8);
    assert_eq!(again.queries[0].name().to_ascii(), "EXAMPLE.Com.");
    assert_eq!(ips(&again), ips(&first));
    let mut tcp = TcpStream::connect(h.local_tcp).await.unwrap();
    let q = with_id("example.com.", 9, false);
    tcp.write_all(&(q.len() as u16).to_be_bytes())
        .await
        .unwrap();
    tcp.write_all(&q).await.unwrap();
    let len = tcp.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(Message::from_vec(&buf).unwrap().metadata.id, 9);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the upstream was asked once"
    );
    let c = &stats.cache;
    assert_eq!(c.hits.load(Ordering::Relaxed), 2);
    assert_eq!(c.misses.load(Ordering::Relaxed), 1);
    assert_eq!(stats.cached.load(Ordering::Relaxed), 2);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 1);
    assert_eq!(c.entries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let (up, count, _t) = counting_upstream(Duration::from_millis(300), 1).await;
    let (h, stats) = start(1, vec![up]).await;
    let mut socks = Vec::new();
    for (i, from) in [C1, C1, C1, C2, C2, C3].into_iter().enumerate() {
        let s = UdpSocket::bind((from, 0)).await.unwrap();
        s.send_to(&with_id("same.example.", 100 + i as u16, true), h.local_udp)
            .await
            .unwrap();
        socks.push(s);
    }
    for (i, s) in socks.iter().enumerate() {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
            .await
            .expect("every waiting client is answered")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, 100 + i as u16);
        assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 0)]);
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(stats.cache.coalesced.load(Ordering::Relaxed), 5);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn followers_are_bounded_and_hold_their_clients_slots() {
    let (up, count, _t) = counting_upstream(Duration::from_millis(300), 1).await;
    let limits = Limits {
        forwards_per_client: 3,
        followers_per_flight: 2,
        ..Limits::default()
    };
    let (h, stats) = start_with(1, vec![up], limits).await;
    // C1: a leader and two followers take its three slots; a fourth query
    // is refused at once. C3's query goes upstream alone (the flight is full).
    let s1 = UdpSocket::bind((C1, 0)).await.unwrap();
    for i in 0..4 {
        s1.send_to(&with_id("same.example.", i, false), h.local_udp)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s3 = UdpSocket::bind((C3, 0)).await.unwrap();
    s3.send_to(&with_id("same.example.", 9, false), h.local_udp)
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let mut codes = Vec::new();
    for _ in 0..4 {
        let n = s1.recv(&mut buf).await.unwrap();
        codes.push(Message::from_vec(&buf[..n]).unwrap().metadata.response_code);
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ResponseCode::ServFail)
            .count(),
        1
    );
    let n = s3.recv(&mut buf).await.unwrap();
    assert_eq!(ips(&Message::from_vec(&buf[..n]).unwrap()).len(), 1);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(stats.cache.coalesced.load(Ordering::Relaxed), 2);
    assert_eq!(stats.limited.forward_client.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn cached_answers_are_cut_to_each_clients_size() {
    // About 1 kB: whole within EDNS's 1232 bytes, not within 512.
    let (up, count, _t) = counting_upstream(Duration::ZERO, 60).await;
    let (h, stats) = start(1, vec![up]).await;
    let big = Message::from_vec(
        &udp_raw(h.local_udp, C1, &with_id("big.example.", 1, true))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(big.answers.len(), 60);
    let small = udp_raw(h.local_udp, C1, &with_id("big.example.", 2, false))
        .await
        .unwrap();
    assert!(small.len() <= 512);
    let small = Message::from_vec(&small).unwrap();
    assert!(small.metadata.truncation && small.answers.is_empty());
    assert_eq!(small.metadata.id, 2);
    // The key tells EDNS apart: that one went upstream, then was cut.
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let again = udp_raw(h.local_udp, C1, &with_id("big.example.", 3, false))
        .await
        .unwrap();
    assert!(again.len() <= 512);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(stats.limited.truncated.load(Ordering::Relaxed), 2);
}
