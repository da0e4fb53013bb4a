//! Every rule of `checks`, through the view's own path (watch events and
//! listings), no kernel needed.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::*;
use crate::{
    store::{Entry, Listing, WatchEvent, keys::Key},
    testing::model::{app, app_id, container, host, key as ckey, member, net_id, network},
};

fn key_of<T: Record>(r: &T) -> String {
    r.key().to_string()
}

trait Record: Serialize {
    fn key(&self) -> Key;
}
impl Record for Network {
    fn key(&self) -> Key {
        Key::Network(self.id)
    }
}
impl Record for App {
    fn key(&self) -> Key {
        Key::App(self.id)
    }
}
impl Record for Container {
    fn key(&self) -> Key {
        Key::Container(self.host.clone(), self.key.clone())
    }
}
impl Record for Host {
    fn key(&self) -> Key {
        Key::Host(self.id.clone())
    }
}

struct Fixture {
    view: MembershipView,
    rev: i64,
}

impl Fixture {
    /// Network 1 (10.240.0.0/24, tag 1) with app 1, in the default pool.
    fn new() -> Fixture {
        let mut f = Fixture {
            view: MembershipView::default(),
            rev: 0,
        };
        f.ok(&network(1, "10.240.0.0/24", 1));
        f.ok(&app(1, 1));
        f
    }

    /// Puts a record; a container's leases first, as its host's agent
    /// writes them (`put_bare`: without).
    fn put_raw(&mut self, key: &str, value: &str) -> Result<Change, Rejected> {
        for (k, v) in leases_of(key, value) {
            self.put_bare(&k, &v).unwrap();
        }
        self.put_bare(key, value)
    }

    fn put_bare(&mut self, key: &str, value: &str) -> Result<Change, Rejected> {
        self.rev += 1;
        self.view.apply(&WatchEvent::Put {
            key: key.into(),
            value: value.into(),
            rev: self.rev,
        })
    }

    fn put<T: Record>(&mut self, r: &T) -> Result<Change, Rejected> {
        self.put_raw(&key_of(r), &serde_json::to_string(r).unwrap())
    }

    fn ok<T: Record>(&mut self, r: &T) {
        if let Err(e) = self.put(r) {
            panic!("refused: {e}");
        }
    }

    /// The record is refused for `reject`, and counted.
    fn refused<T: Record>(&mut self, r: &T, reject: Reject) {
        let before = self.count(reject);
        match self.put(r) {
            Err(e) => assert_eq!(e.reject, reject, "{e}"),
            Ok(c) => panic!("accepted ({c:?}), expected {}", reject.as_str()),
        }
        assert_eq!(self.count(reject), before + 1, "{}", reject.as_str());
    }

    fn count(&self, reject: Reject) -> u64 {
        self.view.rejected.reason(reject.as_str())
    }
}

#[test]
fn kinds_have_distinct_labels() {
    let labels: std::collections::BTreeSet<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), Reject::ALL.len());
}

#[test]
fn networks_lie_in_the_pool_clear_of_special_ranges() {
    let mut f = Fixture::new();
    for (cidr, n) in [
        ("10.0.0.0/24", 2),
        ("127.0.0.0/24", 3),
        ("224.0.0.0/24", 4),
        ("0.0.0.0/24", 5),
        ("169.254.0.0/24", 6),
        ("255.255.255.0/30", 7),
        ("10.241.0.1/24", 8),
        ("10.241.0.0/31", 9),
    ] {
        f.refused(&network(n, cidr, u32::from(n)), Reject::Range);
    }
    // Another pool: the same range is fine there, refused here.
    let mut other = MembershipView::new("10.0.0.0/16".parse().unwrap());
    let n = network(2, "10.0.0.0/24", 2);
    assert!(
        other
            .apply(&WatchEvent::Put {
                key: key_of(&n),
                value: serde_json::to_string(&n).unwrap(),
                rev: 1
            })
            .is_ok()
    );
    assert_eq!(f.view.networks.len(), 1);
}

