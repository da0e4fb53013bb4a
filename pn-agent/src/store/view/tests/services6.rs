//! IPv6 service addresses: checked as IPv4's (inside the network's /64, a
//! container's possible address, nobody else's), kept through an older
//! agent's rewrite, answered in AAAA.

use std::net::Ipv6Addr;

use super::*;
use crate::{
    model::Balance,
    store::view::services::{service_addr, service_addr6, service_addr6_served},
};

fn with6(n: u8, cidr: &str, tag: u32, cidr6: &str) -> Network {
    Network {
        cidr6: Some(cidr6.parse().unwrap()),
        ..network(n, cidr, tag)
    }
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// App `n` of network 1 balancing by `vip`, `web` at `ip` and `ip6`.
fn vip6(n: u8, ip: &str, v6: &str) -> App {
    let mut a = app(n, 1);
    a.balance = Balance::Vip;
    a.services
        .insert("web".parse().unwrap(), ip.parse().unwrap());
    a.services6.insert("web".parse().unwrap(), ip6(v6));
    a
}

/// Network 1 with fd00:1:2:1::/64, app 1, and a member at ::5 (10.240.0.5).
fn fixture() -> (Fixture, Container) {
    let mut f = Fixture::new();
    f.ok(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"));
    let member = Container {
        ip6: Some(ip6("fd00:1:2:1::5")),
        ..container(1, [10, 240, 0, 5], "h1")
    };
    f.ok(&member);
    (f, member)
}

#[test]
fn an_ipv6_service_address_is_its_networks_and_nobody_elses() {
    let (mut f, member) = fixture();
    f.ok(&vip6(2, "10.240.0.20", "fd00:1:2:1::20"));
    // Outside the /64, its subnet-router anycast, the world's.
    for bad in ["fd00:1:2:2::30", "fd00:1:2:1::", "2001:db8::30"] {
        f.refused(&vip6(3, "10.240.0.30", bad), Reject::Service);
    }
    // Given to two types, or without an IPv4 twin.
    let mut twice = vip6(3, "10.240.0.30", "fd00:1:2:1::30");
    twice
        .services
        .insert("worker".parse().unwrap(), "10.240.0.31".parse().unwrap());
    twice
        .services6
        .insert("worker".parse().unwrap(), ip6("fd00:1:2:1::30"));
    f.refused(&twice, Reject::Service);
    let mut alone = vip6(3, "10.240.0.30", "fd00:1:2:1::30");
    alone
        .services6
        .insert("worker".parse().unwrap(), ip6("fd00:1:2:1::31"));
    f.refused(&alone, Reject::Service);
    // Forged over a member's IPv6 address, or another app's.
    f.refused(
        &vip6(3, "10.240.0.30", "fd00:1:2:1::5"),
        Reject::AddressTaken,
    );
    f.refused(
        &vip6(3, "10.240.0.30", "fd00:1:2:1::20"),
        Reject::AddressTaken,
    );
    // A rewrite onto a member keeps the good version.
    f.ok(&vip6(3, "10.240.0.30", "fd00:1:2:1::30"));
    f.refused(
        &vip6(3, "10.240.0.30", "fd00:1:2:1::5"),
        Reject::AddressTaken,
    );
    assert_eq!(
        f.view.apps[&app_id(3)],
        vip6(3, "10.240.0.30", "fd00:1:2:1::30")
    );
    assert_eq!(f.view.container_by_ip6(ip6("fd00:1:2:1::5")), Some(&member));
    // A container forged onto an IPv6 service address.
    let forged = Container {
        ip6: Some(ip6("fd00:1:2:1::20")),
        ..container(2, [10, 240, 0, 40], "h1")
    };
    f.refused(&forged, Reject::AddressTaken);
    // Freed with its app.
    f.rev += 1;
    f.view
        .apply(&WatchEvent::Delete {
            key: key_of(&vip6(2, "10.240.0.20", "fd00:1:2:1::20")),
            rev: f.rev,
        })
        .unwrap();
    f.ok(&forged);
}

#[test]
fn a_network_without_ipv6_has_no_ipv6_service_address() {
    let mut f = Fixture::new();
    f.refused(&vip6(3, "10.240.0.30", "fd00:1:2:1::30"), Reject::Service);
}

#[test]
fn an_older_agents_rewrite_keeps_the_ipv6_service_address() {
    let (mut f, _) = fixture();
    let full = vip6(2, "10.240.0.20", "fd00:1:2:1::20");
    f.ok(&full);
    let mut older = full.clone();
    older.services6.clear();
    f.ok(&older);
    assert_eq!(f.view.apps[&app_id(2)], full);
    // Still held: no container takes it.
    let forged = Container {
        ip6: Some(ip6("fd00:1:2:1::20")),
        ..container(2, [10, 240, 0, 40], "h1")
    };
    f.refused(&forged, Reject::AddressTaken);
}

#[test]
fn in_a_listing_an_older_container_keeps_its_ipv6_address() {
    let member = Container {
        ip6: Some(ip6("fd00:1:2:1::5")),
        ..container(1, [10, 240, 0, 5], "h1")
    };
    let forged = vip6(2, "10.240.0.20", "fd00:1:2:1::5");
    let entry = |k: String, v: String, created: i64, rev: i64| {
        (
            k,
            Entry {
                value: v,
                mod_rev: rev,
                create_rev: created,
            },
        )
    };
    let rec = |r: &dyn erased::Rec, created, rev| entry(r.k(), r.v(), created, rev);
    let l = Listing {
        entries: with_leases(vec![
            rec(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"), 1, 1),
            rec(&app(1, 1), 2, 2),
            rec(&member, 5, 40),
            rec(&forged, 3, 30),
        ]),
        rev: 100,
    };
    let view = MembershipView::default().reloaded(&l);
    assert_eq!(view.container_by_ip6(ip6("fd00:1:2:1::5")), Some(&member));
    assert!(!view.apps.contains_key(&app_id(2)));
    assert_eq!(view.rejected.reason("address_taken"), 1);
}

#[test]
fn the_names_answer_the_ipv6_service_address_in_aaaa() {
    let a = vip6(2, "10.240.0.20", "fd00:1:2:1::20");
    let web = pn_common::names::Selector::Web;
    assert_eq!(service_addr(&a, &web), Some("10.240.0.20".parse().unwrap()));
    assert_eq!(service_addr6(&a, &web), Some(ip6("fd00:1:2:1::20")));
    let mut bare = a.clone();
    bare.services6.clear();
    assert_eq!(service_addr6(&bare, &web), None);
    let mut dns = a;
    dns.balance = Balance::Dns;
    assert_eq!(service_addr6(&dns, &web), None);
}

#[test]
fn aaaa_for_a_service_address_needs_a_container_of_its_type_with_an_ipv6_address() {
    let mut f = Fixture::new();
    f.ok(&with6(1, "10.240.0.0/24", 1, "fd00:1:2:1::/64"));
    f.ok(&vip6(1, "10.240.0.20", "fd00:1:2:1::20"));
    let web = pn_common::names::Selector::Web;
    let served = |f: &Fixture| service_addr6_served(&f.view, &f.view.apps[&app_id(1)], &web);
    assert_eq!(served(&f), None);
    // Only a container of a host with `--ipv6 off`: the IPv6 rotation is
    // empty, A alone is answered.
    f.ok(&container(1, [10, 240, 0, 5], "h1"));
    assert_eq!(served(&f), None);
    f.ok(&Container {
        ip6: Some(ip6("fd00:1:2:1::6")),
        ..container(2, [10, 240, 0, 6], "h2")
    });
    assert_eq!(served(&f), Some(ip6("fd00:1:2:1::20")));
}

/// Records of several types in one listing.
mod erased {
    use super::Record;

    pub trait Rec {
        fn k(&self) -> String;
        fn v(&self) -> String;
    }

    impl<T: Record> Rec for T {
        fn k(&self) -> String {
            super::key_of(self)
        }
        fn v(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}
