//! The conformance suite's IPv6 half: the fleet's /48, a /64 per network,
//! an address per container, unique fleet-wide, freed with the container,
//! moved with its app, given to the records of a fleet that predates IPv6.
//! Each backend's tests call these with a fresh, empty store.

use std::{collections::BTreeSet, net::Ipv6Addr, sync::Arc};

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::ids::NetworkId;

use super::{Backend, Membership, NewNetwork, PoolDoc, keys::Key, view::MembershipView};
use crate::{
    error::{ErrorKind, Kind},
    ipam::Ipv6Mode,
    model::{Balance, Container, ContainerKey, Egress, Network},
    testing::model::{app_id, host_id as host, key, member, net_id},
};

fn pool() -> Ipv4Net {
    "10.240.0.0/12".parse().unwrap()
}

fn pool6() -> Ipv6Net {
    "fd12:3456:789a::/48".parse().unwrap()
}

const ON: Ipv6Mode = Ipv6Mode::On { pool6: None };

fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

async fn create(m: &Membership, n: u8, cidr6: Option<&str>, ipv6: Ipv6Mode) -> Network {
    let spec = NewNetwork {
        cidr6: cidr6.map(net6),
        ..Default::default()
    };
    m.create_network_in(net_id(n), spec, &pool(), 22, ipv6)
        .await
        .map(|(n, _)| n)
        .unwrap()
}

async fn attach(
    m: &Membership,
    net: NetworkId,
    k: &ContainerKey,
    h: &str,
    ipv6: bool,
) -> Container {
    super::lease_conformance::register(m, h).await;
    let r = m.reserve_address(&net, k, &host(h), ipv6).await.unwrap();
    let c = Container {
        ip6: r.ip6,
        ..member(k.clone(), net, r.ip, h)
    };
    m.put_container(&c).await.unwrap();
    c
}

/// IPv6 leases of `net`: in hosts' ranges, and shared (an older release's).
async fn leases6(kv: &Arc<dyn Backend>, net: &NetworkId) -> BTreeSet<Ipv6Addr> {
    kv.list("")
        .await
        .unwrap()
        .entries
        .iter()
        .filter_map(|(k, _)| match Key::parse(k)? {
            Key::Ip6(n, ip) if n == *net => Some(ip),
            Key::HostIp(_, n, std::net::IpAddr::V6(ip)) if n == *net => Some(ip),
            _ => None,
        })
        .collect()
}

async fn pool_doc(kv: &Arc<dyn Backend>) -> PoolDoc {
    serde_json::from_str(&kv.get(&Key::Pool.to_string()).await.unwrap().unwrap().value).unwrap()
}

/// Networks get /64s of the fleet's /48 (the first agent's `--pool6`),
/// the asked one if free; another `--pool6` is refused.
pub async fn networks_get_disjoint_ipv6_ranges(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let given = Ipv6Mode::On {
        pool6: Some(pool6()),
    };
    let a = create(&m, 1, None, given).await;
    assert_eq!(a.cidr6, Some(net6("fd12:3456:789a::/64")));
    assert_eq!(pool_doc(&kv).await.pool6, Some(pool6()));
    // An agent without --pool6 takes the fleet's.
    let b = create(&m, 2, None, ON).await;
    assert_eq!(b.cidr6, Some(net6("fd12:3456:789a:1::/64")));
    let c = create(&m, 3, Some("fd12:3456:789a:ff::/64"), ON).await;
    assert_eq!(c.cidr6, Some(net6("fd12:3456:789a:ff::/64")));
    let d = create(&m, 4, None, given).await;
    assert_eq!(d.cidr6, Some(net6("fd12:3456:789a:2::/64")));
    let try_create = |n: u8, cidr6: Option<&'static str>, ipv6: Ipv6Mode| {
        let m = m.clone();
        async move {
            let spec = NewNetwork {
                cidr6: cidr6.map(net6),
                ..Default::default()
            };
            m.create_network_in(net_id(n), spec, &pool(), 22, ipv6)
                .await
                .unwrap_err()
        }
    };
    let other = Ipv6Mode::On {
        pool6: Some(net6("fd00:1:2::/48")),
    };
    for (err, kind) in [
        (try_create(5, None, other).await, ErrorKind::Conflict),
        (
            try_create(5, Some("fd12:3456:789a:ff::/64"), ON).await,
            ErrorKind::Conflict,
        ),
        (
            try_create(5, Some("fd00:1:2::/64"), ON).await,
            ErrorKind::Invalid,
        ),
        (
            try_create(5, Some("fd12:3456:789a:5::/64"), Ipv6Mode::Off).await,
            ErrorKind::Invalid,
        ),
    ] {
        assert_eq!(err.kind(), kind, "{err}");
    }
    // With IPv6 off: no range, and the pool stays the fleet's.
    let e = create(&m, 6, None, Ipv6Mode::Off).await;
    assert_eq!(e.cidr6, None);
    assert_eq!(pool_doc(&kv).await.pool6, Some(pool6()));
    // A deleted network's range is free again.
    m.delete_network(&b.id, false).await.unwrap();
    let f = create(&m, 7, None, ON).await;
    assert_eq!(f.cidr6, b.cidr6);
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.networks[&f.id].cidr6, b.cidr6);
}

