//! Results: median, min and max of repeated measurements, the ratio to the
//! baseline measured in the same run, the machine, written as BENCHMARKS.md
//! and BENCHMARKS.json.

use std::{path::Path, time::Duration};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub unit: String,
    pub higher_is_better: bool,
    pub values: Vec<f64>,
}

impl Measurement {
    pub fn new(unit: &str, higher_is_better: bool, values: Vec<f64>) -> Measurement {
        Measurement {
            unit: unit.into(),
            higher_is_better,
            values,
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub what: String,
    pub pn: Measurement,
    /// What an operator would use instead, measured in the same run.
    pub baseline_name: Option<String>,
    pub baseline: Option<Measurement>,
    /// The target from the issue, as text, and whether the median meets it.
    pub target: Option<String>,
    pub target_met: Option<bool>,
}

impl Row {
    pub fn alone(what: &str, pn: Measurement) -> Row {
        Row {
            what: what.into(),
            pn,
            baseline_name: None,
            baseline: None,
            target: None,
            target_met: None,
        }
    }

    pub fn versus(what: &str, pn: Measurement, baseline_name: &str, baseline: Measurement) -> Row {
        Row {
            baseline_name: Some(baseline_name.into()),
            baseline: Some(baseline),
            ..Row::alone(what, pn)
        }
    }

    /// pn's median over the baseline's.
    /// pn's median over the baseline's; none when the baseline's is 0
    /// (nothing to compare with: a row printed "NaN×" or "inf×").
    pub fn ratio(&self) -> Option<f64> {
        let base = self.baseline.as_ref()?.median();
        (base != 0.0).then(|| self.pn.median() / base)
    }

    pub fn with_target(mut self, text: &str, met: bool) -> Row {
        self.target = Some(text.into());
        self.target_met = Some(met);
        self
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    pub setup: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub mode: String,
    pub duration_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub scenarios: Vec<Scenario>,
}

fn command_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn new(mode: &str, scenarios: Vec<Scenario>, took: Duration) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Report {
            machine: Machine {
                date: command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
                kernel: command_out("uname", &["-r"]),
                cpu,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                mode: mode.into(),
                duration_s: took.as_secs_f64(),
            },
            scenarios,
        }
    }

    /// Writes the JSON and the Markdown. With `merge`, scenarios not run this
    /// time keep their previous results (each still names its own date).
    pub fn write(&self, dir: &Path, merge: bool) -> anyhow::Result<()> {
        let json_path = dir.join("BENCHMARKS.json");
        let mut merged = self.clone();
        if merge
            && let Ok(old) = std::fs::read_to_string(&json_path)
            && let Ok(old) = serde_json::from_str::<Report>(&old)
        {
            for mut s in old.scenarios {
                if !merged.scenarios.iter().any(|n| n.name == s.name) {
                    if !s.notes.iter().any(|n| n.starts_with("(from the ")) {
                        // The machine too: sessions do not always get the
                        // same one, and a figure means little without it.
                        let m = &old.machine;
                        s.notes.push(format!(
                            "(from the `{}` run of {}, on {} ({} cores), kernel {})",
                            m.mode, m.date, m.cpu, m.cores, m.kernel
                        ));
                    }
                    merged.scenarios.push(s);
                }
            }
        }
        let order = ["policy", "strangers", "scale", "dns", "tunnel", "edge"];
        merged.scenarios.sort_by_key(|s| {
            order
                .iter()
                .position(|o| *o == s.name)
                .unwrap_or(order.len())
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&merged)? + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let md_path = dir.join("BENCHMARKS.md");
        std::fs::write(&md_path, merged.markdown())
            .with_context(|| format!("writing {}", md_path.display()))
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        s.push_str("# Benchmarks\n\n");
        s.push_str("Written by `cargo xtask bench` (see `tests/src/bin/pn-bench/`); do not edit by hand.\n");
        s.push_str("Every figure is the median of repeated runs (min–max beside it); every ratio is pn's\n");
        s.push_str("median over the baseline's, both measured in the same run, in the same namespaces.\n\n");
        s.push_str(&format!(
            "- date: {}\n- machine: {} ({} cores), kernel {}\n- mode: `{}` ({:.0} s); a section from an earlier run says so\n\n",
            m.date, m.cpu, m.cores, m.kernel, m.mode, m.duration_s
        ));
        for sc in &self.scenarios {
            s.push_str(&format!("## {}\n\n{}\n\n", sc.title, sc.setup));
            s.push_str("| measurement | pn | baseline | ratio | target |\n| --- | --- | --- | --- | --- |\n");
            for r in &sc.rows {
                let fmt = |m: &Measurement| {
                    format!(
                        "{} {} ({}–{})",
                        num(m.median()),
                        m.unit,
                        num(m.min()),
                        num(m.max())
                    )
                };
                let baseline = match (&r.baseline_name, &r.baseline) {
                    (Some(n), Some(b)) => format!("{n}: {}", fmt(b)),
                    _ => "—".into(),
                };
                let ratio = r.ratio().map_or("—".into(), |x| format!("{x:.2}×"));
                let target = match (&r.target, r.target_met) {
                    (Some(t), Some(true)) => format!("{t}: met"),
                    (Some(t), Some(false)) => format!("{t}: **not met**"),
                    _ => "—".into(),
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    r.what,
                    fmt(&r.pn),
                    baseline,
                    ratio,
                    target
                ));
            }
            s.push('\n');
            for n in &sc.notes {
                s.push_str(&format!("- {n}\n"));
            }
            if !sc.notes.is_empty() {
                s.push('\n');
            }
        }
        s
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        for sc in &self.scenarios {
            for r in &sc.rows {
                s.push_str(&format!(
                    "{:<10} {:<48} {:>12} {}{}\n",
                    sc.name,
                    r.what,
                    num(r.pn.median()),
                    r.pn.unit,
                    r.ratio().map_or(String::new(), |x| format!(
                        "  ({x:.2}× {})",
                        r.baseline_name.as_deref().unwrap_or("")
                    ))
                ));
            }
        }
        s
    }
}

/// Three significant digits, thousands kept readable.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let m = Measurement::new("x", true, vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(m.median(), 2.5);
        assert_eq!(m.min(), 1.0);
        assert_eq!(m.max(), 10.0);
        let r = Row::versus(
            "t",
            Measurement::new("x", true, vec![5.0]),
            "b",
            Measurement::new("x", true, vec![10.0]),
        );
        assert_eq!(r.ratio(), Some(0.5));
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(0.01234), "0.012");
    }
}
