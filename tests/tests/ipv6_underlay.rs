//! The tunnel over an IPv6 underlay: two hosts on a real etcd whose
//! underlay link (`ul0`) has IPv6 addresses only (2001:db8:100::/64) and
//! advertise `[2001:db8:100::N]:51871`. Members of either family talk
//! across; nothing crosses in clear; the XDP guard judges IPv6 outer
//! packets as IPv4's (`cleartext_to_member`, `unknown_peer`).

use std::{
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use pn_tests::{
    Host, eventually,
    fleet::Fleet,
    metric_value, net,
    scenario::{Member, OneApp},
    unique_prefix,
};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(800);
const MARKER: &[u8] = b"PN-V6-UNDERLAY-MARKER-7d2e";

fn ip6(m: &Member) -> Ipv6Addr {
    m.attached["ip6"]
        .as_str()
        .unwrap_or_else(|| panic!("no ip6 in {}", m.attached))
        .parse()
        .unwrap()
}

fn underlay6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i.into())
}

struct Two {
    f: Fleet,
    app: String,
    c1: Member,
    c2: Member,
}

/// c1 (web) on h1, c2 (worker) on h2, one network.
fn two_hosts() -> Two {
    let f = Fleet::ipv6_underlay(&unique_prefix(), 2, &[]);
    let OneApp { app, c1, c2, .. } = OneApp::new(&f.hosts[0], &f.hosts[1], ["web", "worker"]);
    f.wait_for_peers(LONG);
    Two { f, app, c1, c2 }
}

fn ping(from: &Member, to: &str, family: &str) -> bool {
    eventually(LONG, || {
        from.exec(&["ping", family, "-c", "1", "-W", "1", to])
            .status
            .success()
    })
}

fn host_packets(h: &Host, reason: &str) -> u64 {
    metric_value(
        &h.metrics(),
        "pn_packets_total",
        &[("container", ""), ("reason", reason)],
    )
}