/// Each container an address of its network's /64, none twice; freed
/// with the container (the next attach takes it again); crashed attaches'
/// leases are found; no address for an agent with IPv6 off.
pub async fn ipv6_addresses_are_unique_and_freed(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let net = create(&m, 1, None, ON).await;
    let cidr6 = net.cidr6.unwrap();
    m.create_app(app_id(1), &net.id, None, 8080, Balance::Dns, None)
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for i in 1..=20 {
        let c = attach(
            &m,
            net.id,
            &key(1, "web", i),
            ["h1", "h2"][i as usize % 2],
            true,
        )
        .await;
        let ip6 = c.ip6.unwrap();
        assert!(cidr6.contains(&ip6), "{ip6}");
        assert!(seen.insert(ip6), "{ip6} twice");
        all.push(c);
    }
    assert_eq!(leases6(&kv, &net.id).await, seen);
    let off = attach(&m, net.id, &key(1, "worker", 1), "h3", false).await;
    assert_eq!(off.ip6, None);
    // Detach frees it; the next attach takes the lowest free one.
    let (gone, _) = m.delete_container(&all[4].key).await.unwrap().unwrap();
    assert!(!leases6(&kv, &net.id).await.contains(&gone.ip6.unwrap()));
    let again = attach(&m, net.id, &key(1, "web", 99), "h1", true).await;
    assert_eq!(again.ip6, gone.ip6);
    // A crashed attach: both leases found, both released.
    let crashed = key(1, "web", 50);
    let r = m
        .reserve_address(&net.id, &crashed, &host("h9"), true)
        .await
        .unwrap();
    let held: Vec<_> = m.leases_of_host(&host("h9")).await.unwrap();
    assert_eq!(held.len(), 2);
    for (n, ip, lease) in held {
        assert_eq!(lease.owner, crashed);
        m.release_address(&host("h9"), &n, ip, &lease.owner)
            .await
            .unwrap();
    }
    assert!(!leases6(&kv, &net.id).await.contains(&r.ip6.unwrap()));
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(
        view.container_by_ip6(again.ip6.unwrap()).map(|c| &c.key),
        Some(&again.key)
    );
}

