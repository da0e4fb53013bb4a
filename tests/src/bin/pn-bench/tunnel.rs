//! Between two hosts, container to container: pn's tunnel (both AEAD
//! implementations) against plain routed veths without encryption and
//! against the tunnels an operator could pick instead (boringtun,
//! wireguard-go, nebula; see `peers`), all between the same two host
//! namespaces in the same run. Throughput (one stream, two and four, and per busy
//! core), TCP request/response (rate, p50, p99), and the single-core sealing
//! and opening rates of the AEAD, from which the CPU a stream needs at
//! least is computed (`tunnel_limit`); the spin's rows in `tunnel_spin`.

use std::net::Ipv4Addr;

use anyhow::bail;
use pn_tests::{Namespace, fleet::Fleet, scenario::OneApp, unique_prefix};
use pn_tunnel::aead::Cipher;

use crate::{
    Effort, peers,
    pingpong::{self, PingPong},
    report::{Measurement, Row, Scenario},
    tools,
};

/// Answer sizes of the request/response runs (the request is one byte).
const ANSWERS: [(usize, &str); 3] = [(1, "1 B"), (1024, "1 KiB"), (65536, "64 KiB")];

/// Parallel streams of the multi-stream runs.
const STREAMS: usize = 4;
const TWO: usize = 2;

/// One way from host 1 to host 2.
struct Way<'a> {
    client: &'a Namespace,
    server: &'a Namespace,
    ip: Ipv4Addr,
}

/// What one way gave, a value per run.
#[derive(Default)]
struct Figures {
    /// One stream, Gbit/s.
    one: Vec<f64>,
    /// One stream, Gbit per CPU-second of everything the bench runs.
    per_core: Vec<f64>,
    /// `TWO` streams, Gbit/s.
    two: Vec<f64>,
    /// `STREAMS` streams, Gbit/s.
    many: Vec<f64>,
    /// Request/response per answer size.
    rr: [Vec<PingPong>; 3],
}

/// One round of every measurement over `way`.
fn measure(way: &Way, effort: Effort, f: &mut Figures) -> anyhow::Result<()> {
    let cpu = tools::tree_cpu_seconds();
    let g = tools::iperf(way.client, way.server, way.ip, effort.seconds)?;
    let cpu = tools::tree_cpu_seconds() - cpu;
    f.one.push(g);
    f.per_core.push(g * effort.seconds as f64 / cpu.max(1e-3));
    f.two.push(tools::iperf_parallel(
        way.client,
        way.server,
        way.ip,
        effort.seconds,
        TWO,
    )?);
    f.many.push(tools::iperf_parallel(
        way.client,
        way.server,
        way.ip,
        effort.seconds,
        STREAMS,
    )?);
    let secs = effort.seconds.min(4);
    for (k, (size, _)) in ANSWERS.iter().enumerate() {
        f.rr[k].push(pingpong::run(way.client, way.server, way.ip, *size, secs)?);
    }
    Ok(())
}

/// One pn run alone, long enough to profile beside it (`perf record -a`),
/// then the loss counters of every namespace: what the figure hides.
fn profile(
    fleet: &Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
    secs: u64,
) -> anyhow::Result<()> {
    if std::env::var_os("PN_BENCH_PROFILE_NO_PROGRAMS").is_some() {
        for h in &fleet.hosts {
            tools::detach_programs(h)?;
        }
    }
    let g = tools::iperf(c1, c2, ip2, secs)?;
    eprintln!("pn (ring) alone: {g:.2} Gbit/s");
    for ns in [&fleet.hosts[0].ns, &fleet.hosts[1].ns, c1, c2] {
        let out = ns.exec(&["nstat", "-az"]);
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let lossy = ["Err", "Retrans", "Drop", "Lost"]
                .iter()
                .any(|k| f.first().is_some_and(|n| n.contains(k)));
            if lossy && f.get(1).is_some_and(|v| *v != "0") {
                eprintln!("{} {l}", ns.name);
            }
        }
    }
    Ok(())
}

