//! The data-plane rules over IPv6 on one host, in real namespaces: the
//! twins of `isolation.rs` and of the spoofing and neighbour-discovery
//! attacks, IPv4 beside them unchanged.

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{Host, Namespace, eventually, net, scenario::Member, unique_prefix};

const SHORT: Duration = Duration::from_millis(800);
const LONG: Duration = Duration::from_secs(5);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ICMPV6: u8 = 58;
const UDP: u8 = 17;

struct Fixture {
    host: Host,
    app_a1: String,
    app_a2: String,
    app_b: String,
    c1: Member,
    c2: Member,
    c3: Member,
}

/// As `isolation.rs`: network A with apps a1 (c1) and a2 (c2), network B
/// with app b (c3); IPv6 on (the default).
fn fixture() -> Fixture {
    let host = Host::start(&unique_prefix(), "h1");
    let net_a = host.create_network(&[]);
    let net_b = host.create_network(&[]);
    let app_a1 = host.create_app(&net_a);
    let app_a2 = host.create_app(&net_a);
    let app_b = host.create_app(&net_b);
    Fixture {
        c1: host.member(&app_a1, "web", "c1"),
        c2: host.member(&app_a2, "worker", "c2"),
        c3: host.member(&app_b, "web", "c3"),
        host,
        app_a1,
        app_a2,
        app_b,
    }
}

fn ip6(m: &Member) -> Ipv6Addr {
    m.attached["ip6"]
        .as_str()
        .unwrap_or_else(|| panic!("no ip6 in {}", m.attached))
        .parse()
        .unwrap()
}

