//! A container's address is its host's only while the host holds its
//! lease: the allocator gives out what no host leases, so an unleased
//! record would take an honest host's next container's address.

use std::net::IpAddr;

use super::*;
use crate::{model::AddressLease, store::view::refusals::kind_of};

fn lease_value(c: &Container) -> String {
    serde_json::to_string(&AddressLease {
        owner: c.key.clone(),
        host: c.host.clone(),
        service: false,
    })
    .unwrap()
}

fn own_lease(c: &Container, ip: IpAddr) -> String {
    Key::HostIp(c.host.clone(), c.network, ip).to_string()
}

fn delete(f: &mut Fixture, key: &str) -> Change {
    f.rev += 1;
    f.view
        .apply(&WatchEvent::Delete {
            key: key.into(),
            rev: f.rev,
        })
        .unwrap()
}

#[test]
fn a_container_address_its_host_never_leased_is_refused() {
    let mut f = Fixture::new();
    let squat = container(1, [10, 240, 0, 1], "h2");
    let r = f
        .put_bare(&key_of(&squat), &serde_json::to_string(&squat).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::NotLeased, "{r}");
    assert_eq!(f.view.rejected.reason("not_leased"), 1);
    assert!(f.view.containers.is_empty());
    // Another host's lease of the address is not this host's.
    let victim = container(2, [10, 240, 0, 1], "h1");
    f.put_bare(&own_lease(&victim, victim.ip.into()), &lease_value(&victim))
        .unwrap();
    assert!(
        f.put_bare(&key_of(&squat), &serde_json::to_string(&squat).unwrap())
            .is_err()
    );
    // The victim's record, with its lease, takes the address.
    f.ok(&victim);
    assert_eq!(f.view.container_by_ip(victim.ip), Some(&victim));
    assert_eq!(f.view.rejected.reason("address_taken"), 0);
}

#[test]
fn an_ipv6_address_needs_its_own_lease() {
    let mut f = Fixture::new();
    f.ok(&Network {
        cidr6: Some("fd00:1:2:1::/64".parse().unwrap()),
        ..network(1, "10.240.0.0/24", 1)
    });
    let c = Container {
        ip6: Some("fd00:1:2:1::5".parse().unwrap()),
        ..container(1, [10, 240, 0, 1], "h1")
    };
    f.put_bare(&own_lease(&c, c.ip.into()), &lease_value(&c))
        .unwrap();
    let r = f
        .put_bare(&key_of(&c), &serde_json::to_string(&c).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::NotLeased, "{r}");
    f.ok(&c);
}

#[test]
fn a_lease_deleted_under_its_record_takes_the_container_out() {
    let mut f = Fixture::new();
    let c = container(1, [10, 240, 0, 1], "h2");
    f.ok(&c);
    let lease = own_lease(&c, c.ip.into());
    assert_eq!(f.view.unleased_by(&lease), Some(c.key.clone()));
    assert!(matches!(
        delete(&mut f, &lease),
        Change::ContainerDeleted(_)
    ));
    assert!(f.view.containers.is_empty());
    // Its record's own delete, after, changes nothing more.
    assert_eq!(delete(&mut f, &key_of(&c)), Change::Other);
    // Another host's container, given the address, is not refused.
    f.ok(&container(2, [10, 240, 0, 1], "h1"));
    assert_eq!(f.view.rejected.total(), 0);
}

#[test]
fn a_move_and_a_detach_keep_their_leases_until_the_record_changes() {
    let mut f = Fixture::new();
    f.ok(&network(2, "10.240.1.0/24", 2));
    let c = container(1, [10, 240, 0, 1], "h1");
    f.ok(&c);
    // `move_container`'s order: new lease, record, old lease's delete.
    let mut moved = c.clone();
    moved.network = net_id(2);
    moved.ip = "10.240.1.1".parse().unwrap();
    let mut a = app(1, 2);
    a.id = c.key.app;
    f.ok(&a);
    f.ok(&moved);
    let old = own_lease(&c, c.ip.into());
    assert_eq!(f.view.unleased_by(&old), None);
    assert_eq!(delete(&mut f, &old), Change::Other);
    assert_eq!(f.view.containers[&c.key], moved);
    // `delete_container`'s order: the record, then its lease.
    assert!(matches!(
        delete(&mut f, &key_of(&moved)),
        Change::ContainerDeleted(_)
    ));
    assert_eq!(
        delete(&mut f, &own_lease(&moved, moved.ip.into())),
        Change::Other
    );
}

