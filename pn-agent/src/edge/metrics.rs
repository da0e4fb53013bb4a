//! The edge's metrics: what its rules dropped themselves (the datapath
//! counts the rest per container), read from nftables at each scrape, so
//! one `nft` per scrape.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};

use super::counters::EdgeCounters;

/// Registers the edge's collector: `read` gives the counters, or `None`
/// when there is no table of pn's to read (nothing is written then).
pub fn register(r: &mut Registry, read: impl Fn() -> Option<EdgeCounters> + Send + Sync + 'static) {
    r.register_collector(Box::new(EdgeCollector(Box::new(read))));
}

type Read = Box<dyn Fn() -> Option<EdgeCounters> + Send + Sync>;

struct EdgeCollector(Read);

impl std::fmt::Debug for EdgeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeCollector")
    }
}

impl Collector for EdgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = (self.0)() else {
            return Ok(());
        };
        for (name, help, pick) in [
            (
                "pn_edge_dropped_packets",
                "Packets the edge's nftables rules dropped, per reason",
                true,
            ),
            (
                "pn_edge_dropped_bytes",
                "Bytes the edge's nftables rules dropped, per reason",
                false,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (reason, n) in c.by_reason() {
                let v = if pick { n.packets } else { n.bytes };
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}
