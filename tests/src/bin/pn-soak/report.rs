//! The soak's figures: per kind of fault, how often it came, the worst
//! recovery, the datagrams and connections lost while it ran, and the
//! invariants it broke; written between markers in RELIABILITY.md.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::schedule::Kind;

pub const BEGIN: &str = "<!-- soak:begin -->";
pub const END: &str = "<!-- soak:end -->";

/// One fault as it went.
pub struct Outcome {
    pub kind: Kind,
    /// What was done, as the log says it.
    pub what: String,
    pub started: Instant,
    /// Until every check passed (or gave up).
    pub ended: Instant,
    /// From the fault's end until every pair of members answered; `None`
    /// when some never did within the bound.
    pub recovery: Option<Duration>,
}

/// A broken invariant: when, during what, and what.
pub struct Violation {
    pub at: Duration,
    pub during: String,
    pub what: String,
}

#[derive(Default)]
struct Row {
    count: usize,
    worst: Option<Duration>,
    unrecovered: usize,
    lost_same: u64,
    lost_across: u64,
    tcp_failed: u64,
    violations: usize,
}

/// Everything the soak measured.
pub struct Soak {
    pub seed: u64,
    pub mode: String,
    pub planned: Duration,
    pub ran: Duration,
    pub outcomes: Vec<Outcome>,
    pub violations: Vec<Violation>,
    /// Lost datagrams: when each was due, and whether to the same host.
    pub lost: Vec<(Instant, bool)>,
    pub sent: u64,
    pub streams: usize,
    pub crossed: u64,
    pub tcp_opened: u64,
    pub tcp_failed: Vec<Instant>,
    pub frames: u64,
    pub clear_frames: usize,
    pub etcd_members: usize,
}

impl Soak {
    /// The kind of fault running at `t` (from its start until its checks
    /// passed), if any.
    fn during(&self, t: Instant) -> Option<Kind> {
        self.outcomes
            .iter()
            .find(|o| o.started <= t && t <= o.ended)
            .map(|o| o.kind)
    }

    fn rows(&self) -> (BTreeMap<Kind, Row>, Row) {
        let mut rows: BTreeMap<Kind, Row> = BTreeMap::new();
        let mut quiet = Row::default();
        for o in &self.outcomes {
            let r = rows.entry(o.kind).or_default();
            r.count += 1;
            match o.recovery {
                Some(d) => r.worst = r.worst.max(Some(d)),
                None => r.unrecovered += 1,
            }
        }
        for (t, same) in &self.lost {
            let r = match self.during(*t) {
                Some(k) => rows.entry(k).or_default(),
                None => &mut quiet,
            };
            if *same {
                r.lost_same += 1;
            } else {
                r.lost_across += 1;
            }
        }
        for t in &self.tcp_failed {
            match self.during(*t) {
                Some(k) => rows.entry(k).or_default().tcp_failed += 1,
                None => quiet.tcp_failed += 1,
            }
        }
        for v in &self.violations {
            match Kind::ALL.iter().find(|k| v.during.starts_with(k.name())) {
                Some(k) => rows.entry(*k).or_default().violations += 1,
                None => quiet.violations += 1,
            }
        }
        (rows, quiet)
    }

