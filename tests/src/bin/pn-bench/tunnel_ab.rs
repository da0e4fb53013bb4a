//! A quick interleaved A/B of pn's tunnel alone, for work on the data path:
//! `PN_BENCH_TUNNEL_AB="BIN[|FLAGS];BIN[|FLAGS];…"` runs, in one fleet and
//! round after round, each variant (an agent binary, handed over to, with
//! its agent flags) through the 1 B, 1 KiB and 64 KiB ping-pongs and one
//! iperf3 stream, and prints one line per variant and round (nothing
//! recorded: the full scenario, with the peers, is what reports), then
//! each variant's medians and ranges over the rounds. The stream's CPU per
//! Gbit is the full scenario's accounting (every process of the bench and
//! ksoftirqd, from /proc: `tools::tree_cpu_seconds`).
//! `PN_BENCH_TUNNEL_AB_ROUNDS`: rounds (default: the effort's runs).
//! `PN_BENCH_TUNNEL_AB_STREAM_ONLY`: the stream alone, no ping-pongs.
//! `PN_BENCH_TUNNEL_AB_STREAM_PROBE`: a shell command run beside the stream
//! (a profiler), as `PN_BENCH_TUNNEL_AB_PROBE` beside the 1 B ping-pong;
//! the probe's own CPU then counts in that round's CPU per Gbit.

use std::{net::Ipv4Addr, path::Path};

use pn_tests::{Namespace, fleet::Fleet};

use crate::{Effort, pingpong, report::Measurement, tools};

/// A shell command from `var`, started beside a measurement.
fn probe(var: &str, round: usize, k: usize) -> anyhow::Result<Option<std::process::Child>> {
    let Ok(cmd) = std::env::var(var) else {
        return Ok(None);
    };
    Ok(Some(
        std::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("PN_BENCH_PID", std::process::id().to_string())
            .env("PN_BENCH_ROUND", format!("{round}-{k}"))
            .spawn()?,
    ))
}

/// What one variant gave, a value per round, by figure name (in order).
#[derive(Default)]
struct Figures(Vec<(String, bool, Vec<f64>)>);

impl Figures {
    fn push(&mut self, what: &str, higher_is_better: bool, v: f64) {
        match self.0.iter_mut().find(|(w, _, _)| w == what) {
            Some((_, _, vs)) => vs.push(v),
            None => self.0.push((what.into(), higher_is_better, vec![v])),
        }
    }

    fn summary(&self) -> String {
        self.0
            .iter()
            .map(|(what, hib, v)| {
                let m = Measurement::new("", *hib, v.clone());
                format!("{what} {:.3} ({:.3}–{:.3})", m.median(), m.min(), m.max())
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One variant: the agent binary and its extra flags.
struct Variant {
    bin: String,
    flags: Vec<String>,
}

fn variants(spec: &str) -> Vec<Variant> {
    spec.split(';')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (bin, flags) = v.split_once('|').unwrap_or((v, ""));
            Variant {
                bin: bin.trim().to_string(),
                flags: flags.split_whitespace().map(String::from).collect(),
            }
        })
        .collect()
}

pub fn run(
    spec: &str,
    effort: Effort,
    fleet: &mut Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
) -> anyhow::Result<()> {
    let variants = variants(spec);
    let secs = effort.seconds.min(4);
    let rounds = std::env::var("PN_BENCH_TUNNEL_AB_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(effort.runs);
    let stream_only = std::env::var_os("PN_BENCH_TUNNEL_AB_STREAM_ONLY").is_some();
    let mut figures: Vec<Figures> = variants.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds {
        for (k, v) in variants.iter().enumerate() {
            for h in &mut fleet.hosts {
                h.hand_over(Some(Path::new(&v.bin)));
            }
            let flags: Vec<&str> = v.flags.iter().map(String::as_str).collect();
            fleet.relaunch(&flags);
            tools::wait_for_remote(&fleet.hosts[0])?;
            let mut line = format!(
                "ab round {round} variant {k} ({} {}):",
                v.bin,
                v.flags.join(" ")
            );
            let f = &mut figures[k];
            let sizes: &[usize] = if stream_only { &[] } else { &[1, 1024, 65536] };
            for &size in sizes {
                // PN_BENCH_TUNNEL_AB_PROBE: a shell command run beside the
                // 1 B ping-pong (a profiler; PN_BENCH_PID names the run).
                let probe = match size {
                    1 => probe("PN_BENCH_TUNNEL_AB_PROBE", round, k)?,
                    _ => None,
                };
                let p = pingpong::run(c1, c2, ip2, size, secs)?;
                if let Some(mut probe) = probe {
                    probe.wait()?;
                }
                line += &format!(
                    " rr{size} {:.0}/s p50 {:.1} p99 {:.1};",
                    p.rate, p.p50_us, p.p99_us
                );
                f.push(&format!("rr{size} /s"), true, p.rate);
                f.push(&format!("rr{size} p50 µs"), false, p.p50_us);
                f.push(&format!("rr{size} p99 µs"), false, p.p99_us);
            }
            let probe = probe("PN_BENCH_TUNNEL_AB_STREAM_PROBE", round, k)?;
            let cpu = tools::tree_cpu_seconds();
            let g = tools::iperf(c1, c2, ip2, effort.seconds)?;
            let cpu = tools::tree_cpu_seconds() - cpu;
            if let Some(mut probe) = probe {
                probe.wait()?;
            }
            // The same accounting as the full scenario's per busy core.
            let per_gbit = cpu / (g * effort.seconds as f64).max(1e-3);
            line += &format!(" 1 stream {g:.2} Gbit/s, {per_gbit:.3} core-s/Gbit");
            f.push("1 stream Gbit/s", true, g);
            f.push("core-s/Gbit", false, per_gbit);
            eprintln!("{line}");
        }
    }
    for (k, (v, f)) in variants.iter().zip(&figures).enumerate() {
        eprintln!(
            "ab summary variant {k} ({} {}), median (min–max) over {rounds} rounds: {}",
            v.bin,
            v.flags.join(" "),
            f.summary()
        );
    }
    Ok(())
}
