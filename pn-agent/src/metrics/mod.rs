//! Prometheus metrics (OpenMetrics text on `--metrics-listen`): the datapath's
//! per-endpoint, per-reason counters, read from the kernel at scrape time and
//! labelled by network, app and container, plus the agent's own health.

mod lost;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
    },
    registry::Registry,
};

use pn_common::ids::HostId;
use pn_tunnel::device::Device;

use crate::{
    agent::edge::EdgeRuntime, datapath::Datapath, dns::DnsStats, flows::FlowHub,
    store::health::Health, store::view::MembershipView,
};

/// A label set: `pn_api_requests_total` and the scrape-time rows.
pub type ApiLabels = Vec<(&'static str, String)>;

/// Metrics the agent updates as it goes (the rest is read at scrape time).
#[derive(Clone, Default)]
pub struct AgentMetrics {
    pub api_requests: Family<ApiLabels, Counter>,
    /// API connections refused by who the peer is (its credentials).
    pub api_refused: Counter,
}

/// What the metrics read at scrape time, handed over at start: the
/// subsystems themselves, not the agent.
#[derive(Clone)]
pub struct Inputs {
    pub host: HostId,
    pub view: Arc<RwLock<MembershipView>>,
    pub datapath: Arc<Mutex<Datapath>>,
    pub store: Arc<Health>,
    pub tunnel: Option<Arc<Device>>,
    pub dns: Arc<DnsStats>,
    pub flows: FlowHub,
    pub conns: crate::conns::ConnHub,
    /// The edge's nftables table (its own drops).
    pub edge: Arc<Mutex<EdgeRuntime>>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Inputs")
    }
}