#[test]
fn a_listing_admits_own_and_older_releases_leases_not_service_ones() {
    let c1 = container(1, [10, 240, 0, 1], "h1");
    let legacy = container(2, [10, 240, 0, 2], "h1");
    let unleased = container(3, [10, 240, 0, 3], "h2");
    let on_service = container(4, [10, 240, 0, 4], "h2");
    let shared = |c: &Container, service: bool| {
        serde_json::to_string(&AddressLease {
            owner: c.key.clone(),
            host: c.host.clone(),
            service,
        })
        .unwrap()
    };
    let raw = |k: String, v: String, rev: i64| {
        (
            k,
            Entry {
                value: v,
                mod_rev: rev,
                create_rev: rev,
            },
        )
    };
    let json = |c: &Container| serde_json::to_string(c).unwrap();
    let entries = vec![
        raw(
            key_of(&network(1, "10.240.0.0/24", 1)),
            json_of(&network(1, "10.240.0.0/24", 1)),
            1,
        ),
        raw(key_of(&app(1, 1)), json_of(&app(1, 1)), 2),
        raw(key_of(&c1), json(&c1), 3),
        raw(own_lease(&c1, c1.ip.into()), shared(&c1, false), 3),
        // A record moved under its host, its lease still shared (an older
        // release's, before `fleet migrate` moved the leases).
        raw(key_of(&legacy), json(&legacy), 4),
        raw(
            Key::Ip(net_id(1), legacy.ip).to_string(),
            shared(&legacy, false),
            4,
        ),
        raw(key_of(&unleased), json(&unleased), 5),
        raw(key_of(&on_service), json(&on_service), 6),
        raw(
            Key::Ip(net_id(1), on_service.ip).to_string(),
            shared(&on_service, true),
            6,
        ),
    ];
    let v = MembershipView::default().reloaded(&Listing { entries, rev: 10 });
    assert_eq!(v.containers.len(), 2, "{:?}", v.containers.keys());
    assert!(v.containers.contains_key(&c1.key) && v.containers.contains_key(&legacy.key));
    assert_eq!(v.rejected.reason("not_leased"), 2);
}

fn json_of<T: Serialize>(r: &T) -> String {
    serde_json::to_string(r).unwrap()
}

fn lease_at(f: &mut Fixture, h: &str, ip: &str) -> Result<Change, Rejected> {
    let c = container(90, [10, 240, 0, 90], h);
    let key = Key::HostIp(c.host.clone(), net_id(1), ip.parse().unwrap()).to_string();
    f.put_bare(&key, &lease_value(&c))
}

#[test]
fn leases_count_only_from_admitted_hosts_up_to_their_quota() {
    let mut f = Fixture::new();
    // Four leases per network and family.
    f.view = f.view.clone().with_host_quota(2);
    let admissions = crate::model::Admissions {
        enforced: true,
        apps: [(app_id(1), ["h1".parse().unwrap()].into())].into(),
    };
    f.put_bare("admissions", &serde_json::to_string(&admissions).unwrap())
        .unwrap();
    // h2 runs nothing of network 1: its leases there count for nothing,
    // and a record of one is not leased.
    let r = lease_at(&mut f, "h2", "10.240.0.1").unwrap_err();
    assert_eq!((r.reject, kind_of(&r.key)), (Reject::NotAdmitted, "lease"));
    let squat = container(1, [10, 240, 0, 1], "h2");
    let r = f
        .put_bare(&key_of(&squat), &serde_json::to_string(&squat).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::NotAdmitted, "{r}");
    // h1's beyond twice its quota per network and family are refused,
    // the newest; counted once each.
    for ip in ["10.240.0.2", "10.240.0.3", "10.240.0.4", "10.240.0.5"] {
        lease_at(&mut f, "h1", ip).unwrap();
    }
    let r = lease_at(&mut f, "h1", "10.240.0.6").unwrap_err();
    assert_eq!(r.reject, Reject::Quota, "{r}");
    assert!(lease_at(&mut f, "h1", "10.240.0.7").is_err());
    assert_eq!(f.view.rejected.reason("quota"), 2);
    let beyond = container(6, [10, 240, 0, 6], "h1");
    let r = f
        .put_bare(&key_of(&beyond), &serde_json::to_string(&beyond).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::NotLeased, "{r}");
    // One it counts goes: its oldest waiting is counted in its place, as
    // the allocator counts a host's oldest.
    let first = Key::HostIp(
        "h1".parse().unwrap(),
        net_id(1),
        "10.240.0.2".parse().unwrap(),
    );
    delete(&mut f, &first.to_string());
    f.put_bare(&key_of(&beyond), &serde_json::to_string(&beyond).unwrap())
        .unwrap();
    let last = container(7, [10, 240, 0, 7], "h1");
    let r = f
        .put_bare(&key_of(&last), &serde_json::to_string(&last).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::NotLeased, "{r}");
}
