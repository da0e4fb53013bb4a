//! Flow and drop events from the datapath's ring buffer, enriched with the
//! names of the containers involved, for `pn-agent flows` and the log.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex, RwLock},
};

use aya::maps::{MapData, RingBuf};
use pn_common::{
    Ip6, Reason,
    event::{Direction, FlowEvent},
    ip4_octets,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::Counter},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::broadcast};

use crate::store::view::MembershipView;

/// Recent events kept for `flows` without `--follow`.
const RECENT: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    /// Milliseconds since the Unix epoch, when the agent read the event.
    pub time_ms: u64,
    /// `new_flow` or `drop`.
    pub kind: String,
    pub reason: String,
    /// `from_container`, `to_container` or `underlay`.
    pub direction: String,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub bytes: u32,
    /// `app/type-index` of each end, when it is a known container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Where the host's NAT translated the connection: for a container's
    /// connection with the world, the host address the world sees as its
    /// source; for a router's, the published `HOST_IP:PORT` it connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated: Option<String>,
    /// For `kind = "http"`: the request (src is the client, dst the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFields>,
}

/// A request and its response, as a router's log line has them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HttpFields {
    pub method: String,
    /// As sent, cut at the datapath's copy of the segment's first bytes.
    pub path: String,
    pub status: u16,
    /// Request's first byte to response's first byte.
    pub duration_ms: f64,
    /// Response size (headers and body), when its end was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        0 => "-".into(),
        n => n.to_string(),
    }
}

impl FlowRecord {
    pub fn from_event(ev: &FlowEvent, view: &MembershipView, time_ms: u64) -> FlowRecord {
        let src = Ipv4Addr::from(ip4_octets(ev.src));
        let dst = Ipv4Addr::from(ip4_octets(ev.dst));
        let ends = (view.container_by_ip(src), view.container_by_ip(dst));
        Self::from_parts(ev, (src.into(), dst.into()), ends, time_ms)
    }

    /// An IPv6 packet's event.
    pub fn from_event6(ev: &FlowEvent<Ip6>, view: &MembershipView, time_ms: u64) -> FlowRecord {
        let (src, dst) = (Ipv6Addr::from(ev.src), Ipv6Addr::from(ev.dst));
        // A scan rather than an index: events come at a bounded rate, and
        // only IPv6 ones pay it.
        let by_ip6 = |ip| view.containers.values().find(|c| c.ip6 == Some(ip));
        let plain = FlowEvent {
            ts_ns: ev.ts_ns,
            src: 0,
            dst: 0,
            ifindex: ev.ifindex,
            bytes: ev.bytes,
            sport: ev.sport,
            dport: ev.dport,
            kind: ev.kind,
            reason: ev.reason,
            proto: ev.proto,
            direction: ev.direction,
        };
        let ends = (by_ip6(src), by_ip6(dst));
        Self::from_parts(&plain, (src.into(), dst.into()), ends, time_ms)
    }

    /// `ev` for everything but its addresses, which are `addrs`, of the
    /// containers `ends` (when known).
    fn from_parts(
        ev: &FlowEvent,
        (src, dst): (IpAddr, IpAddr),
        (src_c, dst_c): (
            Option<&crate::model::Container>,
            Option<&crate::model::Container>,
        ),
        time_ms: u64,
    ) -> FlowRecord {
        let reason = ev.reason();
        let translated = match reason {
            Some(Reason::Published | Reason::NotRouter) => {
                dst_c.and_then(|c| c.published).map(|p| p.to_string())
            }
            _ => None,
        };
        FlowRecord {
            time_ms,
            kind: match ev.kind() {
                Some(k) => k.as_str().into(),
                None => format!("kind{}", ev.kind),
            },
            reason: reason.map_or_else(|| format!("reason{}", ev.reason), |r| r.as_str().into()),
            direction: match ev.direction() {
                Some(Direction::FromContainer) => "from_container".into(),
                Some(Direction::ToContainer) => "to_container".into(),
                Some(Direction::Underlay) => "underlay".into(),
                None => "-".into(),
            },
            proto: proto_name(ev.proto),
            src,
            sport: ev.sport,
            dst,
            dport: ev.dport,
            bytes: ev.bytes,
            src_container: src_c.map(|c| c.key.to_string()),
            dst_container: dst_c.map(|c| c.key.to_string()),
            network: src_c.or(dst_c).map(|c| c.network.to_string()),
            translated,
            http: None,
        }
    }

