//! The edge's part of `desired()`: interface flags from the network and the
//! record, the deny list and the nftables table, published ports.

use std::{collections::BTreeMap, net::SocketAddrV4};

use pn_common::maps::{DenyRange, Iface};

use super::{
    edge::{EdgeLocal, assign_published},
    tests::{a, add, container, fleet, ip, links, net_id},
    *,
};
use crate::{
    datapath::{Datapath, fake::FakeMaps},
    edge::{GatewayDns, Publication, deny::HostFacts},
    model::Egress,
};

fn edge_local(routers: &[&str]) -> EdgeLocal {
    EdgeLocal {
        pool: "10.240.0.0/12".parse().unwrap(),
        router_cidrs: routers.iter().map(|r| r.parse().unwrap()).collect(),
        ports: "30000-30002".parse().unwrap(),
        facts: HostFacts {
            addrs: vec!["192.168.50.1/24".parse().unwrap()],
            local_routes: vec![],
            underlay: Some("192.168.50.0/24".parse().unwrap()),
            store: vec![],
            peers: vec![],
            operator: vec!["198.51.100.0/24".parse().unwrap()],
        },
        host_addrs: vec!["192.168.50.1".parse().unwrap()],
        public_ip: Some("192.168.50.1".parse().unwrap()),
        interfaces: vec!["pnh*".into(), "pn-tun".into()],
        forward_guard: true,
        forward_guard6: true,
        dns: Some(GatewayDns {
            listen: "169.254.1.1:53".parse().unwrap(),
            clients: vec!["pnh*".into()],
            ipv6: false,
        }),
        v6: Default::default(),
        tunnel_notrack: None,
    }
}

fn with_edge(v: &MembershipView, e: &EdgeLocal, l: &BTreeMap<String, u32>, t: &Touched) -> Desired {
    let me = a();
    desired(
        v,
        &Local {
            host: &me,
            edge: Some(e),
        },
        l,
        t,
    )
}

fn at(s: &str) -> Option<SocketAddrV4> {
    Some(s.parse().unwrap())
}

/// `fleet()` with web-1 (local) published on 30001.
fn published() -> MembershipView {
    let mut v = fleet();
    let mut c1 = container(1, [10, 240, 0, 2], "a");
    c1.published = at("192.168.50.1:30001");
    add(&mut v, c1);
    v
}

#[test]
fn a_full_pass_gives_the_table_and_the_deny_list() {
    let v = published();
    let e = edge_local(&["192.168.50.7/32"]);
    let d = with_edge(&v, &e, &links(&v), &Touched::All);
    assert_eq!(d.scope, Some(Scope::all()));
    let t = d.edge.expect("the table");
    assert_eq!(
        t.publications,
        [Publication {
            host_port: 30001,
            container: "10.240.0.2".parse().unwrap(),
            web_port: 8080,
            container6: None,
        }]
    );
    assert_eq!(t.router_cidrs, e.router_cidrs);
    assert!(
        t.egress_deny
            .iter()
            .any(|n| n.to_string() == "192.168.50.0/24")
    );
    let deny = &d.datapath.egress_deny;
    assert_eq!(deny[&(ip([169, 254, 0, 0]), 16)], DenyRange::SPECIAL);
    assert_eq!(deny[&(ip([192, 168, 50, 1]), 32)], DenyRange::HOST);
    assert_eq!(deny[&(ip([192, 168, 50, 0]), 24)], DenyRange::UNDERLAY);
    assert_eq!(deny[&(ip([198, 51, 100, 0]), 24)], DenyRange::OPERATOR);
    // The other hosts, in a subnet that is not this host's; not itself.
    assert_eq!(deny[&(ip([192, 0, 2, 2]), 32)], DenyRange::UNDERLAY);
    assert_eq!(deny[&(ip([192, 0, 2, 3]), 32)], DenyRange::UNDERLAY);
    assert!(!deny.contains_key(&(ip([192, 0, 2, 1]), 32)));
    assert!(
        t.egress_deny
            .iter()
            .any(|n| n.contains(&"192.0.2.3".parse::<std::net::Ipv4Addr>().unwrap()))
    );
    let iface = d.datapath.ifaces[&10];
    assert_eq!(iface.flags, Iface::FLAG_PUBLISHED);
    assert_eq!(iface.web_port, 8080);
}

