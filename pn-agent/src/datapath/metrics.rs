//! The datapath's metrics, read from its maps at each scrape: packets and
//! bytes per endpoint and reason, the balancer's counts per service address
//! and backend, attached interfaces, events held back or lost. The maps know
//! addresses only; [`Names`] (the membership's) labels them, asked once the
//! datapath's lock is released.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use pn_common::{
    Ip4, Ip6, Reason,
    conn::LostKind,
    event::EventKind,
    ip4_octets,
    lb::{LbStats, LbStatsKey},
    maps::Counter,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{Datapath, Result};

type Labels = Vec<(&'static str, String)>;

/// Who the datapath's addresses are.
pub trait Names: Send + Sync + 'static {
    /// Network, app and container of each address; `None` for an address
    /// that is no member (any more).
    fn endpoints(&self, ips: &[Ipv4Addr]) -> Vec<Option<[String; 3]>>;
    /// Every service address with its backends.
    fn services(&self) -> Vec<Service>;
}

/// A service address as the membership has it.
pub struct Service {
    pub app: String,
    /// The container type it balances.
    pub service: String,
    pub addr: Ipv4Addr,
    /// Backends, and whether each is in the rotation (attached, healthy).
    pub backends: Vec<(Ipv4Addr, bool)>,
    /// Its IPv6 address, if it has one.
    pub addr6: Option<Ipv6Addr>,
    /// The backends' IPv6 addresses (those that have one), as `backends`.
    pub backends6: Vec<(Ipv6Addr, bool)>,
}

/// Registers the datapath's collector.
pub fn register(r: &mut Registry, datapath: Arc<Mutex<Datapath>>, names: Arc<dyn Names>) {
    r.register_collector(Box::new(DatapathCollector { datapath, names }));
}

struct DatapathCollector {
    datapath: Arc<Mutex<Datapath>>,
    names: Arc<dyn Names>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatapathCollector")
    }
}

/// What one scrape reads from the maps, under the datapath's lock.
struct Read {
    counters: Vec<(Ip4, Reason, Counter)>,
    attached: usize,
    lb: BTreeMap<LbStatsKey, LbStats>,
    lb6: BTreeMap<LbStatsKey<Ip6>, LbStats>,
    suppressed: Result<Vec<(EventKind, u64)>>,
    lost: Result<Vec<(LostKind, Vec<u64>)>>,
}

impl DatapathCollector {
    fn read(&self) -> Read {
        let dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let counters = match dp.maps().counters(&dp.current().ifaces) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reading counters for metrics: {e:#}");
                Vec::new()
            }
        };
        Read {
            counters,
            attached: dp.current().attached.len(),
            lb: dp.maps().lb_stats().unwrap_or_default(),
            lb6: dp.maps().lb6_stats().unwrap_or_default(),
            suppressed: dp.maps().events_suppressed(),
            lost: dp.maps().conn_ref().lost(),
        }
    }

    /// The counters' rows with their labels; rows of endpoints that are no
    /// member any more (counted before detach, being removed) left out.
    fn counter_rows(&self, counters: &[(Ip4, Reason, Counter)]) -> Vec<(Labels, u64, u64)> {
        // Resolve labels once per endpoint, not per row.
        let mut endpoints: Vec<Ip4> = counters.iter().map(|&(e, _, _)| e).collect();
        endpoints.dedup();
        let ips: Vec<Ipv4Addr> = endpoints
            .iter()
            .map(|&e| Ipv4Addr::from(ip4_octets(e)))
            .collect();
        let names: BTreeMap<Ip4, Option<[String; 3]>> = endpoints
            .into_iter()
            .zip(self.names.endpoints(&ips))
            .collect();
        counters
            .iter()
            .filter_map(|&(endpoint, reason, c)| {
                let [network, app, container] = match names.get(&endpoint).cloned().flatten() {
                    Some(n) => n,
                    None if endpoint == 0 => Default::default(),
                    None => return None,
                };
                let labels = vec![
                    ("network", network),
                    ("app", app),
                    ("container", container),
                    ("reason", reason.as_str().to_string()),
                    (
                        "verdict",
                        if reason.is_drop() { "drop" } else { "pass" }.to_string(),
                    ),
                ];
                Some((labels, c.packets, c.bytes))
            })
            .collect()
    }

    /// Per service address and backend (those that left included, they
    /// keep their counts): the balancer's counts and whether it is in the
    /// rotation. A service's IPv6 address has rows of its own, labelled by
    /// IPv6 addresses (its counts are `PN_LB6_STATS`').
    fn service_rows(
        &self,
        lb: &BTreeMap<LbStatsKey, LbStats>,
        lb6: &BTreeMap<LbStatsKey<Ip6>, LbStats>,
    ) -> Vec<(Labels, LbStats, bool)> {
        let mut out = Vec::new();
        for s in self.names.services() {
            let v4 = (to_ip4 as fn(Ipv4Addr) -> Ip4, |k: Ip4| {
                Ipv4Addr::from(ip4_octets(k))
            });
            rows_of(&mut out, &s, s.addr, s.backends.clone(), lb, v4);
            if let Some(addr6) = s.addr6 {
                let v6 = (|ip: Ipv6Addr| ip.octets(), Ipv6Addr::from);
                rows_of(&mut out, &s, addr6, s.backends6.clone(), lb6, v6);
            }
        }
        out
    }
}

