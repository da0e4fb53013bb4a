//! DNS: queries per second and latency (dnsperf, from a container) for names
//! of the zone and for forwarded names, with the cache warm (names asked
//! again and again) and cold (every name new); baseline for the forwarded
//! cases: the same upstream queried with the same names and load, straight
//! from the host (over loopback) and from the same container across its
//! veth with pn's programs detached, and the programs' own time per query
//! of the warm cache (kernel bpf_stats), so pn's warm cache can be told
//! apart from the path its queries take.

use std::net::{Ipv4Addr, SocketAddrV4};

use pn_tests::{Host, net, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools::{self, DnsPerf},
};

/// Queries in flight: the zone and a warm cache take dnsperf's usual load;
/// a cold cache sends every query upstream, and one container may have 32
/// forwards in flight (past that it gets SERVFAIL at once, which would be
/// counted as fast answers).
const IN_FLIGHT: u32 = 64;
const IN_FLIGHT_COLD: u32 = 32;
/// Distinct names of the world in the warm-cache load.
const WARM_NAMES: usize = 200;
/// The upstream responder's one address: a `local` route in the host's
/// namespace (the host takes it as its own). With pn's programs detached a
/// container reaches it over the same path as its queries to the gateway
/// (its veth, the host's input, a UDP socket of the host); with them
/// attached it is the host, never the world (`egress_denied`), so the
/// programs' share is their own run time instead (bpf_stats).
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const UPSTREAM_PORT: u16 = 5353;

#[derive(Default)]
struct Series {
    qps: Vec<f64>,
    latency: Vec<f64>,
    worst_noerror: f64,
}

impl Series {
    fn push(&mut self, r: DnsPerf) {
        if self.qps.is_empty() || r.noerror < self.worst_noerror {
            self.worst_noerror = r.noerror;
        }
        self.qps.push(r.qps);
        self.latency.push(r.latency_ms);
    }
    fn qps(&self) -> Measurement {
        Measurement::new("q/s", true, self.qps.clone())
    }
    fn latency(&self) -> Measurement {
        Measurement::new("ms", false, self.latency.clone())
    }
}

/// `n` names no one asked before: a random run label and a counter.
fn unique_names(n: usize) -> Vec<String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    (0..n)
        .map(|i| format!("c{seed:x}-{i:x}.cold.example.net"))
        .collect()
}

/// The cache's hits and misses so far (the counters start again with each
/// agent).
fn cache_counts(host: &Host) -> (u64, u64) {
    let m = host.metrics();
    let get = |event: &str| pn_tests::metric_value(&m, "pn_dns_cache_total", &[("event", event)]);
    (get("hit"), get("miss"))
}

/// Asks each name of `world` once through the agent until all are answered
/// (the cache warm, the first misses paid; a restarted agent may still be
/// opening its sockets).
fn warm_up(c1: &pn_tests::Namespace, world: &[String]) -> anyhow::Result<()> {
    for _ in 0..10 {
        if tools::dnsperf(c1, GATEWAY, 53, world, 2, IN_FLIGHT_COLD, true)?.noerror >= 1.0 {
            return Ok(());
        }
    }
    anyhow::bail!("the agent did not answer every name of the warm-up")
}

