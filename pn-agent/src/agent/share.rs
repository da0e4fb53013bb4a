//! The connection tables' sweep (`datapath::share`): every
//! [`SWEEP_EVERY`](crate::datapath::share::SWEEP_EVERY), off the async
//! threads, under the datapath's lock (a full table takes a few hundred
//! milliseconds of map reads).

use std::{collections::BTreeMap, sync::Arc};

use pn_common::IP6_UNSPECIFIED;

use super::Agent;
use crate::datapath::share::SWEEP_EVERY;

impl Agent {
    /// Forever: sweeps the connection tables and rewrites each local
    /// container's count of entries.
    pub(super) async fn sweep_conns(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let dp = self.datapath.clone();
            let r = tokio::task::spawn_blocking(move || {
                let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
                let ifaces = &dp.current().ifaces;
                let owners: BTreeMap<_, _> = ifaces.values().map(|i| (i.addr, i.slot)).collect();
                let owners6: BTreeMap<_, _> = ifaces
                    .values()
                    .filter(|i| i.addr6 != IP6_UNSPECIFIED)
                    .map(|i| (i.addr6, i.slot))
                    .collect();
                dp.maps_mut().sweep_conns(&owners, &owners6)
            })
            .await;
            match r {
                Ok(Ok(swept)) => {
                    if failing {
                        log::info!("connection tables swept again");
                    }
                    failing = false;
                    if swept.removed > 0 {
                        log::debug!(
                            "connection tables: {} entries idled out or orphaned removed",
                            swept.removed
                        );
                    }
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    log::warn!("sweeping the connection tables: {e:#}");
                }
                Ok(Err(_)) => {}
                Err(e) => log::error!("connection table sweep: {e}"),
            }
        }
    }
}
