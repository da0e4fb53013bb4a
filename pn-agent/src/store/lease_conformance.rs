//! The conformance suite's part on address leases and container key claims:
//! written in the range of the host whose container holds them (which
//! etcd's roles give that host alone), unique across every registered
//! host, and those of an older release (shared `ips/`, `claims/`) read as
//! held, removed with their container, and migrated.

use std::sync::Arc;

use super::{Backend, Membership, MembershipError, Op, keys::Key};
use crate::{
    model::{AddressLease, Balance, ContainerKey, Egress, Host},
    testing::model::{app_id, host_id as host, key, member, net_id},
};

/// Registers host `h` (again: it keeps its peer id). Agents register before
/// they attach: leases and claims are unique across registered hosts.
pub async fn register(m: &Membership, h: &str) {
    m.register_host(&Host {
        id: host(h),
        advertise: None,
        public_key: None,
        started_at: 0,
        peer_id: 0,
    })
    .await
    .unwrap();
}

async fn fleet(kv: Arc<dyn Backend>) -> Membership {
    let m = Membership::new(kv);
    m.create_network(
        net_id(1),
        Some("10.240.0.0/24".parse().unwrap()),
        &"10.240.0.0/12".parse().unwrap(),
        22,
        Egress::Allow,
    )
    .await
    .unwrap();
    m.create_app(app_id(1), &net_id(1), None, 8080, Balance::Dns, None)
        .await
        .unwrap();
    for h in ["h1", "h2"] {
        register(&m, h).await;
    }
    m
}

fn lease(owner: &ContainerKey, h: &str) -> String {
    serde_json::to_string(&AddressLease {
        owner: owner.clone(),
        host: host(h),
        service: false,
    })
    .unwrap()
}

async fn put(kv: &Arc<dyn Backend>, key: Key, value: String) {
    kv.txn(vec![], vec![Op::Put(key.into(), value)])
        .await
        .unwrap();
}

async fn keys_under(kv: &Arc<dyn Backend>, prefix: &str) -> Vec<String> {
    let l = kv.list(prefix).await.unwrap();
    l.entries.into_iter().map(|(k, _)| k).collect()
}

pub async fn leases_and_claims_live_in_their_hosts_range(kv: Arc<dyn Backend>) {
    let m = fleet(kv.clone()).await;
    let k = key(1, "web", 1);
    let ip = m
        .reserve_address(&net_id(1), &k, &host("h1"), false)
        .await
        .unwrap()
        .ip;
    let (claim, held) = (
        Key::HostClaim(host("h1"), k.clone()).to_string(),
        Key::HostIp(host("h1"), net_id(1), ip.into()).to_string(),
    );
    assert!(kv.get(&claim).await.unwrap().is_some(), "{claim}");
    assert!(kv.get(&held).await.unwrap().is_some(), "{held}");
    assert!(keys_under(&kv, "ips/").await.is_empty(), "no shared lease");
    assert!(
        keys_under(&kv, "claims/").await.is_empty(),
        "no shared claim"
    );
    let c = member(k.clone(), net_id(1), ip, "h1");
    m.put_container(&c).await.unwrap();
    // Another host's lease or claim, wherever its race put it, is never
    // given again: the key is taken, the address skipped.
    let err = m
        .reserve_address(&net_id(1), &k, &host("h2"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Taken(_)), "{err}");
    assert!(err.to_string().contains("h1"), "{err}");
    assert_eq!(ip.to_string(), "10.240.0.1");
    let next = "10.240.0.2";
    let k2 = key(1, "web", 2);
    put(
        &kv,
        Key::HostIp(host("h2"), net_id(1), next.parse().unwrap()),
        lease(&k2, "h2"),
    )
    .await;
    put(
        &kv,
        Key::HostClaim(host("h2"), k2.clone()),
        lease(&k2, "h2"),
    )
    .await;
    let err = m
        .reserve_address(&net_id(1), &k2, &host("h1"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Taken(_)), "{err}");
    let k3 = key(1, "web", 3);
    let ip3 = m
        .reserve_address(&net_id(1), &k3, &host("h1"), false)
        .await
        .unwrap()
        .ip;
    assert!(ip3 != ip && ip3.to_string() != next, "{ip3}");
    assert!(
        m.used_indexes(&app_id(1), &"web".parse().unwrap())
            .await
            .unwrap()
            .is_superset(&[1, 2, 3].into())
    );
    // A detach frees its host's keys; a crashed attach's lease is found
    // and released.
    m.delete_container(&k).await.unwrap();
    assert!(kv.get(&claim).await.unwrap().is_none());
    assert!(kv.get(&held).await.unwrap().is_none());
    let orphans = m.leases_of_host(&host("h1")).await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let (net, at, l) = &orphans[0];
    m.release_address(&host("h1"), net, *at, &l.owner)
        .await
        .unwrap();
    assert!(keys_under(&kv, "on/h1/").await.is_empty());
}

