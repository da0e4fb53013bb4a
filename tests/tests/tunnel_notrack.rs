//! `--tunnel-notrack` across two hosts: with it, the tunnel's datagrams
//! leave no conntrack entry in either host's namespace while containers
//! talk through it (and the rules stay through a hand-over); a host
//! restarted without it has its rules gone and its datagrams tracked again,
//! and traffic still flows.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace, bulk, eventually, fleet::Fleet, net, scenario::OneApp, unique_prefix,
};

const LONG: Duration = Duration::from_secs(10);
const PORT: &str = "51871";

/// Echo and a 2 MB download, from c1 on h1 to c2 on h2.
fn traffic(c1: &Namespace, dst: std::net::Ipv4Addr) {
    let to = |port| SocketAddr::from((dst, port));
    assert!(
        eventually(Duration::from_secs(15), || net::tcp_echo(
            c1,
            to(4000),
            b"across",
            Duration::from_millis(800)
        )
        .is_ok()),
        "echo across the tunnel"
    );
    assert_eq!(bulk::tcp_download(c1, to(4001), LONG).unwrap(), 2_000_000);
}

/// The host namespace's conntrack entries of the tunnel's port.
fn tunnel_entries(h: &Host) -> Vec<String> {
    let out = h.ns.exec(&["cat", "/proc/net/nf_conntrack"]);
    assert!(out.status.success(), "reading {}'s conntrack table", h.id);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" udp "))
        .filter(|l| l.contains(&format!("sport={PORT} ")) || l.contains(&format!("dport={PORT} ")))
        .map(str::to_string)
        .collect()
}

/// pn's table in the host's namespace.
fn table(h: &Host) -> String {
    let out = h.ns.exec(&["nft", "list", "table", "inet", "pn"]);
    assert!(out.status.success(), "listing {}'s table", h.id);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_notrack_rules(h: &Host) -> bool {
    let t = table(h);
    t.contains("chain tunnel_notrack_in") && t.contains(&format!("udp dport {PORT}"))
}

/// The last start's log line of the tunnel's switches.
fn switches(h: &Host) -> String {
    h.log()
        .lines()
        .rfind(|l| l.contains("tunnel I/O:"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_tunnels_datagrams_skip_conntrack_with_the_switch_and_are_tracked_again_without() {
    let mut f = Fleet::with_flags(&unique_prefix(), 2, &["--tunnel-notrack"]);
    let OneApp { c1, c2, .. } = OneApp::new(&f.hosts[0], &f.hosts[1], ["web", "worker"]);
    let ip2 = c2.addr;
    let _echo = net::tcp_echo_server(&c2, 4000);
    let _source = bulk::tcp_source_server(&c2, 4001, 2_000_000);

    traffic(&c1, ip2);
    for h in &f.hosts {
        assert!(has_notrack_rules(h), "{}:\n{}", h.id, table(h));
        assert!(switches(h).ends_with("notrack on"), "{}", switches(h));
        let e = tunnel_entries(h);
        assert!(
            e.is_empty(),
            "{} tracks the tunnel:\n{}",
            h.id,
            e.join("\n")
        );
    }

    // A successor agent keeps the rules: its table replaces its
    // predecessor's in one transaction, and no datagram got tracked
    // meanwhile.
    f.hosts[0].hand_over(None);
    traffic(&c1, ip2);
    assert!(has_notrack_rules(&f.hosts[0]));
    for h in &f.hosts {
        let e = tunnel_entries(h);
        assert!(
            e.is_empty(),
            "{} after the hand-over:\n{}",
            h.id,
            e.join("\n")
        );
    }

    // h1 without the switch: its rules go at the start, its datagrams are
    // tracked again (h2's side, still switched on, tracks none).
    let flags = f.flags(1, &[]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    f.hosts[0].stop();
    f.hosts[0].launch(&refs);
    traffic(&c1, ip2);
    let h1 = &f.hosts[0];
    assert!(
        eventually(LONG, || !table(h1).contains("tunnel_notrack")),
        "h1 kept its notrack rules:\n{}",
        table(h1)
    );
    assert!(switches(h1).ends_with("notrack off"), "{}", switches(h1));
    traffic(&c1, ip2);
    assert!(
        !tunnel_entries(h1).is_empty(),
        "h1, without the switch, tracks the tunnel's datagrams"
    );
    let e = tunnel_entries(&f.hosts[1]);
    assert!(e.is_empty(), "h2 tracks the tunnel:\n{}", e.join("\n"));
}
