//! The conformance suite's part on where container records live: under
//! their host (`on/<host>/…`, the range etcd's roles give that host), found
//! under every registered host or, to change them, by a scan; legacy
//! records read and migrated; admissions as the operator writes them; an
//! attach that does not rewrite the operator's app.

use std::sync::Arc;

use super::{Backend, Membership, Op, keys::Key};
use crate::{
    model::{Balance, Container, Egress},
    testing::model::{app_id, host_id as host, key, member, net_id},
};

async fn fleet(kv: Arc<dyn Backend>) -> Membership {
    let m = Membership::new(kv);
    m.create_network(
        net_id(1),
        None,
        &"10.240.0.0/12".parse().unwrap(),
        22,
        Egress::Allow,
    )
    .await
    .unwrap();
    m.create_app(app_id(1), &net_id(1), None, 8080, Balance::Dns, None)
        .await
        .unwrap();
    for h in ["h1", "h2", "h3"] {
        super::lease_conformance::register(&m, h).await;
    }
    m
}

async fn attach(m: &Membership, index: u32, h: &str) -> Container {
    let k = key(1, "web", index);
    let ip = m
        .reserve_address(&net_id(1), &k, &host(h), false)
        .await
        .unwrap()
        .ip;
    let c = member(k, net_id(1), ip, h);
    m.put_container(&c).await.unwrap();
    c
}

pub async fn records_live_under_their_host(kv: Arc<dyn Backend>) {
    let m = fleet(kv.clone()).await;
    let app_rev = kv
        .get(&Key::App(app_id(1)).to_string())
        .await
        .unwrap()
        .unwrap()
        .mod_rev;
    let c = attach(&m, 1, "h1").await;
    let at = Key::Container(host("h1"), c.key.clone()).to_string();
    assert!(kv.get(&at).await.unwrap().is_some(), "{at}");
    assert!(
        kv.get(&Key::LegacyContainer(c.key.clone()).to_string())
            .await
            .unwrap()
            .is_none()
    );
    // The operator's app is read, not written, by an attach.
    let after = kv
        .get(&Key::App(app_id(1)).to_string())
        .await
        .unwrap()
        .unwrap()
        .mod_rev;
    assert_eq!(after, app_rev);
    assert_eq!(m.container(&c.key).await.unwrap(), Some(c.clone()));
    assert_eq!(
        m.containers_on(&host("h1"), &app_id(1)).await.unwrap(),
        vec![c.clone()]
    );
    assert!(
        m.containers_on(&host("h2"), &app_id(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        m.used_indexes(&app_id(1), &"web".parse().unwrap())
            .await
            .unwrap()
            .contains(&1)
    );
    // Found without its claim (a lookup reads each host's record, not
    // claims), and changed.
    let claim = Key::HostClaim(host("h1"), c.key.clone()).to_string();
    kv.txn(vec![], vec![Op::Delete(claim)]).await.unwrap();
    assert_eq!(m.container(&c.key).await.unwrap(), Some(c.clone()));
    assert!(m.set_unhealthy(&c.key, true).await.unwrap().is_some());
    assert!(m.delete_container(&c.key).await.unwrap().is_some());
    assert!(kv.get(&at).await.unwrap().is_none());
    assert!(m.containers().await.unwrap().is_empty());
}

pub async fn legacy_records_are_read_then_migrated(kv: Arc<dyn Backend>) {
    let m = fleet(kv.clone()).await;
    let new = attach(&m, 1, "h1").await;
    // As an older release left it: no claim, no host in the key.
    let k = key(1, "web", 2);
    let old = member(k.clone(), net_id(1), "10.240.0.99".parse().unwrap(), "h2");
    let legacy = Key::LegacyContainer(k.clone()).to_string();
    kv.txn(
        vec![],
        vec![Op::Put(
            legacy.clone(),
            serde_json::to_string(&old).unwrap(),
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        m.containers().await.unwrap(),
        vec![new.clone(), old.clone()]
    );
    assert_eq!(m.container(&k).await.unwrap(), Some(old.clone()));
    assert_eq!(
        m.containers_on(&host("h2"), &app_id(1)).await.unwrap(),
        vec![old.clone()]
    );
    assert!(
        m.used_indexes(&app_id(1), &"web".parse().unwrap())
            .await
            .unwrap()
            .contains(&2)
    );
    // Its key stays taken.
    assert!(
        m.reserve_address(&net_id(1), &k, &host("h3"), false)
            .await
            .is_err()
    );
    assert_eq!(m.migrate_containers().await.unwrap(), 1);
    assert!(kv.get(&legacy).await.unwrap().is_none());
    let at = Key::Container(host("h2"), k.clone()).to_string();
    assert!(kv.get(&at).await.unwrap().is_some());
    assert_eq!(
        m.container(&k).await.unwrap(),
        Some(old.clone()),
        "through its new claim"
    );
    assert_eq!(m.migrate_containers().await.unwrap(), 0);
    assert_eq!(m.containers().await.unwrap().len(), 2);
}

pub async fn admissions_are_one_record_of_the_operator(kv: Arc<dyn Backend>) {
    let m = fleet(kv).await;
    let none = m.admissions().await.unwrap();
    assert!(!none.enforced && none.admits(&app_id(1), &host("h9")));
    attach(&m, 1, "h2").await;
    let a = m.admit_running().await.unwrap();
    assert!(a.enforced && a.admits(&app_id(1), &host("h2")));
    assert!(!a.admits(&app_id(1), &host("h1")));
    let a = m.admit(&app_id(1), &[host("h1")], false).await.unwrap();
    assert!(a.admits(&app_id(1), &host("h1")) && a.admits(&app_id(1), &host("h2")));
    let a = m.admit(&app_id(1), &[host("h2")], true).await.unwrap();
    assert!(!a.admits(&app_id(1), &host("h2")));
    assert_eq!(m.admissions().await.unwrap(), a);
}

#[macro_export]
macro_rules! store_placement_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn records_live_under_their_host() {
            $crate::store::placement_conformance::records_live_under_their_host(
                $fresh("placed").await,
            )
            .await
        }
        #[tokio::test]
        async fn legacy_records_are_read_then_migrated() {
            $crate::store::placement_conformance::legacy_records_are_read_then_migrated(
                $fresh("legacy").await,
            )
            .await
        }
        #[tokio::test]
        async fn admissions_are_one_record_of_the_operator() {
            $crate::store::placement_conformance::admissions_are_one_record_of_the_operator(
                $fresh("admit").await,
            )
            .await
        }
    };
}
