//! The edge's nftables table as this agent drives it: applied when it
//! differs, repaired when it went missing, and what its rules dropped.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Mutex};

use pn_common::maps::Config;

use crate::{
    datapath::Datapath,
    edge::{Edge, EdgeConfig, EdgeCounters},
};

/// The edge's table in the kernel, as this agent drives it.
pub struct EdgeRuntime {
    pub edge: Edge,
    /// The table last applied successfully.
    pub applied: Option<EdgeConfig>,
    /// Why the last apply failed, if it did.
    pub error: Option<String>,
    /// `PN_CONFIG` with the pool, waiting for a table to be in place: until
    /// containers' packets to the world are translated, they reach nothing
    /// (the programs treat every address as the pool's).
    pub pending_config: Option<Config>,
    /// Other hosts' endpoints `--router-cidr` was found to cover (each
    /// warned about once).
    pub hosts_under_routers: BTreeSet<Ipv4Addr>,
}

impl EdgeRuntime {
    pub fn new() -> EdgeRuntime {
        EdgeRuntime {
            edge: Edge::new(),
            applied: None,
            error: None,
            pending_config: None,
            hosts_under_routers: BTreeSet::new(),
        }
    }

    /// Warns once about each other host that `--router-cidr` covers: a
    /// host taken over could then reach this host's published containers
    /// as a router would.
    pub fn note_hosts_under_routers(&mut self, covered: &[Ipv4Addr]) {
        for ip in covered {
            if self.hosts_under_routers.insert(*ip) {
                log::warn!(
                    "--router-cidr covers {ip}, another host's tunnel endpoint: that host may reach this host's published containers as a router; give the routers' own addresses"
                );
            }
        }
        self.hosts_under_routers.retain(|ip| covered.contains(ip));
    }

    /// Makes the table `cfg` (if it is not already, or if `verify` finds it
    /// gone); on success, lets the world in if it was waiting for that.
    pub fn apply(&mut self, cfg: &EdgeConfig, verify: bool, dp: &Mutex<Datapath>) {
        let same = self.applied.as_ref() == Some(cfg);
        // Verify: the table may have been flushed behind the agent's back.
        if same && (!verify || self.edge.present()) {
            return;
        }
        match self.edge.set(cfg) {
            Ok(()) => {
                if self.error.take().is_some() || !same {
                    log::info!(
                        "edge: {} publication(s), {} denied range(s), forward guard {}",
                        cfg.publications.len(),
                        cfg.egress_deny.len(),
                        if cfg.forward_guard { "on" } else { "off" }
                    );
                }
                self.applied = Some(cfg.clone());
                if let Some(c) = self.pending_config {
                    let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
                    match dp.maps_mut().set_config(c) {
                        Ok(()) => {
                            self.pending_config = None;
                            log::info!("edge in place: containers reach the world");
                        }
                        Err(e) => log::error!("configuring the datapath: {e}"),
                    }
                }
                // The IPv6 world opens once its rules are in place.
                if let (None, Some(v6)) = (self.pending_config, &cfg.v6) {
                    let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = dp.maps_mut().set_pool6(v6.pool) {
                        log::error!("configuring the datapath's IPv6 pool: {e}");
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.error.as_deref() != Some(&text) {
                    log::error!("edge: {text}");
                }
                self.error = Some(text);
                self.applied = None;
            }
        }
    }

    /// What the rules dropped, while a table of this agent's is in place
    /// (otherwise not even read: each read is one `nft`).
    pub fn counters(&mut self) -> Option<EdgeCounters> {
        self.applied.as_ref()?;
        self.edge.counters().ok()
    }
}

impl Default for EdgeRuntime {
    fn default() -> Self {
        Self::new()
    }
}