#[test]
fn networks_do_not_overlap_share_tags_or_change() {
    let mut f = Fixture::new();
    f.refused(&network(2, "10.240.0.0/22", 2), Reject::Overlap);
    f.refused(&network(2, "10.240.4.0/22", 1), Reject::Tag);
    f.refused(&network(2, "10.240.4.0/22", 0), Reject::Tag);
    f.ok(&network(2, "10.240.4.0/22", 2));
    // Rewritten as it is (what `app create` does): fine.
    f.ok(&network(1, "10.240.0.0/24", 1));
    f.refused(&network(1, "10.240.8.0/24", 1), Reject::Immutable);
    f.refused(&network(1, "10.240.0.0/24", 9), Reject::Immutable);
    assert_eq!(
        f.view.networks[&net_id(1)].cidr.to_string(),
        "10.240.0.0/24"
    );
}

#[test]
fn apps_belong_to_known_networks_and_have_sane_names() {
    let mut f = Fixture::new();
    f.refused(&app(2, 9), Reject::UnknownNetwork);
    let mut named = app(2, 1);
    named.name = Some("a\u{7}b".into());
    f.refused(&named, Reject::AppName);
    named.name = Some("waf".into());
    f.ok(&named);
}

#[test]
fn a_record_is_the_one_its_key_names() {
    let mut f = Fixture::new();
    let c = container(1, [10, 240, 0, 1], "h1");
    let other = Key::Container(crate::testing::model::host_id("h1"), ckey(1, "web", 2)).to_string();
    let r = f
        .put_raw(&other, &serde_json::to_string(&c).unwrap())
        .unwrap_err();
    assert_eq!(r.reject, Reject::Key);
    let n = network(2, "10.240.4.0/22", 2);
    let r = f
        .put_raw(
            &Key::Network(net_id(3)).to_string(),
            &serde_json::to_string(&n).unwrap(),
        )
        .unwrap_err();
    assert_eq!(r.reject, Reject::Key);
    let r = f.put_raw("containers/nonsense", "{}").unwrap_err();
    assert_eq!(r.reject, Reject::Key);
    let r = f
        .put_raw(
            &Key::Container(crate::testing::model::host_id("h1"), ckey(1, "web", 3)).to_string(),
            "{not json",
        )
        .unwrap_err();
    assert_eq!(r.reject, Reject::Undecodable);
    // Keys the view does not track are not records to refuse.
    for other in ["pool", "ips/x", "claims/y", "peers/1", "elsewhere"] {
        assert_eq!(f.put_raw(other, "whatever"), Ok(Change::Other), "{other}");
    }
    assert_eq!(f.view.rejected.total(), 4);
    assert!(f.view.containers.is_empty());
}

#[test]
fn a_container_names_only_the_interface_its_key_derives() {
    let mut f = Fixture::new();
    let mut c = container(1, [10, 240, 0, 1], "h1");
    for foreign in ["eth0", "ul0", "pn-gw", "pn-tun", "lo", "pnh0123456789a"] {
        c.host_ifname = foreign.into();
        f.refused(&c, Reject::HostInterface);
    }
    let mut c = container(1, [10, 240, 0, 1], "h1");
    for bad in ["", "lo", "a/b", "much-too-long-name", ".."] {
        c.ifname = bad.into();
        f.refused(&c, Reject::Interface);
    }
    let mut c = container(1, [10, 240, 0, 1], "h1");
    for bad in ["", "..", "x/y", "/run/netns/../../etc"] {
        c.netns = bad.into();
        f.refused(&c, Reject::Netns);
    }
    assert!(f.view.containers.is_empty());
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
}

#[test]
fn a_container_address_is_its_networks_and_its_own() {
    let mut f = Fixture::new();
    for bad in [
        "10.240.1.1",
        "192.0.2.1",
        "127.0.0.1",
        "10.240.0.0",
        "10.240.0.255",
    ] {
        f.refused(
            &container(1, bad.parse::<Ipv4Addr>().unwrap(), "h1"),
            Reject::Address,
        );
    }
    let mut stray = container(1, [10, 240, 0, 1], "h1");
    stray.network = net_id(9);
    f.refused(&stray, Reject::UnknownNetwork);
    let mut orphan = container(1, [10, 240, 0, 1], "h1");
    orphan.key = ckey(7, "web", 1);
    orphan.host_ifname = orphan.key.host_ifname();
    f.refused(&orphan, Reject::UnknownApp);
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
    // A second container claiming the address is refused; the first keeps it.
    f.refused(&container(2, [10, 240, 0, 1], "h1"), Reject::AddressTaken);
    assert_eq!(
        f.view
            .container_by_ip("10.240.0.1".parse().unwrap())
            .unwrap()
            .key,
        ckey(1, "web", 1)
    );
    // An address changes only with the network (its app moved); the old
    // address is then free.
    f.refused(&container(1, [10, 240, 0, 9], "h1"), Reject::Immutable);
    f.ok(&network(2, "10.240.1.0/24", 2));
    f.ok(&app(1, 2));
    f.ok(&member(
        ckey(1, "web", 1),
        net_id(2),
        [10, 240, 1, 9].into(),
        "h1",
    ));
    f.ok(&container(2, [10, 240, 0, 1], "h1"));
    assert_eq!(f.view.by_ip.len(), 2);
}

