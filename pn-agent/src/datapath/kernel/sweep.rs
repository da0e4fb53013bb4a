//! The sweep of the connection tables against the containers' shares (the
//! decisions in `datapath::share`): removes what idled out, counts what
//! each local container holds, writes the counts back to `PN_CONN_COUNT`.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, MapData, MapError};
use pn_common::{
    Ip4, Ip6,
    lb::{LbConn, LbConnKey, client_mark},
    maps::{ConnCount, ConnKey, ConnState},
};

use super::Kernel;
use crate::datapath::{
    error::{Context, Result},
    share::{LbJudged, Owners, Swept, forward_of, judge_conn, judge_lb},
};

/// The maps the sweep needs besides `PN_CONNS`/`PN_CONNS6` (`edge`).
pub struct ShareMaps {
    /// `PN_CONN_COUNT`, by counter row.
    pub count: Array<MapData, ConnCount>,
    /// `PN_LB_CONNS` (LRU; aya reads it as a hash).
    pub lb_conns: HashMap<MapData, LbConnKey, LbConn>,
    /// `PN_LB6_CONNS`, counted with `PN_LB_CONNS` (one balanced share).
    pub lb6_conns: HashMap<MapData, LbConnKey<Ip6>, LbConn<Ip6>>,
    /// `PN_LB_CLIENTS`, by `pn_common::lb::client_mark`.
    pub clients: Array<MapData, u8>,
}

/// The monotonic clock, as `bpf_ktime_get_ns` reads it.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec it is given, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

fn gone(r: std::result::Result<(), MapError>, name: &str) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing from {name}")),
    }
}

/// One connection table of either family: counts the live entries of
/// local containers into `swept`, removes the rest. An entry refreshed
/// between the scan and its removal is looked at again and kept.
fn sweep_conns<A: Ord>(
    map: &mut HashMap<MapData, ConnKey<A>, ConnState>,
    name: &str,
    owners: &Owners<A>,
    swept: &mut Swept,
) -> Result<()>
where
    ConnKey<A>: aya::Pod,
{
    let now = monotonic_ns();
    let mut stale = Vec::new();
    for item in map.iter() {
        let Ok((k, v)) = item else { continue };
        match judge_conn(owners.get(&k.container).copied(), &v, k.proto, now) {
            Some(row) => swept.count_conn(row),
            None => stale.push(k),
        }
    }
    for k in stale {
        let now = monotonic_ns();
        if let Ok(v) = map.get(&k, 0)
            && let Some(row) = judge_conn(owners.get(&k.container).copied(), &v, k.proto, now)
        {
            swept.count_conn(row);
            continue;
        }
        gone(map.remove(&k), name)?;
        swept.removed += 1;
    }
    Ok(())
}

/// A balanced table of either family (`PN_LB_CONNS`, `PN_LB6_CONNS`),
/// read whole first: a reverse entry of a UDP flow is judged by its
/// forward one's stamp.
fn sweep_lb<A>(
    map: &mut HashMap<MapData, LbConnKey<A>, LbConn<A>>,
    name: &str,
    owners: &Owners<A>,
    swept: &mut Swept,
) -> Result<()>
where
    A: Copy + Ord + std::hash::Hash,
    LbConnKey<A>: aya::Pod + Eq + std::hash::Hash,
    LbConn<A>: aya::Pod,
{
    let now = monotonic_ns();
    let all: std::collections::HashMap<LbConnKey<A>, LbConn<A>> =
        map.iter().filter_map(|i| i.ok()).collect();
    let mut stale = Vec::new();
    for (k, v) in &all {
        let forward = (k.reverse != 0)
            .then(|| all.get(&forward_of(k, v)))
            .flatten();
        match judge_lb(owners.get(&k.client).copied(), k, v, forward, now) {
            LbJudged::Count(row) => swept.count_lb(row),
            LbJudged::Keep => {}
            LbJudged::Remove => stale.push(*k),
        }
    }
    for k in stale {
        gone(map.remove(&k), name)?;
        swept.removed += 1;
    }
    Ok(())
}

impl ShareMaps {
    /// Marks in `PN_LB_CLIENTS` the client of every entry the balanced
    /// tables hold (see `pn_common::lb::MAX_LB_CLIENTS`). At load, before
    /// this agent's programs replace the running ones: a mark map new to
    /// this layout (an upgrade) then skips no live connection's replies.
    /// Only sets: the programs set the marks of the connections they add
    /// meanwhile, and a mark cleared under them would lose replies.
    pub fn mark_clients(&mut self) -> Result<()> {
        let mut marks = BTreeSet::new();
        marks.extend(
            self.lb_conns
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| client_mark(&k.client)),
        );
        marks.extend(
            self.lb6_conns
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| client_mark(&k.client)),
        );
        for m in marks {
            if self.clients.get(&m, 0).unwrap_or(0) == 0 {
                self.clients
                    .set(m, 1, 0)
                    .ctx(|| format!("writing PN_LB_CLIENTS[{m}]"))?;
            }
        }
        Ok(())
    }

    /// The counts of `rows` as they are now.
    fn counts(&self, rows: impl Iterator<Item = u16>) -> BTreeMap<u16, ConnCount> {
        rows.map(|r| (r, self.count.get(&u32::from(r), 0).unwrap_or_default()))
            .collect()
    }
}

impl Kernel {
    /// Sweeps `PN_CONNS`, `PN_CONNS6`, `PN_LB_CONNS` and `PN_LB6_CONNS` and writes each
    /// local container's count (`owners`, `owners6`: the counter rows of
    /// the local containers by address).
    pub fn sweep_conns(&mut self, owners: &Owners<Ip4>, owners6: &Owners<Ip6>) -> Result<Swept> {
        let rows = || owners.values().chain(owners6.values()).copied();
        let before = self.share.counts(rows());
        let mut swept = Swept::default();
        sweep_conns(&mut self.edge.conns, "PN_CONNS", owners, &mut swept)?;
        sweep_conns(&mut self.edge.conns6, "PN_CONNS6", owners6, &mut swept)?;
        sweep_lb(&mut self.share.lb_conns, "PN_LB_CONNS", owners, &mut swept)?;
        sweep_lb(
            &mut self.share.lb6_conns,
            "PN_LB6_CONNS",
            owners6,
            &mut swept,
        )?;
        let after = self.share.counts(rows());
        for (row, now) in after {
            let was = before.get(&row).copied().unwrap_or_default();
            let found = |m: &BTreeMap<u16, u64>| m.get(&row).copied().unwrap_or(0);
            let count = ConnCount {
                conns: pn_common::policy::recounted(found(&swept.conns), was.conns, now.conns),
                lb: pn_common::policy::recounted(found(&swept.lb), was.lb, now.lb),
            };
            if count != now {
                self.share
                    .count
                    .set(u32::from(row), count, 0)
                    .ctx(|| format!("writing PN_CONN_COUNT[{row}]"))?;
            }
        }
        Ok(swept)
    }

    /// What each row holds now (for the metrics).
    pub fn conn_counts(&self, rows: impl Iterator<Item = u16>) -> BTreeMap<u16, ConnCount> {
        self.share.counts(rows)
    }

    /// Zeroes a row's counts (before an interface gets it).
    pub(super) fn reset_conn_count(&mut self, row: u16) -> Result<()> {
        self.share
            .count
            .set(u32::from(row), ConnCount::default(), 0)
            .ctx(|| format!("zeroing PN_CONN_COUNT[{row}]"))
    }
}
