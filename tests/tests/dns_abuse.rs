//! The agent's DNS against hostile clients (DESIGN "Security model"): a
//! container piling up TCP connections, strangers on the underlay asking,
//! a container flooding names of the world. Each time another container
//! keeps resolving and the agent keeps answering its API.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use pn_tests::{
    Host, Namespace, metric_value, net,
    scenario::{Member, OneApp},
    unique_prefix,
};

const ZONE: &str = "private-network.internal";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn dig(ns: &Namespace, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    let out = ns.exec(&full);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets this test process's soft descriptor limit (None: to the hard one,
/// so it can hold thousands of sockets).
fn set_own_soft_descriptor_limit(soft: Option<u64>) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(
        Resource::RLIMIT_NOFILE,
        soft.unwrap_or(hard).min(hard),
        hard,
    )
    .unwrap();
}

/// "Max open files" of a process: (soft, hard).
fn descriptor_limits_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut w = line.split_whitespace().skip(3);
    (w.next().unwrap().into(), w.next().unwrap().into())
}

/// Runs `f` on a thread inside `ns` without waiting for it.
fn spawn_in<T: Send + 'static>(
    ns: &Namespace,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(ns.path()).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// One host, network A with a `web` (the victim) and a `worker` (the
/// attacker); `extra` flags for the agent.
struct Tenants {
    host: Host,
    name: String,
    victim: Member,
    attacker: Member,
}

fn tenants(host: Host) -> Tenants {
    let OneApp {
        net,
        app,
        c1: victim,
        c2: attacker,
    } = OneApp::new(&host, &host, ["web", "worker"]);
    Tenants {
        name: format!("1.web.{app}.{net}.{ZONE}"),
        host,
        victim,
        attacker,
    }
}

#[test]
fn thousands_of_tcp_connections_from_one_container_starve_nobody() {
    let p = unique_prefix();
    // The agent starts with the usual soft limit (1024) and raises it itself.
    set_own_soft_descriptor_limit(Some(1024));
    let host = Host::start(&p, "h1");
    set_own_soft_descriptor_limit(None);
    let t = tenants(host);
    let pid = t.host.pid().expect("agent running");
    let (soft, hard) = descriptor_limits_of(pid);
    assert_eq!(soft, hard, "the agent raised its soft limit");
    let before = descriptors(pid);

    // The attacker opens 3,000 connections to the DNS and holds them open.
    const ATTEMPTS: usize = 3000;
    let opened = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (opened, done, release) = (opened.clone(), done.clone(), release.clone());
        spawn_in(&t.attacker, move || {
            let dns = SocketAddr::from((GATEWAY, 53));
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut held = Vec::with_capacity(ATTEMPTS);
            for _ in 0..ATTEMPTS {
                if Instant::now() > deadline {
                    break;
                }
                if let Ok(s) = TcpStream::connect_timeout(&dns, Duration::from_millis(300)) {
                    held.push(s);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
            done.store(true, Ordering::Relaxed);
            while !release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            held.len()
        })
    };

    // Meanwhile the victim resolves (UDP and TCP) and the API answers; once
    // more after the attacker holds all its connections.
    let mut most = 0;
    let mut rounds = 0;
    loop {
        let finished = done.load(Ordering::Relaxed);
        let n = opened.load(Ordering::Relaxed);
        most = most.max(descriptors(pid));
        assert_eq!(
            dig(&t.victim, &["+short", &t.name]).trim(),
            t.victim.addr.to_string(),
            "UDP, after {n} connections"
        );
        assert_eq!(
            dig(&t.victim, &["+tcp", "+short", &t.name]).trim(),
            t.victim.addr.to_string(),
            "TCP, after {n} connections"
        );
        t.host.cli_ok(&["status"]);
        most = most.max(descriptors(pid));
        rounds += 1;
        if finished && rounds >= 3 {
            break;
        }
    }
    let m = t.host.metrics();
    release.store(true, Ordering::Relaxed);
    let held = attacker.join().unwrap();
    eprintln!(
        "attacker connected {held} of {ATTEMPTS}; agent descriptors {before} before, at most {most} during; {rounds} rounds of resolving"
    );
    assert!(held >= ATTEMPTS * 9 / 10, "the attack ran: {held}");
    // The agent holds its bound (8 per client), not the attacker's count.
    assert!(most < before + 64, "descriptors {before} → {most}");
    let refused = metric_value(&m, "pn_dns_limited_total", &[("limit", "tcp_client")]);
    // Each of the 8 places is given back after 5 s of silence, so a few
    // more than 8 may have been served over a long attack.
    assert!(
        refused as usize >= held * 9 / 10,
        "refused {refused} of {held}\n{m}"
    );
    let open_now: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pn_dns_tcp_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("pn_dns_tcp_connections");
    assert!(open_now <= 8, "{open_now} connections open");
}

#[test]
fn a_query_from_outside_the_containers_gets_nothing() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    // A neighbour on the host's L2 (no underlay guard: the edge's table
    // must keep it from the DNS), with a route to the gateway address
    // through the host.
    let neighbour = host.neighbour(91, "169.254.1.1/32");
    let _up = net::fake_dns_upstream(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44));
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let t = tenants(host);
    // A member resolves the world and its own names.
    assert_eq!(
        dig(&t.victim, &["+short", "example.com"]).trim(),
        "192.0.2.44"
    );
    // The neighbour, and the host itself, get no answer at all, neither for
    // the world (no open resolver on the underlay) nor for the zone.
    for (who, ns) in [("neighbour", &neighbour), ("host", &t.host.ns)] {
        for name in ["example.com", t.name.as_str()] {
            let out = dig(ns, &["@169.254.1.1", name]);
            assert!(
                out.contains("timed out") || out.contains("no servers could be reached"),
                "{who} asked {name}: {out}"
            );
            assert!(!out.contains("status:"), "{who} got an answer: {out}");
        }
        let out = dig(ns, &["+tcp", "@169.254.1.1", "example.com"]);
        assert!(
            !out.contains("status:"),
            "{who} got an answer over TCP: {out}"
        );
    }
    // Raw datagrams from the neighbour, the way a scanner sends them.
    let sock = neighbour.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // A query for example.com, id 0x1234, RD.
        let q = [
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        s.send_to(&q, (GATEWAY, 53)).unwrap();
        let mut buf = [0u8; 512];
        s.recv(&mut buf).ok()
    });
    assert_eq!(sock, None);
    let m = t.host.metrics();
    // 2 × (2 over UDP + 1 over TCP), plus the raw one; dig over UDP may
    // retry, never fewer. None reached the DNS: the table's input rule let
    // only containers' interfaces in.
    assert!(
        metric_value(
            &m,
            "pn_edge_dropped_packets_total",
            &[("reason", "dns_denied")]
        ) >= 7,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "pn_dns_queries_total", &[("outcome", "not_member")]),
        0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "pn_dns_queries_total", &[("outcome", "forwarded")]),
        1,
        "only the member's name of the world went upstream"
    );
}