#[derive(Debug)]
struct AgentCollector(Inputs);

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inputs = &self.0;
        let (counters, attached) = {
            let dp = inputs.datapath.lock().unwrap_or_else(|p| p.into_inner());
            let counters = match dp.maps().counters(&dp.current().ifaces) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("reading counters for metrics: {e:#}");
                    Vec::new()
                }
            };
            (counters, dp.current().attached.len())
        };
        // Resolve labels once per endpoint, not per row.
        let rows: Vec<(ApiLabels, u64, u64)> = {
            let view = inputs.view.read().unwrap_or_else(|p| p.into_inner());
            counters
                .iter()
                .filter_map(|&(endpoint, reason, c)| {
                    let ip = Ipv4Addr::from(pn_common::ip4_octets(endpoint));
                    let (network, app, container) = match view.container_by_ip(ip) {
                        Some(c) => (c.network.to_string(), c.key.app.to_string(), c.key.name()),
                        None if endpoint == 0 => (String::new(), String::new(), String::new()),
                        // Counted before detach; the row is being removed.
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
        };
        {
            let mut m = encoder.encode_descriptor(
                "pn_packets",
                "Packets judged by the datapath, per endpoint and reason",
                None,
                MetricType::Counter,
            )?;
            for (labels, packets, _) in &rows {
                ConstCounter::new(*packets).encode(m.encode_family(labels)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pn_bytes",
                "Bytes judged by the datapath, per endpoint and reason",
                None,
                MetricType::Counter,
            )?;
            for (labels, _, bytes) in &rows {
                ConstCounter::new(*bytes).encode(m.encode_family(labels)?)?;
            }
        }
        encode_services(inputs, &mut encoder)?;
        if let Some(dev) = &inputs.tunnel {
            let c = &dev.counters;
            {
                let mut m = encoder.encode_descriptor(
                    "pn_tunnel_packets",
                    "Packets carried by the encrypted tunnel",
                    None,
                    MetricType::Counter,
                )?;
                for (dir, n) in [("tx", &c.tx_packets), ("rx", &c.rx_packets)] {
                    ConstCounter::new(n.load(Ordering::Relaxed))
                        .encode(m.encode_family(&[("direction", dir)])?)?;
                }
            }
            {
                let mut m = encoder.encode_descriptor(
                    "pn_tunnel_bytes",
                    "Inner bytes carried by the encrypted tunnel",
                    None,
                    MetricType::Counter,
                )?;
                for (dir, n) in [("tx", &c.tx_bytes), ("rx", &c.rx_bytes)] {
                    ConstCounter::new(n.load(Ordering::Relaxed))
                        .encode(m.encode_family(&[("direction", dir)])?)?;
                }
            }
            {
                let mut m = encoder.encode_descriptor(
                    "pn_tunnel_drops",
                    "Packets the tunnel dropped, per reason",
                    None,
                    MetricType::Counter,
                )?;
                for r in pn_common::Reason::ALL {
                    let n = c.drops[r as usize].load(Ordering::Relaxed);
                    if n > 0 {
                        ConstCounter::new(n).encode(m.encode_family(&[("reason", r.as_str())])?)?;
                    }
                }
            }
            {
                let mut m = encoder.encode_descriptor(
                    "pn_tunnel_syscalls",
                    "Reads and writes of the tunnel's TUN device and UDP socket (batching: packets per call)",
                    None,
                    MetricType::Counter,
                )?;
                for (op, n) in [
                    ("tun_read", &c.tun_reads),
                    ("udp_send", &c.udp_sends),
                    ("udp_read", &c.udp_reads),
                    ("tun_write", &c.tun_writes),
                ] {
                    ConstCounter::new(n.load(Ordering::Relaxed))
                        .encode(m.encode_family(&[("op", op)])?)?;
                }
            }
            let hs = dev.handshake_stats();
            {
                let mut m = encoder.encode_descriptor(
                    "pn_tunnel_sessions",
                    "Tunnel sessions started, per AEAD the handshake settled on",
                    None,
                    MetricType::Counter,
                )?;
                for (cipher, n) in [
                    ("chacha20poly1305", hs.sessions_chacha20poly1305),
                    ("aes256gcm", hs.sessions_aes256gcm),
                ] {
                    ConstCounter::new(n).encode(m.encode_family(&[("cipher", cipher)])?)?;
                }
            }
            let mut m = encoder.encode_descriptor(
                "pn_tunnel_handshakes",
                "Tunnel handshakes, per event",
                None,
                MetricType::Counter,
            )?;
            for (event, n) in [
                ("initiated", hs.initiations_sent),
                ("completed", hs.handshakes_completed),
                ("answered", hs.initiations_answered),
                ("expired_sessions", hs.sessions_expired),
                ("queue_dropped", hs.queue_dropped),
                ("processed", hs.initiations_processed),
                ("cookie_sent", hs.cookies_sent),
                ("cookie_received", hs.cookies_received),
            ] {
                ConstCounter::new(n).encode(m.encode_family(&[("event", event)])?)?;
            }
        }
        let (local, remote, revision, rejected) = {
            let v = inputs.view.read().unwrap_or_else(|p| p.into_inner());
            let local = v.local_containers(&inputs.host).count();
            (local, v.containers.len() - local, v.rev, v.rejected.clone())
        };
        {
            let mut m = encoder.encode_descriptor(
                "pn_store_records_rejected",
                "Records read from the store and refused before reaching the kernel, per reason",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in &rejected {
                ConstCounter::new(*n).encode(m.encode_family(&[("kind", *kind)])?)?;
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
        ConstGauge::new(i64::from(inputs.store.reachable())).encode(encoder.encode_descriptor(
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
        ConstGauge::new(attached as i64).encode(encoder.encode_descriptor(
            "pn_attached_interfaces",
            "Container interfaces with the programs attached",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = encoder.encode_descriptor(
                "pn_dns_queries",
                "DNS queries answered by the agent, per outcome",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in inputs.dns.snapshot() {
                ConstCounter::new(n).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pn_dns_limited",
                "Bounds of the DNS server hit by its clients, per bound",
                None,
                MetricType::Counter,
            )?;
            for (limit, n) in inputs.dns.limits_snapshot() {
                ConstCounter::new(n).encode(m.encode_family(&[("limit", limit)])?)?;
            }
        }
        ConstGauge::new(inputs.dns.tcp_open() as i64).encode(encoder.encode_descriptor(
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
            for (event, n) in inputs.dns.cache_snapshot() {
                ConstCounter::new(n).encode(m.encode_family(&[("event", event)])?)?;
            }
        }
        let (entries, bytes) = inputs.dns.cache_size();
        ConstGauge::new(entries as i64).encode(encoder.encode_descriptor(
            "pn_dns_cache_entries",
            "Forwarded DNS answers in the cache",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(bytes as i64).encode(encoder.encode_descriptor(
            "pn_dns_cache_bytes",
            "Bytes held by the cache of forwarded DNS answers",
            None,
            MetricType::Gauge,
        )?)?;
        // What the edge's rules drop themselves (the datapath counts the
        // rest per container): read from nftables, so one `nft` per scrape.
        let edge = {
            let mut e = inputs.edge.lock().unwrap_or_else(|p| p.into_inner());
            if e.applied.is_some() {
                e.counters()
            } else {
                None
            }
        };
        if let Some(c) = edge {
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
        }
        ConstCounter::new(inputs.flows.received.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "pn_flow_events",
                "Flow and drop events read from the datapath",
                None,
                MetricType::Counter,
            )?,
        )?;
        lost::encode(inputs, &mut encoder)?;
        ConstCounter::new(inputs.flows.malformed.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "pn_flow_events_malformed",
                "Events from the datapath that could not be decoded",
                None,
                MetricType::Counter,
            )?,
        )?;
        Ok(())
    }
}

/// Builds the registry: static metrics plus the scrape-time collector.
/// Per service address and backend (those that left included): connections
/// sent, connections reset and UDP flows moved (their backend left the
/// rotation), and whether it is in rotation.
fn encode_services(
    inputs: &Inputs,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let stats = {
        let dp = inputs.datapath.lock().unwrap_or_else(|p| p.into_inner());
        dp.maps().lb_stats().unwrap_or_default()
    };
    let rows: Vec<(ApiLabels, pn_common::lb::LbStats, bool)> = {
        let view = inputs.view.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for app in view.apps.values() {
            for s in crate::store::view::services::service_infos(&view, app) {
                let vip = crate::model::to_ip4(s.addr);
                let mut rows: Vec<(Ipv4Addr, bool)> =
                    s.backends.iter().map(|b| (*b, true)).collect();
                rows.extend(s.unhealthy.iter().map(|b| (*b, false)));
                // Backends that left (detached) keep their counters.
                let left = stats
                    .keys()
                    .filter(|k| k.vip == vip)
                    .map(|k| Ipv4Addr::from(pn_common::ip4_octets(k.backend)));
                let left: Vec<Ipv4Addr> =
                    left.filter(|b| !rows.iter().any(|(r, _)| r == b)).collect();
                rows.extend(left.into_iter().map(|b| (b, false)));
                for (b, up) in rows {
                    let key = pn_common::lb::LbStatsKey {
                        vip,
                        backend: crate::model::to_ip4(b),
                    };
                    let labels = vec![
                        ("app", app.id.to_string()),
                        ("service", s.ctype.to_string()),
                        ("addr", s.addr.to_string()),
                        ("backend", b.to_string()),
                    ];
                    out.push((labels, stats.get(&key).copied().unwrap_or_default(), up));
                }
            }
        }
        out
    };
    type Family = (
        &'static str,
        &'static str,
        fn(&pn_common::lb::LbStats) -> u64,
    );
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
        for (labels, st, _) in &rows {
            ConstCounter::new(get(st)).encode(m.encode_family(labels)?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "pn_service_backend_up",
        "1 when the backend is in its service's rotation (attached, healthy)",
        None,
        MetricType::Gauge,
    )?;
    for (labels, _, up) in &rows {
        ConstGauge::new(i64::from(*up)).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

pub fn registry(inputs: Inputs, metrics: &AgentMetrics) -> Registry {
    let mut r = Registry::default();
    r.register(
        "pn_api_requests",
        "Control API requests, per command and result",
        metrics.api_requests.clone(),
    );
    r.register(
        "pn_api_refused",
        "Control API connections refused: the peer is neither root nor the agent's user",
        metrics.api_refused.clone(),
    );
    inputs.conns.metrics.register(&mut r);
    r.register_collector(Box::new(AgentCollector(inputs)));
    r
}

/// Serves `/metrics` until the process ends.
pub async fn serve(listen: SocketAddr, registry: Registry) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding metrics failed\n".to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {listen}"))?;
    axum::serve(listener, app).await.context("metrics server")
}
