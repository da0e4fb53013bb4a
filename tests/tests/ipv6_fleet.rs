//! IPv6 across hosts, two hosts joined by an underlay and a real etcd: the
//! twins of `tunnel.rs` and `no_clear_text.rs` for IPv6 members. The
//! underlay stays IPv4; the inner family is the packet's own.

use std::{
    net::{Ipv6Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use pn_tests::{
    Host, Namespace, eventually,
    fleet::Fleet,
    metric_value, net,
    scenario::{Member, OneApp},
    unique_prefix,
};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(800);
const MARKER: &[u8] = b"PN-IPV6-UNDERLAY-MARKER-41c9";
const UDP: u8 = 17;

fn tunnel_drops(h: &Host, reason: &str) -> u64 {
    metric_value(&h.metrics(), "pn_tunnel_drops_total", &[("reason", reason)])
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

struct Two {
    f: Fleet,
    a: String,
    b: String,
    c1: Member,
    c2: Member,
    c3: Member,
}

/// Network A: c1 (web) on h1, c2 (worker) on h2; network B: c3 on h2.
fn two_hosts() -> Two {
    let f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let OneApp { app: a, c1, c2, .. } = OneApp::new(h1, h2, ["web", "worker"]);
    let (_, b) = h1.network_and_app(&[]);
    let c3 = h2.member(&b, "web", "c3");
    f.wait_for_peers(LONG);
    Two {
        f,
        a,
        b,
        c1,
        c2,
        c3,
    }
}

fn ping6(from: &Namespace, to: Ipv6Addr) -> bool {
    eventually(LONG, || {
        from.exec(&["ping", "-6", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    })
}

#[test]
fn members_talk_over_ipv6_across_hosts_and_other_networks_do_not() {
    let t = two_hosts();
    let (h1, h2) = (&t.f.hosts[0], &t.f.hosts[1]);
    let (a1, a2, b3) = (ip6(&t.c1), ip6(&t.c2), ip6(&t.c3));
    assert!(ping6(&t.c1, a2), "ping -6 from h1 to h2");
    assert!(ping6(&t.c2, a1), "ping -6 from h2 to h1");
    let _s2 = net::tcp_echo_server6(&t.c2, 4000);
    let _u1 = net::udp_echo_server6(&t.c1, 4001);
    let got = net::tcp_echo(&t.c1, sa(a2, 4000), b"tcp6 across", LONG).expect("c1 -> c2 tcp6");
    assert_eq!(got, b"tcp6 across");
    // A stream longer than a segment: the tunnel's offloads keep IPv6 whole.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let got = net::tcp_echo(&t.c1, sa(a2, 4000), &big, LONG).expect("c1 -> c2 bulk tcp6");
    assert!(got == big, "the bulk stream came back altered");
    let got = net::udp_echo(&t.c2, sa(a1, 4001), b"udp6 across", LONG).expect("c2 -> c1 udp6");
    assert_eq!(got, b"udp6 across");
    // IPv4 beside, unchanged.
    let _s4 = net::tcp_echo_server(&t.c2, 4002);
    let got = net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 4002)), b"v4", LONG)
        .expect("c1 -> c2 over IPv4");
    assert_eq!(got, b"v4");
    // Another network across hosts: refused on the sending side.
    let _s3 = net::tcp_echo_server6(&t.c3, 4003);
    assert!(
        net::tcp_echo(&t.c3, sa(a1, 4001), b"x", SHORT).is_err(),
        "B reached A across hosts over TCP6"
    );
    assert!(
        net::udp_echo(&t.c3, sa(a1, 4001), b"x", SHORT).is_err(),
        "B reached A across hosts over UDP6"
    );
    assert!(
        net::tcp_echo(&t.c1, sa(b3, 4003), b"x", SHORT).is_err(),
        "A reached B across hosts"
    );
    assert!(h2.packets(&t.b, "web-1", "policy_denied") >= 2);
    assert!(h1.packets(&t.a, "web-1", "policy_denied") >= 1);
    // Honest traffic is never taken for spoofing, on either side.
    assert!(h1.packets(&t.a, "web-1", "forwarded") > 0);
    assert!(h2.packets(&t.a, "worker-1", "delivered") > 0);
    assert_eq!(h1.packets(&t.a, "web-1", "spoofed_source"), 0);
    assert_eq!(h2.packets(&t.a, "worker-1", "spoofed_source"), 0);
    for h in [h1, h2] {
        assert_eq!(tunnel_drops(h, "wrong_host"), 0, "{}", h.id);
        assert_eq!(tunnel_drops(h, "malformed"), 0, "{}", h.id);
    }
}

fn assert_no_marker(frames: &[Vec<u8>], when: &str) {
    for f in frames {
        assert!(
            !f.windows(MARKER.len()).any(|w| w == MARKER),
            "IPv6 payload marker in clear on the underlay {when}"
        );
    }
}

/// The marker over UDP6 both ways and over TCP6, a few times; how many
/// went through.
fn send_marker(c1: &Member, c2: &Member, wait: Duration) -> usize {
    let (a1, a2) = (ip6(c1), ip6(c2));
    let mut ok = 0;
    for _ in 0..5 {
        ok += usize::from(net::udp_echo(c1, sa(a2, 7000), MARKER, wait).is_ok());
        ok += usize::from(net::udp_echo(c2, sa(a1, 7001), MARKER, wait).is_ok());
        ok += usize::from(net::tcp_echo(c2, sa(a1, 7002), MARKER, wait).is_ok());
    }
    ok
}

#[test]
fn ipv6_members_never_cross_the_underlay_in_clear() {
    let mut t = two_hosts();
    let _u2 = net::udp_echo_server6(&t.c2, 7000);
    let _u1 = net::udp_echo_server6(&t.c1, 7001);
    let _t1 = net::tcp_echo_server6(&t.c1, 7002);
    assert!(ping6(&t.c1, ip6(&t.c2)), "the tunnel carries IPv6");
    // Hosts with an IPv6 default route on the underlay: where member
    // traffic would leak to if it left the tunnel.
    for h in &t.f.hosts {
        h.ns.ip(&["-6", "route", "replace", "default", "dev", "ul0"]);
    }
    let cap1 = net::Capture::start(&t.f.underlay, "p1", "ip or ip6");
    let cap2 = net::Capture::start(&t.f.underlay, "p2", "ip or ip6");
    assert_eq!(
        send_marker(&t.c1, &t.c2, LONG),
        15,
        "all through the tunnel"
    );
    assert_no_marker(&cap1.finish(), "with the tunnel up");
    assert_no_marker(&cap2.finish(), "with the tunnel up");
    // h2's agent stopped and its device gone (with the routes to it): the
    // programs still hold member traffic in.
    let cap1 = net::Capture::start(&t.f.underlay, "p1", "ip or ip6");
    let cap2 = net::Capture::start(&t.f.underlay, "p2", "ip or ip6");
    t.f.hosts[1].stop();
    let _ = t.f.hosts[1].ns.exec(&["ip", "link", "del", "pn-tun"]);
    send_marker(&t.c1, &t.c2, Duration::from_millis(100));
    assert_no_marker(&cap1.finish(), "with h2's agent stopped");
    assert_no_marker(&cap2.finish(), "with h2's agent stopped");
    t.f.hosts[1].start_again();
    assert!(
        eventually(LONG, || send_marker(&t.c1, &t.c2, SHORT) == 15),
        "IPv6 across hosts resumes with the agent"
    );
    // The stopping agent marked the tunnel down: c2's packets toward c1
    // were dropped by the programs, and counted.
    assert!(
        t.f.hosts[1].packets(&t.a, "worker-1", "no_tunnel") > 0,
        "no_tunnel counted for IPv6"
    );
}

/// The bytes of a pinned map's entry, through bpftool.
fn map_value(map: &std::path::Path, key: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "map", "lookup", "pinned"])
        .arg(map)
        .arg("key");
    cmd.args(key.iter().map(|b| b.to_string()));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

fn map_update(map: &std::path::Path, key: &[u8], value: &[u8]) {
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "update", "pinned"]).arg(map).arg("key");
    cmd.args(key.iter().map(|b| b.to_string()));
    cmd.arg("value");
    cmd.args(value.iter().map(|b| b.to_string()));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// h2 sends, under c2, an inner IPv6 source it does not host (c4's, on
