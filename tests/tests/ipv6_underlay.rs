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

fn tunnel_drops(h: &Host, reason: &str) -> u64 {
    metric_value(&h.metrics(), "pn_tunnel_drops_total", &[("reason", reason)])
}

/// A fleet that mixes underlay families: h1 advertises IPv6, h2 and h3
/// IPv4, and h1's store link shares the IPv4 hosts' bridge, so clear text
/// could reach them. h2 and h3 pair; h1 pairs with neither: their members'
/// packets to each other, of either inner family and either way, are
/// dropped by the tunnel (`no_route`), never sent anywhere in clear.
#[test]
fn hosts_of_two_underlay_families_do_not_pair_and_send_nothing_in_clear() {
    let f = Fleet::mixed_underlay(&unique_prefix(), &[true, false, false], &[]);
    let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
    let (_, app) = h2.network_and_app(&[]);
    let c1 = h1.member(&app, "web", "c1");
    let c2 = h2.member(&app, "worker", "c2");
    let c3 = h3.member(&app, "worker", "c3");
    // Every agent knows every member: the view is one fleet's.
    for h in &f.hosts {
        assert!(
            eventually(LONG, || h.remote_endpoints() >= 2),
            "{} lacks remote members",
            h.id
        );
    }
    let _e3 = net::udp_echo_server(&c3, 7000);
    let _e3v6 = net::udp_echo_server6(&c3, 7001);
    let _e1 = net::udp_echo_server(&c1, 7000);
    let _e1v6 = net::udp_echo_server6(&c1, 7001);
    let (to3, to3v6) = (
        SocketAddr::from((c3.addr, 7000)),
        SocketAddr::from((c3.addr6(), 7001)),
    );
    assert_eq!(
        net::udp_echo(&c2, to3, b"paired", LONG).expect("h2 and h3 pair"),
        b"paired"
    );
    // Default routes out of every underlay link: where member traffic
    // would leak to if it left the tunnel.
    h1.ns
        .ip(&["-6", "route", "replace", "default", "dev", "ul0"]);
    h1.ns.ip(&["route", "replace", "default", "dev", "st0"]);
    for h in [h2, h3] {
        h.ns.ip(&["route", "replace", "default", "dev", "ul0"]);
    }
    let caps: Vec<net::Capture> = ["p1", "s1", "p2", "p3"]
        .iter()
        .map(|port| net::Capture::start(&f.underlay, port, "ip or ip6"))
        .collect();
    let [h1_before, h2_before, h3_before] = [h1, h2, h3].map(|h| tunnel_drops(h, "no_route"));
    let (to1, to1v6) = (
        SocketAddr::from((c1.addr, 7000)),
        SocketAddr::from((c1.addr6(), 7001)),
    );
    for _ in 0..3 {
        assert!(net::udp_echo(&c1, to3, MARKER, SHORT).is_err(), "h1 -> h3");
        assert!(
            net::udp_echo(&c1, to3v6, MARKER, SHORT).is_err(),
            "h1 -> h3 (6)"
        );
        assert!(net::udp_echo(&c2, to1, MARKER, SHORT).is_err(), "h2 -> h1");
        assert!(
            net::udp_echo(&c2, to1v6, MARKER, SHORT).is_err(),
            "h2 -> h1 (6)"
        );
    }
    // The pair of one family still carries traffic, with the marker.
    assert_eq!(
        net::udp_echo(&c2, to3v6, MARKER, LONG).expect("h2 -> h3 (6)"),
        MARKER
    );
    for cap in caps {
        assert_no_marker(&cap.finish(), "between hosts of two families");
    }
    assert!(
        tunnel_drops(h1, "no_route") >= h1_before + 6,
        "h1's members' datagrams to h3 counted no_route"
    );
    assert!(
        tunnel_drops(h2, "no_route") >= h2_before + 6,
        "h2's members' datagrams to h1 counted no_route"
    );
    // (h3 may count a packet or two from before it knew h2.)
    assert_eq!(tunnel_drops(h3, "no_route"), h3_before, "h3 sent nothing");
    for h in &f.hosts {
        assert_eq!(host_packets(h, "unknown_peer"), 0, "{}", h.id);
    }
}