const SETUP: &str = "Two host namespaces joined by a Linux bridge (the underlay, MTU 1500). \
pn: from a container on host 1 to a container on host 2 through both agents' tunnels. \
Plain veth: host 1 to host 2 over the same underlay, nothing encrypted and pn's programs detached. \
Peers, host 1 to host 2 over the same underlay with pn's underlay guard on as for pn: boringtun \
(`boringtun-cli`) and wireguard-go (Debian) configured with `wg`, and nebula (Debian, `cipher: chachapoly`, \
firewall open, no lighthouse), each with an inner MTU of 1420. Every round measures every way in turn: \
iperf3 with 1 stream and with 4 (`-P 4`), then a TCP ping-pong of the bench's own (1-byte requests; \
answers of 1 B, 1 KiB, 64 KiB; one connection, each round trip timed; Debian's sockperf answers with the \
request's size, so it cannot ask 1 byte for 64 KiB). Per busy core: Gbit transferred per CPU-second of \
every process of the bench (iperf3, agents, peers' daemons, with the softirq work that runs in their \
context) and of ksoftirqd, from /proc. Everything shares the same 2 cores (senders, receivers, both \
agents or daemons, and other work of the machine). pn (aes256gcm): both agents with \
`--tunnel-cipher aes256gcm` (their sessions checked to use it). Sealing and opening rates: \
`pn_tunnel::aead::{seal_rate, open_rate}`, one core, measured in the same run; the limit per Gbit is plain \
veth's CPU per Gbit plus one sealing and one opening of every byte at those rates. \
IPv6: one stream between the same containers' IPv6 addresses through the same tunnel (IPv4 underlay), \
in every round right after pn's IPv4 measurements, for half of IPv4's seconds; against pn's IPv4 stream of \
the same rounds, and against plain veth over IPv4 (the underlay has no IPv6 to compare with).";

fn gbps(v: &[f64]) -> Measurement {
    Measurement::new("Gbit/s", true, v.to_vec())
}

fn median(v: &[f64]) -> f64 {
    Measurement::new("", true, v.to_vec()).median()
}

/// One stream, per busy core, four streams: pn against plain and each peer.
fn throughput_rows(
    pn: &Figures,
    plain: &Figures,
    peers: &[(&str, Figures)],
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let vs_plain = Row::versus(
        "1 stream: pn (ring), container to container across hosts",
        gbps(&pn.one),
        "plain veth, no encryption",
        gbps(&plain.one),
    );
    let ratio = vs_plain.ratio().unwrap_or(0.0);
    rows.push(vs_plain.with_target("≥ 0.40× plain veth", ratio >= 0.40));
    if ratio < 0.40 {
        notes.push(format!(
            "1 stream at {ratio:.2}× plain veth (target 0.40×): per busy core pn carries {:.2} Gbit/s, \
             plain {:.2}. pn's path per packet crosses a TUN read, a seal and a UDP send on host 1, a UDP \
             read, an open and a TUN write on host 2; one stream stays on one worker (its TUN queue and \
             socket) each way per host; the plain path is a kernel forward. With both hosts, both agents \
             and iperf3 on 2 cores, the figure is pn's CPU cost per Gbit (see the limit rows).",
            median(&pn.per_core),
            median(&plain.per_core),
        ));
    }
    for (name, f) in peers {
        let r = Row::versus(
            &format!("1 stream: pn (ring) against {name}"),
            gbps(&pn.one),
            name,
            gbps(&f.one),
        );
        rows.push(if *name == "boringtun" {
            let met = r.ratio().unwrap_or(0.0) >= 5.0;
            r.with_target("≥ 5× boringtun", met)
        } else {
            r
        });
    }
    let per_core = |v: &[f64]| Measurement::new("Gbit/s per core", true, v.to_vec());
    rows.push(Row::versus(
        "1 stream, per busy core: pn (ring)",
        per_core(&pn.per_core),
        "plain veth",
        per_core(&plain.per_core),
    ));
    for (name, f) in peers {
        rows.push(Row::versus(
            &format!("1 stream, per busy core: pn (ring) against {name}"),
            per_core(&pn.per_core),
            name,
            per_core(&f.per_core),
        ));
    }
    rows.push(Row::versus(
        &format!("{TWO} streams: pn (ring)"),
        gbps(&pn.two),
        "plain veth",
        gbps(&plain.two),
    ));
    rows.push(Row::versus(
        &format!("{TWO} streams against 1: pn (ring)"),
        gbps(&pn.two),
        "pn (ring), 1 stream",
        gbps(&pn.one),
    ));
    rows.push(Row::versus(
        &format!("{STREAMS} streams: pn (ring)"),
        gbps(&pn.many),
        "plain veth",
        gbps(&plain.many),
    ));
    for (name, f) in peers {
        rows.push(Row::versus(
            &format!("{STREAMS} streams: pn (ring) against {name}"),
            gbps(&pn.many),
            name,
            gbps(&f.many),
        ));
    }
    let gain = Row::versus(
        &format!("{STREAMS} streams against 1: pn (ring)"),
        gbps(&pn.many),
        "pn (ring), 1 stream",
        gbps(&pn.one),
    );
    let met = gain.ratio().unwrap_or(0.0) >= 1.5;
    rows.push(gain.with_target("≥ 1.5×", met));
    let gains: Vec<String> = std::iter::once(("plain veth", plain))
        .chain(peers.iter().map(|(n, f)| (*n, f)))
        .map(|(n, f)| format!("{n} {:.2}×", median(&f.many) / median(&f.one)))
        .collect();
    notes.push(format!(
        "What {STREAMS} streams buy over 1 (medians): pn {:.2}×, {}. pn's tunnel has a worker per CPU \
         (a TUN queue, a socket, a thread each way), the kernel spreading streams over the queues; on 2 \
         cores shared by both hosts, their agents and iperf3 there is little idle CPU for them to use.",
        median(&pn.many) / median(&pn.one),
        gains.join(", ")
    ));
    rows
}

