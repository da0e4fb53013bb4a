//! The edge's nftables table on its own (no agent, no eBPF): loaded into a
//! host namespace with the hidden `pn-agent edge-apply`, then checked with
//! real sockets. What the programs on the veths decide (egress_denied,
//! not_member, not_router...) is tested with the agent; here, what the
//! kernel's NAT and forwarding do.
//!
//! The host sits in [`Outside`] (underlay, world, router at
//! `--router-cidr 192.168.50.7/32`, stranger) with two containers on veths
//! `pnh1` (c1 10.240.0.5) and `pnh2` (c2 10.240.0.6), gateway 169.254.1.1
//! and a default route, as the agent plumbs them.

use std::{net::SocketAddr, time::Duration};

use pn_agent::edge::{EdgeConfig, GatewayDns, Publication};
use pn_common::edge::{MARK_MASK, MARK_OTHER, MARK_ROUTER};
use pn_tests::{
    Namespace,
    edge::{HOST, Outside, ROUTER, STRANGER, UNDERLAY, WORLD, nft_counter, sysctl},
    net, run_ok, unique_prefix,
};

const C1: &str = "10.240.0.5";
const C2: &str = "10.240.0.6";
const WAIT: Duration = Duration::from_secs(3);
/// Short: for connections that must fail.
const FAIL: Duration = Duration::from_millis(700);

struct Net {
    host: Namespace,
    out: Outside,
    c1: Namespace,
    c2: Namespace,
}

impl Net {
    fn new() -> Net {
        let p = unique_prefix();
        let host = Namespace::new(&format!("{p}-host"));
        let out = Outside::around(&p, &host);
        let n = Net {
            c1: Namespace::new(&format!("{p}-c1")),
            c2: Namespace::new(&format!("{p}-c2")),
            host,
            out,
        };
        sysctl(&n.host, "net.ipv4.ip_forward=1");
        for (c, ifname, addr) in [(&n.c1, "pnh1", C1), (&n.c2, "pnh2", C2)] {
            n.host.ip(&[
                "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", &c.name,
            ]);
            n.host.ip(&["addr", "add", "169.254.1.1/32", "dev", ifname]);
            n.host.ip(&["link", "set", ifname, "up"]);
            n.host
                .ip(&["route", "add", &format!("{addr}/32"), "dev", ifname]);
            c.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
            c.ip(&["link", "set", "eth0", "up"]);
            c.ip(&["route", "add", "169.254.1.1", "dev", "eth0"]);
            c.ip(&["route", "add", "default", "via", "169.254.1.1"]);
        }
        n
    }