pub async fn concurrent_ipv6_reservations_never_collide(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let net = create(&m, 1, None, ON).await;
    for h in ["h1", "h2"] {
        super::lease_conformance::register(&m, h).await;
    }
    let mut tasks = Vec::new();
    for i in 1..=40u32 {
        let m = m.clone();
        let h = if i % 2 == 0 { "h1" } else { "h2" };
        tasks.push(tokio::spawn(async move {
            m.reserve_address(&net.id, &key(1, "web", i), &host(h), true)
                .await
                .unwrap()
                .ip6
                .unwrap()
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.unwrap()), "duplicate IPv6 address");
    }
    assert_eq!(ips.len(), 40);
}

/// A fleet that predates IPv6: its pool document, networks and containers
/// gain their IPv6 pool, ranges and addresses, once, without losing any,
/// even after an older agent rewrote a record without them.
pub async fn records_without_ipv6_gain_it(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let net = create(&m, 1, None, Ipv6Mode::Off).await;
    let other = create(&m, 2, None, Ipv6Mode::Off).await;
    assert_eq!(pool_doc(&kv).await.pool6, None);
    m.create_app(app_id(1), &net.id, None, 8080, Balance::Dns, None)
        .await
        .unwrap();
    let c1 = attach(&m, net.id, &key(1, "web", 1), "h1", true).await;
    assert_eq!(c1.ip6, None, "no range yet, no address");
    let c2 = attach(&m, net.id, &key(1, "web", 2), "h2", false).await;
    // Giving a container an address needs its network's range first.
    assert!(m.give_ip6(&c1.key).await.unwrap().is_none());
    let (now, _) = m.ensure_network6(&net.id, None).await.unwrap().unwrap();
    let cidr6 = now.cidr6.unwrap();
    let drawn = pool_doc(&kv).await.pool6.unwrap();
    assert!(drawn.contains(&cidr6));
    assert!(m.ensure_network6(&net.id, None).await.unwrap().is_none());
    let (now2, _) = m.ensure_network6(&other.id, None).await.unwrap().unwrap();
    assert_ne!(now2.cidr6, now.cidr6);
    // An older agent rewrites the record without the field it does not
    // know: the range reserved in the pool comes back the same.
    let mut bare = serde_json::to_value(&now).unwrap();
    bare.as_object_mut().unwrap().remove("cidr6");
    kv.txn(
        vec![],
        vec![super::Op::Put(
            Key::Network(net.id).into(),
            bare.to_string(),
        )],
    )
    .await
    .unwrap();
    let (back, _) = m.ensure_network6(&net.id, None).await.unwrap().unwrap();
    assert_eq!(back.cidr6, Some(cidr6));
    // Containers: an address each; a lease left by a write that stopped
    // half-way is the one given.
    let half = "fd00::7".parse::<Ipv6Addr>().unwrap();
    let half = Ipv6Addr::from(u128::from(cidr6.network()) | (u128::from(half) & 0xffff));
    let lease = crate::model::AddressLease {
        owner: c2.key.clone(),
        host: host("h2"),
        service: false,
    };
    kv.txn(
        vec![],
        vec![super::Op::Put(
            Key::Ip6(net.id, half).into(),
            serde_json::to_string(&lease).unwrap(),
        )],
    )
    .await
    .unwrap();
    let (g1, _) = m.give_ip6(&c1.key).await.unwrap().unwrap();
    let (g2, _) = m.give_ip6(&c2.key).await.unwrap().unwrap();
    assert_eq!(g2.ip6, Some(half));
    assert!(cidr6.contains(&g1.ip6.unwrap()));
    assert_ne!(g1.ip6, g2.ip6);
    assert!(m.give_ip6(&c1.key).await.unwrap().is_none());
    assert_eq!((g1.ip, g2.ip), (c1.ip, c2.ip), "IPv4 unchanged");
    assert_eq!(leases6(&kv, &net.id).await.len(), 2);
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.containers[&c1.key].ip6, g1.ip6);
    // Its host now runs with --ipv6 off: given back, freed.
    let (t1, _) = m.take_ip6(&c1.key).await.unwrap().unwrap();
    assert_eq!((t1.ip6, t1.ip), (None, c1.ip));
    assert!(m.take_ip6(&c1.key).await.unwrap().is_none());
    assert_eq!(leases6(&kv, &net.id).await, BTreeSet::from([half]));
}

/// `app move`: a container with an IPv6 address gets one of the new
/// network's range, the old one freed, in the same transaction as IPv4's.
pub async fn moves_take_ipv6_along(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let a = create(&m, 1, None, ON).await;
    let b = create(&m, 2, None, ON).await;
    m.create_app(app_id(1), &a.id, None, 8080, Balance::Dns, None)
        .await
        .unwrap();
    let c = attach(&m, a.id, &key(1, "web", 1), "h1", true).await;
    let v4only = attach(&m, a.id, &key(1, "web", 2), "h2", false).await;
    m.set_app_network(&app_id(1), &b.id).await.unwrap();
    let (moved, _) = m.move_container(&c.key, &b.id).await.unwrap().unwrap();
    assert!(b.cidr6.unwrap().contains(&moved.ip6.unwrap()));
    let (moved2, _) = m.move_container(&v4only.key, &b.id).await.unwrap().unwrap();
    assert_eq!(moved2.ip6, None);
    assert!(leases6(&kv, &a.id).await.is_empty());
    assert_eq!(
        leases6(&kv, &b.id).await,
        BTreeSet::from([moved.ip6.unwrap()])
    );
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    let _ = Egress::Allow;
}

