//! The DNS server's metrics, read from its counters ([`DnsStats`]) at each
//! scrape; every label set is fixed there.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::stats::DnsStats;

impl DnsStats {
    /// Registers the DNS server's collector.
    pub fn register(self: &Arc<Self>, r: &mut Registry) {
        r.register_collector(Box::new(DnsCollector(self.clone())));
    }
}

#[derive(Debug)]
struct DnsCollector(Arc<DnsStats>);

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dns = &self.0;
        for (name, help, label, rows) in [
            (
                "pn_dns_queries",
                "DNS queries answered by the agent, per outcome",
                "outcome",
                dns.snapshot(),
            ),
            (
                "pn_dns_limited",
                "Bounds of the DNS server hit by its clients, per bound",
                "limit",
                dns.limits_snapshot(),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (value, n) in rows {
                ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
            }
        }
        ConstGauge::new(dns.tcp_open() as i64).encode(encoder.encode_descriptor(
            "pn_dns_tcp_connections",
            "TCP connections open to the DNS server",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = encoder.encode_descriptor(
                "pn_dns_cache",
                "Cache of forwarded DNS answers: hits, misses, misses coalesced with the same question in flight, evictions, expired entries",
                None,
                MetricType::Counter,
            )?;
            for (event, n) in dns.cache_snapshot() {
                ConstCounter::new(n).encode(m.encode_family(&[("event", event)])?)?;
            }
        }
        let (entries, bytes) = dns.cache_size();
        for (name, help, n) in [
            (
                "pn_dns_cache_entries",
                "Forwarded DNS answers in the cache",
                entries,
            ),
            (
                "pn_dns_cache_bytes",
                "Bytes held by the cache of forwarded DNS answers",
                bytes,
            ),
        ] {
            ConstGauge::new(n as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
