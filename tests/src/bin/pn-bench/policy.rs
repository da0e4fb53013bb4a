//! Policy overhead: container↔container on one host, pn's programs attached
//! versus the same veths and routes with no program at all, with the
//! programs' own ns/packet (kernel.bpf_stats_enabled) beside: the stable
//! figure on a noisy machine, and beside it the floor: an empty TC program
//! at the same hooks (`floor.rs`), measured the same way in the same rounds.
//! The same over IPv6 between the same containers, in the same rounds.

use std::net::Ipv6Addr;

use pn_tests::{Host, scenario::OneApp, unique_prefix};

use crate::{
    Effort, floor,
    report::{Measurement, Row, Scenario},
    testrun, tools,
    v6::{self, Probe},
};

/// One family's figures: with pn (and its programs' ns/packet), without.
#[derive(Default)]
struct Figures {
    pn_bw: Vec<f64>,
    pn_rr: Vec<f64>,
    ns_bw: Vec<f64>,
    ns_rr: Vec<f64>,
    base_bw: Vec<f64>,
    base_rr: Vec<f64>,
    /// An empty TC program's ns/packet at pn's hooks (IPv4 only).
    floor_bw: Vec<f64>,
    floor_rr: Vec<f64>,
    /// pn's programs and the empty one on one segment, warm (`testrun`).
    warm: Vec<testrun::Warm>,
}