/// One service address's rows: its backends, then those that left
/// (detached) with counts still in the map.
fn rows_of<I, A>(
    out: &mut Vec<(Labels, LbStats, bool)>,
    s: &Service,
    addr: I,
    mut rows: Vec<(I, bool)>,
    lb: &BTreeMap<LbStatsKey<A>, LbStats>,
    (key_of, from_key): (impl Fn(I) -> A, impl Fn(A) -> I),
) where
    I: Copy + PartialEq + std::fmt::Display,
    A: Copy + Ord,
{
    let vip = key_of(addr);
    let left: Vec<I> = lb
        .keys()
        .filter(|k| k.vip == vip)
        .map(|k| from_key(k.backend))
        .filter(|b| !rows.iter().any(|(r, _)| r == b))
        .collect();
    rows.extend(left.into_iter().map(|b| (b, false)));
    for (b, up) in rows {
        let key = LbStatsKey {
            vip,
            backend: key_of(b),
        };
        let labels = vec![
            ("app", s.app.clone()),
            ("service", s.service.clone()),
            ("addr", addr.to_string()),
            ("backend", b.to_string()),
        ];
        out.push((labels, lb.get(&key).copied().unwrap_or_default(), up));
    }
}

fn to_ip4(ip: Ipv4Addr) -> Ip4 {
    let [a, b, c, d] = ip.octets();
    pn_common::ip4(a, b, c, d)
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = self.read();
        let rows = self.counter_rows(&read.counters);
        for (name, help, packets) in [
            (
                "pn_packets",
                "Packets judged by the datapath, per endpoint and reason",
                true,
            ),
            (
                "pn_bytes",
                "Bytes judged by the datapath, per endpoint and reason",
                false,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, p, b) in &rows {
                ConstCounter::new(if packets { *p } else { *b })
                    .encode(m.encode_family(labels)?)?;
            }
        }
        encode_services(&self.service_rows(&read.lb, &read.lb6), &mut encoder)?;
        ConstGauge::new(read.attached as i64).encode(encoder.encode_descriptor(
            "pn_attached_interfaces",
            "Container interfaces with the programs attached",
            None,
            MetricType::Gauge,
        )?)?;
        encode_events(read.suppressed, read.lost, &mut encoder)
    }
}

fn encode_services(
    rows: &[(Labels, LbStats, bool)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    type Family = (&'static str, &'static str, fn(&LbStats) -> u64);
    let families: [Family; 3] = [
        (
            "pn_service_connections",
            "Connections sent to a backend of a service address from this host",
            |s| s.new_conns,
        ),
        (
            "pn_service_resets",
            "Established TCP connections reset because their backend left the rotation (detached or unhealthy)",
            |s| s.resets,
        ),
        (
            "pn_service_moved",
            "UDP flows moved to another backend because theirs left the rotation",
            |s| s.moved,
        ),
    ];
    for (name, help, get) in families {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, st, _) in rows {
            ConstCounter::new(get(st)).encode(m.encode_family(labels)?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "pn_service_backend_up",
        "1 when the backend is in its service's rotation (attached, healthy)",
        None,
        MetricType::Gauge,
    )?;
    for (labels, _, up) in rows {
        ConstGauge::new(i64::from(*up)).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Events held back by the per-CPU budget, per kind, and events the
/// datapath could not deliver (ring buffer full), per kind and CPU.
fn encode_events(
    suppressed: Result<Vec<(EventKind, u64)>>,
    lost: Result<Vec<(LostKind, Vec<u64>)>>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    match suppressed {
        Ok(suppressed) => {
            let mut m = encoder.encode_descriptor(
                "pn_events_suppressed",
                "Flow events held back by the per-CPU budget (--drop-events-per-sec), per kind (drop, new_flow); the packets are still counted",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in suppressed {
                ConstCounter::new(n).encode(m.encode_family(&[("kind", kind.as_str())])?)?;
            }
        }
        Err(e) => log::error!("reading suppressed events for metrics: {e:#}"),
    }
    match lost {
        Ok(lost) => {
            let mut m = encoder.encode_descriptor(
                "pn_events_lost",
                "Events the datapath could not deliver (ring buffer full), per kind (flow, conn) and CPU",
                None,
                MetricType::Counter,
            )?;
            for (kind, per_cpu) in lost {
                for (cpu, n) in per_cpu.iter().enumerate() {
                    ConstCounter::new(*n).encode(m.encode_family(&[
                        ("kind", kind.as_str().to_string()),
                        ("cpu", cpu.to_string()),
                    ])?)?;
                }
            }
        }
        Err(e) => log::error!("reading lost events for metrics: {e:#}"),
    }
    Ok(())
}
