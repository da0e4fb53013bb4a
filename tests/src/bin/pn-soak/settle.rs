//! After each fault: wait for the fleet to settle within its bounds, and
//! record every invariant it breaks meanwhile; at the end, empty the fleet
//! and look for what outlived it.

use std::time::{Duration, Instant};

use crate::{
    checks::{self, Store},
    report::Violation,
    world::World,
};

/// Every attached container answers its peers within this after a fault.
pub const REACH_BOUND: Duration = Duration::from_secs(20);
/// Every agent lists what the store holds within this (after reachability).
pub const VIEW_BOUND: Duration = Duration::from_secs(20);

pub struct Checker {
    t0: Instant,
    /// The store as last read.
    last: Option<Store>,
    pub violations: Vec<Violation>,
}

/// Polls `f` until it gives `Ok`, or `bound` passes: its last answer.
fn poll<T>(bound: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + bound;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn nothing_wrong(bad: Vec<String>) -> Result<(), String> {
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

impl Checker {
    pub fn new(t0: Instant) -> Checker {
        Checker {
            t0,
            last: None,
            violations: Vec::new(),
        }
    }

    pub fn violate(&mut self, during: &str, what: String) {
        eprintln!("pn-soak: VIOLATION during {during}: {what}");
        self.violations.push(Violation {
            at: self.t0.elapsed(),
            during: during.into(),
            what,
        });
    }

    /// Checks every invariant once the fleet had its bounds to settle;
    /// returns how long every member took to reach its peers again.
    pub fn settle(&mut self, w: &World, during: &str) -> Option<Duration> {
        let start = Instant::now();
        // Who is where: the store's word, or while it does not answer (an
        // etcd member just restarted) its last one; the data plane does
        // not wait for the store, and neither does the probe.
        match Store::read(&w.fleet) {
            Ok(s) => self.last = Some(s),
            Err(e) if self.last.is_none() => {
                self.violate(during, format!("the store does not answer: {e}"));
                return None;
            }
            Err(_) => {}
        }
        let known = self.last.as_ref().expect("a snapshot of the store");
        let reached = checks::reach(w, known, REACH_BOUND);
        let recovery = match reached {
            Ok(_) => Some(start.elapsed()),
            Err(pairs) => {
                self.violate(
                    during,
                    format!(
                        "{} pairs of members still unreachable after {} s: {}",
                        pairs.len(),
                        REACH_BOUND.as_secs(),
                        pairs.join(", ")
                    ),
                );
                None
            }
        };
        let settled = poll(VIEW_BOUND, || {
            let store = Store::read(&w.fleet)?;
            checks::views(w, &store)?;
            nothing_wrong(checks::leaks(w, &store))?;
            Ok(store)
        });
        match settled {
            Ok(s) => self.last = Some(s),
            Err(e) => {
                self.violate(
                    during,
                    format!("not settled after {} s: {e}", VIEW_BOUND.as_secs()),
                );
            }
        }
        let store = self.last.as_ref().expect("a snapshot of the store");
        let mut bad = checks::unique(store);
        bad.extend(checks::isolated(w, store));
        for b in bad {
            self.violate(during, b);
        }
        recovery
    }

    /// Detaches every container, then nothing of them may remain: no
    /// record, lease, interface or pinned link.
    pub fn empty_fleet(&mut self, w: &mut World) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.detach_all()));
        if done.is_err() {
            self.violate("the end", "detaching every container failed".into());
            return;
        }
        let empty = poll(VIEW_BOUND, || {
            let store = Store::read(&w.fleet)?;
            let mut bad = Vec::new();
            if !store.containers.is_empty() || !store.leases.is_empty() {
                bad.push(format!(
                    "the store keeps {} containers and {} leases",
                    store.containers.len(),
                    store.leases.len()
                ));
            }
            for h in &w.fleet.hosts {
                let (links, pins) = (checks::host_links(h), checks::link_pins(h));
                if !links.is_empty() || !pins.is_empty() {
                    bad.push(format!(
                        "{} keeps interfaces {links:?} and pins {pins:?}",
                        h.id
                    ));
                }
            }
            nothing_wrong(bad)
        });
        if let Err(e) = empty {
            self.violate("the end", e);
        }
    }
}

/// Namespaces and files of the soak's prefix still there once its world
/// is gone.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let list = pn_tests::run("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        if line.starts_with(prefix) {
            out.push(format!("namespace {line}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(prefix) {
                out.push(format!("{}", e.path().display()));
            }
        }
    }
    out
}