/// h1, same network): its programs drop it, and with them subverted (c2's
/// interface entry rewritten to claim that address) its tunnel refuses it
/// (`wrong_host`): c1 receives nothing either way.
#[test]
fn a_host_cannot_send_an_ipv6_source_it_does_not_host() {
    let t = two_hosts();
    let (h1, h2) = (&t.f.hosts[0], &t.f.hosts[1]);
    let c4 = h1.member(&t.a, "worker", "c4");
    let (a1, a2, a4) = (ip6(&t.c1), ip6(&t.c2), ip6(&c4));
    assert!(ping6(&t.c2, a1), "honest IPv6 across first");
    let rx = net::udp_collector6(&t.c1, 9999);
    let mac = mac_of(&t.c2, "pn0");
    let gw_mac = gateway_mac(&t.c2);
    let udp = |src: Ipv6Addr, payload: &[u8]| {
        let mut l4 = vec![0x0f, 0xa0, 0x27, 0x0f];
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        net::ipv6_frame(gw_mac, mac, src, a1, UDP, l4, Some(6))
    };
    net::send_frame(&t.c2, "pn0", udp(a2, b"honest")).unwrap();
    let spoofed = h2.packets(&t.a, "worker-1", "spoofed_source");
    for _ in 0..5 {
        net::send_frame(&t.c2, "pn0", udp(a4, b"forged-guarded")).unwrap();
    }
    assert!(
        eventually(LONG, || h2.packets(&t.a, "worker-1", "spoofed_source")
            >= spoofed + 5),
        "the programs drop the forged source"
    );
    // The kernel's guard subverted: c2's interface claims c4's address.
    let host_if = t.c2.attached["host_interface"]
        .as_str()
        .expect("the host end's name");
    let ifindex = ifindex_of(&h2.ns, host_if);
    let ifaces = h2.pinned_map("PN_IFACES");
    let key = ifindex.to_ne_bytes();
    let mut value = map_value(&ifaces, &key);
    let at = value.len() - 16;
    value[at..].copy_from_slice(&a4.octets());
    map_update(&ifaces, &key, &value);
    let wrong = tunnel_drops(h2, "wrong_host");
    for _ in 0..5 {
        net::send_frame(&t.c2, "pn0", udp(a4, b"forged-subverted")).unwrap();
    }
    assert!(
        eventually(LONG, || tunnel_drops(h2, "wrong_host") >= wrong + 5),
        "h2's tunnel refuses a source h2 does not host"
    );
    assert_eq!(
        rx.received(Duration::from_secs(1)),
        vec![b"honest".to_vec()],
        "only the honest packet arrives"
    );
}

fn ifindex_of(ns: &Namespace, ifname: &str) -> u32 {
    let out = ns.ip(&["-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifindex"].as_u64().expect("an ifindex") as u32
}

fn mac_of(ns: &Namespace, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    parse_mac(v[0]["address"].as_str().unwrap())
}

/// The host end's MAC, from the container's entry for its gateway.
fn gateway_mac(ns: &Namespace) -> [u8; 6] {
    let out = ns.ip(&["-j", "neigh", "show", "169.254.1.1", "dev", "pn0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    parse_mac(v[0]["lladdr"].as_str().unwrap())
}

fn parse_mac(s: &str) -> [u8; 6] {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}
