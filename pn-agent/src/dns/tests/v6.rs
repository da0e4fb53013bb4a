//! The server over IPv6: a query addressed to the gateway from a member's
//! IPv6 address is answered as its IPv4 twin would be (same network, same
//! rules); addressed elsewhere, or from an address of no member, nothing.
//! Loopback plays the gateway (`::1`).

use super::*;

const LOOP6: Ipv6Addr = Ipv6Addr::LOCALHOST;

/// The server with `::1` as the IPv6 client `as_client` (an IPv4 client's
/// twin, or nobody), and `gateway6` as the address queries must be sent to.
async fn start6(as_client: Option<Ipv4Addr>, gateway6: Ipv6Addr) -> (DnsHandle, Arc<DnsStats>) {
    let stats = Arc::new(DnsStats::default());
    let mut dir = directory(2);
    dir.clients6.extend(as_client.map(|c| (LOOP6, c)));
    let cfg = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        gateway6: Some(gateway6),
        ttl: 5,
        upstreams: vec![],
    };
    let h = serve(cfg, Arc::new(dir), stats.clone()).await.unwrap();
    (h, stats)
}

fn at6(h: &DnsHandle) -> SocketAddr {
    SocketAddr::from((LOOP6, h.local_udp.port()))
}

async fn udp6(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind((LOOP6, 0)).await.unwrap();
    s.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(Message::from_vec(&buf[..n]).unwrap()),
        _ => None,
    }
}

async fn tcp6(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let mut s = TcpStream::connect(server).await.ok()?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.ok()?;
    let wait = Duration::from_millis(500);
    let len = tokio::time::timeout(wait, s.read_u16()).await.ok()?.ok()?;
    let mut msg = vec![0u8; usize::from(len)];
    tokio::time::timeout(wait, s.read_exact(&mut msg))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&msg).unwrap())
}

#[tokio::test]
async fn a_member_asks_over_ipv6_as_over_ipv4() {
    let (h, stats) = start6(Some(C1), LOOP6).await;
    let one = names::container_name(&net(1), &app(1), &"web".parse().unwrap(), 2);
    for t in [RecordType::A, RecordType::AAAA] {
        let q = query_bytes(&one, t, true);
        let over_udp = udp6(at6(&h), &q).await.expect("an answer over UDP");
        let over_tcp = tcp6(at6(&h), &q).await.expect("an answer over TCP");
        let over_ipv4 = ask(h.local_udp, C1, &one, t).await;
        for m in [&over_udp, &over_tcp] {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
            assert_eq!(m.answers, over_ipv4.answers, "{t}");
        }
    }
    assert_eq!(stats.not_member.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn another_network_s_member_is_refused_over_ipv6_too() {
    // ::1 is C3's (network 2): network 1's names are not its.
    let (h, _) = start6(Some(C3), LOOP6).await;
    let q = query_bytes(&names::app_name(&net(1), &app(1)), RecordType::AAAA, true);
    let m = udp6(at6(&h), &q).await.expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    let m = tcp6(at6(&h), &q).await.expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn strangers_and_queries_not_to_the_gateway_get_nothing() {
    let q = query_bytes(&names::app_name(&net(1), &app(1)), RecordType::A, true);
    // From an address of no member.
    let (h, stats) = start6(None, LOOP6).await;
    assert!(udp6(at6(&h), &q).await.is_none());
    assert!(tcp6(at6(&h), &q).await.is_none());
    assert_eq!(stats.not_member.load(Ordering::Relaxed), 2);
    // From a member, but to another address than the gateway: the way a
    // neighbour of the underlay would reach the socket bound to `[::]`.
    let (h, stats) = start6(Some(C1), "fe80::1".parse().unwrap()).await;
    assert!(udp6(at6(&h), &q).await.is_none());
    assert!(tcp6(at6(&h), &q).await.is_none());
    assert_eq!(stats.not_member.load(Ordering::Relaxed), 2);
    assert_eq!(stats.answered.load(Ordering::Relaxed), 0);
}
