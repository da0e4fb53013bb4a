//! A quick interleaved A/B of pn's tunnel alone, for work on the data path:
//! `PN_BENCH_TUNNEL_AB="BIN[|FLAGS];BIN[|FLAGS];…"` runs, in one fleet and
//! round after round, each variant (an agent binary, handed over to, with
//! its agent flags) through the 1 B, 1 KiB and 64 KiB ping-pongs and one
//! iperf3 stream, and prints one line per variant and round (nothing
//! recorded: the full scenario, with the peers, is what reports).
//! `PN_BENCH_TUNNEL_AB_ROUNDS`: rounds (default: the effort's runs).

use std::{net::Ipv4Addr, path::Path};

use pn_tests::{Namespace, fleet::Fleet};

use crate::{Effort, pingpong, tools};

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
            for size in [1, 1024, 65536] {
                // PN_BENCH_TUNNEL_AB_PROBE: a shell command run beside the
                // 1 B ping-pong (a profiler; PN_BENCH_PID names the run).
                let probe = match (size, std::env::var("PN_BENCH_TUNNEL_AB_PROBE")) {
                    (1, Ok(cmd)) => Some(
                        std::process::Command::new("sh")
                            .args(["-c", &cmd])
                            .env("PN_BENCH_PID", std::process::id().to_string())
                            .env("PN_BENCH_ROUND", format!("{round}-{k}"))
                            .spawn()?,
                    ),
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
            }
            let g = tools::iperf(c1, c2, ip2, effort.seconds)?;
            line += &format!(" 1 stream {g:.2} Gbit/s");
            eprintln!("{line}");
        }
    }
    Ok(())
}