#[test]
fn a_refused_change_keeps_the_last_good_record() {
    let mut f = Fixture::new();
    let good = container(1, [10, 240, 0, 1], "h1");
    f.ok(&good);
    let mut bad = good.clone();
    bad.host_ifname = "eth0".into();
    f.refused(&bad, Reject::HostInterface);
    assert_eq!(f.view.containers[&good.key], good);
    assert_eq!(f.view.container_by_ip(good.ip), Some(&good));
}

#[test]
fn hosts_have_endpoints_keys_and_their_own_peer_ids() {
    let mut f = Fixture::new();
    f.ok(&host("h1", 1));
    f.refused(&host("h2", 1), Reject::PeerId);
    f.refused(&host("h2", 0), Reject::PeerId);
    f.ok(&host("h2", 2));
    // Registering again with its own id is fine.
    f.ok(&host("h1", 1));
    for bad in [
        "0.0.0.0:51871",
        "192.0.2.1:0",
        "224.0.0.1:51871",
        "255.255.255.255:1",
    ] {
        let mut h = host("h3", 3);
        h.advertise = Some(bad.parse().unwrap());
        f.refused(&h, Reject::Endpoint);
    }
    let mut h = host("h3", 3);
    h.public_key = Some("c2hvcnQ=".into());
    f.refused(&h, Reject::HostKey);
    assert_eq!(f.view.peer_id(&"h1".parse().unwrap()), Some(1));
    assert_eq!(f.view.peer_id(&"h3".parse().unwrap()), None);
    let ids: std::collections::BTreeSet<u32> = f.view.hosts.values().map(|h| h.peer_id).collect();
    assert_eq!(ids.len(), f.view.hosts.len());
}

fn listing(records: &[(String, String, i64)]) -> Listing {
    Listing {
        entries: with_leases(
            records
                .iter()
                .map(|(k, v, rev)| {
                    (
                        k.clone(),
                        Entry {
                            value: v.clone(),
                            mod_rev: *rev,
                            create_rev: *rev,
                        },
                    )
                })
                .collect(),
        ),
        rev: 100,
    }
}

/// The leases of a container record at `key` (of either layout) that its
/// host's agent writes before it: none for another record.
fn leases_of(key: &str, value: &str) -> Vec<(String, String)> {
    use std::net::IpAddr;
    let Ok(c) = serde_json::from_str::<Container>(value) else {
        return Vec::new();
    };
    let lease = serde_json::to_string(&crate::model::AddressLease {
        owner: c.key.clone(),
        host: c.host.clone(),
        service: false,
    })
    .unwrap();
    let ips = std::iter::once(IpAddr::V4(c.ip)).chain(c.ip6.map(IpAddr::V6));
    let at: Vec<Key> = match Key::parse(key) {
        Some(Key::Container(h, _)) => ips
            .map(|ip| Key::HostIp(h.clone(), c.network, ip))
            .collect(),
        Some(Key::LegacyContainer(_)) => ips.map(|ip| Key::lease(c.network, ip)).collect(),
        _ => Vec::new(),
    };
    at.into_iter()
        .map(|k| (k.to_string(), lease.clone()))
        .collect()
}

/// A listing's entries and the leases of its containers (created with
/// them; the first of two of one key).
fn with_leases(entries: Vec<(String, Entry)>) -> Vec<(String, Entry)> {
    let mut out = entries.clone();
    let mut seen: std::collections::HashSet<String> =
        entries.iter().map(|(k, _)| k.clone()).collect();
    for (k, e) in &entries {
        for (lk, lv) in leases_of(k, &e.value) {
            if seen.insert(lk.clone()) {
                out.push((
                    lk,
                    Entry {
                        value: lv,
                        ..e.clone()
                    },
                ));
            }
        }
    }
    out
}