    fn config(&self) -> EdgeConfig {
        EdgeConfig {
            pool: "10.240.0.0/12".parse().unwrap(),
            host_addrs: vec![HOST.parse().unwrap()],
            router_cidrs: vec![format!("{ROUTER}/32").parse().unwrap()],
            publications: vec![Publication {
                host_port: 30000,
                container: C1.parse().unwrap(),
                web_port: 8080,
                container6: None,
            }],
            egress_deny: [UNDERLAY, "169.254.0.0/16", "127.0.0.0/8"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            interfaces: vec!["pnh*".into()],
            forward_guard: true,
            forward_guard6: true,
            dns: Some(GatewayDns {
                listen: "169.254.1.1:53".parse().unwrap(),
                clients: vec!["pnh*".into()],
                ipv6: false,
            }),
            v6: None,
            tunnel_notrack: None,
        }
    }

    fn apply(&self, cfg: &EdgeConfig) {
        pn_tests::edge::apply(&self.host, cfg);
    }

    fn clear(&self) {
        pn_tests::edge::clear(&self.host);
    }

    fn counter(&self, table: &str, name: &str) -> u64 {
        nft_counter(&self.host, table, name)
    }

    /// A table of the test's own that counts, after pn's rules, the packets
    /// handed to each container by mark and by conntrack state.
    fn observe(&self) {
        let rules = format!(
            "table inet obs {{
  counter router {{}}
  counter other {{}}
  counter untracked {{}}
  counter tracked {{}}
  chain post {{
    type filter hook postrouting priority 300; policy accept;
    oifname \"pnh1\" meta mark & {MARK_MASK:#x} == {MARK_ROUTER:#x} counter name router
    oifname \"pnh1\" meta mark & {MARK_MASK:#x} == {MARK_OTHER:#x} counter name other
    oifname \"pnh2\" ct state untracked counter name untracked
    oifname \"pnh2\" ct state != untracked counter name tracked
  }}
}}
"
        );
        let path = std::env::temp_dir().join(format!(
            "pn-test-{}-{}.nft",
            std::process::id(),
            self.host.name
        ));
        std::fs::write(&path, rules).unwrap();
        let out = self.host.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert!(out.status.success(), "observer table: {out:?}");
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
fn containers_reach_the_world_with_the_host_address() {
    let n = Net::new();
    let _tcp = net::tcp_whoami_server(&n.out.world, 7000);
    let _udp = net::udp_whoami_server(&n.out.world, 7001);
    // Without the edge, the world cannot answer a pool address.
    assert!(net::tcp_whoami(&n.c1, addr(WORLD, 7000), FAIL).is_err());
    n.apply(&n.config());
    let (seen, mut s) = net::tcp_whoami(&n.c1, addr(WORLD, 7000), WAIT).expect("tcp to the world");
    assert_eq!(seen, HOST, "the world sees the host's address");
    net::echo_on(&mut s, &[7u8; 100_000]).expect("a transfer comes back whole");
    assert_eq!(
        net::udp_whoami(&n.c2, addr(WORLD, 7001), WAIT).expect("udp to the world"),
        HOST
    );
    let ping = n.c1.exec(&["ping", "-c1", "-W2", WORLD]);
    assert!(ping.status.success(), "ping to the world: {ping:?}");
}

#[test]
fn routers_reach_the_published_port_and_every_packet_says_so() {
    let n = Net::new();
    let _web = net::tcp_whoami_server(&n.c1, 8080);
    n.apply(&n.config());
    n.observe();
    let (seen, mut s) = net::tcp_whoami(&n.out.router, addr(HOST, 30000), WAIT)
        .expect("router to the published port");
    assert_eq!(seen, ROUTER, "the container sees the router's own address");
    for _ in 0..5 {
        net::echo_on(&mut s, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    drop(s);
    let routed = n.counter("obs", "router");
    assert!(
        routed >= 7,
        "every packet of the connection is marked, not the first: {routed}"
    );
    assert_eq!(n.counter("obs", "other"), 0);
    // Replies went back to a router on the underlay's subnet, which is in
    // the deny list: only new connections toward it are refused.
    assert_eq!(n.counter("pn", "egress_denied"), 0);

    // A stranger through the same port is translated too, marked as such
    // (the program on the veth drops it, counted as not_router).
    let (seen, _s) = net::tcp_whoami(&n.out.stranger, addr(HOST, 30000), WAIT).expect("stranger");
    assert_eq!(seen, STRANGER);
    assert!(n.counter("obs", "other") >= 2);
    assert_eq!(
        n.counter("obs", "router"),
        routed,
        "no router mark for strangers"
    );

    // Ports that are not published lead nowhere.
    assert!(net::tcp_whoami(&n.out.router, addr(HOST, 30001), FAIL).is_err());
}

#[test]
fn member_traffic_is_neither_translated_nor_tracked() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.c2, 9000);
    n.apply(&n.config());
    n.observe();
    let (seen, mut s) = net::tcp_whoami(&n.c1, addr(C2, 9000), WAIT).expect("member to member");
    assert_eq!(seen, C1, "no translation between members");
    net::echo_on(&mut s, b"hello").unwrap();
    assert!(n.counter("obs", "untracked") >= 4);
    assert_eq!(
        n.counter("obs", "tracked"),
        0,
        "conntrack never saw member traffic"
    );
}

#[test]
fn the_host_forwards_nothing_but_pn_traffic_unless_the_guard_is_off() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.out.world, 7000);
    n.apply(&n.config());
    assert!(
        net::tcp_whoami(&n.out.stranger, addr(WORLD, 7000), FAIL).is_err(),
        "the host must not route for the stranger"
    );
    assert!(n.counter("pn", "forward_denied") >= 1);
    // A host that forwarded before pn keeps doing so: pn leaves it alone.
    n.apply(&EdgeConfig {
        forward_guard: false,
        forward_guard6: false,
        ..n.config()
    });
    let (seen, _s) =
        net::tcp_whoami(&n.out.stranger, addr(WORLD, 7000), WAIT).expect("shared forwarding");
    assert_eq!(seen, STRANGER, "only the pool is translated");
}

/// The guard on and off: pn's own pool is nobody's path either way.
fn guards(n: &Net) -> [EdgeConfig; 2] {
    [
        n.config(),
        EdgeConfig {
            forward_guard: false,
            forward_guard6: false,
            ..n.config()
        },
    ]
}

#[test]
fn into_pn_interfaces_the_table_leaves_the_judging_to_the_programs() {
    let n = Net::new();
    let _web = net::tcp_whoami_server(&n.c1, 8080);
    let _world = net::tcp_whoami_server(&n.out.world, 7000);
    // The stranger routes the pool through the host, straight to c1. The
    // container's program refuses it (`not_member`, counted on c1 and in
    // flows: tested with the agent); the table must not hide it from the
    // program, so here, with no program on the veth, it arrives.
    n.out
        .stranger
        .ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
    for cfg in guards(&n) {
        n.apply(&cfg);
        let (seen, _s) = net::tcp_whoami(&n.out.stranger, addr(C1, 8080), WAIT)
            .unwrap_or_else(|e| panic!("guard {}: dropped before c1: {e}", cfg.forward_guard));
        assert_eq!(seen, STRANGER);
        assert_eq!(n.counter("pn", "forward_denied"), 0);
        assert_eq!(n.counter("pn", "pool_spoofed"), 0);
        // Replies, the published port, between pn's interfaces: the same.
        assert_eq!(
            net::tcp_whoami(&n.c1, addr(WORLD, 7000), WAIT).unwrap().0,
            HOST
        );
        assert_eq!(
            net::tcp_whoami(&n.out.router, addr(HOST, 30000), WAIT)
                .unwrap()
                .0,
            ROUTER
        );
        assert_eq!(net::tcp_whoami(&n.c2, addr(C1, 8080), WAIT).unwrap().0, C2);
    }
}

