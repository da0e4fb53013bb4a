//! One suite for every backend: the membership rules must not depend on where
//! the records live. Each backend's tests call these with a fresh, empty store.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use ipnet::Ipv4Net;
use pn_common::ids::NetworkId;

use super::{Backend, Membership, MembershipError, WatchEvent, view::MembershipView};
use crate::{
    error::{ErrorKind, Kind},
    model::{Container, ContainerKey, Egress, Host, now_secs},
    testing::model::{app_id, host_id as host, key, member, net_id},
};

pub(super) fn pool() -> Ipv4Net {
    "10.240.0.0/12".parse().unwrap()
}

/// An IPv4-only reservation (IPv6 has its own suite, `conformance6`).
pub(super) async fn reserve(
    m: &Membership,
    net: &NetworkId,
    k: &ContainerKey,
    h: &str,
) -> Result<Ipv4Addr, MembershipError> {
    super::lease_conformance::register(m, h).await;
    m.reserve_address(net, k, &host(h), false)
        .await
        .map(|r| r.ip)
}

pub(super) async fn attach(m: &Membership, net: NetworkId, k: &ContainerKey, h: &str) -> Container {
    let ip = reserve(m, &net, k, h).await.unwrap();
    let c = member(k.clone(), net, ip, h);
    m.put_container(&c).await.unwrap();
    c
}

