//! Connections and HTTP/1.x requests between members: the reader of the
//! datapath's `PN_CONN_EVENTS`, the per-connection table ([`track`]), the
//! metrics per edge ([`metrics`]) and the router-log lines of `flows --http`.

pub mod metrics;
pub mod track;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use pn_common::{
    Ip6,
    conn::{ConnEvent, status_class},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
    registry::Registry,
};
use tokio::io::unix::AsyncFd;

use crate::{flows::FlowHub, flows::FlowRecord, store::view::MembershipView};
use metrics::{ConnMetrics, Edge};
use track::{Addr, Key, Outcome, Request, Tracker};

/// A SYN unanswered for this long is a timed-out connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The trackers and their metrics (their own counters included), shared
/// with the metrics endpoint and `status`.
#[derive(Clone)]
pub struct ConnHub {
    tracker: Arc<Mutex<Trackers>>,
    metrics: ConnMetrics,
}

/// One table per family (see `track`); the same metrics for both.
#[derive(Debug)]
struct Trackers {
    v4: Tracker,
    v6: Tracker<Ip6>,
}

/// The names `flows --http` gives a connection's ends.
struct Ends {
    client: Option<String>,
    server: Option<String>,
    network: Option<String>,
}

/// What the trackers decided, per family.
#[derive(Default)]
struct Outcomes {
    v4: Vec<Outcome>,
    v6: Vec<Outcome<Ip6>>,
}

impl Default for ConnHub {
    fn default() -> Self {
        let timeout = CONNECT_TIMEOUT.as_nanos() as u64;
        ConnHub {
            tracker: Arc::new(Mutex::new(Trackers {
                v4: Tracker::new(timeout),
                v6: Tracker::new(timeout),
            })),
            metrics: ConnMetrics::default(),
        }
    }
}

/// The clock of the programs' `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The container that holds `ip`, of either family.
fn container(view: &MembershipView, ip: IpAddr) -> Option<&crate::model::Container> {
    match ip {
        IpAddr::V4(ip) => view.container_by_ip(ip),
        IpAddr::V6(ip) => view.container_by_ip6(ip),
    }
}

impl ConnHub {
    pub fn tracked(&self) -> usize {
        let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.v4.len() + t.v6.len()
    }

    fn edge<A: Addr>(view: &MembershipView, key: &Key<A>) -> Edge {
        let end = |ip: A| {
            container(view, ip.ip()).map_or((String::new(), String::new()), |c| {
                (c.key.app.to_string(), c.key.ctype.to_string())
            })
        };
        let (client_app, client_type) = end(key.client);
        let (server_app, server_type) = end(key.server);
        Edge {
            client_app,
            client_type,
            server_app,
            server_type,
            port: key.server_port,
        }
    }

    /// The log's names of a connection's ends (`app/type-index` and the
    /// network), formatted once per batch and connection: ids are UUIDs,
    /// and formatting them per request was most of the reader's time.
    fn ends<A: Addr>(view: &MembershipView, key: &Key<A>) -> Ends {
        let client = container(view, key.client.ip());
        let server = container(view, key.server.ip());
        Ends {
            client: client.map(|c| c.key.to_string()),
            server: server.map(|c| c.key.to_string()),
            network: client.or(server).map(|c| c.network.to_string()),
        }
    }

    fn record<A: Addr>(ends: &Ends, r: Request<A>, now_mono: u64, now_wall: u64) -> FlowRecord {
        FlowRecord {
            time_ms: now_wall.saturating_sub(now_mono.saturating_sub(r.ts_ns) / 1_000_000),
            kind: "http".into(),
            reason: "forwarded".into(),
            direction: "from_container".into(),
            proto: "tcp".into(),
            src: r.key.client.ip(),
            sport: r.key.client_port,
            dst: r.key.server.ip(),
            dport: r.key.server_port,
            bytes: r.bytes.map_or(0, |b| b.min(u64::from(u32::MAX)) as u32),
            src_container: ends.client.clone(),
            dst_container: ends.server.clone(),
            network: ends.network.clone(),
            translated: None,
            http: Some(crate::flows::HttpFields {
                method: r.method.to_string(),
                path: r.path,
                status: r.status,
                duration_ms: r.duration_ns as f64 / 1e6,
                response_bytes: r.bytes,
            }),
        }
    }

