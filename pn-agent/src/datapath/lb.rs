//! The balancer's maps (see `pn_common::lb`): services, their Maglev
//! tables slot by slot, the backends in rotation, and the per-backend
//! counters. A table change writes only the slots that changed, and
//! backends leave the rotation after their slots are given away. One
//! family's maps each: IPv4's (`PN_LB_*`) and IPv6's (`PN_LB6_*`), the same
//! code over the address type.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Pod,
    maps::{HashMap, MapData, PerCpuHashMap},
};
use pn_common::{
    Ip4,
    lb::{Backend, LB_TABLE_SIZE, LbAddr, LbStats, LbStatsKey, Service, SlotKey, maglev},
};

use super::{
    error::{Context, Result},
    state::ServiceState,
};

pub(super) struct LbMaps<A = Ip4>
where
    A: Pod,
    SlotKey<A>: Pod,
    Backend<A>: Pod,
    LbStatsKey<A>: Pod,
{
    pub services: HashMap<MapData, A, Service>,
    pub slots: HashMap<MapData, SlotKey<A>, A>,
    pub backends: HashMap<MapData, A, Backend<A>>,
    pub stats: PerCpuHashMap<MapData, LbStatsKey<A>, LbStats>,
    /// The maps' common prefix (`PN_LB`, `PN_LB6`), for errors.
    pub name: &'static str,
}

fn gone(r: Result<(), aya::maps::MapError>, name: &str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing from {name}")),
    }
}

impl<A> LbMaps<A>
where
    A: LbAddr + Ord + Pod,
    SlotKey<A>: Pod,
    Backend<A>: Pod,
    LbStatsKey<A>: Pod + Ord,
{
    pub fn read(&self) -> Result<BTreeMap<A, ServiceState<A>>> {
        let name = self.name;
        let mut out: BTreeMap<A, ServiceState<A>> = BTreeMap::new();
        for item in self.services.iter() {
            let (vip, s) = item.ctx(|| format!("reading {name}_SERVICES"))?;
            out.insert(
                vip,
                ServiceState {
                    tag: s.tag,
                    backends: BTreeSet::new(),
                },
            );
        }
        for item in self.backends.iter() {
            let (b, e) = item.ctx(|| format!("reading {name}_BACKENDS"))?;
            if let Some(s) = out.get_mut(&e.vip) {
                s.backends.insert(b);
            }
        }
        Ok(out)
    }

    pub fn set(
        &mut self,
        vip: A,
        old: Option<&ServiceState<A>>,
        new: &ServiceState<A>,
    ) -> Result<()> {
        let name = self.name;
        let want: Vec<A> = new.backends.iter().copied().collect();
        for b in &want {
            self.backends
                .insert(b, Backend { vip, _pad: 0 }, 0)
                .ctx(|| format!("writing {name}_BACKENDS"))?;
        }
        let before = old.map(|o| o.backends.iter().copied().collect::<Vec<_>>());
        let old_table = before
            .as_deref()
            .map(|b| maglev(b, LB_TABLE_SIZE))
            .unwrap_or_default();
        let table = maglev(&want, LB_TABLE_SIZE);
        for (slot, b) in table.iter().enumerate() {
            if old_table.get(slot) != Some(b) {
                let key = SlotKey {
                    vip,
                    slot: slot as u32,
                };
                self.slots
                    .insert(key, b, 0)
                    .ctx(|| format!("writing {name}_SLOTS"))?;
            }
        }
        self.services
            .insert(
                vip,
                Service {
                    tag: new.tag,
                    backends: want.len() as u32,
                },
                0,
            )
            .ctx(|| format!("writing {name}_SERVICES"))?;
        if let Some(old) = old {
            for b in old.backends.difference(&new.backends) {
                self.forget_backend(vip, *b)?;
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, vip: A, old: &ServiceState<A>) -> Result<()> {
        let name = self.name;
        gone(self.services.remove(&vip), &format!("{name}_SERVICES"))?;
        for b in &old.backends {
            self.forget_backend(vip, *b)?;
        }
        for slot in 0..LB_TABLE_SIZE {
            gone(
                self.slots.remove(&SlotKey { vip, slot }),
                &format!("{name}_SLOTS"),
            )?;
        }
        // The address may serve another app later: its counters start anew.
        let counted: Vec<LbStatsKey<A>> = self
            .stats
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.vip == vip)
            .collect();
        for k in counted {
            gone(self.stats.remove(&k), &format!("{name}_STATS"))?;
        }
        Ok(())
    }

    fn forget_backend(&mut self, vip: A, b: A) -> Result<()> {
        if self.backends.get(&b, 0).is_ok_and(|e| e.vip == vip) {
            gone(self.backends.remove(&b), &format!("{}_BACKENDS", self.name))?;
        }
        Ok(())
    }

    /// Counters by service address and backend, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<LbStatsKey<A>, LbStats>> {
        let mut out = BTreeMap::new();
        for item in self.stats.iter() {
            let (b, per_cpu) = item.ctx(|| format!("reading {}_STATS", self.name))?;
            let sum = per_cpu.iter().fold(LbStats::default(), |a, s| LbStats {
                new_conns: a.new_conns + s.new_conns,
                resets: a.resets + s.resets,
                moved: a.moved + s.moved,
            });
            out.insert(b, sum);
        }
        Ok(out)
    }
}