fn sa(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn mac_of(ns: &Namespace, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// The host end's MAC, from the container's entry for its gateway.
fn gateway_mac(ns: &Namespace) -> [u8; 6] {
    let out = ns.ip(&["-j", "neigh", "show", "169.254.1.1", "dev", "pn0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["lladdr"].as_str().unwrap();
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// The container's link-local address (`fe80::` and its address's
/// interface identifier), as pn gives it.
fn link_local(ip: Ipv6Addr) -> Ipv6Addr {
    let s = ip.segments();
    Ipv6Addr::new(0xfe80, 0, 0, 0, s[4], s[5], s[6], s[7])
}

/// A neighbour advertisement of `target` at `mac`, from `src` to all
/// nodes, solicited and overriding (what a poisoner sends).
fn advertisement(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut l4 = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    l4.extend_from_slice(&target.octets());
    l4.extend_from_slice(&[2, 1]);
    l4.extend_from_slice(&mac);
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    net::ipv6_frame(
        [0x33, 0x33, 0, 0, 0, 1],
        mac,
        src,
        all_nodes,
        ICMPV6,
        l4,
        Some(2),
    )
}

#[test]
fn same_network_tcp_udp_and_ping_over_ipv6_and_ipv4_beside() {
    let f = fixture();
    let (a1, a2) = (ip6(&f.c1), ip6(&f.c2));
    for port in [22, 54321] {
        let _s2 = net::tcp_echo_server6(&f.c2, port);
        let _u1 = net::udp_echo_server6(&f.c1, port);
        let got = net::tcp_echo(&f.c1, sa(a2, port), b"hello c2", LONG).expect("c1 -> c2 tcp6");
        assert_eq!(got, b"hello c2");
        let got = net::udp_echo(&f.c2, sa(a1, port), b"udp c1", LONG).expect("c2 -> c1 udp6");
        assert_eq!(got, b"udp c1");
        // IPv4 beside, as before.
        let got = net::tcp_echo(&f.c1, SocketAddr::from((f.c2.addr, port)), b"v4", LONG)
            .expect("c1 -> c2 tcp over IPv4");
        assert_eq!(got, b"v4");
    }
    let out =
        f.c1.exec(&["ping", "-6", "-c", "1", "-W", "2", &a2.to_string()]);
    assert!(out.status.success(), "ping -6 between members failed");
    let out =
        f.c1.exec(&["ping", "-c", "1", "-W", "2", &f.c2.addr.to_string()]);
    assert!(out.status.success(), "ping between members failed");
    // The gateway answers ICMPv6 (path MTU needs it), to the container's
    // address (its link-local one is for neighbour discovery only).
    let a1s = a1.to_string();
    let out = f.c1.exec(&[
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "2",
        "-I",
        &a1s,
        "fe80::1%pn0",
    ]);
    assert!(out.status.success(), "ping -6 to the gateway failed");
    // Honest traffic, the kernel's own listener reports included, is
    // never taken for spoofing.
    assert_eq!(f.host.packets(&f.app_a1, "web-1", "spoofed_source"), 0);
    assert_eq!(f.host.packets(&f.app_a2, "worker-1", "spoofed_source"), 0);
    assert!(f.host.packets(&f.app_a1, "web-1", "forwarded") > 0);
    assert!(f.host.packets(&f.app_a2, "worker-1", "delivered") > 0);
    assert!(f.host.packets(&f.app_a1, "web-1", "gateway") > 0);
    // Flows name IPv6 peers.
    let flows = f.host.cli_ok(&["--output", "json", "flows"]);
    assert!(
        flows.contains(&a2.to_string()),
        "no flow toward {a2}: {flows}"
    );
}

#[test]
fn another_network_over_ipv6_is_dropped_on_the_sending_side() {
    let f = fixture();
    let a1 = ip6(&f.c1);
    let _tcp = net::tcp_echo_server6(&f.c1, 8080);
    let _udp = net::udp_echo_server6(&f.c1, 8080);
    assert!(
        net::tcp_echo(&f.c3, sa(a1, 8080), b"x", SHORT).is_err(),
        "B reached A over TCP6"
    );
    assert!(
        net::udp_echo(&f.c3, sa(a1, 8080), b"x", SHORT).is_err(),
        "B reached A over UDP6"
    );
    assert!(
        net::tcp_echo(&f.c1, sa(ip6(&f.c3), 8080), b"x", SHORT).is_err(),
        "A reached B"
    );
    assert!(f.host.packets(&f.app_b, "web-1", "policy_denied") >= 2);
    assert_eq!(f.host.packets(&f.app_a1, "web-1", "delivered"), 0);
}

#[test]
fn forged_ipv6_sources_are_dropped() {
    let f = fixture();
    let (a1, a2, b1) = (ip6(&f.c1), ip6(&f.c2), ip6(&f.c3));
    let rx = net::udp_collector6(&f.c2, 9999);
    let mac = mac_of(&f.c1.ns, "pn0");
    let gw_mac = gateway_mac(&f.c1.ns);
    let udp = |src: Ipv6Addr, payload: &[u8]| {
        let mut l4 = vec![0x0f, 0xa0, 0x27, 0x0f];
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        net::ipv6_frame(gw_mac, mac, src, a2, UDP, l4, Some(6))
    };
    net::send_frame(&f.c1, "pn0", udp(a1, b"honest")).unwrap();
    let before = f.host.packets(&f.app_a1, "web-1", "spoofed_source");
    for forged in [
        a2,
        b1,
        "fd00::1".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
    ] {
        net::send_frame(&f.c1, "pn0", udp(forged, b"forged")).unwrap();
    }
    assert_eq!(
        rx.received(Duration::from_secs(1)),
        vec![b"honest".to_vec()],
        "only the honest packet arrives"
    );
    assert!(eventually(LONG, || f.host.packets(
        &f.app_a1,
        "web-1",
        "spoofed_source"
    ) >= before + 4));
}

#[test]
fn neighbour_discovery_only_with_the_gateway_under_its_own_names() {
    let f = fixture();
    let (a1, a2) = (ip6(&f.c1), ip6(&f.c2));
    // Honest: the gateway's entry flushed, the container asks and the host
    // answers as fe80::1.
    f.c1.ip(&["-6", "neigh", "del", "fe80::1", "dev", "pn0"]);
    let out =
        f.c1.exec(&["ping", "-6", "-c", "1", "-W", "2", &a2.to_string()]);
    assert!(out.status.success(), "no way to the gateway after ND");
    assert!(f.host.packets(&f.app_a1, "web-1", "nd") >= 2);
    let denied = f.host.packets(&f.app_a1, "web-1", "nd_denied");
    let mac = mac_of(&f.c1.ns, "pn0");
    // Posing as the gateway, and as another member, from its own address.
    for target in [GATEWAY6, a2] {
        net::send_frame(&f.c1, "pn0", advertisement(mac, link_local(a1), target)).unwrap();
    }
    // A router advertisement.
    let mut ra = vec![134, 0, 0, 0, 64, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0];
    ra.extend_from_slice(&[1, 1]);
    ra.extend_from_slice(&mac);
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let ra = net::ipv6_frame(
        [0x33, 0x33, 0, 0, 0, 1],
        mac,
        link_local(a1),
        all_nodes,
        ICMPV6,
        ra,
        Some(2),
    );
    net::send_frame(&f.c1, "pn0", ra).unwrap();
    assert!(eventually(LONG, || f.host.packets(
        &f.app_a1,
        "web-1",
        "nd_denied"
    ) >= denied + 3));
    // The poisoning did not take: c2 is still reached the honest way.
    let out =
        f.c2.exec(&["ping", "-6", "-c", "1", "-W", "2", &a1.to_string()]);
    assert!(out.status.success(), "c2 lost c1 after the attempts");
}

#[test]
fn containers_given_ipv6_on_an_upgrade_reach_each_other_over_it() {
    let mut host = Host::start_with(&unique_prefix(), "h1", &["--ipv6", "off"]);
    let (_, app) = host.network_and_app(&[]);
    let a = host.member(&app, "web", "a");
    let b = host.member(&app, "web", "b");
    host.stop();
    host.launch(&[]);
    let ip6_of_b = || {
        host.json(&["container", "list", "--app", &app])
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["ip"] == b.addr.to_string())
            .and_then(|c| c["ip6"].as_str().map(str::to_string))
    };
    assert!(
        eventually(Duration::from_secs(10), || ip6_of_b().is_some()),
        "b got no IPv6 address"
    );
    let b6 = ip6_of_b().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            a.exec(&["ping", "-6", "-c", "1", "-W", "1", &b6])
                .status
                .success()
        }),
        "a cannot reach b over IPv6 after the upgrade"
    );
    let out = a.exec(&["ping", "-c", "1", "-W", "2", &b.addr.to_string()]);
    assert!(out.status.success(), "IPv4 lost on the upgrade");
}

#[test]
fn clear_text_ipv6_to_a_member_from_the_underlay_is_dropped() {
    let mut host = Host::create(&unique_prefix(), "h1");
    let stranger = host.neighbour(91, "10.240.0.0/12");
    host.launch_on_underlay(91);
    let (_, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    let l4 = vec![0x9c, 0x40, 0, 80, 0, 8, 0, 0];
    let frame = net::ipv6_frame(
        mac_of(&host.ns, "ul0"),
        mac_of(&stranger, "eth0"),
        "fd99::2".parse().unwrap(),
        ip6(&c1),
        UDP,
        l4,
        Some(6),
    );
    net::send_frame(&stranger, "eth0", frame).unwrap();
    assert!(eventually(LONG, || host.packets(
        &app,
        "web-1",
        "cleartext_to_member"
    ) >= 1));
}