/// The IPv6 stream then ping-pong with pn's programs on, their ns/packet
/// from the programs' statistics around each; nothing once `probe` failed.
fn with_pn6(
    ids: &[u64],
    f: &mut Figures,
    probe: &mut Probe,
    bw: impl FnOnce(Ipv6Addr) -> anyhow::Result<f64>,
    rr: impl FnOnce(Ipv6Addr) -> anyhow::Result<f64>,
) {
    let s0 = tools::prog_stats_ids(ids);
    let Some(g) = probe.measure("iperf3", bw) else {
        return;
    };
    let s1 = tools::prog_stats_ids(ids);
    let Some(t) = probe.measure("the ping-pong", rr) else {
        return;
    };
    let s2 = tools::prog_stats_ids(ids);
    f.pn_bw.push(g);
    f.pn_rr.push(t);
    f.ns_bw.push(tools::ns_per_run(s0, s1));
    f.ns_rr.push(tools::ns_per_run(s1, s2));
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let _stats = tools::BpfStats::enable()?;
    let mut host = Host::start(&unique_prefix(), "h1");
    let OneApp { app, c1, c2, .. } = OneApp::new(&host, &host, ["web", "web"]);
    let ip2 = c2.addr;
    let secs6 = v6::seconds(effort);
    let (mut f4, mut f6) = (Figures::default(), Figures::default());
    // The baseline's IPv6 may fail where pn's works (or not): each its own.
    let (mut pn6, mut base6) = (Probe::to(&c2), Probe::to(&c2));
    pn6.reach(&c1);
    // pn's hooks, read while its links are pinned: the floor's.
    let hooks: Vec<_> = floor::pinned_hooks(&host.bpffs())
        .into_iter()
        .filter(|h| h.1 != floor::Hook::XdpGeneric)
        .collect();
    anyhow::ensure!(
        hooks.len() >= 4,
        "pn's TC hooks (both veths, both ways): {hooks:?}"
    );
    for i in 0..effort.runs {
        // Alternate which side goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for pn_on in order {
            if pn_on {
                let ids = tools::pinned_prog_ids(&host);
                let s0 = tools::prog_stats_ids(&ids);
                f4.pn_bw.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
                let s1 = tools::prog_stats_ids(&ids);
                f4.pn_rr.push(tools::tcp_rr(&c1, &c2, ip2, effort.seconds)?);
                let s2 = tools::prog_stats_ids(&ids);
                f4.ns_bw.push(tools::ns_per_run(s0, s1));
                f4.ns_rr.push(tools::ns_per_run(s1, s2));
                f4.warm
                    .push(testrun::measure(&host, &c1, &c2, warm_repeat(effort))?);
                with_pn6(
                    &ids,
                    &mut f6,
                    &mut pn6,
                    |ip| tools::iperf(&c1, &c2, ip, secs6),
                    |ip| tools::tcp_rr(&c1, &c2, ip, secs6),
                );
            } else {
                tools::detach_programs(&host)?;
                let before = host.packets(&app, "web-1", "forwarded");
                f4.base_bw
                    .push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
                f4.base_rr
                    .push(tools::tcp_rr(&c1, &c2, ip2, effort.seconds)?);
                let what = "with no programs,";
                if let Some(g) = base6.measure(&format!("iperf3 {what}"), |ip| {
                    tools::iperf(&c1, &c2, ip, secs6)
                }) && let Some(t) = base6.measure(&format!("the ping-pong {what}"), |ip| {
                    tools::tcp_rr(&c1, &c2, ip, secs6)
                }) {
                    f6.base_bw.push(g);
                    f6.base_rr.push(t);
                }
                anyhow::ensure!(
                    host.packets(&app, "web-1", "forwarded") == before,
                    "the baseline still ran pn's programs"
                );
                // The floor, right after, with pn's programs still detached.
                let empty = floor::attach(&host.ns, &hooks, floor::TC_NEXT)?;
                let ids = [empty.id];
                let s0 = tools::prog_stats_ids(&ids);
                tools::iperf(&c1, &c2, ip2, effort.seconds)?;
                let s1 = tools::prog_stats_ids(&ids);
                tools::tcp_rr(&c1, &c2, ip2, effort.seconds)?;
                let s2 = tools::prog_stats_ids(&ids);
                drop(empty);
                f4.floor_bw.push(tools::ns_per_run(s0, s1));
                f4.floor_rr.push(tools::ns_per_run(s1, s2));
                tools::reattach_programs(&mut host);
            }
        }
    }
    let mut rows = rows4(&f4);
    let mut notes = vec![
        "The floor (an empty TC program at pn's hooks) is measured over IPv4 only: the hooks and \
         the empty program do not depend on the family, pn's IPv6 rows compare with pn's IPv4."
            .to_string(),
    ];
    rows.extend(rows6(&f6, &f4, &mut notes));
    if let Some(why) = pn6.why_not() {
        notes.push(format!(
            "IPv6 with pn not measured (or not every round): {why}"
        ));
    }
    if let Some(why) = base6.why_not().filter(|_| pn6.why_not().is_none()) {
        notes.push(format!(
            "IPv6 with no programs not measured (or not every round): {why}; \
             the IPv6 rows compare with pn over IPv4 in the same rounds only."
        ));
    }
    Ok(Scenario {
        name: "policy".into(),
        title: "Policy overhead (same host, container to container)".into(),
        setup: format!(
            "Two containers of one network on one host, each a namespace with pn's veth; \
             pn's TC programs attached (every packet parsed, looked up, counted, new flows tracked) \
             versus the very same veths and routes with the programs detached. \
             ns/packet: run_time_ns / run_cnt of the programs of the agent's pinned links \
             (both directions, so about two runs per packet crossing). \
             The floor: pn's programs detached and a two-instruction TC program (`r0 = -1; exit`, \
             TCX's \"next\") attached with TCX at the very hooks pn's links were pinned at (both \
             containers' host-side veths, ingress and egress), the same IPv4 stream and ping-pong \
             right after the run with no programs, its ns/packet read the same way: what any program \
             at these hooks costs (the hook, the call, bpf_stats' own clock reads); over the floor: \
             pn minus the floor, round by round. \
             IPv6: the same stream and ping-pong between the same containers' IPv6 addresses \
             (the host routes their /128s, as the /32s), {secs6} s each, in every round right after \
             IPv4's, with pn and with the programs detached; its ratios are against IPv6 with no \
             programs and against pn's IPv4 of the same rounds. \
             Warm: in every round, after pn's IPv4 ping-pong, BPF_PROG_TEST_RUN runs the agent's \
             loaded programs (its real maps) {} times each on one crafted established IPv4 TCP \
             segment (ACK, 1448 bytes of payload) from the first container to the second \
             (`pn_from_container` at the sender's veth, `pn_to_container` at the receiver's, the \
             context's ifindex and ingress_ifindex set to the veths), and the empty program on the \
             same packet: the kernel's average per run, with bpf_stats on as in the stream (`testrun.rs`). \
             No traffic beside it: the maps and the program stay in cache.",
            warm_repeat(effort)
        ),
        rows,
        notes,
    })
}

