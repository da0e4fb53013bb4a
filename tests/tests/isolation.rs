//! Data-plane rules 1–5 and 7 on one host, in real namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{Host, eventually, net, scenario::Member, unique_prefix};

const SHORT: Duration = Duration::from_millis(800);
const LONG: Duration = Duration::from_secs(5);

struct Fixture {
    host: Host,
    net_a: String,
    app_a1: String,
    app_a2: String,
    app_b: String,
    c1: Member,
    c2: Member,
    c3: Member,
}

/// Host h1; network A with apps a1 (c1, web) and a2 (c2, worker); network B
/// with app b (c3, web).
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
        net_a,
        app_a1,
        app_a2,
        app_b,
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn same_network_tcp_and_udp_on_any_port_both_ways() {
    let f = fixture();
    for port in [22, 3000, 54321] {
        let _s2 = net::tcp_echo_server(&f.c2, port);
        let _s1 = net::tcp_echo_server(&f.c1, port + 1);
        let got =
            net::tcp_echo(&f.c1, sa(f.c2.addr, port), b"hello c2", LONG).expect("c1 -> c2 tcp");
        assert_eq!(got, b"hello c2");
        let got =
            net::tcp_echo(&f.c2, sa(f.c1.addr, port + 1), b"hello c1", LONG).expect("c2 -> c1 tcp");
        assert_eq!(got, b"hello c1");
        let _u2 = net::udp_echo_server(&f.c2, port);
        let _u1 = net::udp_echo_server(&f.c1, port + 1);
        assert_eq!(
            net::udp_echo(&f.c1, sa(f.c2.addr, port), b"udp c2", LONG).expect("c1 -> c2 udp"),
            b"udp c2"
        );
        assert_eq!(
            net::udp_echo(&f.c2, sa(f.c1.addr, port + 1), b"udp c1", LONG).expect("c2 -> c1 udp"),
            b"udp c1"
        );
    }
    // ICMP too (ping and path-MTU need it).
    let out =
        f.c1.exec(&["ping", "-c", "1", "-W", "2", &f.c2.addr.to_string()]);
    assert!(out.status.success(), "ping between members failed");
    assert!(f.host.packets(&f.app_a1, "web-1", "forwarded") > 0);
    assert!(f.host.packets(&f.app_a1, "web-1", "delivered") > 0);
    assert!(f.host.packets(&f.app_a2, "worker-1", "forwarded") > 0);
}

#[test]
fn another_network_is_dropped_on_the_sending_side() {
    let f = fixture();
    let _tcp = net::tcp_echo_server(&f.c1, 8080);
    let _udp = net::udp_echo_server(&f.c1, 8080);
    assert!(
        net::tcp_echo(&f.c3, sa(f.c1.addr, 8080), b"x", SHORT).is_err(),
        "B reached A over TCP"
    );
    assert!(
        net::udp_echo(&f.c3, sa(f.c1.addr, 8080), b"x", SHORT).is_err(),
        "B reached A over UDP"
    );
    assert!(
        net::tcp_echo(&f.c1, sa(f.c3.addr, 8080), b"x", SHORT).is_err(),
        "A reached B"
    );
    assert!(f.host.packets(&f.app_b, "web-1", "policy_denied") >= 2);
    // Dropped at the sender: never offered to the receiver.
    assert_eq!(f.host.packets(&f.app_a1, "web-1", "not_member"), 0);
    assert_eq!(f.host.packets(&f.app_a1, "web-1", "delivered"), 0);
}

#[test]
fn a_namespace_outside_every_network_cannot_reach_members() {
    let f = fixture();
    let out = f.host.plug("out", "out0", 77, "10.240.0.0/12");
    let _tcp = net::tcp_echo_server(&f.c1, 5432);
    let _udp = net::udp_echo_server(&f.c1, 5432);
    assert!(
        net::tcp_echo(&out, sa(f.c1.addr, 5432), b"x", SHORT).is_err(),
        "outsider reached a member"
    );
    assert!(
        net::udp_echo(&out, sa(f.c1.addr, 5432), b"x", SHORT).is_err(),
        "outsider reached a member"
    );
    // Nor can the host itself.
    assert!(
        net::tcp_echo(&f.host.ns, sa(f.c1.addr, 5432), b"x", SHORT).is_err(),
        "host reached a member"
    );
    assert!(f.host.packets(&f.app_a1, "web-1", "not_member") >= 3);
}

#[test]
fn forged_sources_are_dropped_and_honest_raw_packets_pass() {
    let f = fixture();
    let rx = net::udp_collector(&f.c2, 9999);
    let honest = net::udp_packet(f.c1.addr, 4000, f.c2.addr, 9999, b"honest");
    net::send_raw_ipv4(&f.c1, honest).unwrap();
    for forged_src in [
        Ipv4Addr::new(10, 240, 0, 200),
        f.c2.addr,
        f.c3.addr,
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        let forged = net::udp_packet(forged_src, 4000, f.c2.addr, 9999, b"forged");
        net::send_raw_ipv4(&f.c1, forged).unwrap();
    }
    let got = rx.received(Duration::from_secs(1));
    assert_eq!(
        got,
        vec![b"honest".to_vec()],
        "only the honest packet arrives"
    );
    assert_eq!(f.host.packets(&f.app_a1, "web-1", "spoofed_source"), 4);
}

