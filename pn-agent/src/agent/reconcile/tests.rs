//! `desired()` against hand-built views, and the whole path from a view to
//! a fake kernel, with no kernel and no store.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use pn_common::ids::HostId;

use super::*;
pub(super) use crate::testing::model::{container, host_id as host, net_id};
use crate::{
    datapath::{Datapath, fake::FakeMaps},
    testing::model,
};

pub(super) fn add(v: &mut MembershipView, c: Container) {
    v.by_ip.insert(c.ip, c.key.clone());
    v.containers.insert(c.key.clone(), c);
}

/// Network 10.240.0.0/22 (tag 3); hosts a (this one) and b; web-1 on a,
/// web-2 on b.
pub(super) fn fleet() -> MembershipView {
    let mut v = MembershipView::default();
    v.networks
        .insert(net_id(1), model::network(1, "10.240.0.0/22", 3));
    v.apps.insert(model::app_id(1), model::app(1, 1));
    for (id, peer) in [("a", 1), ("b", 2), ("c", 3)] {
        v.hosts.insert(host(id), model::host(id, peer));
    }
    add(&mut v, container(1, [10, 240, 0, 2], "a"));
    add(&mut v, container(2, [10, 240, 0, 3], "b"));
    v
}

pub(super) fn links(v: &MembershipView) -> BTreeMap<String, u32> {
    v.containers
        .values()
        .filter(|c| c.host == host("a"))
        .enumerate()
        .map(|(i, c)| (c.host_ifname.clone(), 10 + i as u32))
        .collect()
}

pub(super) fn a() -> HostId {
    host("a")
}

pub(super) fn desired_for(
    v: &MembershipView,
    links: &BTreeMap<String, u32>,
    t: &Touched,
) -> Desired {
    let me = a();
    desired(
        v,
        &Local {
            host: &me,
            edge: None,
        },
        links,
        t,
    )
}

pub(super) fn ip(a: [u8; 4]) -> Ip4 {
    to_ip4(Ipv4Addr::from(a))
}