pub async fn legacy_leases_are_read_then_migrated(kv: Arc<dyn Backend>) {
    let m = fleet(kv.clone()).await;
    // As an older release left them: shared keys.
    let (old, gone) = (key(1, "web", 1), key(1, "web", 2));
    for (k, ip) in [(&old, "10.240.0.1"), (&gone, "10.240.0.2")] {
        put(&kv, Key::Ip(net_id(1), ip.parse().unwrap()), lease(k, "h2")).await;
        put(&kv, Key::Claim(k.clone()), lease(k, "h2")).await;
    }
    let c = member(gone.clone(), net_id(1), "10.240.0.2".parse().unwrap(), "h2");
    put(
        &kv,
        Key::Container(host("h2"), gone.clone()),
        serde_json::to_string(&c).unwrap(),
    )
    .await;
    let service = ContainerKey {
        index: 0,
        ..key(1, "web", 1)
    };
    let vip = serde_json::to_string(&AddressLease {
        owner: service,
        host: host("h1"),
        service: true,
    })
    .unwrap();
    put(&kv, Key::Ip(net_id(1), "10.240.0.3".parse().unwrap()), vip).await;
    // Held: the key and the addresses are not given again.
    let err = m
        .reserve_address(&net_id(1), &old, &host("h1"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Taken(_)), "{err}");
    let fresh = key(1, "web", 3);
    let r = m
        .reserve_address(&net_id(1), &fresh, &host("h1"), false)
        .await
        .unwrap();
    assert_eq!(r.ip.to_string(), "10.240.0.4");
    // A detach removes its shared keys too.
    m.delete_container(&gone).await.unwrap();
    assert!(
        kv.get(&Key::Claim(gone.clone()).to_string())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        keys_under(&kv, "ips/").await.len(),
        2,
        "old's and the service's"
    );
    // Migrated: into h2's range, nothing lost; the service lease stays.
    assert_eq!(m.migrate_leases().await.unwrap(), 2);
    assert_eq!(m.migrate_leases().await.unwrap(), 0);
    assert!(keys_under(&kv, "claims/").await.is_empty());
    assert_eq!(keys_under(&kv, "ips/").await.len(), 1, "the service's");
    let moved = Key::HostIp(host("h2"), net_id(1), "10.240.0.1".parse().unwrap());
    assert_eq!(
        kv.get(&moved.to_string()).await.unwrap().unwrap().value,
        lease(&old, "h2")
    );
    assert!(
        kv.get(&Key::HostClaim(host("h2"), old.clone()).to_string())
            .await
            .unwrap()
            .is_some()
    );
    let err = m
        .reserve_address(&net_id(1), &old, &host("h1"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Taken(_)), "{err}");
}

/// Peer id claims stay shared (a host takes its id when it registers, the
/// one moment no other host knows it): one deleted by another host does
/// not free an id a host record holds.
pub async fn a_deleted_peer_claim_frees_no_held_id(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    register(&m, "h1").await;
    register(&m, "h2").await;
    kv.txn(vec![], vec![Op::Delete(Key::Peer(1).into())])
        .await
        .unwrap();
    let (h3, _) = m
        .register_host(&Host {
            id: host("h3"),
            advertise: None,
            public_key: None,
            started_at: 0,
            peer_id: 0,
        })
        .await
        .unwrap();
    assert_eq!(h3.peer_id, 3, "not h1's");
}

/// Leases and claims written in a host's own range count for the others'
/// allocations only if the operator admitted that host to an app of the
/// network (to the app), and leases only up to its quota (its oldest):
/// one host's `etcdctl put`s exhaust no tenant's range.
pub async fn squatted_leases_and_claims_exhaust_nothing(kv: Arc<dyn Backend>) {
    // Six leases per network and family counted per host.
    let m = fleet(kv.clone()).await.with_host_quota(3);
    m.admit(&app_id(1), &[host("h1")], false).await.unwrap();
    for i in 1..=254u8 {
        let ip = std::net::Ipv4Addr::new(10, 240, 0, i);
        put(
            &kv,
            Key::HostIp(host("h2"), net_id(1), ip.into()),
            lease(&key(1, "web", 90), "h2"),
        )
        .await;
    }
    for i in 1..=5 {
        let k = key(1, "web", i);
        put(&kv, Key::HostClaim(host("h2"), k.clone()), lease(&k, "h2")).await;
    }
    let r = m
        .reserve_address(&net_id(1), &key(1, "web", 1), &host("h1"), false)
        .await
        .unwrap();
    assert_eq!(r.ip.to_string(), "10.240.0.1");
    let used = m
        .used_indexes(&app_id(1), &"web".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(used, [1].into());
    // Admitted, its six oldest leases count; the rest do not.
    m.admit(&app_id(1), &[host("h2")], false).await.unwrap();
    let r = m
        .reserve_address(&net_id(1), &key(1, "web", 7), &host("h1"), false)
        .await
        .unwrap();
    assert_eq!(r.ip.to_string(), "10.240.0.7");
    let used = m
        .used_indexes(&app_id(1), &"web".parse().unwrap())
        .await
        .unwrap();
    assert!(used.is_superset(&[1, 2, 3, 4, 5, 7].into()), "{used:?}");
}

#[macro_export]
macro_rules! store_lease_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn squatted_leases_and_claims_exhaust_nothing() {
            $crate::store::lease_conformance::squatted_leases_and_claims_exhaust_nothing(
                $fresh("squatted").await,
            )
            .await
        }
        #[tokio::test]
        async fn leases_and_claims_live_in_their_hosts_range() {
            $crate::store::lease_conformance::leases_and_claims_live_in_their_hosts_range(
                $fresh("leases").await,
            )
            .await
        }
        #[tokio::test]
        async fn a_deleted_peer_claim_frees_no_held_id() {
            $crate::store::lease_conformance::a_deleted_peer_claim_frees_no_held_id(
                $fresh("peer-claims").await,
            )
            .await
        }
        #[tokio::test]
        async fn legacy_leases_are_read_then_migrated() {
            $crate::store::lease_conformance::legacy_leases_are_read_then_migrated(
                $fresh("legacy-leases").await,
            )
            .await
        }
    };
}
