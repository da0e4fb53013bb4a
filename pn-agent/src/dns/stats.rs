//! Counters of the DNS server, read by the metrics endpoint. Every label set
//! is fixed here, so a hostile client cannot grow the metrics.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Query outcomes (`pn_dns_queries_total{outcome}`), limits hit
/// (`pn_dns_limited_total{limit}`), open TCP connections
/// (`pn_dns_tcp_connections`) and the cache of forwarded answers
/// (`pn_dns_cache_total{event}`, `pn_dns_cache_entries`, `pn_dns_cache_bytes`).
#[derive(Debug, Default)]
pub struct DnsStats {
    pub answered: AtomicU64,
    pub nodata: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    /// Names of the world asked from a sealed network: REFUSED, never
    /// looked up in the cache nor relayed.
    pub sealed: AtomicU64,
    /// Names of the world answered from an upstream's answer (the query's
    /// own forward, or one it waited on).
    pub forwarded: AtomicU64,
    /// Names of the world answered from the cache.
    pub cached: AtomicU64,
    pub forward_failed: AtomicU64,
    pub malformed: AtomicU64,
    pub not_implemented: AtomicU64,
    /// Queries (and TCP connections) from an address that is no attached
    /// container: dropped without an answer.
    pub not_member: AtomicU64,
    pub limited: LimitStats,
    /// TCP connections open now.
    pub tcp_open: AtomicU64,
    pub cache: Arc<CacheStats>,
}

/// The cache of forwarded answers and the coalescing of queries in flight.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Names of the world answered from the cache.
    pub hits: AtomicU64,
    /// Names of the world not in the cache (then forwarded, or coalesced).
    pub misses: AtomicU64,
    /// Misses that waited on the same question already in flight instead
    /// of asking upstream themselves.
    pub coalesced: AtomicU64,
    /// Entries dropped to keep within the cache's bounds.
    pub evictions: AtomicU64,
    /// Entries dropped at their end of life.
    pub expired: AtomicU64,
    /// Entries and bytes held now.
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

/// How often each bound of [`super::Limits`] was hit.
#[derive(Debug, Default)]
pub struct LimitStats {
    /// TCP connections closed at accept: the client had its share open.
    pub tcp_client: AtomicU64,
    /// TCP connections closed at accept: the server had its total open.
    pub tcp_global: AtomicU64,
    /// TCP connections closed after a silence.
    pub tcp_idle: AtomicU64,
    /// TCP connections closed at the end of their lifetime.
    pub tcp_deadline: AtomicU64,
    /// TCP connections closed after their last allowed query.
    pub tcp_queries: AtomicU64,
    /// Errors accepting a connection (descriptors exhausted and the like),
    /// each followed by a pause rather than a spin.
    pub accept_error: AtomicU64,
    /// Forwards refused (SERVFAIL at once): the client had its share in flight.
    pub forward_client: AtomicU64,
    /// Forwards refused (SERVFAIL at once): every slot was in flight.
    pub forward_global: AtomicU64,
    /// Queries dropped: the client was over its query rate.
    pub query_rate: AtomicU64,
    /// Forwarded answers cut to the client's UDP size (TC set).
    pub truncated: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl DnsStats {
    /// Outcomes of queries, for `pn_dns_queries_total{outcome}`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("answered", load(&self.answered)),
            ("nodata", load(&self.nodata)),
            ("nxdomain", load(&self.nxdomain)),
            ("refused", load(&self.refused)),
            ("sealed", load(&self.sealed)),
            ("forwarded", load(&self.forwarded)),
            ("cached", load(&self.cached)),
            ("forward_failed", load(&self.forward_failed)),
            ("malformed", load(&self.malformed)),
            ("not_implemented", load(&self.not_implemented)),
            ("not_member", load(&self.not_member)),
        ]
    }

    /// Limits hit, for `pn_dns_limited_total{limit}`.
    pub fn limits_snapshot(&self) -> Vec<(&'static str, u64)> {
        let l = &self.limited;
        vec![
            ("tcp_client", load(&l.tcp_client)),
            ("tcp_global", load(&l.tcp_global)),
            ("tcp_idle", load(&l.tcp_idle)),
            ("tcp_deadline", load(&l.tcp_deadline)),
            ("tcp_queries", load(&l.tcp_queries)),
            ("accept_error", load(&l.accept_error)),
            ("forward_client", load(&l.forward_client)),
            ("forward_global", load(&l.forward_global)),
            ("query_rate", load(&l.query_rate)),
            ("truncated", load(&l.truncated)),
        ]
    }

    /// Cache events, for `pn_dns_cache_total{event}`.
    pub fn cache_snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = &self.cache;
        vec![
            ("hit", load(&c.hits)),
            ("miss", load(&c.misses)),
            ("coalesced", load(&c.coalesced)),
            ("eviction", load(&c.evictions)),
            ("expired", load(&c.expired)),
        ]
    }

    /// One line for `status`: size and outcomes of the cache.
    pub fn cache_summary(&self) -> String {
        let c = &self.cache;
        let (entries, bytes) = self.cache_size();
        format!(
            "cache {entries} answers ({} KiB), {} hits, {} misses, {} coalesced, {} evicted",
            bytes.div_ceil(1024),
            load(&c.hits),
            load(&c.misses),
            load(&c.coalesced),
            load(&c.evictions)
        )
    }

    /// Entries and bytes in the cache now.
    pub fn cache_size(&self) -> (u64, u64) {
        (load(&self.cache.entries), load(&self.cache.bytes))
    }

    /// TCP connections open now, for `pn_dns_tcp_connections`.
    pub fn tcp_open(&self) -> u64 {
        load(&self.tcp_open)
    }
}