#[test]
fn without_routers_or_outside_the_range_nothing_is_published() {
    let v = published();
    let d = with_edge(&v, &edge_local(&[]), &links(&v), &Touched::All);
    assert!(d.edge.unwrap().publications.is_empty());
    assert_eq!(d.datapath.ifaces[&10].flags, 0);
    let mut e = edge_local(&["192.168.50.7/32"]);
    e.ports = "40000-40010".parse().unwrap();
    let d = with_edge(&v, &e, &links(&v), &Touched::All);
    assert!(d.edge.unwrap().publications.is_empty());
    assert_eq!(d.datapath.ifaces[&10].flags, 0);
}

#[test]
fn a_sealed_network_flags_its_local_interfaces_and_only_those() {
    let mut v = published();
    v.networks.get_mut(&net_id(1)).unwrap().egress = Egress::Deny;
    let e = edge_local(&["192.168.50.7/32"]);
    let d = with_edge(&v, &e, &links(&v), &Touched::Network(net_id(1)));
    // The local container's interface, rewritten with both flags.
    assert_eq!(d.datapath.ifaces.len(), 1);
    assert_eq!(
        d.datapath.ifaces[&10].flags,
        Iface::FLAG_PUBLISHED | Iface::FLAG_EGRESS_DENY
    );
    let scope = d.scope.clone().unwrap();
    assert_eq!(
        scope.addrs,
        Some([ip([10, 240, 0, 2])].into()),
        "the remote container is not in scope"
    );
    assert!(scope.underlay && !scope.edge);
    assert!(d.tunnel_peers.is_some(), "what Fleet covers too");
    // Applied to a kernel that held the unsealed entry: one write.
    let mut dp = Datapath::new(FakeMaps::default());
    let all = with_edge(&published(), &e, &links(&v), &Touched::All);
    dp.apply(&all.datapath, all.scope.as_ref().unwrap())
        .unwrap();
    dp.maps_mut().calls.clear();
    dp.apply(&d.datapath, d.scope.as_ref().unwrap()).unwrap();
    assert_eq!(dp.maps().calls, ["set_iface 10"]);
}

#[test]
fn the_edge_pass_touches_only_the_deny_list_and_the_table() {
    let v = published();
    let e = edge_local(&["192.168.50.7/32"]);
    let d = with_edge(&v, &e, &BTreeMap::new(), &Touched::Edge);
    assert_eq!(d.scope, Some(Scope::edge()));
    assert!(d.datapath.endpoints.is_empty() && d.datapath.ifaces.is_empty());
    assert!(d.members.is_empty() && d.addrs == Some(Default::default()));
    assert!(!d.datapath.egress_deny.is_empty());
    assert_eq!(d.edge.unwrap().publications.len(), 1);
    assert!(d.stale.is_empty() && d.orphans.is_empty());
}

#[test]
fn a_local_change_recomputes_the_table_a_remote_one_does_not() {
    let v = published();
    let e = edge_local(&["192.168.50.7/32"]);
    let local = container(1, [10, 240, 0, 2], "a");
    let d = with_edge(&v, &e, &links(&v), &Touched::Containers(vec![local]));
    assert_eq!(d.edge.unwrap().publications.len(), 1);
    assert!(!d.scope.unwrap().edge, "the deny list is not a container's");
    let remote = container(2, [10, 240, 0, 3], "b");
    let d = with_edge(&v, &e, &links(&v), &Touched::Containers(vec![remote]));
    assert_eq!(d.edge, None);
}