    /// One line for the table output and the log (time of day in UTC).
    pub fn line(&self) -> String {
        let end = |ip: &IpAddr, port: u16, name: &Option<String>| {
            let addr = if port == 0 {
                ip.to_string()
            } else {
                std::net::SocketAddr::new(*ip, port).to_string()
            };
            match name {
                Some(n) => format!("{addr} ({n})"),
                None => addr,
            }
        };
        let day_ms = self.time_ms % 86_400_000;
        let via = match (&self.translated, self.reason.as_str()) {
            (Some(t), "egress") => format!(" (as {t})"),
            (Some(t), _) => format!(" (via {t})"),
            (None, _) => String::new(),
        };
        if let Some(h) = &self.http {
            let client = self
                .src_container
                .clone()
                .unwrap_or_else(|| self.src.to_string());
            // An address with its port as a socket address: IPv6's in
            // brackets, so the port cannot be read as part of it.
            let server = match &self.dst_container {
                Some(n) => format!("{n}:{}", self.dport),
                None => std::net::SocketAddr::new(self.dst, self.dport).to_string(),
            };
            return format!(
                "{:02}:{:02}:{:02}.{:03} {client} -> {server} {} {} {} {:.1}ms {}",
                day_ms / 3_600_000,
                day_ms / 60_000 % 60,
                day_ms / 1000 % 60,
                day_ms % 1000,
                h.method,
                h.path,
                h.status,
                h.duration_ms,
                h.response_bytes
                    .map_or_else(|| "-".to_string(), |b| format!("{b}B")),
            );
        }
        format!(
            "{:02}:{:02}:{:02}.{:03} {:<8} {:<14} {:<4} {} -> {}{via} {}B",
            day_ms / 3_600_000,
            day_ms / 60_000 % 60,
            day_ms / 1000 % 60,
            day_ms % 1000,
            self.kind,
            self.reason,
            self.proto,
            end(&self.src, self.sport, &self.src_container),
            end(&self.dst, self.dport, &self.dst_container),
            self.bytes
        )
    }
}

/// What `flows` shows: requests (`--http`) or the other events, of one app
/// or network.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub http: bool,
    pub app: Option<String>,
    pub network: Option<String>,
}

impl Filter {
    pub fn admits(&self, r: &FlowRecord) -> bool {
        let of_app = |c: &Option<String>, app: &str| {
            c.as_deref()
                .and_then(|c| c.split_once('/'))
                .is_some_and(|(a, _)| a == app)
        };
        (r.http.is_some() == self.http)
            && self
                .app
                .as_deref()
                .is_none_or(|a| of_app(&r.src_container, a) || of_app(&r.dst_container, a))
            && self
                .network
                .as_deref()
                .is_none_or(|n| r.network.as_deref() == Some(n))
    }
}

/// The reader's counters as a collector rather than registered metrics:
/// `Registry::register` would end their help with a full stop.
#[derive(Debug)]
struct FlowCollector {
    received: Counter,
    malformed: Counter,
}

