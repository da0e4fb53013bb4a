//! `pn-bench`: pn measured against what an operator would use instead, side
//! by side in the same run and the same namespaces, so ratios hold even on a
//! noisy machine. Run through `cargo xtask bench` (release build); writes
//! BENCHMARKS.md and BENCHMARKS.json. Benchmarks are not tests: nothing here
//! asserts a speed.

mod agent_cpu;
mod dns;
mod edge;
mod floor;
mod peers;
mod pingpong;
mod policy;
mod report;
mod requests;
mod restart;
mod scale;
mod service;
mod strangers;
mod testrun;
mod tools;
mod tunnel;
mod tunnel_ab;
mod tunnel_aes;
mod tunnel_limit;
mod tunnel_spin;
mod v6;

use std::{path::PathBuf, time::Instant};

use report::{Report, Scenario};

/// How long and how often each scenario measures.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Repetitions of each measurement (median, min, max over them).
    pub runs: usize,
    /// Seconds of load per measurement.
    pub seconds: u64,
    /// Membership sizes for the scale scenario.
    pub sizes: &'static [usize],
    /// Connections whose spread over a service's backends is counted.
    pub spread_conns: usize,
}

impl Effort {
    const FULL: Effort = Effort {
        runs: 5,
        seconds: 8,
        sizes: &[1_000, 10_000, 100_000],
        spread_conns: 10_000,
    };
    const QUICK: Effort = Effort {
        runs: 3,
        seconds: 3,
        sizes: &[1_000, 10_000, 100_000],
        spread_conns: 10_000,
    };
    /// One short iteration of everything, for the harness's own smoke test.
    const SMOKE: Effort = Effort {
        runs: 1,
        seconds: 1,
        sizes: &[100],
        spread_conns: 300,
    };
}

const SCENARIOS: &[&str] = &[
    "policy",
    "requests",
    "strangers",
    "scale",
    "dns",
    "tunnel",
    "edge",
    "restart",
    "service",
];

struct Args {
    effort: Effort,
    mode: &'static str,
    only: Option<String>,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut effort = Effort::FULL;
    let mut mode = "full";
    let mut only = None;
    let mut out = PathBuf::from(".");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => (effort, mode) = (Effort::QUICK, "quick"),
            "--smoke" => (effort, mode) = (Effort::SMOKE, "smoke"),
            "--only" => {
                let name = it.next().ok_or("--only needs a scenario name")?;
                if !SCENARIOS.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown scenario {name:?}; one of {}",
                        SCENARIOS.join(", ")
                    ));
                }
                only = Some(name);
            }
            "--out" => out = it.next().ok_or("--out needs a directory")?.into(),
            "-h" | "--help" => {
                return Err(format!(
                    "usage: pn-bench [--quick|--smoke] [--only {}] [--out DIR]",
                    SCENARIOS.join("|")
                ));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        effort,
        mode,
        only,
        out,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for name in SCENARIOS {
        if args.only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        eprintln!("pn-bench: {name} ({} mode)…", args.mode);
        let t = Instant::now();
        let result = match *name {
            "policy" => policy::run(args.effort),
            "requests" => requests::run(args.effort),
            "strangers" => strangers::run(args.effort),
            "scale" => scale::run(args.effort),
            "dns" => dns::run(args.effort),
            "tunnel" => tunnel::run_scenario(args.effort),
            "edge" => edge::run(args.effort),
            "restart" => restart::run(args.effort),
            "service" => service::run(args.effort),
            _ => unreachable_scenario(name),
        };
        match result {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("pn-bench: {name} failed: {e:#}");
                std::process::exit(1);
            }
        }
        eprintln!("pn-bench: {name} done in {:.0}s", t.elapsed().as_secs_f64());
    }
    let report = Report::new(args.mode, scenarios, started.elapsed());
    if let Err(e) = report.write(&args.out, args.only.is_some()) {
        eprintln!("pn-bench: writing the report: {e:#}");
        std::process::exit(1);
    }
    print!("{}", report.summary());
}

fn unreachable_scenario(name: &str) -> anyhow::Result<Scenario> {
    anyhow::bail!("no scenario {name}")
}