/// Hosts advertising IPv6 go to `PN_PEERS6`; the tunnel pairs only with
/// the hosts of this host's family (its sockets are of that family).
#[test]
fn ipv6_endpoints_are_peers6_and_the_tunnel_pairs_within_a_family() {
    let mut v = fleet();
    let set = |v: &mut MembershipView, id: &str, a: &str| {
        v.hosts.get_mut(&host(id)).unwrap().advertise = Some(a.parse().unwrap());
    };
    set(&mut v, "b", "[2001:db8::2]:51871");
    set(&mut v, "c", "[::ffff:192.0.2.3]:51871");
    let d = desired_for(&v, &links(&v), &Touched::All);
    let b6: Ip6 = "2001:db8::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    assert_eq!(d.datapath.peers6.keys().collect::<Vec<_>>(), [&b6]);
    assert_eq!(d.datapath.peers6[&b6].index, 2);
    assert_eq!(
        d.datapath.peers.keys().collect::<Vec<_>>(),
        [&ip([192, 0, 2, 3])],
        "an IPv4-mapped endpoint is IPv4"
    );
    // This host (a) advertises IPv4: c only, as IPv4.
    let tp = d.tunnel_peers.unwrap();
    let ends: Vec<SocketAddr> = tp.iter().map(|p| p.2).collect();
    assert_eq!(ends, ["192.0.2.3:51871".parse::<SocketAddr>().unwrap()]);
    // This host advertises IPv6: b only.
    set(&mut v, "a", "[2001:db8::1]:51871");
    let tp = desired_for(&v, &links(&v), &Touched::All)
        .tunnel_peers
        .unwrap();
    let ends: Vec<SocketAddr> = tp.iter().map(|p| p.2).collect();
    assert_eq!(ends, ["[2001:db8::2]:51871".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn the_whole_fleet_gives_local_and_remote_entries_peers_and_tags() {
    let v = fleet();
    let d = desired_for(&v, &links(&v), &Touched::All);
    let local = d.datapath.endpoints[&ip([10, 240, 0, 2])];
    assert_eq!(
        (local.tag, local.ifindex, local.is_remote()),
        (3, 10, false)
    );
    let remote = d.datapath.endpoints[&ip([10, 240, 0, 3])];
    assert!(remote.is_remote());
    assert_eq!(remote.peer, 2);
    assert_eq!(d.datapath.ifaces[&10].addr, ip([10, 240, 0, 2]));
    assert_eq!(d.datapath.attached.len(), 1);
    assert_eq!(d.datapath.tags, [3].into());
    // Peers: b and c (never this host).
    assert_eq!(d.datapath.peers.len(), 2);
    assert_eq!(d.datapath.peers[&ip([192, 0, 2, 2])].index, 2);
    let tp = d.tunnel_peers.unwrap();
    assert_eq!(tp.len(), 2);
    assert_eq!(tp[0].2, "192.0.2.2:51871".parse::<SocketAddr>().unwrap());
    assert_eq!(d.members.len(), 2);
    assert!(d.members[&Ipv4Addr::new(10, 240, 0, 3)].peer.is_some());
    assert!(d.stale.is_empty() && d.orphans.is_empty());
    // No facts of the host here: the deny list is left alone.
    assert_eq!(d.scope, Some(Scope::all().with_edge(false)));
    assert_eq!(d.edge, None);
}

#[test]
fn a_local_container_without_its_interface_is_stale_and_a_stray_interface_an_orphan() {
    let v = fleet();
    let mut l = BTreeMap::new();
    l.insert("pnh00000000bad".to_string(), 42);
    let d = desired_for(&v, &l, &Touched::All);
    assert_eq!(d.stale, [container(1, [10, 240, 0, 2], "a").key]);
    assert_eq!(d.orphans, ["pnh00000000bad"]);
    assert!(!d.datapath.endpoints.contains_key(&ip([10, 240, 0, 2])));
    assert!(d.datapath.attached.is_empty());
}

#[test]
fn containers_of_a_host_the_view_does_not_know_fail_closed() {
    let mut v = fleet();
    let stranger = container(4, [10, 240, 0, 9], "nobody");
    add(&mut v, stranger.clone());
    let d = desired_for(&v, &links(&v), &Touched::All);
    assert!(!d.datapath.endpoints.contains_key(&ip([10, 240, 0, 9])));
    assert!(!d.members.contains_key(&stranger.ip));
}

#[test]
fn a_scoped_change_covers_only_the_touched_container() {
    let mut v = fleet();
    let c3 = container(3, [10, 240, 0, 4], "b");
    add(&mut v, c3.clone());
    let d = desired_for(&v, &BTreeMap::new(), &Touched::Containers(vec![c3]));
    assert_eq!(d.datapath.endpoints.len(), 1);
    assert!(d.datapath.endpoints[&ip([10, 240, 0, 4])].is_remote());
    let scope = d.scope.unwrap();
    assert!(
        !scope.underlay,
        "a remote container leaves the underlay alone"
    );
    assert_eq!(d.addrs.unwrap().len(), 1);
    assert!(d.tunnel_peers.is_none());
}

/// Runs desired → fake datapath, as the agent does, and returns the kernel.
fn converge(dp: &mut Datapath<FakeMaps>, v: &MembershipView, t: &Touched) -> Desired {
    let d = desired_for(v, &links(v), t);
    dp.apply(&d.datapath, d.scope.as_ref().unwrap()).unwrap();
    d
}

#[test]
fn a_container_moving_to_another_host_becomes_remote_and_its_interface_goes() {
    let mut v = fleet();
    let mut dp = Datapath::new(FakeMaps::default());
    let l_before = links(&v);
    converge(&mut dp, &v, &Touched::All);
    let before = container(1, [10, 240, 0, 2], "a");
    // The record now says host b (same key, same address).
    let mut moved = before.clone();
    moved.host = host("b");
    add(&mut v, moved);
    // Its interface still exists on this host until the agent removes it.
    let d = desired_for(&v, &l_before, &Touched::Containers(vec![before.clone()]));
    dp.apply(&d.datapath, d.scope.as_ref().unwrap()).unwrap();
    let k = &dp.maps().state;
    let ep = k.endpoints[&ip([10, 240, 0, 2])];
    assert!(ep.is_remote() && ep.peer == 2);
    assert!(k.ifaces.is_empty(), "{:?}", k.ifaces);
    assert!(k.attached.is_empty());
    assert_eq!(d.orphans, std::slice::from_ref(&before.host_ifname));
    assert_eq!(d.left_netns, ["ns1"]);
    // No local member left: its network's tag leaves the underlay guard.
    assert!(k.tags.is_empty());
    // The other entries were not touched.
    assert!(k.endpoints.contains_key(&ip([10, 240, 0, 3])));
}

#[test]
fn a_removed_host_takes_its_containers_and_its_peer_away() {
    let mut v = fleet();
    let mut dp = Datapath::new(FakeMaps::default());
    converge(&mut dp, &v, &Touched::All);
    assert_eq!(dp.maps().state.peers.len(), 2);
    // `host remove b`: its containers, then its record.
    let gone = v
        .containers
        .remove(&container(2, [10, 240, 0, 3], "b").key)
        .unwrap();
    v.by_ip.remove(&gone.ip);
    converge(&mut dp, &v, &Touched::Containers(vec![gone]));
    assert!(!dp.maps().state.endpoints.contains_key(&ip([10, 240, 0, 3])));
    v.hosts.remove(&host("b"));
    let d = converge(&mut dp, &v, &Touched::Fleet);
    assert_eq!(dp.maps().state.peers.len(), 1, "only c is left");
    assert_eq!(d.tunnel_peers.unwrap().len(), 1);
    // This host's own container is untouched.
    assert_eq!(dp.maps().state.endpoints.len(), 1);
    assert_eq!(dp.maps().state.attached.len(), 1);
}

#[test]
fn an_address_taken_over_by_another_container_is_rewritten_not_removed() {
    let mut v = fleet();
    let mut dp = Datapath::new(FakeMaps::default());
    converge(&mut dp, &v, &Touched::All);
    // web-2 (remote) is detached and web-3 (remote too) gets its address.
    let gone = v
        .containers
        .remove(&container(2, [10, 240, 0, 3], "b").key)
        .unwrap();
    let c3 = container(3, [10, 240, 0, 3], "c");
    add(&mut v, c3.clone());
    converge(&mut dp, &v, &Touched::Containers(vec![gone, c3]));
    let ep = dp.maps().state.endpoints[&ip([10, 240, 0, 3])];
    assert_eq!(ep.peer, 3);
}

#[test]
fn the_same_view_twice_changes_nothing() {
    let v = fleet();
    let mut dp = Datapath::new(FakeMaps::default());
    converge(&mut dp, &v, &Touched::All);
    let d = desired_for(&v, &links(&v), &Touched::All);
    let ch = dp.apply(&d.datapath, d.scope.as_ref().unwrap()).unwrap();
    assert!(ch.is_empty(), "{ch:?}");
}

#[test]
fn an_app_moving_to_another_network_rewrites_entries_and_readdresses_local_interfaces() {
    let mut v = fleet();
    v.networks
        .insert(net_id(2), model::network(2, "10.240.4.0/22", 4));
    let mut dp = Datapath::new(FakeMaps::default());
    let l = links(&v);
    converge(&mut dp, &v, &Touched::All);
    let (local_was, remote_was) = (
        container(1, [10, 240, 0, 2], "a"),
        container(2, [10, 240, 0, 3], "b"),
    );
    let mut touched = Vec::new();
    for (was, ip) in [
        (&local_was, [10, 240, 4, 1]),
        (&remote_was, [10, 240, 4, 2]),
    ] {
        let mut now = was.clone();
        now.network = net_id(2);
        now.ip = Ipv4Addr::from(ip);
        v.by_ip.remove(&was.ip);
        add(&mut v, now);
        touched.push(was.clone());
    }
    let d = desired_for(&v, &l, &Touched::Containers(touched));
    dp.apply(&d.datapath, d.scope.as_ref().unwrap()).unwrap();
    let k = &dp.maps().state;
    // The old addresses are nobody's; the new ones carry the new tag.
    assert!(!k.endpoints.contains_key(&ip([10, 240, 0, 2])));
    assert!(!k.endpoints.contains_key(&ip([10, 240, 0, 3])));
    assert_eq!(k.endpoints[&ip([10, 240, 4, 1])].tag, 4);
    assert!(k.endpoints[&ip([10, 240, 4, 2])].is_remote());
    // Same interface: its index keeps its place, with the new source.
    assert_eq!(k.ifaces[&10].addr, ip([10, 240, 4, 1]));
    assert_eq!(k.ifaces[&10].tag, 4);
    assert_eq!(k.tags, [4].into());
    // Only the local container is re-addressed here, in place.
    assert_eq!(d.readdressed.len(), 1);
    let (was, now) = &d.readdressed[0];
    assert_eq!(
        (was.ip, now.ip),
        (local_was.ip, Ipv4Addr::new(10, 240, 4, 1))
    );
    assert!(d.orphans.is_empty() && d.stale.is_empty() && d.left_netns.is_empty());
    assert!(!d.members.contains_key(&local_was.ip));
}

#[test]
fn ipv6_addresses_give_ipv6_entries_and_scopes() {
    let mut v = fleet();
    let a6: std::net::Ipv6Addr = "fd12:3456:789a:1::2".parse().unwrap();
    let b6: std::net::Ipv6Addr = "fd12:3456:789a:1::3".parse().unwrap();
    let mut c3 = container(3, [10, 240, 0, 4], "b");
    c3.ip6 = Some(b6);
    add(&mut v, c3.clone());
    let k1 = container(1, [10, 240, 0, 2], "a").key;
    v.containers.get_mut(&k1).unwrap().ip6 = Some(a6);
    let d = desired_for(&v, &links(&v), &Touched::All);
    assert_eq!(d.datapath.ifaces[&10].addr6, a6.octets());
    let local = d.datapath.endpoints6[&a6.octets()];
    assert_eq!(
        (local.tag, local.ifindex, local.is_remote()),
        (3, 10, false)
    );
    assert!(d.datapath.endpoints6[&b6.octets()].is_remote());
    // web-2 has none: no IPv6 entry, and its interface's `::` names nothing.
    assert_eq!(d.datapath.endpoints6.len(), 2);
    // A change to one container covers its IPv6 address, before and after.
    let mut before = c3.clone();
    before.ip6 = Some("fd12:3456:789a:1::9".parse().unwrap());
    let d = desired_for(&v, &links(&v), &Touched::Containers(vec![before]));
    let scope = d.scope.unwrap();
    assert_eq!(
        scope.addrs6.unwrap(),
        [
            b6.octets(),
            "fd12:3456:789a:1::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        ]
        .into()
    );
    assert_eq!(d.datapath.endpoints6.len(), 1);
}

#[test]
fn ipv6_members_and_the_networks_prefixes_go_to_the_tunnel() {
    let mut v = fleet();
    let a6: std::net::Ipv6Addr = "fd12:3456:789a:1::2".parse().unwrap();
    let b6: std::net::Ipv6Addr = "fd12:3456:789a:1::3".parse().unwrap();
    let net6: ipnet::Ipv6Net = "fd12:3456:789a:1::/64".parse().unwrap();
    v.networks.get_mut(&net_id(1)).unwrap().cidr6 = Some(net6);
    let mut c3 = container(3, [10, 240, 0, 4], "b");
    c3.ip6 = Some(b6);
    add(&mut v, c3.clone());
    let k1 = container(1, [10, 240, 0, 2], "a").key;
    v.containers.get_mut(&k1).unwrap().ip6 = Some(a6);
    let d = desired_for(&v, &links(&v), &Touched::All);
    assert_eq!(d.members6[&a6], Member { tag: 3, peer: None });
    assert_eq!(
        d.members6[&b6],
        Member {
            tag: 3,
            peer: Some(2)
        }
    );
    assert_eq!(d.members6.len(), 2);
    assert_eq!(d.addrs6, None, "the whole table");
    assert_eq!(d.tunnel_routes6, Some([net6].into()));
    // A change to one container covers its IPv6 member, before and after.
    let mut before = c3.clone();
    before.ip6 = Some("fd12:3456:789a:1::9".parse().unwrap());
    let d = desired_for(&v, &links(&v), &Touched::Containers(vec![before.clone()]));
    assert_eq!(
        d.addrs6,
        Some([b6, before.ip6.unwrap()].into()),
        "the old address leaves the table"
    );
    assert_eq!(d.members6.keys().collect::<Vec<_>>(), vec![&b6]);
    assert_eq!(d.tunnel_routes6, None, "not the fleet's");
    // Hosts changing touch no member.
    let d = desired_for(&v, &links(&v), &Touched::Fleet);
    assert_eq!(d.addrs6, Some(Default::default()));
    assert_eq!(d.tunnel_routes6, Some([net6].into()));
}
