//! What IPv6 does to the host itself: its forwarding (pn's own or the
//! host's, decided at start, kept across a restart), the router
//! advertisements its interfaces keep accepting, and a new container's
//! first IPv6 packets, which meet a datapath that already knows its
//! interface.

use std::time::Duration;

use pn_tests::{Host, Namespace, eventually, metric_value, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);

/// The host's IPv6 forwarding when its agent starts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    NotForwarding,
    Forwarding,
}

/// A host with an uplink that takes router advertisements (`accept_ra=1`,
/// the kernel's default) and two neighbours, `a` (fd99:1::2) and `b`
/// (fd99:2::2), on links of their own, each routing the other through the
/// host: the traffic of someone else that pn must not route when it owns
/// the host's forwarding.
struct Bed {
    host: Host,
    a: Namespace,
    /// Kept for its lifetime: dropping it deletes the namespace.
    _b: Namespace,
}

fn bed(before: Before) -> Bed {
    let p = unique_prefix();
    let host = Host::create(&p, "h1");
    // A veth rather than a dummy, which not every kernel has.
    host.ns
        .ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    host.ns.ip(&["link", "set", "up0", "up"]);
    host.ns.sysctl("net.ipv6.conf.up0.accept_ra=1");
    host.ns.sysctl("net.ipv6.conf.default.accept_ra=1");
    let a = Namespace::new(&format!("{p}-na"));
    let b = Namespace::new(&format!("{p}-nb"));
    for (ns, side, net) in [(&a, "nva", "1"), (&b, "nvb", "2")] {
        host.ns.ip(&[
            "link", "add", side, "type", "veth", "peer", "name", "n0", "netns", &ns.name,
        ]);
        host.ns.ip(&["link", "set", side, "up"]);
        host.ns.ip(&[
            "addr",
            "add",
            &format!("fd99:{net}::1/64"),
            "dev",
            side,
            "nodad",
        ]);
        ns.ip(&["link", "set", "n0", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("fd99:{net}::2/64"),
            "dev",
            "n0",
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd99:{net}::1"),
        ]);
    }
    assert_eq!(
        host.ns.sysctl_value("net.ipv6.conf.all.forwarding"),
        "0",
        "a new host does not forward, whatever the machine does"
    );
    if before == Before::Forwarding {
        host.ns.sysctl("net.ipv6.conf.all.forwarding=1");
    }
    Bed { host, a, _b: b }
}

fn accept_ra(host: &Host, iface: &str) -> String {
    host.ns
        .sysctl_value(&format!("net.ipv6.conf.{iface}.accept_ra"))
}

/// Whether `a` reaches `b` through the host.
fn routed(bed: &Bed) -> bool {
    bed.a
        .exec(&["ping", "-6", "-c", "1", "-W", "1", "fd99:2::2"])
        .status
        .success()
}

fn forward_denied(host: &Host) -> u64 {
    metric_value(
        &host.metrics(),
        "pn_edge_dropped_packets_total",
        &[("reason", "forward_denied")],
    )
}

#[test]
fn pn_owns_the_ipv6_forwarding_it_turned_on_and_advertisements_still_count() {
    let mut bed = bed(Before::NotForwarding);
    bed.host.launch(&[]);
    let h = &bed.host;
    assert_eq!(h.ns.sysctl_value("net.ipv6.conf.all.forwarding"), "1");
    // Once forwarding, `1` would ignore the uplink's advertisements.
    assert_eq!(accept_ra(h, "up0"), "2");
    assert_eq!(accept_ra(h, "default"), "2", "interfaces made later too");
    let record = h.dir.join("state/ipv6-forward-enabled-by-pn");
    let text = std::fs::read_to_string(&record).expect("pn's record");
    assert!(text.contains("up0"), "{text}");
    let edge = &h.json(&["status"])["edge"];
    assert_eq!(edge["forwarding6"], "pn-only", "{edge}");
    // Nothing but pn's traffic is routed: the neighbours' is dropped.
    assert!(!routed(&bed), "the host routes a stranger's IPv6");
    assert!(eventually(WAIT, || forward_denied(&bed.host) > 0));
    // A restart finds forwarding on, and its own record: still pn's.
    bed.host.restart();
    assert_eq!(bed.host.json(&["status"])["edge"]["forwarding6"], "pn-only");
    assert!(!routed(&bed));
}

#[test]
fn a_host_that_forwarded_ipv6_before_keeps_its_routing_and_settings() {
    let mut bed = bed(Before::Forwarding);
    // Forwarding before pn: the operator set its advertisements apart.
    bed.host.ns.sysctl("net.ipv6.conf.up0.accept_ra=1");
    bed.host.launch(&[]);
    let h = &bed.host;
    let edge = &h.json(&["status"])["edge"];
    assert_eq!(edge["forwarding6"], "shared", "{edge}");
    // IPv4's forwarding was off: pn's own, decided apart.
    assert_eq!(edge["forwarding"], "pn-only", "{edge}");
    assert_eq!(accept_ra(h, "up0"), "1", "the host's own setting");
    assert!(!h.dir.join("state/ipv6-forward-enabled-by-pn").exists());
    // The first ping may wait on neighbour discovery on a loaded machine.
    assert!(
        eventually(WAIT, || routed(&bed)),
        "the host's own IPv6 routing is left alone"
    );
}

#[test]
fn ipv6_off_leaves_ipv6_forwarding_alone() {
    let mut bed = bed(Before::NotForwarding);
    bed.host.launch(&["--ipv6", "off"]);
    let h = &bed.host;
    assert_eq!(h.ns.sysctl_value("net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(accept_ra(h, "up0"), "1");
    assert_eq!(h.json(&["status"])["edge"]["forwarding6"], "shared");
}

/// A container's kernel reports its IPv6 listeners as soon as its link is
/// up with IPv6 on: the attach turns IPv6 on only once the maps know the
/// interface, so none of them is taken for an unknown interface's packet.
#[test]
fn attaching_containers_with_ipv6_counts_no_unknown_interface() {
    let host = Host::start(&unique_prefix(), "h1");
    let (_, app) = host.network_and_app(&[]);
    let members: Vec<_> = (0..4)
        .map(|i| host.member(&app, "worker", &format!("c{i}")))
        .collect();
    assert!(members.iter().all(|m| m.attached["ip6"].is_string()));
    // Reports are repeated for a second or so after link-up.
    std::thread::sleep(Duration::from_millis(1500));
    let unknown = metric_value(
        &host.metrics(),
        "pn_packets_total",
        &[("reason", "unknown_interface")],
    );
    assert_eq!(unknown, 0, "packets of an unknown interface at attach");
    // And IPv6 works once attached: the gateway answers.
    let out = members[0].exec(&["ping", "-6", "-c", "1", "-W", "2", "fe80::1%pn0"]);
    assert!(out.status.success(), "ping -6 fe80::1 without -I: {out:?}");
}