    /// Metrics and log lines for what the tracker decided.
    fn apply<A: Addr>(
        &self,
        outcomes: Vec<Outcome<A>>,
        view: &Arc<RwLock<MembershipView>>,
        flows: &FlowHub,
    ) {
        if outcomes.is_empty() {
            return;
        }
        let (now_mono, now_wall) = (monotonic_ns(), wall_ms());
        let view = view.read().unwrap_or_else(|p| p.into_inner());
        let m = &self.metrics;
        let mut logged = Vec::new();
        // A batch's requests by connection, method and class: their labels
        // (two address lookups, a lock, a handful of strings) made once per
        // group rather than per request (a keep-alive client's batch is
        // one group).
        let mut answered: HashMap<(Key<A>, &'static str, &'static str), Vec<f64>> = HashMap::new();
        for o in outcomes {
            match o {
                Outcome::Opened { key, connect_ns } => {
                    let l = m.labels(Self::edge(&view, &key));
                    m.opened.get_or_create(&l).inc();
                    m.connect.get_or_create(&l).observe(connect_ns as f64 / 1e9);
                }
                Outcome::Refused { key } => {
                    let l = m.labels(Self::edge(&view, &key));
                    m.refused.get_or_create(&l).inc();
                }
                Outcome::TimedOut { key } => {
                    let l = m.labels(Self::edge(&view, &key));
                    m.timed_out.get_or_create(&l).inc();
                }
                Outcome::Closed {
                    key,
                    to_server,
                    to_client,
                } => {
                    let l = m.labels(Self::edge(&view, &key));
                    for (dir, n) in [("to_server", to_server), ("to_client", to_client)] {
                        let mut l = l.clone();
                        l.push(("direction", dir.to_string()));
                        m.bytes.get_or_create(&l).inc_by(n);
                    }
                }
                Outcome::Responded(r) => answered
                    .entry((r.key, r.method, status_class(r.status)))
                    .or_default()
                    .push(r.duration_ns as f64 / 1e9),
                Outcome::Logged(r) => logged.push(r),
                Outcome::Untracked => {
                    m.untracked.inc();
                }
            }
        }
        for ((key, method, class), seconds) in answered {
            let mut l = m.labels(Self::edge(&view, &key));
            let duration = m.duration.get_or_create(&l);
            for s in &seconds {
                duration.observe(*s);
            }
            drop(duration);
            l.push(("method", method.to_string()));
            l.push(("status_class", class.to_string()));
            m.requests.get_or_create(&l).inc_by(seconds.len() as u64);
        }
        // Records the hub would drop at once (past its recent ones, with
        // no `--follow` reader and no trace log) are not made at all.
        let trace = log::log_enabled!(log::Level::Trace);
        let keep = if trace {
            logged.len()
        } else {
            flows.keeps(logged.len())
        };
        let mut ends: HashMap<Key<A>, Ends> = HashMap::new();
        let lines: Vec<FlowRecord> = logged
            .drain(logged.len() - keep..)
            .map(|r| {
                let e = ends
                    .entry(r.key)
                    .or_insert_with(|| Self::ends(&view, &r.key));
                Self::record(e, r, now_mono, now_wall)
            })
            .collect();
        drop(view);
        if trace {
            for rec in &lines {
                log::trace!("request {}", rec.line());
            }
        }
        flows.publish_all(lines);
    }

    /// Reads the ring buffer and expires the table until the agent stops.
    pub async fn run_reader(
        self,
        ring: RingBuf<MapData>,
        view: Arc<RwLock<MembershipView>>,
        flows: FlowHub,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd (which owns the ring buffer) lives.
        let mut fd = unsafe { AsyncFd::register(ring)? };
        // The programs wake this reader only when the ring fills
        // (`CONN_WAKE_BYTES`): the tick drains it the rest of the time.
        let mut tick = tokio::time::interval(Duration::from_millis(pn_common::conn::CONN_DRAIN_MS));
        loop {
            let mut out = Outcomes::default();
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut(), &mut out);
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    self.drain(fd.get_mut(), &mut out);
                    let now = monotonic_ns();
                    let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                    t.v4.expire(now, &mut out.v4);
                    t.v6.expire(now, &mut out.v6);
                }
            }
            self.apply(out.v4, &view, &flows);
            self.apply(out.v6, &view, &flows);
        }
    }

    /// Feeds every event waiting in the ring to its family's tracker.
    fn drain(&self, ring: &mut RingBuf<MapData>, out: &mut Outcomes) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = ring.next() {
            self.metrics.received.inc();
            // The family by the length (see `ConnEvent`).
            if item.len() == size_of::<ConnEvent>() {
                // SAFETY: length checked; ConnEvent is Pod (any bytes are
                // valid), read unaligned (ring items promise none).
                let ev: ConnEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                t.v4.feed(&ev, &mut out.v4);
            } else if item.len() == size_of::<ConnEvent<Ip6>>() {
                // SAFETY: as above.
                let ev: ConnEvent<Ip6> = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                t.v6.feed(&ev, &mut out.v6);
            } else {
                self.metrics.malformed.inc();
            }
        }
    }
}

impl ConnHub {
    /// Registers the tracker's metrics, the reader's own counters and the
    /// size of its table.
    pub fn register(&self, r: &mut Registry) {
        self.metrics.register(r);
        r.register_collector(Box::new(ReaderCollector(self.clone())));
    }
}

/// The reader's counters as a collector rather than registered metrics:
/// `Registry::register` would end their help with a full stop.
struct ReaderCollector(ConnHub);

impl std::fmt::Debug for ReaderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderCollector")
    }
}

impl Collector for ReaderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0.metrics;
        for (name, help, c) in [
            (
                "pn_conn_events",
                "Connection and request events read from the datapath",
                &m.received,
            ),
            (
                "pn_conn_events_malformed",
                "Connection events that could not be decoded",
                &m.malformed,
            ),
            (
                "pn_conn_untracked",
                "Connections not tracked because the agent's table was full",
                &m.untracked,
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        ConstGauge::new(self.0.tracked() as i64).encode(encoder.encode_descriptor(
            "pn_conn_tracked",
            "Connections in the agent's table",
            None,
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