/// Request/response rate, p50 and p99 per answer size: pn against plain
/// veth (rate, latency) and each peer (rate; the peers' latencies in a note).
fn latency_rows(
    pn: &Figures,
    plain: &Figures,
    peers: &[(&str, Figures)],
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let rate =
        |v: &[PingPong]| Measurement::new("trans/s", true, v.iter().map(|p| p.rate).collect());
    let p50 = |v: &[PingPong]| Measurement::new("µs", false, v.iter().map(|p| p.p50_us).collect());
    let p99 = |v: &[PingPong]| Measurement::new("µs", false, v.iter().map(|p| p.p99_us).collect());
    let mut missed = Vec::new();
    for (k, (_, label)) in ANSWERS.iter().enumerate() {
        let r = Row::versus(
            &format!("request/response, {label} answers: pn (ring)"),
            rate(&pn.rr[k]),
            "plain veth",
            rate(&plain.rr[k]),
        );
        let ratio = r.ratio().unwrap_or(0.0);
        if ratio < 0.6 {
            missed.push(format!(
                "{label} answers at {ratio:.2}× plain veth (target 0.6×)"
            ));
        }
        rows.push(r.with_target("≥ 0.6× plain veth", ratio >= 0.6));
        for (name, f) in peers {
            let r = Row::versus(
                &format!("request/response, {label} answers: pn (ring) against {name}"),
                rate(&pn.rr[k]),
                name,
                rate(&f.rr[k]),
            );
            let ratio = r.ratio().unwrap_or(0.0);
            if ratio < 2.0 {
                missed.push(format!("{label} answers at {ratio:.2}× {name} (target 2×)"));
            }
            rows.push(r.with_target(&format!("≥ 2× {name}"), ratio >= 2.0));
        }
        rows.push(Row::versus(
            &format!("request/response, {label} answers: p50 round trip"),
            p50(&pn.rr[k]),
            "plain veth",
            p50(&plain.rr[k]),
        ));
        rows.push(Row::versus(
            &format!("request/response, {label} answers: p99 round trip"),
            p99(&pn.rr[k]),
            "plain veth",
            p99(&plain.rr[k]),
        ));
    }
    for (name, f) in peers {
        for (k, (_, label)) in ANSWERS.iter().enumerate() {
            for (what, m) in [
                ("p50", &p50 as &dyn Fn(&[PingPong]) -> Measurement),
                ("p99", &p99),
            ] {
                rows.push(Row::versus(
                    &format!("request/response, {label} answers: {what} round trip, pn (ring) against {name}"),
                    m(&pn.rr[k]),
                    name,
                    m(&f.rr[k]),
                ));
            }
        }
    }
    rows.extend(best_peer_rows(pn, peers, &rate, &p99));
    if !missed.is_empty() {
        notes.push(format!(
            "Request/response targets not met: {}. pn's p50 round trip with 1 B answers is {:.0} µs \
             against plain veth's {:.0}: a round trip through pn wakes four agent threads in turn (host \
             1's TUN→UDP, host 2's UDP→TUN, and back), each a poll, a read and a write, where plain veth \
             stays in the kernel. The cost is in pn-tunnel's device I/O, not in the harness.",
            missed.join("; "),
            p50(&pn.rr[0]).median(),
            p50(&plain.rr[0]).median(),
        ));
    }
    rows
}