#[test]
fn other_protocols_non_ipv4_and_garbage_are_dropped_and_counted() {
    let f = fixture();
    // GRE and SCTP between members.
    for proto in [47u8, 132] {
        net::send_raw_ipv4(
            &f.c1,
            net::ipv4_packet(f.c1.addr, f.c2.addr, proto, b"payload"),
        )
        .unwrap();
    }
    assert!(eventually(LONG, || f.host.packets(
        &f.app_a1,
        "web-1",
        "proto_denied"
    ) == 2));
    // A frame of neither family nor ARP (a local experimental ethertype),
    // and an "IPv4" frame too short to hold a header.
    let mac = f.c1.ip(&["-j", "link", "show", "pn0"]);
    let mac: serde_json::Value = serde_json::from_str(&mac).unwrap();
    let src: Vec<u8> = mac[0]["address"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mut other = vec![0xff; 6];
    other.extend_from_slice(&src);
    other.extend_from_slice(&[0x88, 0xb5]);
    other.extend_from_slice(&[0u8; 46]);
    net::send_frame(&f.c1, "pn0", other).unwrap();
    let mut short = vec![0xff; 6];
    short.extend_from_slice(&src);
    short.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
    net::send_frame(&f.c1, "pn0", short).unwrap();
    assert!(eventually(LONG, || f.host.packets(
        &f.app_a1,
        "web-1",
        "unsupported_l3"
    ) >= 1));
    assert!(eventually(LONG, || f.host.packets(
        &f.app_a1,
        "web-1",
        "malformed"
    ) >= 1));
    // ARP passes: forget the gateway's static entry and ping it.
    f.c1.ip(&["neigh", "del", "169.254.1.1", "dev", "pn0"]);
    let out = f.c1.exec(&["ping", "-c", "1", "-W", "2", "169.254.1.1"]);
    assert!(out.status.success(), "gateway unreachable after ARP");
    assert!(f.host.packets(&f.app_a1, "web-1", "arp") >= 1);
    assert!(f.host.packets(&f.app_a1, "web-1", "gateway") >= 2);
}

#[test]
fn metrics_and_flows_name_every_drop() {
    let f = fixture();
    let _ = net::tcp_echo(&f.c3, sa(f.c1.addr, 80), b"x", SHORT);
    let _tcp = net::tcp_echo_server(&f.c2, 81);
    net::tcp_echo(&f.c1, sa(f.c2.addr, 81), b"ok", LONG).unwrap();
    let metrics = f.host.metrics();
    assert!(
        metrics.contains(&format!(
            "pn_packets_total{{network=\"{}\",app=\"{}\",container=\"web-1\",reason=\"forwarded\",verdict=\"pass\"}}",
            f.net_a, f.app_a1
        )),
        "{metrics}"
    );
    assert!(metrics.contains("pn_bytes_total{"), "{metrics}");
    assert!(
        metrics.contains("reason=\"policy_denied\",verdict=\"drop\""),
        "{metrics}"
    );
    assert!(metrics.contains("pn_store_up 1"), "{metrics}");
    let flows = f.host.cli_ok(&["--output", "json", "flows"]);
    let records: Vec<serde_json::Value> = flows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = records
        .iter()
        .find(|r| r["kind"] == "drop" && r["reason"] == "policy_denied")
        .expect("a policy_denied drop event");
    assert_eq!(denied["dst"], f.c1.addr.to_string());
    assert_eq!(denied["dport"], 80);
    assert_eq!(denied["src_container"], format!("{}/web-1", f.app_b));
    assert!(
        records.iter().any(|r| r["kind"] == "new_flow"
            && r["dst"] == f.c2.addr.to_string()
            && r["dport"] == 81
            && r["proto"] == "tcp"),
        "new flow event: {flows}"
    );
    // The table form names containers too.
    let table = f.host.cli_ok(&["flows"]);
    assert!(
        table.contains("policy_denied") && table.contains("web-1"),
        "{table}"
    );
}

/// An interface whose entry the maps lost fails closed: its traffic is
/// dropped and counted as unknown_interface, never let through.
#[test]
fn an_interface_missing_from_the_maps_fails_closed() {
    let f = fixture();
    let _s = net::tcp_echo_server(&f.c2, 7300);
    net::tcp_echo(&f.c1, sa(f.c2.addr, 7300), b"before", LONG).unwrap();
    let list = f.host.json(&["container", "list", "--app", &f.app_a1]);
    let ifname = list[0]["host_interface"].as_str().unwrap().to_string();
    let link: serde_json::Value =
        serde_json::from_str(&f.host.ns.ip(&["-j", "link", "show", &ifname])).unwrap();
    let ifindex = link[0]["ifindex"].as_u64().unwrap() as u32;
    let map = f.host.pinned_map("PN_IFACES");
    let mut args = vec!["map", "delete", "pinned", map.to_str().unwrap(), "key"];
    let key: Vec<String> = ifindex.to_ne_bytes().iter().map(u8::to_string).collect();
    args.extend(key.iter().map(String::as_str));
    pn_tests::run_ok("bpftool", &args);
    assert!(net::tcp_echo(&f.c1, sa(f.c2.addr, 7300), b"after", SHORT).is_err());
    assert!(eventually(LONG, || pn_tests::metric_value(
        &f.host.metrics(),
        "pn_packets_total",
        &[("container", ""), ("reason", "unknown_interface")]
    ) > 0));
}