#[test]
fn a_pool_source_from_outside_is_never_translated() {
    let n = Net::new();
    let world = net::udp_collector(&n.out.world, 7001);
    let spoofed = || {
        net::send_raw_ipv4(
            &n.out.stranger,
            net::udp_packet(
                C1.parse().unwrap(),
                4000,
                WORLD.parse().unwrap(),
                7001,
                b"x",
            ),
        )
        .unwrap()
    };
    for cfg in guards(&n) {
        n.apply(&cfg);
        let before = n.counter("pn", "pool_spoofed");
        spoofed();
        assert!(
            world.received(FAIL).is_empty(),
            "guard {}: a stranger claiming c1's address reached the world as the host",
            cfg.forward_guard
        );
        assert!(n.counter("pn", "pool_spoofed") > before);
    }
    // c1 itself is translated as ever.
    let _echo = net::udp_whoami_server(&n.out.world, 7002);
    assert_eq!(
        net::udp_whoami(&n.c1, addr(WORLD, 7002), WAIT).unwrap(),
        HOST
    );
}

#[test]
fn the_gateways_dns_answers_containers_only() {
    let n = Net::new();
    let _dns = net::udp_echo_server(&n.host, 53);
    n.out
        .stranger
        .ip(&["route", "add", "169.254.1.1/32", "via", HOST]);
    let gw = addr("169.254.1.1", 53);
    // Without the rule the stranger is answered; with it, only containers.
    n.apply(&EdgeConfig {
        dns: None,
        ..n.config()
    });
    assert!(net::udp_echo(&n.out.stranger, gw, b"q", WAIT).is_ok());
    n.apply(&n.config());
    assert!(net::udp_echo(&n.out.stranger, gw, b"q", FAIL).is_err());
    assert!(n.counter("pn", "dns_denied") >= 1);
    assert_eq!(net::udp_echo(&n.c1, gw, b"q", WAIT).unwrap(), b"q");
    // Other ports of the host are not the DNS's business.
    let _other = net::udp_echo_server(&n.host, 5353);
    assert!(net::udp_echo(&n.out.stranger, addr("169.254.1.1", 5353), b"q", WAIT).is_ok());
}

#[test]
fn new_connections_to_denied_ranges_stop_at_the_forward_hook() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.out.router, 7100);
    n.apply(&n.config());
    assert!(net::tcp_whoami(&n.c1, addr(ROUTER, 7100), FAIL).is_err());
    assert!(n.counter("pn", "egress_denied") >= 1);
}

#[test]
fn open_connections_outlive_a_replaced_table() {
    let n = Net::new();
    let _world = net::tcp_whoami_server(&n.out.world, 7000);
    let _web = net::tcp_whoami_server(&n.c1, 8080);
    n.apply(&n.config());
    let (_, mut out) = net::tcp_whoami(&n.c1, addr(WORLD, 7000), WAIT).unwrap();
    let (_, mut inbound) = net::tcp_whoami(&n.out.router, addr(HOST, 30000), WAIT).unwrap();
    // Same state again (an agent restart), then without the publication.
    n.apply(&n.config());
    net::echo_on(&mut out, b"after re-apply").unwrap();
    net::echo_on(&mut inbound, b"after re-apply").unwrap();
    n.apply(&EdgeConfig {
        publications: vec![],
        ..n.config()
    });
    net::echo_on(&mut out, b"after unpublish").unwrap();
    net::echo_on(&mut inbound, b"open connections keep their translation").unwrap();
    assert!(
        net::tcp_whoami(&n.out.router, addr(HOST, 30000), FAIL).is_err(),
        "new ones are not published any more"
    );
}

#[test]
fn clear_removes_pn_table() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.out.world, 7000);
    n.apply(&n.config());
    assert!(
        run_ok(
            "ip",
            &["netns", "exec", &n.host.name, "nft", "list", "tables"]
        )
        .contains("inet pn")
    );
    n.clear();
    n.clear();
    assert!(
        !run_ok(
            "ip",
            &["netns", "exec", &n.host.name, "nft", "list", "tables"]
        )
        .contains("inet pn")
    );
    assert!(
        net::tcp_whoami(&n.c1, addr(WORLD, 7000), FAIL).is_err(),
        "no translation left"
    );
}
