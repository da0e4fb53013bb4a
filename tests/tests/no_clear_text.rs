//! Finding 1 and 2 of the hardening issue, as an attacker and an operator
//! see them: member traffic never crosses the underlay in clear text, even
//! while an agent is stopped or has crashed; and a member's source address
//! is believed only from the member's own interface.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{Namespace, eventually, fleet::Fleet, metric_value, net, unique_prefix};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(800);
const MARKER: &[u8] = b"PN-AGENT-DOWN-MARKER-7d21";

fn ip(v: &serde_json::Value) -> Ipv4Addr {
    v["ip"].as_str().unwrap().parse().unwrap()
}

/// c1 on h1, c2 on h2, one network.
fn fleet() -> (Fleet, String, Namespace, Namespace, Ipv4Addr, Ipv4Addr) {
    let p = unique_prefix();
    let f = Fleet::with_flags(&p, 2, &[]);
    let net_a = f.hosts[0].create_network(&[]);
    let a = f.hosts[0].create_app(&net_a);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let c2 = Namespace::new(&format!("{p}-c2"));
    let ip1 = ip(&f.hosts[0].attach(&a, "web", &c1));
    let ip2 = ip(&f.hosts[1].attach(&a, "worker", &c2));
    for h in &f.hosts {
        assert!(eventually(LONG, || metric_value(
            &h.metrics(),
            "pn_endpoints",
            &[("scope", "remote")]
        ) >= 1));
    }
    (f, a, c1, c2, ip1, ip2)
}

/// Sends the marker over UDP both ways between c1 and c2 for a while.
fn send_both_ways(c1: &Namespace, c2: &Namespace, ip1: Ipv4Addr, ip2: Ipv4Addr) {
    for _ in 0..10 {
        let _ = net::udp_echo(
            c1,
            SocketAddr::from((ip2, 7000)),
            MARKER,
            Duration::from_millis(100),
        );
        let _ = net::udp_echo(
            c2,
            SocketAddr::from((ip1, 7001)),
            MARKER,
            Duration::from_millis(100),
        );
        let _ = net::tcp_echo(
            c2,
            SocketAddr::from((ip1, 7002)),
            MARKER,
            Duration::from_millis(100),
        );
    }
}

fn assert_no_marker(frames: &[Vec<u8>], when: &str) {
    for f in frames {
        assert!(
            !f.windows(MARKER.len()).any(|w| w == MARKER),
            "payload marker in clear on the underlay {when}"
        );
    }
}

#[test]
fn no_clear_text_while_an_agent_is_stopped_or_killed() {
    let (mut f, a, c1, c2, ip1, ip2) = fleet();
    let _u2 = net::udp_echo_server(&c2, 7000);
    let _u1 = net::udp_echo_server(&c1, 7001);
    let _t1 = net::tcp_echo_server(&c1, 7002);
    assert_eq!(
        net::udp_echo(&c1, SocketAddr::from((ip2, 7000)), b"up", LONG).unwrap(),
        b"up"
    );
    // Hosts with a default route on the underlay, as real ones have: that
    // is where member traffic would leak to when the tunnel is gone.
    for h in &f.hosts {
        h.ns.ip(&["route", "replace", "default", "via", "192.168.100.254"]);
    }
    for crash in [false, true] {
        let when = if crash {
            "after SIGKILL"
        } else {
            "after SIGTERM"
        };
        // h2's port on the underlay bridge, and h1's: everything either sends.
        let cap2 = net::Capture::start(&f.underlay, "p2", "ip");
        let cap1 = net::Capture::start(&f.underlay, "p1", "ip");
        if crash {
            f.hosts[1].kill();
        } else {
            f.hosts[1].stop();
        }
        // Whether or not the device outlives its agent, its route must not
        // be what keeps the traffic in: take it away.
        let _ = f.hosts[1].ns.exec(&["ip", "link", "del", "pn-tun"]);
        send_both_ways(&c1, &c2, ip1, ip2);
        let frames2 = cap2.finish();
        let frames1 = cap1.finish();
        assert_no_marker(&frames2, when);
        assert_no_marker(&frames1, when);
        f.hosts[1].start_again();
        assert!(
            eventually(LONG, || net::udp_echo(
                &c1,
                SocketAddr::from((ip2, 7000)),
                b"back",
                SHORT
            )
            .is_ok_and(|r| r == b"back")),
            "traffic resumes when the agent is back ({when})"
        );
        assert!(
            eventually(LONG, || net::tcp_echo(
                &c2,
                SocketAddr::from((ip1, 7002)),
                b"back",
                SHORT
            )
            .is_ok()),
            "and the other way ({when})"
        );
        if !crash {
            // The stopping agent marked the tunnel down: c2's packets toward
            // c1 were dropped by the programs, and counted.
            assert!(
                f.hosts[1].packets(&a, "worker-1", "no_tunnel") > 0,
                "no_tunnel counted"
            );
        }
    }
}

/// A namespace plugged into h1 by someone else (a plain veth, no pn)
/// forges c1's address.
#[test]
fn a_rogue_veth_cannot_borrow_a_members_address() {
    let (f, a, c1, c2, ip1, ip2) = fleet();
    let p = &c1.name;
    let h1 = &f.hosts[0];
    // A second local member, the forged packets' target.
    let c3 = Namespace::new(&format!("{p}3"));
    let att3 = h1.attach(&a, "worker", &c3);
    let ip3 = ip(&att3);
    let rogue = Namespace::new(&format!("{p}-rogue"));
    let host_if = format!("{}r", &p[..p.len().min(10)]);
    h1.ns.ip(&[
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &rogue.name,
    ]);
    h1.ns
        .ip(&["addr", "add", "198.51.100.1/30", "dev", &host_if]);
    h1.ns.ip(&["link", "set", &host_if, "up"]);
    rogue.ip(&["addr", "add", "198.51.100.2/30", "dev", "eth0"]);
    rogue.ip(&["link", "set", "eth0", "up"]);
    rogue.ip(&["link", "set", "lo", "up"]);
    rogue.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    let local = net::udp_collector(&c3, 7100);
    let remote = net::udp_collector(&c2, 7101);
    // Honest traffic works both ways first.
    let _u3 = net::udp_echo_server(&c3, 7102);
    net::udp_echo(&c1, SocketAddr::from((ip3, 7102)), b"honest", LONG).unwrap();
    let inbound = || {
        metric_value(
            &h1.metrics(),
            "pn_edge_dropped_packets_total",
            &[("reason", "inbound_denied")],
        )
    };
    let before = inbound();
    for _ in 0..20 {
        net::send_raw_ipv4(
            &rogue,
            net::udp_packet(ip1, 40000, ip3, 7100, b"forged-local"),
        )
        .unwrap();
        net::send_raw_ipv4(
            &rogue,
            net::udp_packet(ip1, 40001, ip2, 7101, b"forged-remote"),
        )
        .unwrap();
    }
    assert!(
        local.received(SHORT).iter().all(|d| d != b"forged-local"),
        "a forged local source was delivered"
    );
    assert!(
        remote.received(SHORT).iter().all(|d| d != b"forged-remote"),
        "a forged source reached a remote member"
    );
    // Neither the local member's veth nor the tunnel takes anything from
    // another interface that is not a reply or a published port: stopped at
    // the forward hook, before any program (whose `spoofed_source` would
    // catch them next).
    assert!(
        eventually(LONG, || inbound() >= before + 40),
        "the forged packets are counted at the forward hook"
    );
}
