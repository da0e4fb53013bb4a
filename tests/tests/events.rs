//! Floods the agent must survive with bounded cost: new flows opened as
//! fast as a container can (events under the per-CPU budget, the rest
//! counted), and clear text from the underlay toward many members (counted
//! in bounded rows, never one per address).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use pn_tests::{Host, eventually, metric_value, net, scenario::OneApp, unique_prefix};

const BUDGET: u64 = 20;

fn cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

#[test]
fn a_new_flow_flood_is_held_to_the_event_budget_and_counted() {
    let p = unique_prefix();
    let host = Host::start_with(&p, "h1", &["--drop-events-per-sec", &BUDGET.to_string()]);
    let OneApp { c1, c2, .. } = OneApp::new(&host, &host, ["web", "web"]);
    let ip2 = c2.addr;
    let sink = net::udp_collector(&c2, 9000);
    // Unlabelled: `metric_value` reads labelled samples only.
    let events = || {
        host.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("pn_flow_events_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let held = || {
        metric_value(
            &host.metrics(),
            "pn_events_suppressed_total",
            &[("kind", "new_flow")],
        )
    };
    let (events0, held0) = (events(), held());

    // Every datagram from a source port of its own: a new flow each.
    const FLOWS: u64 = 3000;
    let started = Instant::now();
    c1.run(move || {
        for port in 0..FLOWS as u16 {
            let s = UdpSocket::bind(("0.0.0.0", 20_000 + port)).unwrap();
            s.send_to(b"x", SocketAddr::from((ip2, 9000))).unwrap();
        }
    });
    let took = started.elapsed().as_secs_f64();
    assert!(
        !sink.received(Duration::from_secs(2)).is_empty(),
        "the flood was delivered"
    );

    // Each flow is either an event or held back; a few other events (the
    // budget's windows may open a second more) are allowed for.
    let windows = took.ceil() as u64 + 2;
    let cap = BUDGET * cpus() * windows;
    assert!(
        eventually(Duration::from_secs(5), || (events() - events0)
            + (held() - held0)
            >= FLOWS),
        "events {} + held back {} < {FLOWS}",
        events() - events0,
        held() - held0
    );
    let sent = events() - events0;
    assert!(
        sent <= cap,
        "{sent} events reached the agent in {took:.1}s; the budget allows {cap}"
    );
    assert!(
        held() - held0 >= FLOWS - cap,
        "held back: {}",
        held() - held0
    );
    let status = host.cli_ok(&["status"]);
    assert!(
        status.contains("events held back by the budget"),
        "{status}"
    );
    assert!(status.contains("new_flow"), "{status}");
}

/// Clear text from the underlay toward many members: each lands in a row
/// of a fixed-size array (the local member's, or the host's for remote
/// members), so the underlay cannot fill the counters and push out the
/// counts of the host's own containers.
#[test]
fn clear_text_toward_many_members_lands_in_bounded_rows() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let stranger = host.neighbour(91, "10.240.0.0/12");
    host.launch_on_underlay(91);
    let (_, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    let ip1 = c1.addr;

    // The counters are an array of one row per interface slot and the
    // host's: its size is fixed, whatever arrives.
    let counters = host.pinned_map("PN_COUNTERS");
    let info = bpftool_json(&["map", "show", "pinned", counters.to_str().unwrap()]);
    assert_eq!(info["type"], "percpu_array", "{info}");
    assert_eq!(info["max_entries"], 4097, "{info}");

    // Many members the underlay could aim at: remote members of the fleet
    // (written into the endpoint map as the tunnel would have them).
    let endpoints = host.pinned_map("PN_ENDPOINTS");
    const REMOTE: u8 = 200;
    for i in 1..=REMOTE {
        let out = Command::new("bpftool")
            .args(["map", "update", "pinned"])
            .arg(&endpoints)
            .args(["key", "10", "240", "200", &i.to_string()])
            .args(["value", "1", "0", "0", "0", "0", "0", "0", "0"])
            .args(["3", "0", "0", "0", "1", "0", "0", "0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // Clear text toward each of them and toward the local member.
    let mut packets = Vec::new();
    for i in 1..=REMOTE {
        packets.push(net::udp_packet(
            "192.168.91.2".parse().unwrap(),
            40000,
            Ipv4Addr::new(10, 240, 200, i),
            80,
            b"clear",
        ));
    }
    for _ in 0..5 {
        packets.push(net::udp_packet(
            "192.168.91.2".parse().unwrap(),
            40000,
            ip1,
            80,
            b"clear",
        ));
    }
    for p in packets {
        net::send_raw_ipv4(&stranger, p).unwrap();
    }
    let host_row = || {
        metric_value(
            &host.metrics(),
            "pn_packets_total",
            &[("container", ""), ("reason", "cleartext_to_member")],
        )
    };
    // All in the host's row (the agent may have taken some of the written
    // members away again at a resync: those packets then pass untouched).
    assert!(
        eventually(Duration::from_secs(5), || host_row() >= 1),
        "{}",
        host.metrics()
    );
    assert!(host_row() <= u64::from(REMOTE));
    assert_eq!(host.packets(&app, "web-1", "cleartext_to_member"), 5);
    // Rows: the host's and the member's, nothing per address.
    let rows = host
        .metrics()
        .lines()
        .filter(|l| l.starts_with("pn_packets_total{") && l.contains("cleartext_to_member"))
        .count();
    assert_eq!(rows, 2, "{}", host.metrics());
}