#[test]
fn queries_spoofed_from_the_underlay_do_not_spend_a_members_budget() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let neighbour = host.neighbour(92, "169.254.1.1/32");
    let _up = net::fake_dns_upstream(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44));
    // A budget of 5 queries a second, 10 at once.
    host.launch(&["--dns-upstream", "127.0.0.1:5353", "--dns-query-rate", "5"]);
    let t = tenants(host);
    // The neighbour sends a flood with the victim's address as source.
    let victim = t.victim.addr;
    let q = [
        0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
    ];
    for i in 0..100u16 {
        net::send_raw_ipv4(
            &neighbour,
            net::udp_packet(victim, 20000 + i, GATEWAY, 53, &q),
        )
        .unwrap();
    }
    // The victim's budget is whole: it resolves, nothing was limited.
    assert_eq!(
        dig(&t.victim, &["+short", "example.com"]).trim(),
        "192.0.2.44"
    );
    let m = t.host.metrics();
    assert_eq!(
        metric_value(&m, "pn_dns_limited_total", &[("limit", "query_rate")]),
        0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "pn_edge_dropped_packets_total",
            &[("reason", "dns_denied")]
        ) >= 100,
        "{m}"
    );
}

#[test]
fn a_container_flooding_names_of_the_world_does_not_starve_another() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    // Names starting with "slow" are never answered: each forward of one
    // holds its slot until the upstream timeout (2 s).
    let _up = net::fake_dns_upstream_ignoring(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44), "slow");
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let t = tenants(host);
    let stop = Arc::new(AtomicBool::new(false));
    // 500 names a second for 5 s: within the attacker's query rate, far
    // past the forwards all clients together may have in flight (256 over
    // 2 s would need only 128 a second).
    let flood = {
        let stop = stop.clone();
        spawn_in(&t.attacker, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let t0 = Instant::now();
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(5) {
                let due = (t0.elapsed().as_millis() / 2) as u32;
                while sent < due {
                    let label = format!("slow{sent}");
                    let mut q = vec![
                        (sent >> 8) as u8,
                        sent as u8,
                        0x01,
                        0,
                        0,
                        1,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ];
                    q.push(label.len() as u8);
                    q.extend_from_slice(label.as_bytes());
                    q.extend_from_slice(&[
                        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 1, 0, 1,
                    ]);
                    let _ = s.send_to(&q, (GATEWAY, 53));
                    sent += 1;
                }
                let mut buf = [0u8; 512];
                while s.recv(&mut buf).is_ok() {}
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    // Let the flood fill what it can, then resolve the world meanwhile.
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..5 {
        assert_eq!(
            dig(&t.victim, &["+short", &format!("name{i}.example.com")]).trim(),
            "192.0.2.44",
            "the victim's name of the world, during the flood"
        );
    }
    t.host.cli_ok(&["status"]);
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let m = t.host.metrics();
    let refused = metric_value(&m, "pn_dns_limited_total", &[("limit", "forward_client")]);
    eprintln!("flood sent {sent} names; {refused} forwards refused to the attacker");
    assert!(sent >= 1000, "the flood ran: {sent}");
    assert!(refused > 0, "{m}");
    assert_eq!(
        metric_value(&m, "pn_dns_limited_total", &[("limit", "forward_global")]),
        0
    );
}