const GATEWAY: &str = "169.254.1.1";

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let _stats = tools::BpfStats::enable()?;
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let upstream = UPSTREAM.to_string();
    host.ns.ip(&[
        "route",
        "add",
        "local",
        &format!("{upstream}/32"),
        "dev",
        "lo",
    ]);
    let _upstream = net::fake_dns_upstream_on(
        &host.ns,
        SocketAddrV4::new(UPSTREAM, UPSTREAM_PORT),
        "192.0.2.1".parse()?,
        "",
    );
    // The per-container query rate (1000/s by default) would measure the
    // limit, not the server.
    host.launch(&[
        "--dns-upstream",
        &format!("{upstream}:{UPSTREAM_PORT}"),
        "--dns-query-rate",
        "10000000",
    ]);
    let (net_id, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    let _others: Vec<_> = (0..3)
        .map(|i| host.member(&app, "worker", &format!("w{i}")))
        .collect();
    let base = format!("{app}.{net_id}.private-network.internal");
    let zone_names = vec![
        base.clone(),
        format!("web.{base}"),
        format!("1.web.{base}"),
        format!("worker.{base}"),
        format!("2.worker.{base}"),
    ];
    let world: Vec<String> = (0..WARM_NAMES)
        .map(|i| format!("www{i}.example.com"))
        .collect();
    // Enough new names that the cold runs never run out at today's rates.
    let cold_count = 60_000 * effort.seconds as usize;
    let gw = GATEWAY;
    warm_up(&c1, &world)?;
    let [
        mut zone,
        mut warm,
        mut warm_bare,
        mut warm_direct,
        mut cold,
        mut cold_direct,
    ] = std::array::from_fn::<Series, 6, _>(|_| Series::default());
    let secs = effort.seconds;
    // The counters of the agents restarted so far (see below).
    let (mut hits, mut misses) = (0, 0);
    // pn's programs' run time per query answered in the warm runs.
    let mut prog_ns = Vec::new();
    let egress = |host: &Host| host.packets(&app, "web-1", "egress");
    for _ in 0..effort.runs {
        zone.push(tools::dnsperf(
            &c1,
            gw,
            53,
            &zone_names,
            secs,
            IN_FLIGHT,
            false,
        )?);
        // The programs of this agent (a restart below loads them anew).
        let ids = tools::pinned_prog_ids(&host);
        let s0 = tools::prog_stats_ids(&ids);
        let w = tools::dnsperf(&c1, gw, 53, &world, secs, IN_FLIGHT, false)?;
        let s1 = tools::prog_stats_ids(&ids);
        anyhow::ensure!(
            s1.1 > s0.1 && w.completed > 0.0,
            "no run of pn's programs counted over the warm run (bpf_stats)"
        );
        prog_ns.push(s1.0.saturating_sub(s0.0) as f64 / w.completed);
        warm.push(w);
        warm_direct.push(tools::dnsperf(
            &host.ns,
            &upstream,
            UPSTREAM_PORT,
            &world,
            secs,
            IN_FLIGHT,
            false,
        )?);
        let names = unique_names(cold_count);
        cold.push(tools::dnsperf(
            &c1,
            gw,
            53,
            &names,
            secs,
            IN_FLIGHT_COLD,
            true,
        )?);
        let names = unique_names(cold_count);
        cold_direct.push(tools::dnsperf(
            &host.ns,
            &upstream,
            UPSTREAM_PORT,
            &names,
            secs,
            IN_FLIGHT_COLD,
            true,
        )?);
        // The same path with no programs: detached for this one
        // measurement; the restart that attaches them again starts an
        // agent with an empty cache and new counters.
        let before = egress(&host);
        tools::detach_programs(&host)?;
        warm_bare.push(tools::dnsperf(
            &c1,
            &upstream,
            UPSTREAM_PORT,
            &world,
            secs,
            IN_FLIGHT,
            false,
        )?);
        anyhow::ensure!(
            egress(&host) == before,
            "the baseline without programs still ran pn's programs"
        );
        let (h, m) = cache_counts(&host);
        (hits, misses) = (hits + h, misses + m);
        tools::reattach_programs(&mut host);
        warm_up(&c1, &world)?;
    }
    let (h, m) = cache_counts(&host);
    (hits, misses) = (hits + h, misses + m);
    let med = |s: &Series| s.qps().median();
    let prog = Measurement::new("ns", false, prog_ns);
    let warm_ratio = med(&warm) / med(&warm_direct);
    let notes = vec![
        format!(
            "Cache over the whole run (warm-ups included): {hits} hits, {misses} misses. Share \
             of NOERROR answers (the worst run): zone {:.1} %, warm {:.1} %, cold {:.1} %, \
             upstream direct {:.1} % / {:.1} %, upstream across the veth (programs detached) \
             {:.1} %.",
            zone.worst_noerror * 100.0,
            warm.worst_noerror * 100.0,
            cold.worst_noerror * 100.0,
            warm_direct.worst_noerror * 100.0,
            cold_direct.worst_noerror * 100.0,
            warm_bare.worst_noerror * 100.0,
        ),
        format!(
            "Warm cache against the upstream direct, {warm_ratio:.2}×, split along the path \
             (ratios of medians, q/s; their product is that ratio): crossing the container's \
             veth both ways ({:.2}×: the upstream across the veth with no programs over the \
             upstream direct), pn's agent and programs over that same path ({:.2}×: pn warm \
             over the upstream across the veth, programs detached). Of the latter, pn's \
             programs' own time: {:.0} ns per query (median; bpf_stats run time of the agent's \
             programs over the warm run, per query answered).",
            med(&warm_bare) / med(&warm_direct),
            med(&warm) / med(&warm_bare),
            prog.median(),
        ),
    ];
    let bare = "the upstream across the container's veth, programs detached";
    Ok(Scenario {
        name: "dns".into(),
        title: "DNS".into(),
        setup: format!(
            "dnsperf (4 clients) inside a container, against the agent on 169.254.1.1:53 (started with \
             `--dns-query-rate 10000000`, so the per-container rate limit does not cap dnsperf): names of \
             the zone (app, type and container names of a 4-container app, {IN_FLIGHT} queries in flight); \
             names of the world forwarded to an upstream on the host (a minimal UDP responder of the test \
             harness, TTL 60 s, on {UPSTREAM}:{UPSTREAM_PORT}): warm cache, {WARM_NAMES} names asked over \
             and over ({IN_FLIGHT} in flight, after the names were asked once), and cold cache, every name \
             new (random labels, each asked once, {IN_FLIGHT_COLD} in flight: one container's forwarding \
             share). Baselines, the same responder with the same names and load, in the same runs: from \
             the host straight at it over loopback (the upstream direct), and, for the warm cache, dnsperf \
             in the same container at it across the container's veth, the way the container's queries to \
             the agent go (its address is a `local` route of the host's namespace), with pn's programs \
             detached (`bpftool`-unpinned links; a restart of the agent attaches them again and the cache \
             is warmed again before the next run): attached, they deny it, the host's own address being \
             never the world. pn's programs' own time per query of the warm cache: the kernel's \
             bpf_stats (run_time_ns of the programs of the agent's pinned links) over the warm run, \
             divided by the queries answered (a query and its answer: about two runs)."
        ),
        rows: vec![
            Row::alone("zone names: queries/s", zone.qps()),
            Row::alone("zone names: average latency", zone.latency()),
            Row::versus(
                "forwarded names, warm cache: queries/s",
                warm.qps(),
                "upstream direct",
                warm_direct.qps(),
            )
            .with_target("≥ 1× upstream direct", warm_ratio >= 1.0),
            Row::versus(
                "forwarded names, warm cache: average latency",
                warm.latency(),
                "upstream direct",
                warm_direct.latency(),
            ),
            Row::versus(
                "forwarded names, warm cache, same veth: queries/s",
                warm.qps(),
                bare,
                warm_bare.qps(),
            ),
            Row::versus(
                "forwarded names, warm cache, same veth: average latency",
                warm.latency(),
                bare,
                warm_bare.latency(),
            ),
            Row::alone(
                "forwarded names, warm cache: pn's programs' time per query",
                prog,
            ),
            Row::versus(
                "forwarded names, cold cache: queries/s",
                cold.qps(),
                "upstream direct",
                cold_direct.qps(),
            ),
            Row::versus(
                "forwarded names, cold cache: average latency",
                cold.latency(),
                "upstream direct",
                cold_direct.latency(),
            ),
        ],
        notes,
    })
}
