//! The conformance suite's part on apps moving between networks (their
//! containers re-addressed, the old addresses freed) and on service
//! addresses, which live and die with their app.

use std::sync::Arc;

use pn_common::ids::HostId;

use super::{
    Backend, Membership,
    conformance::{attach, pool, reserve},
    view::MembershipView,
};
use crate::{
    error::{ErrorKind, Kind},
    testing::model::{app_id, host_id as host, key, member, net_id},
};

/// `app move`: the app's record, then each container with a new address of
/// the new network (the old one freed); an attach that raced the move is
/// refused; moving again changes nothing.
pub async fn apps_move_with_their_addresses(kv: Arc<dyn Backend>) {
    let m = Membership::new(kv.clone());
    let (a, b) = (net_id(1), net_id(2));
    m.create_network(a, None, &pool(), 22, crate::model::Egress::Allow)
        .await
        .unwrap();
    let (nb, _) = m
        .create_network(b, None, &pool(), 22, crate::model::Egress::Allow)
        .await
        .unwrap();
    m.create_app(app_id(1), &a, None, 8080, crate::model::Balance::Dns, None)
        .await
        .unwrap();
    let c1 = attach(&m, a, &key(1, "web", 1), "h1").await;
    let c2 = attach(&m, a, &key(1, "web", 2), "h2").await;
    // Half-way through an attach when the app moves.
    let late = key(1, "web", 3);
    let late_ip = reserve(&m, &a, &late, "h1").await.unwrap();
    let (app, old, rev) = m.set_app_network(&app_id(1), &b).await.unwrap();
    assert_eq!((app.network, old), (b, a));
    assert!(rev.is_some());
    let mut moved = Vec::new();
    for c in [&c1, &c2] {
        let (now, _) = m.move_container(&c.key, &b).await.unwrap().unwrap();
        assert!(nb.cidr.contains(&now.ip), "{}", now.ip);
        assert_eq!((now.network, &now.host, &now.netns), (b, &c.host, &c.netns));
        moved.push(now.ip);
    }
    assert_ne!(moved[0], moved[1]);
    // Again: nothing to do.
    assert_eq!(m.set_app_network(&app_id(1), &b).await.unwrap().2, None);
    assert!(m.move_container(&c1.key, &b).await.unwrap().is_none());
    let late_rec = member(late.clone(), a, late_ip, "h1");
    let err = m.put_container(&late_rec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("moved"), "{err}");
    m.release_address(&host("h1"), &a, late_ip.into(), &late)
        .await
        .unwrap();
    // The old network's addresses are all free: the next gets the first.
    m.create_app(app_id(2), &a, None, 8080, crate::model::Balance::Dns, None)
        .await
        .unwrap();
    let fresh = attach(&m, a, &key(2, "web", 1), "h1").await;
    assert_eq!(fresh.ip, c1.ip);
    // Every record passes the view's checks.
    let view = MembershipView::default().reloaded(&kv.list("").await.unwrap());
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.containers[&c1.key].ip, moved[0]);
    let err = m.set_app_network(&app_id(1), &net_id(9)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// A service address is leased with its app and freed with it.
pub async fn service_addresses_live_with_their_app(kv: Arc<dyn Backend>) {
    use crate::model::Balance;
    let m = Membership::new(kv.clone());
    let net = net_id(1);
    m.create_network(
        net,
        Some("10.240.0.0/28".parse().unwrap()),
        &pool(),
        22,
        crate::model::Egress::Allow,
    )
    .await
    .unwrap();
    m.create_app(app_id(1), &net, None, 8080, Balance::Vip, None)
        .await
        .unwrap();
    let c1 = attach(&m, net, &key(1, "web", 1), "h1").await;
    let c2 = attach(&m, net, &key(1, "web", 2), "h2").await;
    let app = m.app(&app_id(1)).await.unwrap();
    let vip = app.services[&"web".parse().unwrap()];
    assert_eq!(app.services.len(), 1, "one address per type");
    assert!(vip != c1.ip && vip != c2.ip);
    // Never collected as a crashed attach's lease, whatever host made it.
    assert!(
        m.leases_of_host(&"h1".parse().unwrap())
            .await
            .unwrap()
            .iter()
            .all(|(_, ip, _)| *ip != vip)
    );
    let h: HostId = "h1".parse().unwrap();
    let (app, _) = m
        .update_app(&app_id(1), Some(Balance::Dns), None, &h)
        .await
        .unwrap();
    assert!(app.services.is_empty());
    let (app, _) = m
        .update_app(&app_id(1), Some(Balance::Vip), None, &h)
        .await
        .unwrap();
    let vip = app.services[&"web".parse().unwrap()];
    for i in 1..=2 {
        m.delete_container(&key(1, "web", i)).await.unwrap();
    }
    m.delete_app(&app_id(1)).await.unwrap();
    let left = kv.list(&super::keys::ips_of(&net)).await.unwrap();
    assert!(
        left.entries.is_empty(),
        "{vip} freed with its app: {:?}",
        left.entries.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}
