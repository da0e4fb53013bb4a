//! Who may place a container: the host whose range holds the record (and
//! no other), admitted to the app, on a key no older record of another
//! host holds; and the legacy layout read beside the new one.

use super::*;
use crate::model::Admissions;

fn admissions(enforced: bool, apps: &[(u8, &[&str])]) -> Admissions {
    Admissions {
        enforced,
        apps: apps
            .iter()
            .map(|(n, hosts)| {
                (
                    app_id(*n),
                    hosts.iter().map(|h| h.parse().unwrap()).collect(),
                )
            })
            .collect(),
    }
}

fn put_admissions(f: &mut Fixture, a: &Admissions) -> Change {
    f.put_raw("admissions", &serde_json::to_string(a).unwrap())
        .unwrap()
}

#[test]
fn a_record_in_one_hosts_range_names_that_host() {
    let mut f = Fixture::new();
    let c = container(1, [10, 240, 0, 1], "h1");
    let in_h2 = Key::Container("h2".parse().unwrap(), c.key.clone()).to_string();
    let r = f
        .put_raw(&in_h2, &serde_json::to_string(&c).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::WrongHost, "{r}");
    assert!(f.view.containers.is_empty());
    // A legacy record has no host in its key: only the operator writes
    // there once roles are set up.
    let legacy = Key::LegacyContainer(c.key.clone()).to_string();
    f.put_raw(&legacy, &serde_json::to_string(&c).unwrap())
        .unwrap();
    assert_eq!(f.view.containers[&c.key], c);
}

#[test]
fn without_admissions_every_host_runs_every_app_and_enforced_only_the_admitted() {
    let mut f = Fixture::new();
    f.ok(&app(2, 1));
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
    assert_eq!(
        put_admissions(&mut f, &admissions(false, &[(2, &["h9"])])),
        Change::Admissions
    );
    f.ok(&container(2, [10, 240, 0, 2], "h2"));
    put_admissions(
        &mut f,
        &admissions(true, &[(1, &["h1", "h2"]), (2, &["h1"])]),
    );
    f.ok(&container(3, [10, 240, 0, 3], "h2"));
    let mut of_app2 = container(4, [10, 240, 0, 4], "h2");
    of_app2.key.app = app_id(2);
    of_app2.host_ifname = of_app2.key.host_ifname();
    f.refused(&of_app2, Reject::NotAdmitted);
    of_app2.host = "h1".parse().unwrap();
    f.ok(&of_app2);
    // Gone, the record admits everyone again.
    f.rev += 1;
    assert_eq!(
        f.view
            .apply(&WatchEvent::Delete {
                key: "admissions".into(),
                rev: f.rev
            })
            .unwrap(),
        Change::Admissions
    );
    let mut again = container(5, [10, 240, 0, 5], "h2");
    again.key.app = app_id(2);
    again.host_ifname = again.key.host_ifname();
    f.ok(&again);
}

#[test]
fn admissions_load_before_the_containers_they_judge() {
    let view = MembershipView::default();
    let c = container(1, [10, 240, 0, 1], "h2");
    let listing = Listing {
        entries: with_leases(vec![
            entry(&key_of(&c), &serde_json::to_string(&c).unwrap(), 5),
            entry(
                "admissions",
                &serde_json::to_string(&admissions(true, &[(1, &["h1"])])).unwrap(),
                9,
            ),
            entry(
                &key_of(&network(1, "10.240.0.0/24", 1)),
                &serde_json::to_string(&network(1, "10.240.0.0/24", 1)).unwrap(),
                1,
            ),
            entry(
                &key_of(&app(1, 1)),
                &serde_json::to_string(&app(1, 1)).unwrap(),
                2,
            ),
        ]),
        rev: 10,
    };
    let v = view.reloaded(&listing);
    assert!(v.containers.is_empty());
    // The record, and its host's lease in a network it runs no app of.
    let refused: Vec<_> = v.rejected.iter().collect();
    assert_eq!(
        refused,
        [
            ("container", "not_admitted", 1),
            ("lease", "not_admitted", 1)
        ]
    );
}

fn entry(key: &str, value: &str, rev: i64) -> (String, Entry) {
    (
        key.into(),
        Entry {
            value: value.into(),
            mod_rev: rev,
            create_rev: rev,
        },
    )
}

#[test]
fn another_hosts_record_of_a_key_neither_takes_it_nor_deletes_it() {
    let mut f = Fixture::new();
    let good = container(1, [10, 240, 0, 1], "h1");
    f.ok(&good);
    let mut forged = container(1, [10, 240, 0, 9], "h2");
    forged.netns = "victim".into();
    f.refused(&forged, Reject::ContainerTaken);
    // Its delete (the attacker's own key) leaves the older record.
    f.rev += 1;
    let change = f
        .view
        .apply(&WatchEvent::Delete {
            key: key_of(&forged),
            rev: f.rev,
        })
        .unwrap();
    assert_eq!(change, Change::Other);
    assert_eq!(f.view.containers[&good.key], good);
    assert!(f.view.container_by_ip(good.ip).is_some());
    // In a listing, the older record keeps the key whatever the order.
    let (net, app) = (network(1, "10.240.0.0/24", 1), app(1, 1));
    let listing = Listing {
        entries: with_leases(vec![
            entry(
                &key_of(&forged),
                &serde_json::to_string(&forged).unwrap(),
                50,
            ),
            entry(&key_of(&good), &serde_json::to_string(&good).unwrap(), 40),
            entry(&key_of(&net), &serde_json::to_string(&net).unwrap(), 1),
            entry(&key_of(&app), &serde_json::to_string(&app).unwrap(), 2),
        ]),
        rev: 60,
    };
    let v = f.view.reloaded(&listing);
    assert_eq!(v.containers[&good.key], good);
}

#[test]
fn a_record_moved_from_the_legacy_layout_stays_in_the_view() {
    let mut f = Fixture::new();
    let c = container(1, [10, 240, 0, 1], "h1");
    let legacy = Key::LegacyContainer(c.key.clone()).to_string();
    let value = serde_json::to_string(&c).unwrap();
    f.put_raw(&legacy, &value).unwrap();
    // The migration's transaction: the new record, then the old one goes.
    let change = f.put_raw(&key_of(&c), &value).unwrap();
    assert!(matches!(change, Change::ContainerPut { old: Some(_), .. }));
    f.rev += 1;
    let change = f
        .view
        .apply(&WatchEvent::Delete {
            key: legacy,
            rev: f.rev,
        })
        .unwrap();
    assert_eq!(change, Change::Other, "the container did not leave");
    assert_eq!(f.view.containers[&c.key], c);
    // Its own key's delete is a detach.
    f.rev += 1;
    let change = f
        .view
        .apply(&WatchEvent::Delete {
            key: key_of(&c),
            rev: f.rev,
        })
        .unwrap();
    assert!(matches!(change, Change::ContainerDeleted(_)));
    assert!(f.view.containers.is_empty());
}