impl Collector for FlowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, c) in [
            (
                "pn_flow_events",
                "Flow and drop events read from the datapath",
                &self.received,
            ),
            (
                "pn_flow_events_malformed",
                "Events from the datapath that could not be decoded",
                &self.malformed,
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// Fan-out of flow records to `flows --follow` clients, plus the recent ones.
#[derive(Clone)]
pub struct FlowHub {
    tx: broadcast::Sender<FlowRecord>,
    recent: Arc<Mutex<VecDeque<FlowRecord>>>,
    /// Events seen, and events the reader could not decode.
    received: Counter,
    malformed: Counter,
}

impl Default for FlowHub {
    fn default() -> Self {
        FlowHub {
            tx: broadcast::channel(4096).0,
            recent: Arc::default(),
            received: Counter::default(),
            malformed: Counter::default(),
        }
    }
}

impl FlowHub {
    /// Registers the reader's own counters.
    pub fn register(&self, r: &mut Registry) {
        r.register_collector(Box::new(FlowCollector {
            received: self.received.clone(),
            malformed: self.malformed.clone(),
        }));
    }

    pub fn publish(&self, rec: FlowRecord) {
        self.publish_all(vec![rec]);
    }

    /// How many of `n` records published at once the hub would keep: all
    /// for `--follow` readers, else the recent ones.
    pub fn keeps(&self, n: usize) -> usize {
        if self.tx.receiver_count() > 0 {
            n
        } else {
            n.min(RECENT)
        }
    }

    /// Publishes records in order under one lock; each is copied only for
    /// `--follow` readers, when there are any (request logs come by the
    /// thousand a second).
    pub fn publish_all(&self, recs: Vec<FlowRecord>) {
        if recs.is_empty() {
            return;
        }
        let follow = self.tx.receiver_count() > 0;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for rec in recs {
            if follow {
                let _ = self.tx.send(rec.clone());
            }
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(rec);
        }
    }

    pub fn recent(&self) -> Vec<FlowRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.tx.subscribe()
    }

    /// Reads the ring buffer until the agent stops.
    pub async fn run_reader(
        self,
        ring: RingBuf<MapData>,
        view: Arc<RwLock<MembershipView>>,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd (which owns the ring buffer) lives.
        let mut fd = unsafe { AsyncFd::register(ring)? };
        let mut sources = Sources::default();
        loop {
            let mut guard = fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                self.received.inc();
                // The family by the length (see `FlowEvent`).
                let ev = if item.len() == size_of::<FlowEvent>() {
                    // SAFETY: length checked; FlowEvent is Pod (any bytes are
                    // valid), read unaligned because ring items carry no
                    // alignment promise.
                    Event::V4(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) })
                } else if item.len() == size_of::<FlowEvent<Ip6>>() {
                    // SAFETY: as above.
                    Event::V6(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) })
                } else {
                    self.malformed.inc();
                    continue;
                };
                batch.push(ev);
            }
            guard.clear_ready();
            if batch.is_empty() {
                continue;
            }
            let mut records: Vec<FlowRecord> = {
                let view = view.read().unwrap_or_else(|p| p.into_inner());
                batch
                    .iter()
                    .map(|ev| match ev {
                        Event::V4(ev) => FlowRecord::from_event(ev, &view, now_ms),
                        Event::V6(ev) => FlowRecord::from_event6(ev, &view, now_ms),
                    })
                    .collect()
            };
            for r in records.iter_mut().filter(|r| r.reason == "egress") {
                if let IpAddr::V4(dst) = r.dst {
                    r.translated = sources.source_for(dst).map(|a| a.to_string());
                }
            }
            for rec in records {
                if rec.kind == "drop" {
                    log::debug!("flow {}", rec.line());
                } else {
                    log::trace!("flow {}", rec.line());
                }
                self.publish(rec);
            }
        }
    }
}

/// One event of the ring, of either family.
enum Event {
    V4(FlowEvent),
    V6(FlowEvent<Ip6>),
}

/// The source address this host uses toward a destination, which is the
/// one the kernel's masquerade gives a container's connection: asked of
/// the kernel's routing by connecting a UDP socket (nothing is sent), and
/// kept a few seconds per destination.
#[derive(Default)]
struct Sources(std::collections::HashMap<Ipv4Addr, (Option<Ipv4Addr>, std::time::Instant)>);

impl Sources {
    const KEEP: std::time::Duration = std::time::Duration::from_secs(10);

    fn source_for(&mut self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if let Some((a, at)) = self.0.get(&dst)
            && at.elapsed() < Self::KEEP
        {
            return *a;
        }
        if self.0.len() > 4096 {
            self.0.retain(|_, (_, at)| at.elapsed() < Self::KEEP);
        }
        let found = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| {
                s.connect((dst, 9))?;
                s.local_addr()
            })
            .ok()
            .and_then(|a| match a.ip() {
                std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
                _ => None,
            });
        self.0.insert(dst, (found, std::time::Instant::now()));
        found
    }
}

#[cfg(test)]
#[path = "flows_tests.rs"]
mod tests;
