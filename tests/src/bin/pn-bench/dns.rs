//! DNS: queries per second and latency (dnsperf, from a container) for names
//! of the zone and for forwarded names, with the cache warm (names asked
//! again and again) and cold (every name new); baseline for the forwarded
//! cases: the same upstream queried directly with the same names.

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

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let _upstream = net::fake_dns_upstream(&host.ns, 5353, "192.0.2.1".parse()?);
    // The per-container query rate (1000/s by default) would measure the
    // limit, not the server.
    host.launch(&[
        "--dns-upstream",
        "127.0.0.1:5353",
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
    let gw = "169.254.1.1";
    // Warm the cache (and pay the first misses) before measuring.
    tools::dnsperf(&c1, gw, 53, &world, 1, IN_FLIGHT_COLD, false)?;
    let [
        mut zone,
        mut warm,
        mut warm_direct,
        mut cold,
        mut cold_direct,
    ] = std::array::from_fn::<Series, 5, _>(|_| Series::default());
    let secs = effort.seconds;
    let direct = &host.ns;
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
        warm.push(tools::dnsperf(&c1, gw, 53, &world, secs, IN_FLIGHT, false)?);
        warm_direct.push(tools::dnsperf(
            direct,
            "127.0.0.1",
            5353,
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
            direct,
            "127.0.0.1",
            5353,
            &names,
            secs,
            IN_FLIGHT_COLD,
            true,
        )?);
    }
    let m = host.metrics();
    let hits = pn_tests::metric_value(&m, "pn_dns_cache_total", &[("event", "hit")]);
    let misses = pn_tests::metric_value(&m, "pn_dns_cache_total", &[("event", "miss")]);
    let warm_ratio = warm.qps().median() / warm_direct.qps().median();
    let mut notes = vec![format!(
        "Cache over the whole run: {hits} hits, {misses} misses. Share of NOERROR answers (the worst run): zone {:.1} %, warm {:.1} %, cold {:.1} %, upstream direct {:.1} % / {:.1} %.",
        zone.worst_noerror * 100.0,
        warm.worst_noerror * 100.0,
        cold.worst_noerror * 100.0,
        warm_direct.worst_noerror * 100.0,
        cold_direct.worst_noerror * 100.0,
    )];
    if warm_ratio < 1.0 {
        notes.push("The warm-cache path is compared with an upstream on the host's loopback, while the agent is reached over the container's veth and its programs; a hit still costs two system calls and a copy.".into());
    }
    Ok(Scenario {
        name: "dns".into(),
        title: "DNS".into(),
        setup: format!(
            "dnsperf (4 clients) inside a container, against the agent on 169.254.1.1:53 (started with \
             `--dns-query-rate 10000000`, so the per-container rate limit does not cap dnsperf): names of \
             the zone (app, type and container names of a 4-container app, {IN_FLIGHT} queries in flight); \
             names of the world forwarded to an upstream on the host (a minimal UDP responder of the test \
             harness, TTL 60 s): warm cache, {WARM_NAMES} names asked over and over ({IN_FLIGHT} in flight, \
             after a 1 s warm-up), and cold cache, every name new (random labels, each asked once, \
             {IN_FLIGHT_COLD} in flight: one container's forwarding share). Baseline for forwarding: dnsperf \
             from the host straight at that upstream, with the same names and load."
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
