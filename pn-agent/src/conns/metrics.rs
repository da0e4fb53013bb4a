//! Connection and request metrics per edge: client app and type → server
//! app, type and port. Labels are ids and type names, never addresses or
//! paths; the number of edges is capped (see [`MAX_EDGES`]). Plus the
//! reader's own counters and the size of its table.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub type Labels = Vec<(&'static str, String)>;

/// Distinct edges labelled with their port; connections to further ports
/// (a port scan, say) share their edge's `port="other"` series.
pub const MAX_EDGES: usize = 1_000;

/// The two ends of an edge, as labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Edge {
    pub client_app: String,
    pub client_type: String,
    pub server_app: String,
    pub server_type: String,
    pub port: u16,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_5, 2.0, 16,
    ))
}

type Hist = Family<Labels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ConnMetrics {
    pub opened: Family<Labels, Counter>,
    pub refused: Family<Labels, Counter>,
    pub timed_out: Family<Labels, Counter>,
    pub bytes: Family<Labels, Counter>,
    pub connect: Hist,
    pub requests: Family<Labels, Counter>,
    pub duration: Hist,
    /// Events read, and events that could not be decoded.
    pub received: Counter,
    pub malformed: Counter,
    /// SYNs not tracked because the table was full.
    pub untracked: Counter,
    edges: Arc<Mutex<HashSet<Edge>>>,
}

impl Default for ConnMetrics {
    fn default() -> Self {
        ConnMetrics {
            opened: Family::default(),
            refused: Family::default(),
            timed_out: Family::default(),
            bytes: Family::default(),
            connect: Family::new_with_constructor(seconds_histogram),
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            received: Counter::default(),
            malformed: Counter::default(),
            untracked: Counter::default(),
            edges: Arc::default(),
        }
    }
}

impl ConnMetrics {
    /// The edge's label set, its port replaced by `other` past the cap.
    pub fn labels(&self, edge: Edge) -> Labels {
        let port = {
            let mut edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
            if edges.contains(&edge) || edges.len() < MAX_EDGES {
                let port = edge.port.to_string();
                edges.insert(edge.clone());
                port
            } else {
                "other".to_string()
            }
        };
        vec![
            ("client_app", edge.client_app),
            ("client_type", edge.client_type),
            ("server_app", edge.server_app),
            ("server_type", edge.server_type),
            ("port", port),
        ]
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "pn_conn_opened",
            "TCP connections between members established (SYN-ACK seen), per edge",
            self.opened.clone(),
        );
        r.register(
            "pn_conn_refused",
            "TCP connections between members refused (RST answering the SYN), per edge",
            self.refused.clone(),
        );
        r.register(
            "pn_conn_timed_out",
            "TCP connections between members whose SYN went unanswered, per edge",
            self.timed_out.clone(),
        );
        r.register(
            "pn_conn_bytes",
            "Payload bytes of closed connections, per edge and direction (to_server, to_client)",
            self.bytes.clone(),
        );
        r.register(
            "pn_conn_connect_seconds",
            "Connect latency (SYN to SYN-ACK, at the client's interface), per edge",
            self.connect.clone(),
        );
        r.register(
            "pn_http_requests",
            "HTTP/1.x requests between members answered, per edge, method and status class",
            self.requests.clone(),
        );
        r.register(
            "pn_http_request_duration_seconds",
            "HTTP/1.x request duration (request's first byte to response's first byte, at the client's interface), per edge",
            self.duration.clone(),
        );
    }
}