#[test]
fn web_containers_get_ports_others_none_and_ports_are_kept() {
    let mut v = fleet();
    let mut worker = container(5, [10, 240, 0, 6], "a");
    worker.key.ctype = "worker".parse().unwrap();
    worker.host_ifname = worker.key.host_ifname();
    add(&mut v, worker.clone());
    let mut c7 = container(7, [10, 240, 0, 8], "a");
    c7.published = at("192.168.50.1:30002");
    add(&mut v, c7.clone());
    let e = edge_local(&["192.168.50.7/32"]);
    let me = a();
    let local: Vec<&Container> = v.local_containers(&me).collect();
    let got = assign_published(local.iter().copied(), &e).unwrap();
    assert_eq!(got[&c7.key], at("192.168.50.1:30002"), "kept");
    assert_eq!(
        got[&container(1, [0; 4], "a").key],
        at("192.168.50.1:30000")
    );
    assert_eq!(got[&worker.key], None, "never a worker");
    assert!(
        !got.contains_key(&container(2, [0; 4], "b").key),
        "not ours"
    );
    // No router: every port goes back.
    let got = assign_published(local.iter().copied(), &edge_local(&[])).unwrap();
    assert!(got.values().all(Option::is_none));
    // A full range: an error, nothing half-given.
    for i in 8..=9 {
        add(&mut v, container(i, [10, 240, 0, 9 + i as u8], "a"));
    }
    let local: Vec<&Container> = v.local_containers(&me).collect();
    let err = assign_published(local.iter().copied(), &e).unwrap_err();
    assert_eq!(err.wanted, 4);
}

#[test]
fn routers_covering_other_hosts_are_found() {
    let v = fleet();
    // 192.0.2.0/24 holds hosts b and c (a is this host).
    let e = edge_local(&["192.168.50.7/32", "192.0.2.0/25"]);
    let found = edge::hosts_under_routers(&v, &a(), &e);
    assert_eq!(
        found,
        [
            "192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap(),
            "192.0.2.3".parse().unwrap()
        ]
    );
    assert!(edge::hosts_under_routers(&v, &a(), &edge_local(&["192.168.50.7/32"])).is_empty());
}

#[test]
fn the_ipv6_edge_comes_with_the_pool_and_the_world_with_a_global_address() {
    use pn_common::maps::DenyRange;

    let v = published();
    let mut e = edge_local(&["192.168.50.7/32"]);
    let any: (pn_common::Ip6, u8) = ([0; 16], 0);
    // No IPv6 pool known, no IPv6 address: no IPv6 rule, no IPv6 world.
    let d = with_edge(&v, &e, &links(&v), &Touched::All);
    assert!(d.edge.unwrap().v6.is_none());
    assert_eq!(
        d.datapath.egress_deny6.get(&any),
        Some(&DenyRange::NO_ADDRESS)
    );
    e.v6.pool = Some("fd12:3456:789a::/48".parse().unwrap());
    e.v6.facts.addrs = vec!["2001:db8:1::5/64".parse().unwrap()];
    e.v6.host_addrs = vec!["2001:db8:1::5".parse().unwrap()];
    let d = with_edge(&v, &e, &links(&v), &Touched::All);
    assert!(!d.datapath.egress_deny6.contains_key(&any));
    let host: std::net::Ipv6Addr = "2001:db8:1::5".parse().unwrap();
    assert_eq!(
        d.datapath.egress_deny6.get(&(host.octets(), 128)),
        Some(&DenyRange::HOST)
    );
    let t = d.edge.unwrap().v6.expect("the IPv6 rules");
    assert_eq!(t.pool, e.v6.pool.unwrap());
    assert_eq!(t.host_addrs, [host]);
    assert!(t.egress_deny.iter().any(|n| n.contains(&host)));
}

#[test]
fn tunnel_notrack_names_the_port_and_the_other_hosts_endpoints() {
    let v = fleet();
    let d = with_edge(&v, &edge_local(&[]), &links(&v), &Touched::All);
    assert_eq!(d.edge.unwrap().tunnel_notrack, None, "off by default");
    let e = EdgeLocal {
        tunnel_notrack: Some(51871),
        ..edge_local(&[])
    };
    let d = with_edge(&v, &e, &links(&v), &Touched::All);
    let tn = d.edge.unwrap().tunnel_notrack.expect("on");
    assert_eq!(tn.port, 51871);
    // The other hosts, not this one.
    assert_eq!(
        tn.peers,
        [
            "192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap(),
            "192.0.2.3".parse().unwrap()
        ]
    );
    assert!(tn.peers6.is_empty());
}
