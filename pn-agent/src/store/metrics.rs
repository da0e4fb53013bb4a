//! The store's metrics, read at each scrape: whether it answers, the
//! revision applied, the members known, the records refused, and for an
//! etcd cluster the member in use and the failovers.

use std::sync::{Arc, RwLock};

use pn_common::ids::HostId;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{backend::Backend, health::Health, view::MembershipView};

/// Registers the store's collector; `host` tells local members from remote.
pub fn register(
    r: &mut Registry,
    view: Arc<RwLock<MembershipView>>,
    health: Arc<Health>,
    backend: Arc<dyn Backend>,
    host: HostId,
) {
    r.register_collector(Box::new(StoreCollector {
        view,
        health,
        backend,
        host,
    }));
}

struct StoreCollector {
    view: Arc<RwLock<MembershipView>>,
    health: Arc<Health>,
    backend: Arc<dyn Backend>,
    host: HostId,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (local, remote, revision, rejected, host_updates) = {
            let v = self.view.read().unwrap_or_else(|p| p.into_inner());
            let local = v.local_containers(&self.host).count();
            (
                local,
                v.containers.len() - local,
                v.rev,
                v.rejected.clone(),
                v.host_updates.clone(),
            )
        };
        {
            let mut m = encoder.encode_descriptor(
                "pn_store_host_updates",
                "Host record changes, by outcome: converged (a full converge ran), coalesced (waited for the next one, at most one a second), unchanged (nothing agents use changed)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in host_updates.iter() {
                ConstCounter::new(n).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pn_store_records_refused",
                "Records read from the store and refused before reaching the kernel, per kind of record and reason",
                None,
                MetricType::Counter,
            )?;
            for (kind, reason, n) in rejected.iter() {
                ConstCounter::new(n)
                    .encode(m.encode_family(&[("kind", kind), ("reason", reason)])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pn_endpoints",
                "Members known to this agent",
                None,
                MetricType::Gauge,
            )?;
            for (scope, n) in [("local", local), ("remote", remote)] {
                ConstGauge::new(n as i64).encode(m.encode_family(&[("scope", scope)])?)?;
            }
        }
        ConstGauge::new(i64::from(self.health.reachable())).encode(encoder.encode_descriptor(
            "pn_store_up",
            "1 when the membership store is reachable",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(revision).encode(encoder.encode_descriptor(
            "pn_store_revision",
            "Store revision applied to the kernel",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(link) = self.backend.link() {
            ConstCounter::new(link.failovers).encode(encoder.encode_descriptor(
                "pn_store_failovers",
                "Times the agent moved to another etcd member after one failed",
                None,
                MetricType::Counter,
            )?)?;
            let mut m = encoder.encode_descriptor(
                "pn_store_member",
                "1 for the etcd member the agent talks to",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1).encode(m.encode_family(&[("member", link.member.as_str())])?)?;
        }
        Ok(())
    }
}
