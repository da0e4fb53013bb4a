//! `pn-soak`: three hosts, an etcd, three networks with steady numbered
//! streams and TCP connections coming and going, and random faults from a
//! seed it prints; the invariants are checked after every fault and all
//! along. Run through `cargo xtask soak` (writes RELIABILITY.md); the test
//! suite runs a short one. Exits 1 on any violation, with the seed.

mod checks;
mod faults;
mod report;
mod schedule;
mod settle;
mod traffic;
mod watch;
mod world;

use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    time::{Duration, Instant},
};

use report::{Outcome, Soak, Violation};
use schedule::{Plan, schedule};
use traffic::{Churn, Streams, Target};
use world::World;

/// Datagrams a second on each stream.
const RATE: u32 = 100;

struct Args {
    only: Vec<schedule::Kind>,
    duration: Duration,
    etcd_members: usize,
    seed: u64,
    out: Option<PathBuf>,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        only: Vec::new(),
        duration: Duration::from_secs(180),
        etcd_members: 3,
        seed: default_seed(),
        out: None,
        label: "cargo xtask soak".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{arg} needs {what}"));
        match arg.as_str() {
            "--minutes" => {
                let m: f64 = value("a number")?.parse().map_err(|e| format!("{e}"))?;
                a.duration = Duration::from_secs_f64(m * 60.0);
            }
            "--seconds" => {
                let s: u64 = value("a number")?.parse().map_err(|e| format!("{e}"))?;
                a.duration = Duration::from_secs(s);
            }
            "--seed" => a.seed = value("a number")?.parse().map_err(|e| format!("{e}"))?,
            "--etcd-members" => {
                a.etcd_members = value("a number")?.parse().map_err(|e| format!("{e}"))?;
            }
            "--only" => {
                for slug in value("kinds")?.split(',') {
                    let k = schedule::Kind::parse(slug).ok_or(format!(
                        "unknown fault {slug:?}; one of {}",
                        schedule::Kind::ALL.map(|k| k.slug()).join(", ")
                    ))?;
                    a.only.push(k);
                }
            }
            "--out" => a.out = Some(value("a directory")?.into()),
            "--label" => a.label = value("a text")?,
            _ => {
                return Err(
                    "usage: pn-soak [--minutes N | --seconds N] [--seed S] [--etcd-members N] [--only KIND,…] [--out DIR] [--label TEXT]"
                        .into(),
                );
            }
        }
    }
    Ok(a)
}

fn default_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    eprintln!(
        "pn-soak: seed {} ({:.1} min); replay with `cargo xtask soak --seed {} --minutes {}`",
        args.seed,
        args.duration.as_secs_f64() / 60.0,
        args.seed,
        args.duration.as_secs_f64() / 60.0
    );
    let prefix = pn_tests::unique_prefix();
    let mut soak = run(&args, &prefix);
    for left in settle::leftovers(&prefix) {
        soak.violations.push(Violation {
            at: soak.ran,
            during: "the end".into(),
            what: format!("left behind: {left}"),
        });
    }
    let md = soak.markdown();
    println!("{md}");
    if let Some(dir) = &args.out
        && let Err(e) = soak.write(dir)
    {
        eprintln!("pn-soak: writing RELIABILITY.md: {e}");
        std::process::exit(1);
    }
    if !soak.violations.is_empty() {
        eprintln!(
            "pn-soak: {} invariant violation(s); replay with `cargo xtask soak --seed {}`",
            soak.violations.len(),
            args.seed
        );
        std::process::exit(1);
    }
}

fn target(n: &world::Node, port: u16, from_host: usize, allowed: bool) -> Target<'_> {
    Target {
        ns: n.ns(),
        to: (n.member.addr, port).into(),
        same_host: n.host == from_host,
        allowed,
    }
}

/// Streams from each stable network's first member (h1) to its other
/// three and to two of the other network's (none may arrive).
fn start_streams(w: &World) -> Vec<Streams> {
    (0..2)
        .map(|k| {
            let (own, other) = (w.stable_of(k), w.stable_of(1 - k));
            let (port, h) = (9000 + k as u16, own[0].host);
            let targets = [
                target(&own[1], port, h, true),
                target(&own[2], port, h, true),
                target(&own[3], port, h, true),
                target(&other[1], port + 100, h, false),
                target(&other[2], port + 100, h, false),
            ];
            Streams::start(own[0].ns(), &targets, RATE)
        })
        .collect()
}

