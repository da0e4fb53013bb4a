//! The checks that keep one host's forged records from harming the others:
//! service addresses, tunnel keys, endpoints, fields fixed at creation.

use super::*;
use crate::model::Balance;

/// App `n` of network 1, balancing by `vip` with `web` at `ip`.
fn vip(n: u8, ip: &str) -> App {
    let mut a = app(n, 1);
    a.balance = Balance::Vip;
    a.services
        .insert("web".parse().unwrap(), ip.parse().unwrap());
    a
}

/// A listing whose records carry their creation and last revisions.
fn listing_at(records: &[(String, String, i64, i64)]) -> Listing {
    Listing {
        entries: with_leases(
            records
                .iter()
                .map(|(k, v, created, rev)| {
                    (
                        k.clone(),
                        Entry {
                            value: v.clone(),
                            mod_rev: *rev,
                            create_rev: *created,
                        },
                    )
                })
                .collect(),
        ),
        rev: 100,
    }
}

fn at<T: Record>(r: &T, created: i64, rev: i64) -> (String, String, i64, i64) {
    (key_of(r), serde_json::to_string(r).unwrap(), created, rev)
}

#[test]
fn a_service_address_is_its_networks_and_nobody_elses() {
    let mut f = Fixture::new();
    let member = container(1, [10, 240, 0, 5], "h1");
    f.ok(&member);
    f.ok(&vip(2, "10.240.0.20"));
    for bad in ["8.8.8.8", "10.241.0.1", "10.240.0.0", "10.240.0.255"] {
        f.refused(&vip(3, bad), Reject::Service);
    }
    let mut twice = vip(3, "10.240.0.30");
    twice
        .services
        .insert("worker".parse().unwrap(), "10.240.0.30".parse().unwrap());
    f.refused(&twice, Reject::Service);
    // A forged service address over a member's, or another app's.
    f.refused(&vip(3, "10.240.0.5"), Reject::AddressTaken);
    f.refused(&vip(3, "10.240.0.20"), Reject::AddressTaken);
    // Rewriting a good app onto a member: the good version stays.
    f.ok(&vip(3, "10.240.0.30"));
    f.refused(&vip(3, "10.240.0.5"), Reject::AddressTaken);
    assert_eq!(f.view.apps[&app_id(3)], vip(3, "10.240.0.30"));
    assert_eq!(f.view.container_by_ip(member.ip), Some(&member));
    // A container forged onto a service address.
    f.refused(&container(2, [10, 240, 0, 20], "h1"), Reject::AddressTaken);
    // Freed with its app.
    f.rev += 1;
    f.view
        .apply(&WatchEvent::Delete {
            key: key_of(&vip(2, "10.240.0.20")),
            rev: f.rev,
        })
        .unwrap();
    f.ok(&container(2, [10, 240, 0, 20], "h1"));
    assert_eq!(f.view.rejected.reason("address_taken"), 4);
    assert_eq!(f.view.rejected.reason("service_address"), 5);
}

#[test]
fn in_a_listing_the_older_of_a_service_and_a_container_keeps_the_address() {
    let member = container(1, [10, 240, 0, 5], "h1");
    let forged_vip = vip(2, "10.240.0.5");
    let good_vip = vip(3, "10.240.0.20");
    let forged_container = container(2, [10, 240, 0, 20], "h1");
    let l = listing_at(&[
        at(&network(1, "10.240.0.0/24", 1), 1, 1),
        at(&app(1, 1), 2, 2),
        // The member was attached at 5 and changed since (its health).
        at(&member, 5, 40),
        // The forged vip rewrote an older app at 30.
        at(&forged_vip, 3, 30),
        at(&good_vip, 4, 4),
        at(&forged_container, 31, 31),
    ]);
    let view = MembershipView::default().reloaded(&l);
    assert_eq!(view.container_by_ip(member.ip), Some(&member));
    assert!(!view.apps.contains_key(&app_id(2)));
    assert_eq!(view.apps.get(&app_id(3)), Some(&good_vip));
    assert!(!view.containers.contains_key(&forged_container.key));
    assert_eq!(view.rejected.reason("address_taken"), 2);
    let kinds: Vec<_> = view.rejected.iter().map(|(k, r, _)| (k, r)).collect();
    assert_eq!(
        kinds,
        [("app", "address_taken"), ("container", "address_taken")]
    );
}

fn keyed(id: &str, peer_id: u32, key: u8) -> Host {
    let mut h = host(id, peer_id);
    h.public_key = Some(pn_tunnel::keyfile::encode_key(&[key; 32]));
    h
}

