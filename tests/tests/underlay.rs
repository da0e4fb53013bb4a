//! Rule 6 on one host: the XDP guard on the underlay interface.

use std::{net::SocketAddr, process::Command, time::Duration};

use pn_tests::{Host, eventually, metric_value, net, unique_prefix};

#[test]
fn the_underlay_guard_drops_strangers_and_cleartext_to_members() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let stranger = host.neighbour(90, "10.240.0.0/12");
    host.launch_on_underlay(90);

    let (_, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    let ip1 = c1.addr;
    // Container MTU leaves room for the tunnel: 1500 - 64.
    let link: serde_json::Value =
        serde_json::from_str(&c1.ip(&["-j", "link", "show", "pn0"])).unwrap();
    assert_eq!(link[0]["mtu"], 1436);

    // Clear text toward a member, from the underlay: dropped in XDP, counted
    // against that member, never reaches TC.
    let _srv = net::tcp_echo_server(&c1, 80);
    assert!(
        net::tcp_echo(
            &stranger,
            SocketAddr::from((ip1, 80)),
            b"x",
            Duration::from_millis(800)
        )
        .is_err()
    );
    assert!(host.packets(&app, "web-1", "cleartext_to_member") >= 1);
    assert_eq!(host.packets(&app, "web-1", "not_member"), 0);

    // The member's entry carries its counter row (the guard's drop then
    // costs one lookup), and the drop's event still names the port it
    // aimed at, though the guard reads the UDP header for an event alone.
    let ep = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(host.pinned_map("PN_ENDPOINTS"))
        .arg("key")
        .args(ip1.octets().map(|b| b.to_string()))
        .output()
        .unwrap();
    let ep: serde_json::Value = serde_json::from_slice(&ep.stdout).unwrap();
    let byte = |i: usize| {
        let s = ep["value"][i].as_str().unwrap_or_default();
        u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
    };
    assert_ne!(byte(8), 0, "no counter row in {ep}");
    net::send_raw_ipv4(
        &stranger,
        net::udp_packet("192.168.90.2".parse().unwrap(), 40000, ip1, 5353, b"clear"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            host.cli_ok(&["--output", "json", "flows"])
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|f| f["reason"] == "cleartext_to_member" && f["dport"] == 5353)
        }),
        "{}",
        host.cli_ok(&["--output", "json", "flows"])
    );

    // Tunnel-port datagrams from a host that is not a peer.
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&[0u8; 40]);
    for _ in 0..5 {
        net::send_raw_ipv4(
            &stranger,
            net::udp_packet(
                "192.168.90.2".parse().unwrap(),
                40000,
                "192.168.90.1".parse().unwrap(),
                51871,
                &data,
            ),
        )
        .unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(
            &host.metrics(),
            "pn_packets_total",
            &[("container", ""), ("reason", "unknown_peer")],
        ) == 5
    }));
    // Other traffic on the underlay is the host's business: untouched.
    let _srv = net::udp_echo_server(&host.ns, 5353);
    assert_eq!(
        net::udp_echo(
            &stranger,
            "192.168.90.1:5353".parse().unwrap(),
            b"hi",
            Duration::from_secs(2)
        )
        .unwrap(),
        b"hi"
    );
    let flows = host.cli_ok(&["--output", "json", "flows"]);
    assert!(
        flows.contains("\"reason\":\"unknown_peer\"")
            && flows.contains("\"direction\":\"underlay\""),
        "{flows}"
    );

    // A restart re-attaches in place and keeps guarding.
    host.restart();
    assert!(
        net::tcp_echo(
            &stranger,
            SocketAddr::from((ip1, 80)),
            b"x",
            Duration::from_millis(800)
        )
        .is_err()
    );
    let pins = std::fs::read_dir(host.bpffs().join("xdp")).unwrap().count();
    assert_eq!(pins, 1);
}