/// pn with other flags (`alt`, measured in the same rounds) against pn.
fn alt_rows(label: &str, alt: &Figures, pn: &Figures) -> Vec<Row> {
    let rate =
        |v: &[PingPong]| Measurement::new("trans/s", true, v.iter().map(|p| p.rate).collect());
    let p99 = |v: &[PingPong]| Measurement::new("µs", false, v.iter().map(|p| p.p99_us).collect());
    let per_core = |v: &[f64]| Measurement::new("Gbit/s per core", true, v.to_vec());
    let vs = |what: &str, a: Measurement, b: Measurement| {
        Row::versus(&format!("{what}: {label}"), a, "pn (ring)", b)
    };
    vec![
        vs("1 stream", gbps(&alt.one), gbps(&pn.one)),
        vs(
            "1 stream, per busy core",
            per_core(&alt.per_core),
            per_core(&pn.per_core),
        ),
        vs(&format!("{TWO} streams"), gbps(&alt.two), gbps(&pn.two)),
        vs(
            &format!("{STREAMS} streams"),
            gbps(&alt.many),
            gbps(&pn.many),
        ),
        vs(
            "request/response, 1 B answers",
            rate(&alt.rr[0]),
            rate(&pn.rr[0]),
        ),
        vs(
            "request/response, 1 B answers, p99",
            p99(&alt.rr[0]),
            p99(&pn.rr[0]),
        ),
        vs(
            "request/response, 64 KiB answers",
            rate(&alt.rr[2]),
            rate(&pn.rr[2]),
        ),
    ]
}

/// The 1-byte round trips against the best peer (by rate): ≥ 1.5× its
/// rate, and a p99 no longer than its.
fn best_peer_rows(
    pn: &Figures,
    peers: &[(&str, Figures)],
    rate: &dyn Fn(&[PingPong]) -> Measurement,
    p99: &dyn Fn(&[PingPong]) -> Measurement,
) -> Vec<Row> {
    let Some((name, best)) = peers.iter().max_by(|a, b| {
        rate(&a.1.rr[0])
            .median()
            .total_cmp(&rate(&b.1.rr[0]).median())
    }) else {
        return Vec::new();
    };
    let r = Row::versus(
        &format!("request/response, 1 B answers: pn (ring) against the best peer ({name})"),
        rate(&pn.rr[0]),
        name,
        rate(&best.rr[0]),
    );
    let met = r.ratio().unwrap_or(0.0) >= 1.5;
    let tail = Row::versus(
        &format!("request/response, 1 B answers: p99 round trip against the best peer ({name})"),
        p99(&pn.rr[0]),
        name,
        p99(&best.rr[0]),
    );
    let tail_met = tail.ratio().unwrap_or(f64::INFINITY) <= 1.0;
    vec![
        r.with_target("≥ 1.5× the best peer", met),
        tail.with_target("≤ the best peer's", tail_met),
    ]
}