/// Service addresses (`--balance vip`) get an IPv6 twin in their network's
/// /64, leased under `ips/` as IPv4's, freed with it; an app made before
/// its network had IPv6 gains one, once, and keeps it through an older
/// agent's rewrite.
pub async fn service_addresses_get_ipv6_twins(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let h = host("h1");
    let web: pn_common::ids::ContainerType = "web".parse().unwrap();
    let net = create(&m, 1, None, ON).await;
    let cidr6 = net.cidr6.unwrap();
    m.create_app(app_id(1), &net.id, None, 8080, Balance::Vip, None)
        .await
        .unwrap();
    let c1 = attach(&m, net.id, &key(1, "web", 1), "h1", true).await;
    let c2 = attach(&m, net.id, &key(1, "web", 2), "h1", true).await;
    let app = m.app(&app_id(1)).await.unwrap();
    let vip6 = app.services6[&web];
    assert!(cidr6.contains(&vip6));
    assert!(Some(vip6) != c1.ip6 && Some(vip6) != c2.ip6);
    assert_eq!(
        leases6(&kv, &net.id).await.len(),
        3,
        "two containers, one service"
    );
    let (app, _) = m
        .update_app(&app_id(1), Some(Balance::Dns), None, &h)
        .await
        .unwrap();
    assert!(app.services6.is_empty());
    assert_eq!(leases6(&kv, &net.id).await.len(), 2, "freed with dns");
    let (app, _) = m
        .update_app(&app_id(1), Some(Balance::Vip), None, &h)
        .await
        .unwrap();
    assert!(cidr6.contains(&app.services6[&web]));

    // An app of a network without IPv6 yet: its twin comes with the range.
    let old = create(&m, 2, None, Ipv6Mode::Off).await;
    m.create_app(app_id(2), &old.id, None, 8080, Balance::Vip, None)
        .await
        .unwrap();
    attach(&m, old.id, &key(2, "web", 1), "h1", true).await;
    let app2 = m.app(&app_id(2)).await.unwrap();
    assert!(app2.services.contains_key(&web) && app2.services6.is_empty());
    assert!(m.ensure_services6(&app_id(2), &h).await.unwrap().is_none());
    let (old, _) = m.ensure_network6(&old.id, None).await.unwrap().unwrap();
    let (app2, _) = m.ensure_services6(&app_id(2), &h).await.unwrap().unwrap();
    let twin = app2.services6[&web];
    assert!(old.cidr6.unwrap().contains(&twin));
    assert_eq!(app2.services, m.app(&app_id(2)).await.unwrap().services);
    assert!(m.ensure_services6(&app_id(2), &h).await.unwrap().is_none());
    // An older agent rewrites the app without the field: the same address
    // (its lease is still the service's) comes back.
    let mut bare = serde_json::to_value(&app2).unwrap();
    bare.as_object_mut().unwrap().remove("services6");
    kv.txn(
        vec![],
        vec![super::Op::Put(Key::App(app_id(2)).into(), bare.to_string())],
    )
    .await
    .unwrap();
    let (back, _) = m.ensure_services6(&app_id(2), &h).await.unwrap().unwrap();
    assert_eq!(back.services6[&web], twin);
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);

    // Freed with the app.
    m.delete_container(&key(2, "web", 1)).await.unwrap();
    m.delete_app(&app_id(2)).await.unwrap();
    assert!(leases6(&kv, &old.id).await.is_empty());
}

#[macro_export]
macro_rules! store_conformance6_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn networks_get_disjoint_ipv6_ranges() {
            $crate::store::conformance6::networks_get_disjoint_ipv6_ranges($fresh("ranges6").await)
                .await
        }
        #[tokio::test]
        async fn ipv6_addresses_are_unique_and_freed() {
            $crate::store::conformance6::ipv6_addresses_are_unique_and_freed($fresh("addrs6").await)
                .await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_ipv6_reservations_never_collide() {
            $crate::store::conformance6::concurrent_ipv6_reservations_never_collide(
                $fresh("race6").await,
            )
            .await
        }
        #[tokio::test]
        async fn records_without_ipv6_gain_it() {
            $crate::store::conformance6::records_without_ipv6_gain_it($fresh("upgrade6").await)
                .await
        }
        #[tokio::test]
        async fn moves_take_ipv6_along() {
            $crate::store::conformance6::moves_take_ipv6_along($fresh("move6").await).await
        }
        #[tokio::test]
        async fn service_addresses_get_ipv6_twins() {
            $crate::store::conformance6::service_addresses_get_ipv6_twins($fresh("svc6").await)
                .await
        }
    };
}
