//! AAAA: every name with A records answers its IPv6 addresses under the
//! same rules: rotation (its own, beside A's), REFUSED across networks,
//! NXDOMAIN for unknown names of one's own network, sealed networks.

use super::*;

fn ips6(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn web6(n: u16, i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, n, 0, 0, 0, 0, 0, i)
}

#[tokio::test]
async fn every_name_form_answers_its_ipv6_addresses() {
    let (h, stats) = start(2, vec![]).await;
    let s = h.local_udp;
    let web = "web".parse().unwrap();
    let m = ask(s, C1, &names::app_name(&net(1), &app(1)), RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.answers.iter().all(|r| r.ttl == 5));
    let mut got = ips6(&m);
    got.sort();
    assert_eq!(got, [web6(1, 1), web6(1, 2)]);
    assert!(ips(&m).is_empty(), "no A record in an AAAA answer");
    let t = ask(
        s,
        C1,
        &names::type_name(&net(1), &app(1), &web),
        RecordType::AAAA,
    )
    .await;
    assert_eq!(ips6(&t).len(), 2);
    let one = names::container_name(&net(1), &app(1), &web, 2);
    assert_eq!(
        ips6(&ask(s, C1, &one, RecordType::AAAA).await),
        [web6(1, 2)]
    );
    // A still answers IPv4 only.
    let a = ask(s, C1, &one, RecordType::A).await;
    assert_eq!(ips(&a), [Ipv4Addr::new(10, 240, 0, 2)]);
    assert!(ips6(&a).is_empty());
    assert_eq!(stats.answered.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn aaaa_rotates_apart_from_a() {
    let (h, _) = start(3, vec![]).await;
    let name = names::app_name(&net(1), &app(1));
    let (mut firsts, mut firsts6) = (Vec::new(), Vec::new());
    // Asked side by side, as stub resolvers do: each family rotates.
    for _ in 0..3 {
        let m = ask(h.local_udp, C1, &name, RecordType::A).await;
        firsts.push(ips(&m)[0]);
        let m = ask(h.local_udp, C1, &name, RecordType::AAAA).await;
        assert_eq!(ips6(&m).len(), 3);
        firsts6.push(ips6(&m)[0]);
    }
    firsts.sort();
    firsts.dedup();
    firsts6.sort();
    firsts6.dedup();
    assert_eq!(firsts.len(), 3, "each IPv4 address comes first once");
    assert_eq!(firsts6.len(), 3, "each IPv6 address comes first once");
}

#[tokio::test]
async fn aaaa_follows_the_rules_of_a() {
    let (h, stats) = start(1, vec![]).await;
    let s = h.local_udp;
    let theirs = names::app_name(&net(2), &app(2));
    // Another network's names: refused.
    let m = ask(s, C1, &theirs, RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    assert_eq!(
        ips6(&ask(s, C3, &theirs, RecordType::AAAA).await),
        [web6(2, 1)]
    );
    // Unknown names of one's own network: NXDOMAIN, with the SOA.
    for name in [
        names::app_name(&net(1), &app(9)),
        names::container_name(&net(1), &app(1), &"web".parse().unwrap(), 7),
    ] {
        let m = ask(s, C1, &name, RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(m.authorities.len(), 1);
    }
    // A sealed network's own names are answered.
    let own = names::app_name(&net(3), &app(3));
    assert_eq!(
        ips6(&ask(s, SEALED, &own, RecordType::AAAA).await),
        [web6(3, 1)]
    );
    // A stranger gets nothing.
    let q = query_bytes(&names::app_name(&net(1), &app(1)), RecordType::AAAA, true);
    assert_eq!(udp_raw(s, STRANGER, &q).await, None);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.nxdomain.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn the_world_stays_refused_to_a_sealed_network_for_aaaa() {
    let (up, _t) = fake_upstream().await;
    let (h, stats) = start(1, vec![up]).await;
    let m = ask(h.local_udp, SEALED, "example.com.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(stats.sealed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 0);
}
