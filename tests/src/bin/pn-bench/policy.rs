//! Policy overhead: container↔container on one host, pn's programs attached
//! versus the same veths and routes with no program at all, with the
//! programs' own ns/packet (kernel.bpf_stats_enabled) beside: the stable
//! figure on a noisy machine.

use pn_tests::{Host, scenario::OneApp, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let _stats = tools::BpfStats::enable()?;
    let mut host = Host::start(&unique_prefix(), "h1");
    let OneApp { app, c1, c2, .. } = OneApp::new(&host, &host, ["web", "web"]);
    let ip2 = c2.addr;
    let (mut pn_bw, mut base_bw, mut pn_rr, mut base_rr) = (vec![], vec![], vec![], vec![]);
    let (mut ns_bw, mut ns_rr) = (vec![], vec![]);
    for i in 0..effort.runs {
        // Alternate which side goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_pn in order {
            if with_pn {
                let ids = tools::pinned_prog_ids(&host);
                let s0 = tools::prog_stats_ids(&ids);
                pn_bw.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
                let s1 = tools::prog_stats_ids(&ids);
                pn_rr.push(tools::tcp_rr(&c1, &c2, ip2, effort.seconds)?);
                let s2 = tools::prog_stats_ids(&ids);
                ns_bw.push(tools::ns_per_run(s0, s1));
                ns_rr.push(tools::ns_per_run(s1, s2));
            } else {
                tools::detach_programs(&host)?;
                let before = host.packets(&app, "web-1", "forwarded");
                base_bw.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
                base_rr.push(tools::tcp_rr(&c1, &c2, ip2, effort.seconds)?);
                anyhow::ensure!(
                    host.packets(&app, "web-1", "forwarded") == before,
                    "the baseline still ran pn's programs"
                );
                tools::reattach_programs(&mut host);
            }
        }
    }
    let bw = Row::versus(
        "TCP throughput, iperf3, 1 stream",
        Measurement::new("Gbit/s", true, pn_bw),
        "no programs",
        Measurement::new("Gbit/s", true, base_bw),
    );
    let bw_met = bw.ratio().unwrap_or(0.0) >= 0.97;
    let rr = Row::versus(
        "TCP request/response, 1-byte ping-pong",
        Measurement::new("trans/s", true, pn_rr),
        "no programs",
        Measurement::new("trans/s", true, base_rr),
    );
    let rr_met = rr.ratio().unwrap_or(0.0) >= 0.97;
    Ok(Scenario {
        name: "policy".into(),
        title: "Policy overhead (same host, container to container)".into(),
        setup: "Two containers of one network on one host, each a namespace with pn's veth; \
                pn's TC programs attached (every packet parsed, looked up, counted, new flows tracked) \
                versus the very same veths and routes with the programs detached. \
                ns/packet: run_time_ns / run_cnt of the programs of the agent's pinned links \
                (both directions, so about two runs per packet crossing)."
            .into(),
        rows: vec![
            bw.with_target("≤ 3 % loss", bw_met),
            Row::alone(
                "pn's programs during the stream, ns/packet (bpf_stats)",
                Measurement::new("ns", false, ns_bw),
            ),
            rr.with_target("≤ 3 % loss", rr_met),
            Row::alone(
                "pn's programs during the ping-pong, ns/packet (bpf_stats)",
                Measurement::new("ns", false, ns_rr),
            ),
        ],
        notes: vec![],
    })
}