pub async fn networks_get_disjoint_ranges_and_tags(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let (a, _) = m
        .create_network(net_id(1), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    let (b, _) = m
        .create_network(net_id(2), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    assert_eq!(a.cidr.to_string(), "10.240.0.0/22");
    assert_eq!(b.cidr.to_string(), "10.240.4.0/22");
    assert_ne!(a.tag, b.tag);
    let explicit: Ipv4Net = "10.240.8.0/24".parse().unwrap();
    let (c, _) = m
        .create_network(net_id(3), Some(explicit), &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    assert_eq!(c.cidr, explicit);
    let (d, _) = m
        .create_network(net_id(4), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    assert_eq!(
        d.cidr.to_string(),
        "10.240.12.0/22",
        "skips the explicit range"
    );
    let err = m
        .create_network(
            net_id(5),
            Some("10.240.0.0/16".parse().unwrap()),
            &pool(),
            22,
            Egress::Allow,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Conflict(_)), "{err}");
    let err = m
        .create_network(net_id(1), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = m
        .create_network(
            net_id(6),
            Some("10.9.0.1/24".parse().unwrap()),
            &pool(),
            22,
            Egress::Allow,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Invalid(_)), "{err}");
    assert_eq!(m.networks().await.unwrap().len(), 4);
}

pub async fn pool_exhaustion_is_reported(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let small: Ipv4Net = "10.250.0.0/23".parse().unwrap();
    m.create_network(net_id(1), None, &small, 24, Egress::Allow)
        .await
        .unwrap();
    m.create_network(net_id(2), None, &small, 24, Egress::Allow)
        .await
        .unwrap();
    let err = m
        .create_network(net_id(3), None, &small, 24, Egress::Allow)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted, "{err}");
    assert!(err.to_string().contains("exhausted"), "{err}");
}

pub async fn apps_need_an_existing_network(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let err = m
        .create_app(
            app_id(1),
            &net_id(9),
            None,
            8080,
            crate::model::Balance::Dns,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    m.create_network(net_id(1), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    m.create_app(
        app_id(1),
        &net_id(1),
        Some("waf".into()),
        8080,
        crate::model::Balance::Dns,
        None,
    )
    .await
    .unwrap();
    let err = m
        .create_app(
            app_id(1),
            &net_id(1),
            None,
            8080,
            crate::model::Balance::Dns,
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        m.app(&app_id(1)).await.unwrap().name.as_deref(),
        Some("waf")
    );
}

pub async fn addresses_are_unique_and_reused_after_release(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let net = net_id(1);
    m.create_network(
        net,
        Some("10.240.0.0/29".parse().unwrap()),
        &pool(),
        22,
        Egress::Allow,
    )
    .await
    .unwrap();
    m.create_app(
        app_id(1),
        &net,
        None,
        8080,
        crate::model::Balance::Dns,
        None,
    )
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    for i in 1..=6 {
        let c = attach(&m, net, &key(1, "web", i), "h1").await;
        assert!(seen.insert(c.ip));
    }
    assert_eq!(
        seen.first(),
        Some(&"10.240.0.1".parse::<Ipv4Addr>().unwrap())
    );
    let err = reserve(&m, &net, &key(1, "web", 7), "h1")
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Exhausted(_)), "{err}");
    let (gone, _) = m
        .delete_container(&key(1, "web", 3))
        .await
        .unwrap()
        .unwrap();
    let c = attach(&m, net, &key(1, "web", 7), "h1").await;
    assert_eq!(c.ip, gone.ip, "freed address is handed out again");
}

pub async fn a_container_key_is_claimed_once(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let net = net_id(1);
    m.create_network(net, None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    m.create_app(
        app_id(1),
        &net,
        None,
        8080,
        crate::model::Balance::Dns,
        None,
    )
    .await
    .unwrap();
    let k = key(1, "web", 1);
    let ip = reserve(&m, &net, &k, "h1").await.unwrap();
    let err = reserve(&m, &net, &k, "h2").await.unwrap_err();
    assert!(matches!(err, MembershipError::Taken(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("h1"), "{err}");
    // Releasing frees both the address and the key.
    m.release_address(&host("h1"), &net, ip.into(), &k)
        .await
        .unwrap();
    let c = attach(&m, net, &k, "h2").await;
    let err = reserve(&m, &net, &k, "h1").await.unwrap_err();
    assert!(
        err.to_string().contains("h2"),
        "attached keys stay taken: {err}"
    );
    m.delete_container(&c.key).await.unwrap();
    reserve(&m, &net, &k, "h1").await.unwrap();
}

pub async fn concurrent_reservations_never_collide(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let net = net_id(1);
    m.create_network(net, None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    // Agents register before they attach: leases are unique across
    // registered hosts (two unregistered ones could pick one address).
    for h in ["h1", "h2"] {
        m.register_host(&bare_host(h)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 1..=40u32 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let h = if i % 2 == 0 { "h1" } else { "h2" };
            reserve(&m, &net, &key(1, "web", i), h).await.unwrap()
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.unwrap()), "duplicate address");
    }
    assert_eq!(ips.len(), 40);
}

pub async fn deletes_respect_dependents(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv);
    let net = net_id(1);
    m.create_network(net, None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    m.create_app(
        app_id(1),
        &net,
        None,
        8080,
        crate::model::Balance::Dns,
        None,
    )
    .await
    .unwrap();
    let c = attach(&m, net, &key(1, "worker", 1), "h1").await;
    let err = m.delete_app(&app_id(1)).await.unwrap_err();
    assert!(err.to_string().contains("detach them first"), "{err}");
    let err = m.delete_network(&net, false).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    m.delete_network(&net, true).await.unwrap();
    assert!(m.networks().await.unwrap().is_empty());
    assert!(m.apps().await.unwrap().is_empty());
    assert!(m.container(&c.key).await.unwrap().is_none());
    assert!(m.leases_of_host(&host("h1")).await.unwrap().is_empty());
    // The range is free again.
    let (again, _) = m
        .create_network(net_id(2), None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    assert_eq!(again.cidr.to_string(), "10.240.0.0/22");
    let err = m.delete_network(&net, false).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFound(_)), "{err}");
}

pub async fn views_follow_the_watch(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let net = net_id(1);
    m.create_network(net, None, &pool(), 22, Egress::Allow)
        .await
        .unwrap();
    let listing = kv.list("").await.unwrap();
    let mut view = MembershipView::new(pool()).reloaded(&listing);
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    let mut rx = kv.watch("", listing.rev + 1).await.unwrap();
    m.create_app(
        app_id(1),
        &net,
        None,
        8080,
        crate::model::Balance::Dns,
        None,
    )
    .await
    .unwrap();
    let c = attach(&m, net, &key(1, "web", 1), "h2").await;
    let (_, last_rev) = m.delete_container(&c.key).await.unwrap().unwrap();
    let c2 = attach(&m, net, &key(1, "web", 2), "h2").await;
    let mut seen_delete = false;
    while view.rev < last_rev || view.containers.is_empty() {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("watch delivers in time")
            .expect("watch open");
        assert_ne!(ev, WatchEvent::Resync);
        if matches!(
            view.apply(&ev).unwrap(),
            super::view::Change::ContainerDeleted(_)
        ) {
            seen_delete = true;
        }
    }
    assert!(seen_delete);
    assert_eq!(view.apps.len(), 1);
    assert_eq!(view.containers.len(), 1);
    assert_eq!(view.container_by_ip(c2.ip).unwrap().key, c2.key);
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
}

pub async fn egress_and_publications_change_in_place(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let net = net_id(1);
    let (n, _) = m
        .create_network(net, None, &pool(), 22, Egress::Deny)
        .await
        .unwrap();
    assert_eq!(n.egress, Egress::Deny);
    let (n, _) = m.set_network_egress(&net, Egress::Allow).await.unwrap();
    assert_eq!((n.egress, n.tag), (Egress::Allow, 1));
    assert_eq!(m.network(&net).await.unwrap().egress, Egress::Allow);
    let err = m
        .set_network_egress(&net_id(9), Egress::Deny)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::NotFound(_)), "{err}");
    let (app, _) = m
        .create_app(
            app_id(1),
            &net,
            None,
            3000,
            crate::model::Balance::Dns,
            None,
        )
        .await
        .unwrap();
    assert_eq!(app.web_port, 3000);
    let err = m
        .create_app(app_id(2), &net, None, 0, crate::model::Balance::Dns, None)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Invalid(_)), "{err}");
    let c = attach(&m, net, &key(1, "web", 1), "h1").await;
    let at: std::net::SocketAddrV4 = "192.0.2.1:30000".parse().unwrap();
    assert!(m.set_published(&c, Some(at)).await.unwrap().is_some());
    assert_eq!(
        m.container(&c.key).await.unwrap().unwrap().published,
        Some(at)
    );
    // Unchanged: nothing written.
    assert_eq!(m.set_published(&c, Some(at)).await.unwrap(), None);
    // A record that is not the one expected (moved to another host) is left alone.
    let mut elsewhere = c.clone();
    elsewhere.host = host("h2");
    assert_eq!(m.set_published(&elsewhere, None).await.unwrap(), None);
    assert!(m.set_published(&c, None).await.unwrap().is_some());
    assert_eq!(m.container(&c.key).await.unwrap().unwrap().published, None);
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.apps[&app_id(1)].web_port, 3000);
}