#[test]
fn members_of_either_family_talk_across_an_ipv6_underlay() {
    let mut t = two_hosts();
    let (a1, a2) = (ip6(&t.c1), ip6(&t.c2));
    // The underlay has no IPv4 to fall back on.
    let v4 = t.f.hosts[0]
        .ns
        .ip(&["-4", "-j", "addr", "show", "dev", "ul0"]);
    assert!(!v4.contains("\"inet\""), "ul0 has IPv4: {v4}");
    // The container MTU leaves room for the IPv6 outer header: 1500 - 84.
    let link: serde_json::Value =
        serde_json::from_str(&t.c1.ip(&["-j", "link", "show", "pn0"])).unwrap();
    assert_eq!(link[0]["mtu"], 1416);
    let cap = net::Capture::start(&t.f.underlay, "p1", "udp port 51871");
    assert!(ping(&t.c1, &t.c2.addr.to_string(), "-4"), "ping h1 -> h2");
    assert!(ping(&t.c2, &a1.to_string(), "-6"), "ping -6 h2 -> h1");
    let _s4 = net::tcp_echo_server(&t.c2, 4000);
    let _s6 = net::tcp_echo_server6(&t.c2, 4001);
    let _u1 = net::udp_echo_server6(&t.c1, 4002);
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let got = net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 4000)), &big, LONG)
        .expect("c1 -> c2 over TCP");
    assert!(got == big, "the IPv4 stream came back altered");
    let got =
        net::tcp_echo(&t.c1, SocketAddr::from((a2, 4001)), &big, LONG).expect("c1 -> c2 over TCP6");
    assert!(got == big, "the IPv6 stream came back altered");
    let got = net::udp_echo(&t.c2, SocketAddr::from((a1, 4002)), b"udp6", LONG)
        .expect("c2 -> c1 over UDP6");
    assert_eq!(got, b"udp6");
    // What crossed was the tunnel, over IPv6 between the advertised
    // addresses.
    let tunnel = net::udp_payloads(&cap.finish());
    assert!(!tunnel.is_empty(), "no tunnel datagram on the underlay");
    for (from, to, _) in &tunnel {
        let ends = [from.ip(), to.ip()];
        assert!(
            ends.contains(&underlay6(1).into()) && ends.contains(&underlay6(2).into()),
            "{from} -> {to}"
        );
    }
    let status = t.f.hosts[0].cli_ok(&["status"]);
    assert!(status.contains("[2001:db8:100::1]:51871"), "{status}");
    // A hand-over keeps the IPv6 sockets and the sessions.
    t.f.hosts[0].hand_over(None);
    let got = net::tcp_echo(&t.c1, SocketAddr::from((a2, 4001)), b"after", LONG)
        .expect("c1 -> c2 over TCP6 after a hand-over");
    assert_eq!(got, b"after");
    let log = t.f.hosts[0].log();
    assert!(!log.contains("opening it afresh"), "{log}");
    for h in &t.f.hosts {
        assert_eq!(host_packets(h, "unknown_peer"), 0, "{}", h.id);
        assert_eq!(h.packets(&t.app, "web-1", "spoofed_source"), 0);
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
fn nothing_crosses_an_ipv6_underlay_in_clear_and_the_guard_knows_ipv6_peers() {
    let t = two_hosts();
    let (h1, h2) = (&t.f.hosts[0], &t.f.hosts[1]);
    let (a1, a2) = (ip6(&t.c1), ip6(&t.c2));
    let _u4 = net::udp_echo_server(&t.c2, 7000);
    let _u6 = net::udp_echo_server6(&t.c2, 7001);
    let _t6 = net::tcp_echo_server6(&t.c1, 7002);
    assert!(
        ping(&t.c1, &a2.to_string(), "-6"),
        "the tunnel carries IPv6"
    );
    // Default routes out of the underlay and the store link: where member
    // traffic would leak to if it left the tunnel.
    for h in &t.f.hosts {
        h.ns.ip(&["-6", "route", "replace", "default", "dev", "ul0"]);
        h.ns.ip(&["route", "replace", "default", "dev", "st0"]);
    }
    let caps: Vec<net::Capture> = ["p1", "p2", "s1", "s2"]
        .iter()
        .map(|port| net::Capture::start(&t.f.underlay, port, "ip or ip6"))
        .collect();
    let mut ok = 0;
    for _ in 0..5 {
        let to4 = SocketAddr::from((t.c2.addr, 7000));
        ok += usize::from(net::udp_echo(&t.c1, to4, MARKER, LONG).is_ok());
        let to6 = SocketAddr::from((a2, 7001));
        ok += usize::from(net::udp_echo(&t.c1, to6, MARKER, LONG).is_ok());
        let back = SocketAddr::from((a1, 7002));
        ok += usize::from(net::tcp_echo(&t.c2, back, MARKER, LONG).is_ok());
    }
    assert_eq!(ok, 15, "all through the tunnel");
    for cap in caps {
        assert_no_marker(&cap.finish(), "with the tunnel up");
    }

    // A stranger on the IPv6 underlay: clear text to a member, with an
    // IPv6 outer header, is dropped in XDP and counted against c1.
    let ul = &t.f.underlay;
    let member64 = format!("{}/64", a1);
    ul.ip(&[
        "-6",
        "route",
        "add",
        &member64,
        "via",
        &underlay6(1).to_string(),
    ]);
    let rx = net::udp_collector6(&t.c1, 7100);
    let before = h1.packets(&t.app, "web-1", "cleartext_to_member");
    let (bridge, h1_tunnel) = (underlay6(0xfe), underlay6(1));
    ul.run(move || {
        let s = UdpSocket::bind((bridge, 0)).unwrap();
        for _ in 0..5 {
            s.send_to(MARKER, (a1, 7100)).unwrap();
        }
    });
    assert!(
        eventually(LONG, || h1.packets(&t.app, "web-1", "cleartext_to_member")
            >= before + 5),
        "clear text to a member over IPv6 counted"
    );
    assert!(rx.received(SHORT).is_empty(), "the member got clear text");

    // The stranger's datagrams to the tunnel port: not a peer's address.
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&[0u8; 40]);
    let strangers = host_packets(h1, "unknown_peer");
    ul.run(move || {
        let s = UdpSocket::bind((bridge, 0)).unwrap();
        for _ in 0..5 {
            s.send_to(&data, (h1_tunnel, 51871)).unwrap();
        }
    });
    assert!(
        eventually(LONG, || host_packets(h1, "unknown_peer") >= strangers + 5),
        "a stranger's datagrams counted unknown_peer"
    );
    let flows = h1.cli_ok(&["--output", "json", "flows"]);
    assert!(
        flows.contains("\"reason\":\"unknown_peer\"")
            && flows.contains("\"direction\":\"underlay\""),
        "{flows}"
    );
    // The peer is still a peer: the tunnel goes on.
    assert_eq!(
        net::udp_echo(&t.c1, SocketAddr::from((a2, 7001)), b"still", LONG).unwrap(),
        b"still"
    );
    assert_eq!(host_packets(h2, "unknown_peer"), 0);
}