pub fn run_scenario(effort: Effort) -> anyhow::Result<Scenario> {
    let mut fleet = Fleet::new(&unique_prefix(), 2);
    let OneApp { c1, c2, .. } = OneApp::new(&fleet.hosts[0], &fleet.hosts[1], ["web", "web"]);
    let ip2 = c2.addr;
    let underlay = [
        Ipv4Addr::new(192, 168, 100, 1),
        Ipv4Addr::new(192, 168, 100, 2),
    ];
    tools::wait_for_remote(&fleet.hosts[0])?;
    if let Some(secs) = std::env::var("PN_BENCH_PROFILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        profile(&fleet, [&c1, &c2], ip2, secs)?;
        bail!("PN_BENCH_PROFILE_SECS: one profiling run, nothing recorded");
    }
    if let Ok(spec) = std::env::var("PN_BENCH_TUNNEL_AB") {
        crate::tunnel_ab::run(&spec, effort, &mut fleet, [&c1, &c2], ip2)?;
        bail!("PN_BENCH_TUNNEL_AB: an A/B of pn alone, nothing recorded");
    }
    let (h1, h2) = (
        fleet.hosts[0].ns.name.clone(),
        fleet.hosts[1].ns.name.clone(),
    );
    let (h1, h2) = (Namespace::borrowed(&h1), Namespace::borrowed(&h2));
    let (peers, mut notes) = peers::start_all([&h1, &h2], underlay);
    let plain_way = Way {
        client: &h1,
        server: &h2,
        ip: underlay[1],
    };
    let pn_way = Way {
        client: &c1,
        server: &c2,
        ip: ip2,
    };
    let peer_ways: Vec<Way> = peers
        .iter()
        .map(|p| Way {
            client: &h1,
            server: &h2,
            ip: p.far,
        })
        .collect();
    let (mut plain, mut pn) = (Figures::default(), Figures::default());
    let mut others: Vec<Figures> = peer_ways.iter().map(|_| Figures::default()).collect();
    // Each round measures every way, so drift of the shared machine falls on
    // all of them alike. Plain has nothing of pn on its path (the underlay
    // guard detached); pn and the peers run with pn's programs on.
    // PN_BENCH_TUNNEL_ALT_FLAGS: pn again each round with these agent flags
    // (e.g. `--tunnel-workers 1`), its rows against pn as it ships.
    let alt_flags: Option<Vec<String>> = std::env::var("PN_BENCH_TUNNEL_ALT_FLAGS")
        .ok()
        .map(|f| f.split_whitespace().map(String::from).collect());
    let mut alt = Figures::default();
    // One IPv6 stream through the tunnel in each round, right after IPv4's.
    let (mut probe6, mut pn6) = (crate::v6::Probe::to(&c2), Vec::new());
    for _ in 0..effort.runs {
        for h in &fleet.hosts {
            tools::detach_programs(h)?;
        }
        measure(&plain_way, effort, &mut plain)?;
        fleet.relaunch(&[]);
        tools::wait_for_remote(&fleet.hosts[0])?;
        measure(&pn_way, effort, &mut pn)?;
        probe6.reach(&c1);
        if let Some(g) = probe6.measure("iperf3 through the tunnel", |ip| {
            tools::iperf(&c1, &c2, ip, crate::v6::seconds(effort))
        }) {
            pn6.push(g);
        }
        for (way, f) in peer_ways.iter().zip(&mut others) {
            measure(way, effort, f)?;
        }
        if let Some(flags) = &alt_flags {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            fleet.relaunch(&flags);
            tools::wait_for_remote(&fleet.hosts[0])?;
            measure(&pn_way, effort, &mut alt)?;
        }
    }
    if std::env::var_os("PN_BENCH_VERBOSE").is_some() {
        for h in &fleet.hosts {
            for l in h.metrics().lines().filter(|l| l.starts_with("pn_tunnel_")) {
                eprintln!("{} {l}", h.id);
            }
        }
    }
    let others: Vec<(&'static str, Figures)> = peers.iter().map(|p| p.name).zip(others).collect();
    drop(peer_ways);
    drop(peers);
    let mut pn_rc = vec![];
    fleet.relaunch(&["--tunnel-cipher", "rustcrypto"]);
    tools::wait_for_remote(&fleet.hosts[0])?;
    for _ in 0..effort.runs {
        pn_rc.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
    }
    // The spin, then AES-256-GCM: their own rows, the fleet relaunched.
    let (spin_rows, spin_notes) =
        crate::tunnel_spin::rows(effort, &mut fleet, [&c1, &c2], ip2, &pn.rr[0])?;
    let (aes_rows, aes_notes) = crate::tunnel_aes::rows(
        effort,
        &mut fleet,
        [&c1, &c2],
        ip2,
        (&plain.one, &plain.per_core),
        &pn.one,
    )?;
    fleet.relaunch(&[]);
    let (seal_ring, open_ring) = crate::tunnel_limit::rates(Cipher::Ring, effort);
    let (seal_rc, _) = crate::tunnel_limit::rates(Cipher::RustCrypto, effort);
    let mut rows = throughput_rows(&pn, &plain, &others, &mut notes);
    rows.extend(crate::v6::rows(
        "1 stream: pn (ring), container to container across hosts",
        gbps(&pn6),
        Some((
            "plain veth, IPv4 (the underlay has no IPv6)",
            gbps(&plain.one),
        )),
        gbps(&pn.one),
    ));
    if let Some(why) = probe6.why_not() {
        notes.push(format!(
            "IPv6 through the tunnel not measured (or not every round): {why}"
        ));
    }
    rows.push(Row::versus(
        "pn (rustcrypto) against pn (ring), 1 stream",
        gbps(&pn_rc),
        "pn (ring)",
        gbps(&pn.one),
    ));
    rows.push(Row::versus(
        "ChaCha20-Poly1305 sealing, 1400-byte packets, one core: ring",
        gbps(&seal_ring),
        "RustCrypto chacha20poly1305",
        gbps(&seal_rc),
    ));
    rows.extend(crate::tunnel_limit::rows(
        "pn (ring)",
        "ChaCha20-Poly1305",
        &pn.per_core,
        &plain.per_core,
        (&seal_ring, &open_ring),
        &mut notes,
    ));
    rows.extend(aes_rows);
    notes.extend(aes_notes);
    rows.extend(latency_rows(&pn, &plain, &others, &mut notes));
    rows.extend(spin_rows);
    notes.extend(spin_notes);
    if let Some(flags) = &alt_flags {
        rows.extend(alt_rows(&format!("pn ({})", flags.join(" ")), &alt, &pn));
    }
    Ok(Scenario {
        name: "tunnel".into(),
        title: "Encrypted throughput and latency between hosts".into(),
        setup: SETUP.into(),
        rows,
        notes,
    })
}
