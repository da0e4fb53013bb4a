//! The edge's nftables table on its own (no agent, no eBPF): loaded into a
//! host namespace with the hidden `pn-agent edge-apply`, then checked with
//! real sockets. What the programs on the veths decide (egress_denied,
//! not_member, not_router...) is tested with the agent; here, what the
//! kernel's NAT and forwarding do.
//!
//! ```text
//!                lan (bridge 192.168.50.0/24)
//!   host .1 ─────┼───── gw .254 ── world 203.0.113.10
//!   │  │         ├───── router .7      (--router-cidr 192.168.50.7/32)
//!   │  │         └───── stranger .66   (routes the world through the host)
//!   pnh1 pnh2
//!   c1 10.240.0.5   c2 10.240.0.6   (gateway 169.254.1.1, default route)
//! ```

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use pn_agent::edge::{EdgeConfig, Forwarding, Publication};
use pn_common::edge::{MARK_MASK, MARK_OTHER, MARK_ROUTER};
use pn_tests::{Namespace, agent_bin, net, run_ok, unique_prefix};

const HOST: &str = "192.168.50.1";
const ROUTER: &str = "192.168.50.7";
const STRANGER: &str = "192.168.50.66";
const WORLD: &str = "203.0.113.10";
const C1: &str = "10.240.0.5";
const C2: &str = "10.240.0.6";
const WAIT: Duration = Duration::from_secs(3);
/// Short: for connections that must fail.
const FAIL: Duration = Duration::from_millis(700);

struct Net {
    lan: Namespace,
    host: Namespace,
    gw: Namespace,
    world: Namespace,
    router: Namespace,
    stranger: Namespace,
    c1: Namespace,
    c2: Namespace,
}

fn sysctl(ns: &Namespace, kv: &str) {
    let out = ns.exec(&["sysctl", "-qw", kv]);
    assert!(out.status.success(), "sysctl {kv}: {out:?}");
}

impl Net {
    fn new() -> Net {
        let p = unique_prefix();
        let ns = |n: &str| Namespace::new(&format!("{p}-{n}"));
        let n = Net {
            lan: ns("lan"),
            host: ns("host"),
            gw: ns("gw"),
            world: ns("world"),
            router: ns("rtr"),
            stranger: ns("str"),
            c1: ns("c1"),
            c2: ns("c2"),
        };
        n.lan.ip(&["link", "add", "br0", "type", "bridge"]);
        n.lan.ip(&["link", "set", "br0", "up"]);
        for (i, (member, last)) in [
            (&n.host, 1),
            (&n.gw, 254),
            (&n.router, 7),
            (&n.stranger, 66),
        ]
        .into_iter()
        .enumerate()
        {
            let port = format!("p{i}");
            n.lan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &member.name,
            ]);
            n.lan.ip(&["link", "set", &port, "master", "br0", "up"]);
            member.ip(&[
                "addr",
                "add",
                &format!("192.168.50.{last}/24"),
                "dev",
                "up0",
            ]);
            member.ip(&["link", "set", "up0", "up"]);
        }
        n.gw.ip(&[
            "link",
            "add",
            "w0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.world.name,
        ]);
        n.gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "w0"]);
        n.gw.ip(&["link", "set", "w0", "up"]);
        sysctl(&n.gw, "net.ipv4.ip_forward=1");
        n.world
            .ip(&["addr", "add", &format!("{WORLD}/24"), "dev", "eth0"]);
        n.world.ip(&["link", "set", "eth0", "up"]);
        n.world
            .ip(&["route", "add", "default", "via", "203.0.113.1"]);
        n.host
            .ip(&["route", "add", "default", "via", "192.168.50.254"]);
        n.stranger
            .ip(&["route", "add", "203.0.113.0/24", "via", HOST]);
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
            }],
            egress_deny: ["192.168.50.0/24", "169.254.0.0/16", "127.0.0.0/8"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            interfaces: vec!["pnh*".into()],
            forwarding: Forwarding::PnOnly,
        }
    }

    /// `pn-agent edge-apply` in the host namespace.
    fn apply(&self, cfg: &EdgeConfig) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host.name])
            .arg(agent_bin())
            .arg("edge-apply")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running pn-agent edge-apply");
        let json = serde_json::to_vec(cfg).unwrap();
        child.stdin.take().unwrap().write_all(&json).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "edge-apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn clear(&self) {
        let out = self
            .host
            .exec(&[agent_bin().to_str().unwrap(), "edge-apply", "--clear"]);
        assert!(out.status.success(), "edge-apply --clear: {out:?}");
    }

    /// A named counter's packets, in table `inet TABLE` of the host.
    fn counter(&self, table: &str, name: &str) -> u64 {
        let out = self
            .host
            .exec(&["nft", "-j", "list", "counter", "inet", table, name]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.get("counter")?.get("packets")?.as_u64())
            .unwrap_or(0)
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
    let _tcp = net::tcp_whoami_server(&n.world, 7000);
    let _udp = net::udp_whoami_server(&n.world, 7001);
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
    let (seen, mut s) =
        net::tcp_whoami(&n.router, addr(HOST, 30000), WAIT).expect("router to the published port");
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
    let (seen, _s) = net::tcp_whoami(&n.stranger, addr(HOST, 30000), WAIT).expect("stranger");
    assert_eq!(seen, STRANGER);
    assert!(n.counter("obs", "other") >= 2);
    assert_eq!(
        n.counter("obs", "router"),
        routed,
        "no router mark for strangers"
    );

    // Ports that are not published lead nowhere.
    assert!(net::tcp_whoami(&n.router, addr(HOST, 30001), FAIL).is_err());
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
fn the_host_forwards_nothing_but_pn_traffic_unless_it_forwarded_before() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.world, 7000);
    n.apply(&n.config());
    assert!(
        net::tcp_whoami(&n.stranger, addr(WORLD, 7000), FAIL).is_err(),
        "the host must not route for the stranger"
    );
    assert!(n.counter("pn", "forward_denied") >= 1);
    // A host that forwarded before pn keeps doing so: pn leaves it alone.
    n.apply(&EdgeConfig {
        forwarding: Forwarding::Shared,
        ..n.config()
    });
    let (seen, _s) =
        net::tcp_whoami(&n.stranger, addr(WORLD, 7000), WAIT).expect("shared forwarding");
    assert_eq!(seen, STRANGER, "only the pool is translated");
}

#[test]
fn new_connections_to_denied_ranges_stop_at_the_forward_hook() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.router, 7100);
    n.apply(&n.config());
    assert!(net::tcp_whoami(&n.c1, addr(ROUTER, 7100), FAIL).is_err());
    assert!(n.counter("pn", "egress_denied") >= 1);
}

#[test]
fn open_connections_outlive_a_replaced_table() {
    let n = Net::new();
    let _world = net::tcp_whoami_server(&n.world, 7000);
    let _web = net::tcp_whoami_server(&n.c1, 8080);
    n.apply(&n.config());
    let (_, mut out) = net::tcp_whoami(&n.c1, addr(WORLD, 7000), WAIT).unwrap();
    let (_, mut inbound) = net::tcp_whoami(&n.router, addr(HOST, 30000), WAIT).unwrap();
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
        net::tcp_whoami(&n.router, addr(HOST, 30000), FAIL).is_err(),
        "new ones are not published any more"
    );
}

#[test]
fn clear_removes_pn_table() {
    let n = Net::new();
    let _srv = net::tcp_whoami_server(&n.world, 7000);
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
    let _ = &n.lan;
}