/// What runs beside the faults, and what it saw so far.
struct Running {
    checker: settle::Checker,
    streams: Vec<Streams>,
    churns: Vec<Churn>,
    watch: watch::Watch,
    crossed: u64,
    clear: usize,
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

impl Running {
    /// Runs one fault, lets the fleet settle, and checks; whether the
    /// harness itself broke (the soak stops there).
    fn fault(&mut self, w: &mut World, fault: &schedule::Fault, begin: Instant) -> (Outcome, bool) {
        let started = Instant::now();
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| faults::execute(w, fault)));
        let during = fault.to_string();
        let (what, broken) = match done {
            Ok(Ok(what)) => (what, false),
            Ok(Err(e)) => {
                let e = format!("the fault could not be done: {e}");
                self.checker.violate(&during, e);
                (during.clone(), false)
            }
            Err(panic) => {
                let e = format!("the fault broke the harness: {}", panic_text(&*panic));
                self.checker.violate(&during, e);
                (during.clone(), true)
            }
        };
        let recovery = self.checker.settle(w, &during);
        eprintln!(
            "pn-soak: {:>6.1} s {what}: recovered in {}",
            started.duration_since(begin).as_secs_f64(),
            recovery.map_or("never".into(), |d| format!("{} ms", d.as_millis()))
        );
        let seen = self.watch.rotate();
        self.seen_in_clear(&during, seen);
        let crossed: u64 = self.streams.iter().map(Streams::crossed).sum();
        self.crossed_to(&during, crossed);
        let outcome = Outcome {
            kind: fault.kind,
            what,
            started,
            ended: Instant::now(),
            recovery,
        };
        (outcome, broken)
    }

    fn seen_in_clear(&mut self, during: &str, seen: usize) {
        if seen > 0 {
            let e = format!("{seen} frames of the underlay carried a member's payload in clear");
            self.checker.violate(during, e);
        }
        self.clear += seen;
    }

    fn crossed_to(&mut self, during: &str, crossed: u64) {
        if crossed > self.crossed {
            let e = format!(
                "{} datagrams reached another network",
                crossed - self.crossed
            );
            self.checker.violate(during, e);
            self.crossed = crossed;
        }
    }
}

fn run(args: &Args, prefix: &str) -> Soak {
    let t0 = Instant::now();
    let mut w = World::build(prefix, args.etcd_members);
    eprintln!("pn-soak: fleet up in {:.1} s", t0.elapsed().as_secs_f64());
    let mut checker = settle::Checker::new(t0);
    checker.settle(&w, "the start");
    let mut r = Running {
        checker,
        streams: start_streams(&w),
        churns: (0..2)
            .map(|k| {
                Churn::start(
                    w.stable_of(k)[0].ns(),
                    w.tcp_peers(k),
                    Duration::from_millis(100),
                )
            })
            .collect(),
        watch: watch::Watch::start(&w.fleet.underlay),
        crossed: 0,
        clear: 0,
    };
    let plan = schedule(
        args.seed,
        &Plan {
            duration: args.duration,
            hosts: world::HOSTS,
            etcd_members: args.etcd_members,
            gap: (Duration::from_millis(500), Duration::from_millis(2_500)),
            only: &args.only,
        },
    );
    let (begin, mut outcomes) = (Instant::now(), Vec::new());
    for p in plan {
        let due = begin + p.at;
        // Faults that overran their plan push the next ones back, never
        // past the soak's end.
        if due.max(Instant::now()) > begin + args.duration {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (outcome, broken) = r.fault(&mut w, &p.fault, begin);
        outcomes.push(outcome);
        if broken {
            break;
        }
    }
    let ran = begin.elapsed();
    let mut soak = finish(r, args, ran, outcomes);
    for line in soak.losses_by_fault(begin) {
        eprintln!("pn-soak: losses: {line}");
    }
    let mut checker = settle::Checker::new(t0);
    checker.empty_fleet(&mut w);
    soak.violations.extend(checker.violations);
    drop(w);
    soak
}

/// Stops the traffic and the watch, and counts.
fn finish(mut r: Running, args: &Args, ran: Duration, outcomes: Vec<Outcome>) -> Soak {
    let (mut lost, mut sent, mut crossed) = (Vec::new(), 0, 0);
    let streams = r.streams.len() * 3;
    for s in std::mem::take(&mut r.streams) {
        let l = s.finish();
        lost.extend(l.lost);
        sent += l.sent;
        crossed += l.crossed;
    }
    r.crossed_to("the end", crossed);
    let (mut tcp_opened, mut tcp_failed) = (0, Vec::new());
    for c in std::mem::take(&mut r.churns) {
        let (o, f) = c.finish();
        tcp_opened += o;
        tcp_failed.extend(f);
    }
    let (seen, frames) = r.watch.finish();
    r.seen_in_clear("the end", seen);
    Soak {
        seed: args.seed,
        mode: args.label.clone(),
        planned: args.duration,
        ran,
        outcomes,
        violations: r.checker.violations,
        lost,
        sent,
        streams,
        crossed,
        tcp_opened,
        tcp_failed,
        frames,
        clear_frames: r.clear,
        etcd_members: args.etcd_members,
    }
}