fn rows4(f: &Figures) -> Vec<Row> {
    let bw = Row::versus(
        "TCP throughput, iperf3, 1 stream",
        Measurement::new("Gbit/s", true, f.pn_bw.clone()),
        "no programs",
        Measurement::new("Gbit/s", true, f.base_bw.clone()),
    );
    let bw_met = bw.ratio().unwrap_or(0.0) >= 0.97;
    let rr = Row::versus(
        "TCP request/response, 1-byte ping-pong",
        Measurement::new("trans/s", true, f.pn_rr.clone()),
        "no programs",
        Measurement::new("trans/s", true, f.base_rr.clone()),
    );
    let rr_met = rr.ratio().unwrap_or(0.0) >= 0.97;
    let mut rows = vec![bw.with_target("≤ 3 % loss", bw_met)];
    rows.extend(with_floor("stream", &f.ns_bw, &f.floor_bw));
    rows.push(rr.with_target("≤ 3 % loss", rr_met));
    rows.extend(with_floor("ping-pong", &f.ns_rr, &f.floor_rr));
    rows.extend(warm_rows(&f.warm));
    rows
}

/// Runs of each program on the crafted segment per round: about a second.
fn warm_repeat(effort: Effort) -> u32 {
    if effort.runs == 1 { 100_000 } else { 1_000_000 }
}

/// The warm figures of `testrun`: each program, the empty one, and pn
/// over it (the mean of pn's two programs, as bpf_stats' per-run figure
/// averages both directions).
fn warm_rows(w: &[testrun::Warm]) -> Vec<Row> {
    let ns = |f: &dyn Fn(&testrun::Warm) -> f64| {
        Measurement::new("ns", false, w.iter().map(f).collect())
    };
    let seg = "on one member-to-member TCP segment, warm (BPF_PROG_TEST_RUN), ns/run";
    vec![
        Row::alone(&format!("pn_from_container {seg}"), ns(&|w| w.from)),
        Row::alone(&format!("pn_to_container {seg}"), ns(&|w| w.to)),
        Row::alone(&format!("an empty TC program {seg}"), ns(&|w| w.empty)),
        Row::alone(
            &format!("pn's programs over the empty one {seg} (mean of the two)"),
            ns(&|w| (w.from + w.to) / 2.0 - w.empty),
        ),
    ]
}

/// pn's ns/packet during `what`, the floor's, and pn over the floor.
fn with_floor(what: &str, pn: &[f64], floor: &[f64]) -> Vec<Row> {
    let ns = |v: Vec<f64>| Measurement::new("ns", false, v);
    vec![
        Row::alone(
            &format!("pn's programs during the {what}, ns/packet (bpf_stats)"),
            ns(pn.to_vec()),
        ),
        Row::alone(
            &format!(
                "an empty TC program at the same hooks during the {what} (the floor), ns/packet (bpf_stats)"
            ),
            ns(floor.to_vec()),
        ),
        Row::alone(
            &format!("pn's programs over the floor during the {what}, ns/packet"),
            ns(over(pn, floor)),
        ),
    ]
}

/// pn minus the floor, round by round.
fn over(pn: &[f64], floor: &[f64]) -> Vec<f64> {
    pn.iter().zip(floor).map(|(p, f)| p - f).collect()
}

/// IPv6's rows: against no programs over IPv6 (when measured) and against
/// pn's IPv4 in the same rounds; the programs' ns/packet against IPv4's.
fn rows6(f6: &Figures, f4: &Figures, notes: &mut Vec<String>) -> Vec<Row> {
    if f6.pn_bw.is_empty() {
        return Vec::new();
    }
    let m = |unit: &str, higher: bool, v: &[f64]| Measurement::new(unit, higher, v.to_vec());
    let base = |unit: &str, v: &[f64]| Some(("no programs, IPv6", m(unit, true, v)));
    let mut rows = v6::rows(
        "TCP throughput, iperf3, 1 stream",
        m("Gbit/s", true, &f6.pn_bw),
        base("Gbit/s", &f6.base_bw),
        m("Gbit/s", true, &f4.pn_bw),
    );
    rows.push(Row::versus(
        "pn's programs during the IPv6 stream, ns/packet (bpf_stats)",
        m("ns", false, &f6.ns_bw),
        "IPv4 stream",
        m("ns", false, &f4.ns_bw),
    ));
    rows.extend(v6::rows(
        "TCP request/response, 1-byte ping-pong",
        m("trans/s", true, &f6.pn_rr),
        base("trans/s", &f6.base_rr),
        m("trans/s", true, &f4.pn_rr),
    ));
    rows.push(Row::versus(
        "pn's programs during the IPv6 ping-pong, ns/packet (bpf_stats)",
        m("ns", false, &f6.ns_rr),
        "IPv4 ping-pong",
        m("ns", false, &f4.ns_rr),
    ));
    if f6.pn_bw.len() != f4.pn_bw.len() {
        notes.push(format!(
            "IPv6 measured in {} of {} rounds.",
            f6.pn_bw.len(),
            f4.pn_bw.len()
        ));
    }
    rows
}