fn bare_host(h: &str) -> Host {
    Host {
        id: host(h),
        advertise: None,
        public_key: None,
        started_at: now_secs(),
        peer_id: 0,
    }
}

pub async fn hosts_get_unique_peer_ids_and_keep_them(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let (h1, _) = m.register_host(&bare_host("h1")).await.unwrap();
    let (h2, _) = m.register_host(&bare_host("h2")).await.unwrap();
    assert_eq!((h1.peer_id, h2.peer_id), (1, 2));
    // Registering again (a restart) keeps the id, even if the record went.
    let mut again = bare_host("h1");
    again.peer_id = 77;
    assert_eq!(m.register_host(&again).await.unwrap().0.peer_id, 1);
    kv.txn(vec![], vec![super::Op::Delete("hosts/h1".into())])
        .await
        .unwrap();
    assert_eq!(m.register_host(&again).await.unwrap().0.peer_id, 1);
    // Many at once: all distinct.
    let mut tasks = Vec::new();
    for i in 3..=24 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.register_host(&bare_host(&format!("h{i}")))
                .await
                .unwrap()
                .0
                .peer_id
        }));
    }
    let mut ids = BTreeSet::from([1, 2]);
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "duplicate peer id");
    }
    let stored: BTreeSet<u32> = m.hosts().await.unwrap().iter().map(|h| h.peer_id).collect();
    assert_eq!(stored, ids);
    assert!(!stored.contains(&0));
    // A removed host's id is free again.
    m.remove_host(&host("h2")).await.unwrap();
    let (h25, _) = m.register_host(&bare_host("h25")).await.unwrap();
    assert_eq!(h25.peer_id, 2);
    // The view takes them all in.
    let view = MembershipView::new(pool()).reloaded(&kv.list("").await.unwrap());
    assert_eq!(view.hosts.len(), 24);
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
}

/// Runs every conformance test, each on a fresh store from `fresh`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn networks_get_disjoint_ranges_and_tags() {
            $crate::store::conformance::networks_get_disjoint_ranges_and_tags(
                $fresh("ranges").await,
            )
            .await
        }
        #[tokio::test]
        async fn pool_exhaustion_is_reported() {
            $crate::store::conformance::pool_exhaustion_is_reported($fresh("exhaust").await).await
        }
        #[tokio::test]
        async fn apps_need_an_existing_network() {
            $crate::store::conformance::apps_need_an_existing_network($fresh("apps").await).await
        }
        #[tokio::test]
        async fn service_addresses_live_with_their_app() {
            $crate::store::move_conformance::service_addresses_live_with_their_app(
                $fresh("vip").await,
            )
            .await
        }
        #[tokio::test]
        async fn addresses_are_unique_and_reused_after_release() {
            $crate::store::conformance::addresses_are_unique_and_reused_after_release(
                $fresh("addrs").await,
            )
            .await
        }
        #[tokio::test]
        async fn a_container_key_is_claimed_once() {
            $crate::store::conformance::a_container_key_is_claimed_once($fresh("claims").await)
                .await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_reservations_never_collide() {
            $crate::store::conformance::concurrent_reservations_never_collide($fresh("race").await)
                .await
        }
        #[tokio::test]
        async fn deletes_respect_dependents() {
            $crate::store::conformance::deletes_respect_dependents($fresh("deletes").await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn hosts_get_unique_peer_ids_and_keep_them() {
            $crate::store::conformance::hosts_get_unique_peer_ids_and_keep_them(
                $fresh("peers").await,
            )
            .await
        }
        #[tokio::test]
        async fn apps_move_with_their_addresses() {
            $crate::store::move_conformance::apps_move_with_their_addresses($fresh("move").await)
                .await
        }
        #[tokio::test]
        async fn egress_and_publications_change_in_place() {
            $crate::store::conformance::egress_and_publications_change_in_place(
                $fresh("edge").await,
            )
            .await
        }
        #[tokio::test]
        async fn views_follow_the_watch() {
            $crate::store::conformance::views_follow_the_watch($fresh("watch").await).await
        }
    };
}
