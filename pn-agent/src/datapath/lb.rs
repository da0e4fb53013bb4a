//! The balancer's maps (see `pn_common::lb`): services, their Maglev
//! tables slot by slot, the backends in rotation, and the per-backend
//! counters. A table change writes only the slots that changed, and
//! backends leave the rotation after their slots are given away.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, MapData, PerCpuHashMap};
use pn_common::{
    Ip4,
    lb::{Backend, LB_TABLE_SIZE, LbStats, LbStatsKey, Service, SlotKey, maglev},
};

use super::{
    error::{Context, Result},
    state::ServiceState,
};

pub(super) struct LbMaps {
    pub services: HashMap<MapData, Ip4, Service>,
    pub slots: HashMap<MapData, SlotKey, Ip4>,
    pub backends: HashMap<MapData, Ip4, Backend>,
    pub stats: PerCpuHashMap<MapData, LbStatsKey, LbStats>,
}

fn gone(r: Result<(), aya::maps::MapError>, name: &str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing from {name}")),
    }
}

impl LbMaps {
    pub fn read(&self) -> Result<BTreeMap<Ip4, ServiceState>> {
        let mut out: BTreeMap<Ip4, ServiceState> = BTreeMap::new();
        for item in self.services.iter() {
            let (vip, s) = item.ctx(|| "reading PN_LB_SERVICES".into())?;
            out.insert(
                vip,
                ServiceState {
                    tag: s.tag,
                    backends: BTreeSet::new(),
                },
            );
        }
        for item in self.backends.iter() {
            let (b, e) = item.ctx(|| "reading PN_LB_BACKENDS".into())?;
            if let Some(s) = out.get_mut(&e.vip) {
                s.backends.insert(b);
            }
        }
        Ok(out)
    }

    pub fn set(&mut self, vip: Ip4, old: Option<&ServiceState>, new: &ServiceState) -> Result<()> {
        let want: Vec<Ip4> = new.backends.iter().copied().collect();
        for b in &want {
            self.backends
                .insert(b, Backend { vip, _pad: 0 }, 0)
                .ctx(|| "writing PN_LB_BACKENDS".into())?;
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
                    .ctx(|| "writing PN_LB_SLOTS".into())?;
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
            .ctx(|| "writing PN_LB_SERVICES".into())?;
        if let Some(old) = old {
            for b in old.backends.difference(&new.backends) {
                self.forget_backend(vip, *b)?;
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, vip: Ip4, old: &ServiceState) -> Result<()> {
        gone(self.services.remove(&vip), "PN_LB_SERVICES")?;
        for b in &old.backends {
            self.forget_backend(vip, *b)?;
        }
        for slot in 0..LB_TABLE_SIZE {
            gone(self.slots.remove(&SlotKey { vip, slot }), "PN_LB_SLOTS")?;
        }
        // The address may serve another app later: its counters start anew.
        let counted: Vec<LbStatsKey> = self
            .stats
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.vip == vip)
            .collect();
        for k in counted {
            gone(self.stats.remove(&k), "PN_LB_STATS")?;
        }
        Ok(())
    }

    fn forget_backend(&mut self, vip: Ip4, b: Ip4) -> Result<()> {
        if self.backends.get(&b, 0).is_ok_and(|e| e.vip == vip) {
            gone(self.backends.remove(&b), "PN_LB_BACKENDS")?;
        }
        Ok(())
    }

    /// Counters by service address and backend, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<LbStatsKey, LbStats>> {
        let mut out = BTreeMap::new();
        for item in self.stats.iter() {
            let (b, per_cpu) = item.ctx(|| "reading PN_LB_STATS".into())?;
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