fn rec<T: Record>(r: &T, rev: i64) -> (String, String, i64) {
    (key_of(r), serde_json::to_string(r).unwrap(), rev)
}

#[test]
fn a_listing_loads_what_records_refer_to_first_and_the_older_holder_wins() {
    let mut early = container(2, [10, 240, 0, 5], "h1");
    early.created_at = 1;
    let late = container(1, [10, 240, 0, 5], "h1");
    // Key order puts apps and containers before networks, and container 1
    // before container 2; revisions say container 2 was there first.
    let l = listing(&[
        rec(&app(1, 1), 2),
        rec(&late, 9),
        rec(&early, 3),
        rec(&host("h1", 1), 4),
        rec(&network(1, "10.240.0.0/24", 1), 1),
    ]);
    let view = MembershipView::default().reloaded(&l);
    assert_eq!(view.rev, 100);
    assert_eq!(view.networks.len(), 1);
    assert_eq!(view.apps.len(), 1);
    assert_eq!(view.hosts.len(), 1);
    assert_eq!(view.containers.len(), 1);
    assert_eq!(
        view.container_by_ip("10.240.0.5".parse().unwrap()),
        Some(&early)
    );
    assert_eq!(view.rejected.reason("address_taken"), 1);
}

#[test]
fn a_refusal_is_counted_once_per_version() {
    let mut bad = container(1, [10, 240, 0, 1], "h1");
    bad.host_ifname = "eth0".into();
    let base = [rec(&network(1, "10.240.0.0/24", 1), 1), rec(&app(1, 1), 2)];
    let l = listing(&[base[0].clone(), base[1].clone(), rec(&bad, 3)]);
    let view = MembershipView::default().reloaded(&l);
    assert_eq!(view.rejected.reason("host_interface"), 1);
    // Listed again (a resync): the same version is not counted again.
    let view = view.reloaded(&l);
    assert_eq!(view.rejected.reason("host_interface"), 1);
    // Its watch event after the listing: not counted again either.
    let mut view = view;
    let ev = WatchEvent::Put {
        key: key_of(&bad),
        value: serde_json::to_string(&bad).unwrap(),
        rev: 3,
    };
    assert!(view.apply(&ev).is_err());
    assert_eq!(view.rejected.reason("host_interface"), 1);
    // A new version is a new refusal.
    let ev = WatchEvent::Put {
        key: key_of(&bad),
        value: serde_json::to_string(&bad).unwrap(),
        rev: 7,
    };
    assert!(view.apply(&ev).is_err());
    assert_eq!(view.rejected.reason("host_interface"), 2);
    // Deleted, then written again at its old revision's value: counted.
    view.apply(&WatchEvent::Delete {
        key: key_of(&bad),
        rev: 8,
    })
    .unwrap();
    let l2 = listing(&[base[0].clone(), base[1].clone(), rec(&bad, 3)]);
    let view = view.reloaded(&l2);
    assert_eq!(view.rejected.reason("host_interface"), 3);
    // The pool carries over a reload.
    assert_eq!(view.pool, MembershipView::default().pool);
}

#[test]
fn a_watch_follows_valid_records_as_before() {
    let mut f = Fixture::new();
    let c = container(1, [10, 240, 0, 1], "h1");
    assert_eq!(
        f.put(&c),
        Ok(Change::ContainerPut {
            new: Box::new(c.clone()),
            old: None
        })
    );
    f.rev += 1;
    let gone = f.view.apply(&WatchEvent::Delete {
        key: key_of(&c),
        rev: f.rev,
    });
    assert_eq!(gone, Ok(Change::ContainerDeleted(Box::new(c.clone()))));
    assert!(f.view.by_ip.is_empty());
    assert!(f.view.rejected.is_empty());
    let _: Ipv4Addr = c.ip;
}