    /// Each fault that lost datagrams or connections, with its losses
    /// (same host, across hosts, TCP), for the log.
    pub fn losses_by_fault(&self, start: Instant) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| {
                let inside = |t: &Instant| o.started <= *t && *t <= o.ended;
                let same = self.lost.iter().filter(|(t, s)| *s && inside(t)).count();
                let across = self.lost.iter().filter(|(t, s)| !*s && inside(t)).count();
                let tcp = self.tcp_failed.iter().filter(|t| inside(t)).count();
                (same + across + tcp > 0).then(|| {
                    format!(
                        "{:>6.1} s {}: lost {same} same host, {across} across hosts, {tcp} TCP",
                        o.started.duration_since(start).as_secs_f64(),
                        o.what
                    )
                })
            })
            .collect()
    }

    /// The section of RELIABILITY.md (between the markers, exclusive).
    pub fn markdown(&self) -> String {
        let (rows, quiet) = self.rows();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Last run: `{}`, seed `{}`, {:.1} min of faults ({:.1} planned), 3 hosts, {} etcd member{}.\n",
            self.mode,
            self.seed,
            self.ran.as_secs_f64() / 60.0,
            self.planned.as_secs_f64() / 60.0,
            self.etcd_members,
            if self.etcd_members == 1 { "" } else { "s" },
        );
        s.push_str(
            "| fault | count | worst recovery | lost, same host | lost, across hosts | TCP connections failed | violations |\n",
        );
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let ms = |r: &Row| {
            let worst = r
                .worst
                .map_or("–".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
            if r.unrecovered > 0 {
                format!("{worst} ({} never)", r.unrecovered)
            } else {
                worst
            }
        };
        for (k, r) in &rows {
            let _ = writeln!(
                s,
                "| {k} | {} | {} | {} | {} | {} | {} |",
                r.count,
                ms(r),
                r.lost_same,
                r.lost_across,
                r.tcp_failed,
                r.violations
            );
        }
        let _ = writeln!(
            s,
            "| no fault running | – | – | {} | {} | {} | {} |\n",
            quiet.lost_same, quiet.lost_across, quiet.tcp_failed, quiet.violations
        );
        let _ = writeln!(
            s,
            "{} datagrams sent on {} streams between members, {} lost; {} datagrams \
             reached another network; {} frames of the underlay captured, {} with a \
             member's payload in clear; {} TCP connections opened, {} failed; \
             **{} invariant violation{}**.",
            self.sent,
            self.streams,
            self.lost.len(),
            self.crossed,
            self.frames,
            self.clear_frames,
            self.tcp_opened,
            self.tcp_failed.len(),
            self.violations.len(),
            if self.violations.len() == 1 { "" } else { "s" },
        );
        if !self.violations.is_empty() {
            s.push_str("\nViolations:\n\n");
            for v in self.violations.iter().take(30) {
                let _ = writeln!(
                    s,
                    "- at {:.1} s, during {}: {}",
                    v.at.as_secs_f64(),
                    v.during,
                    v.what
                );
            }
        }
        let _ = writeln!(
            s,
            "\nReplay: `cargo xtask soak --seed {} --minutes {}`",
            self.seed,
            (self.planned.as_secs_f64() / 60.0 * 100.0).round() / 100.0
        );
        s
    }

    /// Replaces the section between the markers of `dir/RELIABILITY.md`
    /// (the markers are added at the end of a file without them).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join("RELIABILITY.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!("{BEGIN}\n{}{END}", self.markdown());
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{section}{}", &old[..a], &old[b + END.len()..])
            }
            _ => format!("{old}{}{section}\n", if old.is_empty() { "" } else { "\n" }),
        };
        std::fs::write(path, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak() -> Soak {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        Soak {
            seed: 5,
            mode: "test".into(),
            planned: s(60),
            ran: s(61),
            outcomes: vec![Outcome {
                kind: Kind::AgentKill,
                what: "kill".into(),
                started: t0 + s(10),
                ended: t0 + s(12),
                recovery: Some(Duration::from_millis(450)),
            }],
            violations: vec![],
            lost: vec![(t0 + s(11), true), (t0 + s(11), false), (t0 + s(30), false)],
            sent: 1000,
            streams: 6,
            crossed: 0,
            tcp_opened: 10,
            tcp_failed: vec![t0 + s(11)],
            frames: 100,
            clear_frames: 0,
            etcd_members: 1,
        }
    }

    #[test]
    fn losses_are_charged_to_the_fault_running_when_they_were_due() {
        let md = soak().markdown();
        assert!(
            md.contains("| agent SIGKILL + start | 1 | 450 ms | 1 | 1 | 1 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| no fault running | – | – | 0 | 1 | 0 | 0 |"),
            "{md}"
        );
        assert!(md.contains("--seed 5"), "{md}");
    }

    #[test]
    fn the_section_between_the_markers_is_replaced_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("pn-soak-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("RELIABILITY.md");
        std::fs::write(&path, format!("# Title\n\n{BEGIN}\nold\n{END}\n\nAfter.\n")).unwrap();
        soak().write(&dir).unwrap();
        soak().write(&dir).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(text.starts_with("# Title\n\n<!-- soak:begin -->\nLast run"));
        assert!(text.ends_with(&format!("{END}\n\nAfter.\n")));
        assert!(!text.contains("old"));
        assert_eq!(text.matches(BEGIN).count(), 1);
    }
}