#[test]
fn a_tunnel_key_is_one_hosts_and_the_older_record_keeps_it() {
    let mut f = Fixture::new();
    f.ok(&keyed("h1", 1, 1));
    // A younger host publishing h1's key cuts only itself off.
    f.refused(&keyed("h2", 2, 1), Reject::KeyTaken);
    assert_eq!(f.view.hosts[&"h1".parse().unwrap()], keyed("h1", 1, 1));
    // h1 registering again (its creation unchanged) keeps it.
    f.ok(&keyed("h1", 1, 1));
    f.ok(&keyed("h2", 2, 2));
    // The older record taking the younger's key: the younger loses it,
    // as a listing would decide.
    assert_eq!(f.put(&keyed("h1", 1, 2)), Ok(Change::Host));
    assert!(!f.view.hosts.contains_key(&"h2".parse().unwrap()));
    assert_eq!(f.view.rejected.reason("host_key_taken"), 2);
    let l = listing_at(&[
        at(&network(1, "10.240.0.0/24", 1), 1, 1),
        // h1 registered first and again since; h2 came in between.
        at(&keyed("h1", 1, 1), 2, 50),
        at(&keyed("h2", 2, 1), 10, 10),
        at(&keyed("h3", 3, 3), 11, 11),
    ]);
    let view = MembershipView::default().reloaded(&l);
    let hosts: Vec<_> = view.hosts.keys().map(|h| h.to_string()).collect();
    assert_eq!(hosts, ["h1", "h3"]);
    assert_eq!(view.rejected.reason("host_key_taken"), 1);
}

#[test]
fn an_endpoint_is_unicast_outside_the_pool() {
    let mut f = Fixture::new();
    for bad in [
        "127.0.0.1:51871",
        "169.254.1.1:51871",
        "10.240.0.7:51871",
        "10.250.3.4:51871",
        "[::1]:51871",
        "[fe80::1]:51871",
        "[::ffff:127.0.0.1]:51871",
        "[ff02::1]:51871",
        "[::]:51871",
    ] {
        let mut h = host("h3", 3);
        h.advertise = Some(bad.parse().unwrap());
        f.refused(&h, Reject::Endpoint);
    }
    for good in ["192.168.100.3:51871", "[2001:db8::3]:51871"] {
        let mut h = host("h3", 3);
        h.advertise = Some(good.parse().unwrap());
        f.ok(&h);
    }
    // Another pool: 10.250.x is then an underlay address.
    let mut view = MembershipView::new("10.240.0.0/16".parse().unwrap());
    let mut h = host("h1", 1);
    h.advertise = Some("10.250.3.4:51871".parse().unwrap());
    let put = WatchEvent::Put {
        key: key_of(&h),
        value: serde_json::to_string(&h).unwrap(),
        rev: 1,
    };
    assert_eq!(view.apply(&put), Ok(Change::Host));
}

#[test]
fn a_container_keeps_its_host_namespace_interface_and_network() {
    let mut f = Fixture::new();
    let good = container(1, [10, 240, 0, 1], "h1");
    f.ok(&good);
    let mut other_host = good.clone();
    other_host.host = "h2".parse().unwrap();
    let mut other_ns = good.clone();
    other_ns.netns = "/proc/1/ns/net".into();
    let mut other_if = good.clone();
    other_if.ifname = "eth1".into();
    f.ok(&network(2, "10.240.1.0/24", 2));
    let mut other_net = good.clone();
    other_net.network = net_id(2);
    other_net.ip = "10.240.1.1".parse().unwrap();
    for bad in [&other_ns, &other_if, &other_net] {
        f.refused(bad, Reject::Immutable);
        assert_eq!(f.view.containers[&good.key], good);
    }
    // Another host's record of the key: the older keeps it.
    f.refused(&other_host, Reject::ContainerTaken);
    assert_eq!(f.view.containers[&good.key], good);
    // What a host's agent changes is fine: its health, its publication.
    let mut unhealthy = good.clone();
    unhealthy.unhealthy = true;
    f.ok(&unhealthy);
    // Detached, the key is free for any attachment.
    f.rev += 1;
    f.view
        .apply(&WatchEvent::Delete {
            key: key_of(&good),
            rev: f.rev,
        })
        .unwrap();
    f.ok(&other_host);
    assert_eq!(f.view.rejected.reason("immutable"), 3);
}

#[test]
fn a_host_record_put_again_unchanged_converges_nothing() {
    let mut f = Fixture::new();
    let h = host("h1", 1);
    assert_eq!(f.put(&h), Ok(Change::Host));
    // A re-registration: only when it started changes.
    let again = Host {
        started_at: 99,
        ..h.clone()
    };
    for _ in 0..3 {
        assert_eq!(f.put(&again), Ok(Change::Other));
    }
    assert_eq!(f.view.host_updates.get(HostUpdate::Unchanged), 3);
    assert_eq!(f.view.hosts[&h.id].started_at, 99);
    // Its endpoint moves: every agent's tunnel must follow.
    let moved = Host {
        advertise: Some("192.0.2.77:51871".parse().unwrap()),
        ..again
    };
    assert_eq!(f.put(&moved), Ok(Change::Host));
}
