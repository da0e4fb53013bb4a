//! Containers whose interface vanished without a detach (their runtime
//! deleted the namespace and never ran DEL, or crashed before it could):
//! a cheap look at this host's links every [`REAP_EVERY`] finds them, and
//! the usual path (converge's stale containers) detaches them, so their
//! addresses are free again within seconds, not at the next resync.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::{Agent, reconcile::Touched};
use crate::model::{Container, HOST_IF_PREFIX};

/// How often local links are compared with local containers.
pub const REAP_EVERY: Duration = Duration::from_secs(2);

impl Agent {
    /// Forever: detaches local containers whose host-side interface is gone.
    pub(super) async fn reap_vanished(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Detaching needs the store; while it is away the containers
            // stay as they are (and are reaped once it is back).
            if !self.store_reachable() {
                continue;
            }
            let links: BTreeSet<String> = match self.netlink.links_with_prefix(HOST_IF_PREFIX).await
            {
                Ok(l) => l.into_iter().map(|(name, _)| name).collect(),
                Err(e) => {
                    log::debug!("reaper: listing interfaces: {e}");
                    continue;
                }
            };
            let gone: Vec<Container> = self
                .view()
                .local_containers(&self.cfg.host_id)
                .filter(|c| !links.contains(&c.host_ifname))
                .cloned()
                .collect();
            if !gone.is_empty() {
                // Converge looks the links up again under its lock, so an
                // attach or detach under way is not mistaken for a loss.
                self.converge(&Touched::Containers(gone)).await;
            }
        }
    }
}