#[test]
fn egress_changes_in_place_and_web_ports_are_ports() {
    let mut f = Fixture::new();
    let mut sealed = network(1, "10.240.0.0/24", 1);
    sealed.egress = crate::model::Egress::Deny;
    assert_eq!(f.put(&sealed), Ok(Change::Network(net_id(1))));
    assert_eq!(
        f.view.networks[&net_id(1)].egress,
        crate::model::Egress::Deny
    );
    let mut a = app(2, 1);
    a.web_port = 0;
    f.refused(&a, Reject::WebPort);
    a.web_port = 3000;
    f.ok(&a);
    // Records of older agents have no web port: 8080.
    let mut old = serde_json::to_value(app(7, 1)).unwrap();
    old.as_object_mut().unwrap().remove("web_port");
    f.put_raw(&key_of(&app(7, 1)), &old.to_string()).unwrap();
    assert_eq!(f.view.apps[&app_id(7)].web_port, 8080);
}

#[test]
fn publications_are_web_unicast_and_one_per_port_of_a_host() {
    let mut f = Fixture::new();
    let at = |s: &str| Some(s.parse::<std::net::SocketAddrV4>().unwrap());
    let mut c1 = container(1, [10, 240, 0, 2], "h1");
    c1.published = at("192.0.2.1:30000");
    f.ok(&c1);
    assert_eq!(
        f.view.published_at.get(&("h1".parse().unwrap(), 30000)),
        Some(&c1.key)
    );
    // Another container on the same port of the same host: refused.
    let mut c2 = container(2, [10, 240, 0, 3], "h1");
    c2.published = at("192.0.2.1:30000");
    f.refused(&c2, Reject::Published);
    // The same port of another host is another port.
    c2.host = "h2".parse().unwrap();
    f.ok(&c2);
    // Not web, port 0, not unicast.
    let key = ckey(1, "worker", 1);
    let mut w = container(3, [10, 240, 0, 4], "h1");
    w.host_ifname = key.host_ifname();
    w.key = key;
    w.published = at("192.0.2.1:30001");
    f.refused(&w, Reject::Published);
    let mut c3 = container(3, [10, 240, 0, 4], "h1");
    for bad in [
        "192.0.2.1:0",
        "0.0.0.0:30002",
        "127.0.0.1:30002",
        "224.0.0.1:30002",
    ] {
        c3.published = at(bad);
        f.refused(&c3, Reject::Published);
    }
    // Moving c1 to another port frees the first one.
    c1.published = at("192.0.2.1:30005");
    f.ok(&c1);
    c3.published = at("192.0.2.1:30000");
    f.ok(&c3);
    // A detached container frees its port.
    f.view
        .apply(&WatchEvent::Delete {
            key: key_of(&c3),
            rev: 99,
        })
        .unwrap();
    assert!(
        !f.view
            .published_at
            .contains_key(&("h1".parse().unwrap(), 30000))
    );
}

#[test]
fn a_selector_designates_its_type_or_container_of_its_app_only() {
    use pn_common::names::Selector;
    let mut f = Fixture::new();
    f.ok(&app(2, 1));
    let mut n = 0;
    for (a, t, i) in [
        (1, "api", 1),
        (1, "web", 1),
        (1, "web", 2),
        (1, "worker", 1),
        (1, "worker", 2),
        (1, "worker", 10),
        (2, "web", 1),
        (2, "worker", 2),
    ] {
        n += 1;
        f.ok(&member(
            ckey(a, t, i),
            net_id(1),
            [10, 240, 0, n].into(),
            "h1",
        ));
    }
    let names = |s: Selector| -> Vec<String> {
        f.view
            .select(&app_id(1), &s)
            .map(|c| c.key.name())
            .collect()
    };
    let t = |s: &str| s.parse().unwrap();
    assert_eq!(names(Selector::Web), ["web-1", "web-2"]);
    assert_eq!(
        names(Selector::Type(t("worker"))),
        ["worker-1", "worker-2", "worker-10"]
    );
    assert_eq!(names(Selector::Container(t("worker"), 2)), ["worker-2"]);
    assert_eq!(
        names(Selector::Container(t("worker"), 3)),
        Vec::<String>::new()
    );
    assert_eq!(names(Selector::Type(t("db"))), Vec::<String>::new());
    assert_eq!(names(Selector::Container(t("api"), 1)), ["api-1"]);
}

mod leases;
mod placement;
mod quota;
mod services6;
mod trust;
mod v6;
