//! The IPv6 rules of `checks`: networks' /64s and containers' addresses,
//! and records of older agents that forget them.

use std::net::Ipv6Addr;

use super::*;

fn with6(n: u8, cidr: &str, tag: u32, cidr6: &str) -> Network {
    Network {
        cidr6: Some(cidr6.parse().unwrap()),
        ..network(n, cidr, tag)
    }
}

fn c6(index: u32, ip4: [u8; 4], ip6: &str) -> Container {
    Container {
        ip6: Some(ip6.parse().unwrap()),
        ..container(index, ip4, "h1")
    }
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Network 1 with fd00:1:2:1::/64 and app 1.
fn fixture6() -> Fixture {
    let mut f = Fixture::new();
    f.ok(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"));
    f
}

#[test]
fn ipv6_ranges_are_unique_local_64s_of_one_network_that_never_change() {
    let mut f = Fixture::new();
    for (n, bad) in [
        (2, "2001:db8::/64"),
        (3, "fe80::/64"),
        (4, "fd00:1:2:3::/56"),
        (5, "fd00:1:2:3::1/64"),
        (6, "ff02::/64"),
    ] {
        f.refused(
            &with6(n, &format!("10.240.{n}.0/24"), n.into(), bad),
            Reject::Range,
        );
    }
    // A network of an older record gains one.
    f.ok(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"));
    f.refused(
        &with6(2, "10.240.2.0/24", 2, "fd00:1:2:1::/64"),
        Reject::Overlap,
    );
    f.refused(
        &with6(1, "10.240.0.0/24", 1, "fd00:1:2:9::/64"),
        Reject::Immutable,
    );
    f.ok(&with6(2, "10.240.2.0/24", 2, "fd00:1:2:2::/64"));
    // An older agent's rewrite without the field: the range stays.
    f.ok(&network(1, "10.240.0.0/24", 1));
    assert_eq!(
        f.view.networks[&net_id(1)].cidr6,
        Some("fd00:1:2:1::/64".parse().unwrap())
    );
}

#[test]
fn a_container_ipv6_address_is_its_networks_and_its_own() {
    let mut f = Fixture::new();
    // No range in the network: no address.
    f.refused(&c6(1, [10, 240, 0, 1], "fd00:1:2:1::2"), Reject::Address);
    f.ok(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"));
    for bad in [
        "fd00:1:2:2::2",
        "2001:db8::2",
        "fd00:1:2:1::",
        "fd00:1:2:1::1",
        "fd00:1:2:1:ffff:ffff:ffff:ffff",
    ] {
        f.refused(&c6(1, [10, 240, 0, 1], bad), Reject::Address);
    }
    f.ok(&c6(1, [10, 240, 0, 1], "fd00:1:2:1::2"));
    f.refused(
        &c6(2, [10, 240, 0, 2], "fd00:1:2:1::2"),
        Reject::AddressTaken,
    );
    assert_eq!(
        f.view.container_by_ip6(ip6("fd00:1:2:1::2")).unwrap().key,
        ckey(1, "web", 1)
    );
    // It changes only with the network.
    f.refused(&c6(1, [10, 240, 0, 1], "fd00:1:2:1::9"), Reject::Immutable);
    f.ok(&with6(2, "10.240.1.0/24", 2, "fd00:1:2:2::/64"));
    f.ok(&app(1, 2));
    f.ok(&Container {
        ip6: Some(ip6("fd00:1:2:2::2")),
        ..member(ckey(1, "web", 1), net_id(2), [10, 240, 1, 9].into(), "h1")
    });
    assert!(f.view.container_by_ip6(ip6("fd00:1:2:1::2")).is_none());
    f.ok(&app(1, 1));
    f.ok(&c6(2, [10, 240, 0, 2], "fd00:1:2:1::2"));
    assert_eq!(f.view.by_ip6.len(), 2);
    // Detached: free.
    f.view
        .apply(&WatchEvent::Delete {
            key: Key::Container(crate::testing::model::host_id("h1"), ckey(1, "web", 2))
                .to_string(),
            rev: 99,
        })
        .unwrap();
    assert!(f.view.container_by_ip6(ip6("fd00:1:2:1::2")).is_none());
}

#[test]
fn a_container_gains_and_loses_its_ipv6_address_in_place() {
    let mut f = fixture6();
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
    // Given one on its host's next converge.
    f.ok(&c6(1, [10, 240, 0, 1], "fd00:1:2:1::2"));
    assert!(f.view.container_by_ip6(ip6("fd00:1:2:1::2")).is_some());
    // Taken away (its host now runs with --ipv6 off): free for another.
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
    assert_eq!(f.view.containers[&ckey(1, "web", 1)].ip6, None);
    assert!(f.view.container_by_ip6(ip6("fd00:1:2:1::2")).is_none());
    f.ok(&c6(2, [10, 240, 0, 2], "fd00:1:2:1::2"));
    assert!(f.view.rejected.is_empty());
}

#[test]
fn a_listing_gives_a_doubly_claimed_ipv6_address_to_the_older() {
    let early = c6(2, [10, 240, 0, 2], "fd00:1:2:1::5");
    let late = c6(1, [10, 240, 0, 1], "fd00:1:2:1::5");
    let l = listing(&[
        rec(&app(1, 1), 2),
        rec(&late, 9),
        rec(&early, 3),
        rec(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"), 1),
    ]);
    let view = MembershipView::default().reloaded(&l);
    assert_eq!(view.containers.len(), 1);
    assert_eq!(view.container_by_ip6(ip6("fd00:1:2:1::5")), Some(&early));
    assert_eq!(view.rejected.reason("address_taken"), 1);
}

/// An IPv6 tunnel endpoint is unicast and in no network's /64; a unique
/// local underlay outside them is fine.
#[test]
fn an_ipv6_endpoint_is_no_members_address() {
    let mut f = fixture6();
    for bad in [
        "[fd00:1:2:1::9]:51871",
        "[fe80::3]:51871",
        "[ff05::3]:51871",
        "[::1]:51871",
        "[2001:db8::3]:0",
    ] {
        let mut h = host("h3", 3);
        h.advertise = Some(bad.parse().unwrap());
        f.refused(&h, Reject::Endpoint);
    }
    for good in ["[2001:db8::3]:51871", "[fd00:1:2:2::3]:51871"] {
        let mut h = host("h3", 3);
        h.advertise = Some(good.parse().unwrap());
        f.ok(&h);
    }
}
