//! Issue 16: restarts, upgrades and crashes of the agent under traffic.
//! Same-host traffic never passes through the agent and must lose nothing;
//! the tunnel is handed over to a successor (the gap is the hand-over
//! itself) and comes back within a second after a crash.

use std::time::Duration;

use std::net::SocketAddr;

use pn_tests::{
    Host, Namespace, net,
    restarts::{Bed, Event, Outcome, copy_of_agent},
    run_ok,
    scenario::OneApp,
    stream::{Stream, TcpTicker},
    unique_prefix,
};

const RATE: u32 = 2_000;
const SECONDS: f64 = 4.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The stream of the issue (2 000 numbered datagrams a second from c1 to c2
/// on the same host and to c3 on the other) through each event; the limits
/// are twice the targets (100 ms for a hand-over, 1 s after a crash), for
/// the noise of a shared machine.
#[test]
fn restarts_upgrades_and_crashes_lose_no_same_host_datagram() {
    let mut bed = Bed::new(&unique_prefix());
    let next = copy_of_agent(&bed.fleet.hosts[0].dir);
    // Hand-overs (a successor started alongside, or the service manager
    // keeping the tunnel across a restart): 2 × 100 ms. Nothing kept (a
    // bare restart, a crash): a new handshake, 2 × 1 s.
    let cases = [
        (Event::None, Duration::from_millis(100)),
        (Event::Restart, Duration::from_secs(2)),
        (Event::Upgrade(next), Duration::from_millis(200)),
        (Event::Crash, Duration::from_secs(2)),
        (Event::ServiceRestart, Duration::from_millis(200)),
    ];
    let mut results: Vec<(Event, Outcome, Duration)> = Vec::new();
    for (event, limit) in cases {
        let o = bed.measure(&event, RATE, SECONDS);
        eprintln!(
            "{:32} same host: {} lost, gap {:.1} ms | across hosts: {} lost, gap {:.1} ms | took {:.0} ms | no_tunnel before/ready/end {:?}",
            event.name(),
            o.same_host.lost,
            ms(o.same_host.longest_gap),
            o.cross_host.lost,
            ms(o.cross_host.longest_gap),
            ms(o.took),
            o.no_tunnel
        );
        results.push((event, o, limit));
    }
    // The service manager's store gave the tunnel to the next start, which
    // took it out (a later crash never resumes a used state).
    let h1 = &bed.fleet.hosts[0];
    assert!(
        h1.log()
            .contains("resumed the tunnel kept by the service manager"),
        "{}",
        h1.log()
    );
    assert_eq!(
        h1.manager.as_ref().map(|m| m.stored()),
        Some(vec![]),
        "the fd store is empty once the tunnel was taken"
    );
    // Every start ran the tunnel with a worker per CPU (one TUN queue and
    // one socket each), those handed over or kept by the service manager
    // included: all of them travelled.
    let log = h1.log();
    let workers: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("tunnel I/O: ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(workers.len() >= cases_started(), "{log}");
    assert!(
        workers.iter().all(|w| *w == workers[0]),
        "workers changed across hand-overs: {workers:?}"
    );
    assert!(
        workers[0].parse::<usize>().unwrap_or(0) >= cpus.min(2),
        "{workers:?} on {cpus} CPUs"
    );
    for (event, o, limit) in &results {
        assert_eq!(
            o.same_host.lost,
            0,
            "{}: same-host datagrams lost: {}",
            event.name(),
            o.same_host
        );
        // Once the agent answers, its tunnel is up and in the programs'
        // settings: no remote member's packet is dropped for want of one.
        let [_, ready, end] = o.no_tunnel;
        assert_eq!(
            ready,
            end,
            "{}: no_tunnel drops after the agent was ready",
            event.name()
        );
        assert!(
            o.cross_host.longest_gap < *limit,
            "{}: cross-host gap over {limit:?}: {}",
            event.name(),
            o.cross_host
        );
    }
}

/// Issue 24: the hand-over carries the IPv6 member table as well as the
/// IPv4 one. The bed's stream goes to c3 over both families at once (one
/// sender, one tick) through an upgrade and a `systemctl restart`: IPv6
/// loses no more than IPv4 does. Before, a successor was handed the IPv4
/// table only, and one resumed from the fd store dropped IPv6 members'
/// packets until its first converge. A TCP connection over IPv6 across the
/// hosts, echoing every 20 ms, lives through both. With `PN_AGENT_PREV_BIN`
/// (an agent of the release before), that one takes over from this one and
/// hands back to it: both ways the sessions travel (no "another version").
#[test]
fn ipv6_members_cross_hand_overs_as_ipv4_members_do() {
    let mut bed = Bed::new(&unique_prefix());
    bed.ipv6 = true;
    let next = copy_of_agent(&bed.fleet.hosts[0].dir);
    let mut events = vec![Event::Upgrade(next.clone()), Event::ServiceRestart];
    if let Some(prev) = std::env::var_os("PN_AGENT_PREV_BIN") {
        // Hand-overs between the releases go over the socket.
        events.push(Event::Restart);
        events.push(Event::Upgrade(prev.into()));
        events.push(Event::Upgrade(next));
    }
    let _echo = net::tcp_echo_server6(&bed.c3, 7000);
    let ticker = TcpTicker::start(&bed.c1, SocketAddr::from((bed.c3.addr6(), 7000)));
    for event in &events {
        let before = ticker.echoes();
        let o = bed.measure(event, RATE, SECONDS);
        let v6 = o.cross_host6.expect("an IPv6 receiver");
        let echoes = ticker.echoes() - before;
        eprintln!(
            "{:32} across hosts IPv4: {} lost, gap {:.1} ms | IPv6: {} lost, gap {:.1} ms | TCP/IPv6 echoes {echoes}",
            event.name(),
            o.cross_host.lost,
            ms(o.cross_host.longest_gap),
            v6.lost,
            ms(v6.longest_gap),
        );
        if matches!(event, Event::Restart) {
            // Only to leave the service manager: a bare restart pairs
            // afresh, for either family.
            continue;
        }
        // A few datagrams of slack: the two families' datagrams of one
        // tick leave a few microseconds apart.
        assert!(
            v6.lost <= o.cross_host.lost + 10,
            "{}: IPv6 lost more than IPv4: {v6} | {}",
            event.name(),
            o.cross_host
        );
        assert!(echoes > 0, "{}: TCP over IPv6 stopped", event.name());
    }
    let echoes = ticker.finish().expect("the TCP connection over IPv6 lived");
    assert!(echoes > 100, "{echoes} echoes");
    let log = bed.fleet.hosts[0].log();
    assert!(
        !log.contains("state is of another version") && !log.contains("unreadable"),
        "{log}"
    );
}

/// Starts of host 1's agent in `restarts_upgrades_and_crashes…`: the
/// first, then one per event but the first (`Event::None`).
fn cases_started() -> usize {
    5
}

/// Drops that a start must never cause on traffic of known interfaces.
const START_DROPS: [&str; 2] = ["unknown_interface", "spoofed_source"];

fn start_drops(h: &Host) -> Vec<(&'static str, u64)> {
    let m = h.metrics();
    START_DROPS
        .iter()
        .map(|r| {
            (
                *r,
                pn_tests::metric_value(&m, "pn_packets_total", &[("reason", r)]),
            )
        })
        .collect()
}

/// Issue 25, item 1: the bed of the issue (c1 and c2 on host 1, c3 on host
/// 2, 2 000 datagrams a second) with host 1's agent started as an operator
/// starts it by hand, `ip netns exec` and the default `--bpffs`: its pins
/// die with it, so each start finds its programs gone and empty maps (the
/// other restart tests keep a bpffs of their own, whose pins outlive the
/// agent). Whatever the start finds, a packet of a known interface never
/// meets an empty or half-filled table: same-host traffic loses nothing and
/// neither host counts an unknown interface or a spoofed source.
#[test]
fn a_start_from_empty_maps_drops_nothing_of_known_interfaces() {
    let mut bed = Bed::new(&unique_prefix());
    bed.fleet.hosts[0].pins_die_with_agent();
    bed.warm_up();
    let before: Vec<_> = bed.fleet.hosts.iter().map(start_drops).collect();
    let o = bed.measure(&Event::Restart, RATE, SECONDS);
    let after: Vec<_> = bed.fleet.hosts.iter().map(start_drops).collect();
    // Across hosts the gap is printed, not asserted (issue 25, item 2):
    // with the pins gone it is the old agent's exit, the new one's start
    // and a handshake (release build: ~130 ms).
    eprintln!(
        "restart, pins gone: same host {} | across hosts {} | drops before {before:?}, after {after:?} | no_tunnel before/ready/end {:?}",
        o.same_host, o.cross_host, o.no_tunnel
    );
    let h1 = &bed.fleet.hosts[0];
    assert!(
        h1.log().contains("mounted a bpffs"),
        "the agent's pins are its own: {}",
        h1.log()
    );
    // Host 1's counters are new maps' (its pins died): each host's must
    // read 0 before and after the restart (an attach turns a container's
    // IPv6 on only once its interface is written, so not even its
    // listener reports count at the attach).
    for (h, (b, a)) in bed.fleet.hosts.iter().zip(before.iter().zip(&after)) {
        for ((reason, was), (_, now)) in b.iter().zip(a) {
            assert_eq!(
                (*was, *now),
                (0, 0),
                "{}: {reason} counted before and after the restart",
                h.id
            );
        }
    }
    assert_eq!(
        o.same_host.lost, 0,
        "same-host datagrams lost: {}",
        o.same_host
    );
}

/// Issue 16, item 4: an agent that finds the maps of another layout pinned
/// (an upgrade that changed a map) carries their entries over to new maps
/// instead of recreating them empty, and switches the programs only once
/// the new maps are full: a map it cannot read (here PN_IFACES, whose
/// entries changed size) is refilled from the store first. Same-host
/// traffic loses nothing; the refilled interface counts in a fresh row.
#[test]
fn maps_of_another_layout_are_carried_over_not_recreated_empty() {
    let mut host = Host::start(&unique_prefix(), "h1");
    let OneApp { app, c1, c2, .. } = OneApp::new(&host, &host, ["web", "worker"]);
    let ip2 = c2.addr;
    let pins = host.bpffs();
    let ours = pin_dirs(&pins);
    assert_eq!(ours.len(), 1, "one versioned pin directory: {ours:?}");
    // A restart of the same binary reuses its pins: nothing to migrate.
    host.restart();
    assert!(
        !host.log().contains("maps of another layout"),
        "{}",
        host.log()
    );
    assert_eq!(pin_dirs(&pins), ours);
    // Counted before: 4 000 datagrams.
    let first = Stream::start(&c1, &[(&c2, SocketAddr::from((ip2, 9100)))], 4_000, 4_000);
    assert_eq!(first.finish()[0].lost, 0);
    let counted = host.packets(&app, "web-1", "forwarded");
    assert!(counted >= 4_000, "{counted}");
    let stream = Stream::start(&c1, &[(&c2, SocketAddr::from((ip2, 9101)))], RATE, 6_000);
    std::thread::sleep(Duration::from_millis(500));
    host.stop();
    // Another layout: the same maps under another version's name, with
    // PN_IFACES of another value size (the running programs keep theirs).
    let old = pins.join("maps-00000000000000aa");
    std::fs::rename(pins.join(&ours[0]), &old).unwrap();
    std::fs::remove_file(old.join("PN_IFACES")).unwrap();
    run_ok(
        "bpftool",
        &[
            "map",
            "create",
            old.join("PN_IFACES").to_str().unwrap(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "12",
            "entries",
            "16",
            "name",
            "PN_IFACES",
        ],
    );
    host.launch(&[]);
    let r = stream.finish().pop().unwrap();
    eprintln!("{r}");
    let log = host.log();
    assert!(log.contains("entries of"), "a migration is logged: {log}");
    assert!(log.contains("PN_IFACES refilled from the store"), "{log}");
    assert_eq!(pin_dirs(&pins), ours, "the old layout's pins are gone");
    assert_eq!(
        r.lost, 0,
        "same-host datagrams lost across the migration: {r}"
    );
    // Counters are rows of a per-CPU array at each interface's slot, and
    // the slot is kept in PN_IFACES: with PN_IFACES unreadable, the
    // refilled interface gets a fresh (zeroed) row and counts from there
    // (its old row is left, not attributed to anyone).
    let now = host.packets(&app, "web-1", "forwarded");
    assert!(
        (1..=6_000).contains(&now),
        "a fresh row counts the new packets only: {counted} then {now}"
    );
    // And the new maps work for what comes next.
    let _e = net::udp_echo_server(&c2, 9102);
    net::udp_echo(
        &c1,
        SocketAddr::from((ip2, 9102)),
        b"after",
        Duration::from_secs(5),
    )
    .expect("traffic after the migration");
}

fn pin_dirs(bpffs: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(bpffs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("maps"))
        .collect();
    v.sort();
    v
}

/// Issue 16: a forged or replayed hand-over request is refused and changes
/// nothing. The attacker is `pn-handover-probe`, which speaks the protocol:
/// as another user (who cannot reach the socket, and is refused by its
/// credentials were the socket's permissions loosened), as root without the
/// host key, and as root replaying a proof made for another challenge.
#[test]
fn forged_or_replayed_hand_over_requests_are_refused() {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    let p = unique_prefix();
    let mut host = Host::start(&p, "h1");
    let pid = host.pid();
    let state = host.dir.join("state");
    let sock = state.join("handover.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let key = state.join("host.key");
    let probe = |uid: Option<u32>, args: &[&str]| -> String {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pn-handover-probe"));
        c.arg(&sock_arg).args(args);
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        let out = c.output().expect("running the probe");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("probe {args:?} as {uid:?}: {}", text.trim());
        assert!(out.status.success(), "the attack worked: {text}");
        text
    };
    let nobody = 65534;
    let out = probe(Some(nobody), &["forge"]);
    assert!(
        out.starts_with("unreachable") && out.contains("denied"),
        "another user cannot reach the socket: {out}"
    );
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = probe(Some(nobody), &["forge"]);
    assert!(
        out.starts_with("refused") && out.contains("uid 65534"),
        "another user is refused by its credentials: {out}"
    );
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = probe(None, &["forge"]);
    assert!(
        out.starts_with("refused") && out.contains("key"),
        "a request without the host key is refused: {out}"
    );
    let out = probe(None, &["replay", key.to_str().unwrap()]);
    assert!(
        out.starts_with("refused") && out.contains("key"),
        "a proof for another challenge is refused: {out}"
    );
    // Nothing changed: the same agent runs and answers.
    assert_eq!(host.pid(), pid);
    host.cli_ok(&["status"]);
    let log = host.log();
    assert!(
        log.matches("refused a hand-over request").count() >= 3,
        "{log}"
    );
    // And a real successor still takes over.
    host.hand_over(None);
    assert_ne!(host.pid(), pid);
    host.cli_ok(&["status"]);
}

/// Security model: member traffic between hosts never leaves in clear,
/// whatever state the agent is in. With host 1's agent killed, and even its
/// tunnel device deleted, datagrams from c1 to a member on host 2 are
/// dropped on host 1 although it has a default route out of the underlay.
#[test]
fn no_clear_text_leaves_a_host_whose_agent_is_down() {
    let mut bed = Bed::new(&unique_prefix());
    bed.warm_up();
    let h1 = &mut bed.fleet.hosts[0];
    h1.ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.100.254",
        "dev",
        "ul0",
    ]);
    let cap = net::Capture::start(&bed.fleet.underlay, "p1", "udp port 9200");
    let marker = b"PN-CLEAR-TEXT-MARKER-7d2e";
    let dst = SocketAddr::from((bed.c3.addr, 9200));
    let send = |ns: &Namespace| {
        ns.run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                let _ = s.send_to(marker, dst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    h1.kill();
    send(&bed.c1);
    // Without the tunnel device at all, the pool's unreachable route holds.
    let _ = pn_tests::run("ip", &["-n", &h1.ns.name, "link", "del", "pn-tun"]);
    send(&bed.c1);
    let frames = cap.finish();
    assert!(
        frames.is_empty(),
        "{} clear-text datagrams left host 1",
        frames.len()
    );
    // The next agent brings the tunnel back.
    h1.launch(&[
        "--store",
        &format!("etcd://{}", pn_tests::fleet::ETCD_ADDR),
        "--store-insecure",
        "--advertise",
        "192.168.100.1:51871",
        "--underlay-iface",
        "ul0",
    ]);
    bed.warm_up();
}
