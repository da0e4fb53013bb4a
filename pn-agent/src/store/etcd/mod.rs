//! The fleet backend: etcd v3 through `etcd-client` (tonic gRPC), in plain
//! text (`etcd://`, development and tests) or over TLS with a client
//! certificate (`etcds://`, see [`tls`]). All keys live under one prefix.
//! Conditions map to etcd compares (`Absent` is "create revision 0"),
//! transactions to etcd transactions, watches to etcd watches from a
//! revision. Every call is bounded in time; an outage is reported as
//! [`StoreError::Unavailable`] and a refusal (TLS, permissions) as
//! [`StoreError::Refused`]. Several endpoints are members of one cluster:
//! the agent talks to one and moves to the next when it fails
//! ([`members`]), asking the request again there; a watch resumes on the
//! next member from the revision after the last it delivered ([`watch`]).
//! A watch that no member takes up ends its channel, which makes the agent
//! list again and resume from there.

mod members;
mod probe;
mod tls;
mod watch;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

pub use self::tls::TlsFileError;
use self::{
    members::Members,
    tls::{Context, Failure},
};
use super::backend::{Backend, Cond, Entry, Link, Listing, Op, StoreError, WatchEvent};
use crate::config::TlsFiles;

/// Longest wait for one request before the store counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// With several members, the longest wait for one attempt: a write sent to
/// a follower while its leader dies waits for etcd's own request timeout
/// (7 s), and asking again once a new leader is elected (one to two
/// election timeouts) is quicker. A member that hangs is left for the
/// next one.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause before asking again a cluster that is electing a leader.
const ELECTION_PAUSE: Duration = Duration::from_millis(100);
/// gRPC keepalive: a dead peer is noticed within about these two together.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
const WATCH_BUFFER: usize = 65_536;
/// Keys per page of a listing: a fleet's store is far bigger than one gRPC
/// message (4 MiB by default), so listings are paged at one revision.
const PAGE: i64 = 2_000;

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

/// Whether a failure is the cluster electing a leader (etcd's own answers),
/// not the member: asking the same member again shortly will do.
fn between_leaders(down: &str) -> bool {
    [
        "no leader",
        "leader changed",
        "request timed out",
        "proposal dropped",
        "too many requests",
    ]
    .iter()
    .any(|m| down.contains(m))
}

pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    /// For `etcds://`: the files (named in messages), etcd-client's TLS
    /// settings and the same identity for a [`probe`].
    tls: Option<(TlsFiles, TlsOptions, Arc<rustls::ClientConfig>)>,
    // Connected lazily and again after a failure, so the agent starts (and
    // keeps enforcing) while etcd is down; one member at a time.
    members: Arc<Members>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string().replace('\n', " "))
}

/// With several members, each request asks for a leader ("hasleader"): a
/// member cut from the others answers "no leader" at once instead of
/// serving what it last knew, and cancels its watches after three election
/// timeouts without one, so the agent moves on rather than watch a member
/// that hears of no change.
fn options(tls: Option<&TlsOptions>, several: bool) -> ConnectOptions {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(several);
    match tls {
        Some(tls) => options.with_tls(tls.clone()),
        None => options,
    }
}

impl Etcd {
    /// Plain text, no authentication: for development and tests.
    pub fn new(endpoints: Vec<String>, prefix: String) -> Etcd {
        Self::build(endpoints, prefix, None)
    }

    /// TLS with a client certificate; the files are read and checked now.
    pub fn with_tls(
        endpoints: Vec<String>,
        prefix: String,
        files: TlsFiles,
    ) -> Result<Etcd, TlsFileError> {
        let (options, probe) = files.load()?;
        Ok(Self::build(
            endpoints,
            prefix,
            Some((files, options, probe)),
        ))
    }

    fn build(
        endpoints: Vec<String>,
        prefix: String,
        tls: Option<(TlsFiles, TlsOptions, Arc<rustls::ClientConfig>)>,
    ) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let urls = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let several = endpoints.len() > 1;
        let members = Members::new(urls, options(tls.as_ref().map(|(_, o, _)| o), several));
        Etcd {
            endpoints,
            prefix,
            tls,
            members: Arc::new(members),
        }
    }

    fn context<'a>(&'a self, endpoints: &'a str) -> Context<'a> {
        Context {
            endpoints,
            tls: self.tls.as_ref().map(|(files, _, _)| files),
        }
    }

    /// A failed request as the store error the agent acts on: a refusal
    /// (TLS, permissions) or an outage.
    fn failure(&self, e: &etcd_client::Error) -> Failure {
        tls::explain(e, &self.context(&self.endpoints.join(",")))
    }

    /// An outage (`down`), unless a probe finds etcd refusing this host.
    async fn refused_or(&self, what: &str, down: String) -> StoreError {
        let endpoints = self.endpoints.join(",");
        if tls::worth_probing(&down) {
            let config = self.tls.as_ref().map(|(_, _, c)| c.clone());
            if let Some(f) = probe::diagnose(self.endpoints.clone(), config).await {
                return StoreError::Refused(tls::explain_finding(&f, &self.context(&endpoints)));
            }
        }
        if down.starts_with("etcd ") {
            unavailable(format!("{what}: {down}"))
        } else {
            unavailable(format!("etcd {endpoints} {what}: {down}"))
        }
    }

    /// Runs one request on the member in use, with a deadline. A member
    /// that fails (refused, reset, silent) is left for the next one and the
    /// request asked there; a cluster between leaders is asked again after
    /// a pause. It gives up when every member failed on a connection made
    /// for the request (so a store that cannot be reached at all is not
    /// waited for) or at the deadline. The flag says whether an earlier
    /// attempt failed: a write it carried may have been applied.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<(T, bool), StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let several = self.members.len() > 1;
        let (mut fresh_failures, mut retried) = (0, false);
        loop {
            let conn = match self.members.conn().await {
                Ok(c) => c,
                Err(e) => {
                    return Err(match self.failure(&e) {
                        Failure::Refused(m) => StoreError::Refused(m),
                        Failure::Down(m) => self.refused_or("connecting", m).await,
                    });
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = if several {
                left.min(ATTEMPT_TIMEOUT)
            } else {
                left
            };
            let (down, electing) = match tokio::time::timeout(limit, f(conn.client.clone())).await {
                Ok(Ok(v)) => return Ok((v, retried)),
                Ok(Err(e)) => match self.failure(&e) {
                    Failure::Refused(m) => return Err(StoreError::Refused(m)),
                    Failure::Down(m) => {
                        let electing = between_leaders(&m);
                        (m, electing)
                    }
                },
                // Silent: the member hangs, or it waits for a leader (a
                // write forwarded to one that died is lost). A member that
                // still answers its status is kept.
                Err(_) => (
                    format!("no answer within {limit:?}"),
                    several && Members::answers(conn.client).await,
                ),
            };
            retried = true;
            if !electing {
                self.members.failed(conn.generation).await;
                fresh_failures += usize::from(conn.fresh);
            }
            let pause = if electing {
                ELECTION_PAUSE
            } else {
                Duration::ZERO
            };
            if fresh_failures >= self.members.len() || Instant::now() + pause >= deadline {
                if electing {
                    // A member without a leader for a whole request may be
                    // cut from the others: the next request tries another.
                    self.members.failed(conn.generation).await;
                }
                return Err(self.refused_or(what, down).await);
            }
            log::info!("store: {what} failed, asking again: {down}");
            tokio::time::sleep(pause).await;
        }
    }

    /// A read: as [`Self::call`], which may ask it twice.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(self.call(what, f).await?.0)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)
    }
}

fn value_string(v: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(v.to_vec())
        .map_err(|e| StoreError::Corrupt(format!("value is not UTF-8: {e}")))
}

impl Backend for Etcd {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let full = self.full(key);
            let resp = self
                .read("get", |mut c| {
                    let full = full.clone();
                    async move { c.get(full, None).await }
                })
                .await?;
            match resp.kvs().first() {
                Some(kv) => Ok(Some(Entry {
                    value: value_string(kv.value())?,
                    mod_rev: kv.mod_revision(),
                    create_rev: kv.create_revision(),
                })),
                None => Ok(None),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let full = self.full(prefix).into_bytes();
            let end = prefix_end(&full);
            let mut entries = Vec::new();
            let mut from = full;
            let mut rev = 0;
            loop {
                let opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PAGE)
                    .with_revision(rev);
                let resp = self
                    .read("list", |mut c| {
                        let (key, opts) = (from.clone(), opts.clone());
                        async move { c.get(key, Some(opts)).await }
                    })
                    .await?;
                if rev == 0 {
                    // Every page at the revision of the first one.
                    rev = resp.header().map_or(0, |h| h.revision());
                }
                for kv in resp.kvs() {
                    let Some(key) = self.strip(kv.key()) else {
                        continue;
                    };
                    entries.push((
                        key.to_string(),
                        Entry {
                            value: value_string(kv.value())?,
                            mod_rev: kv.mod_revision(),
                            create_rev: kv.create_revision(),
                        },
                    ));
                }
                match (resp.more(), resp.kvs().last()) {
                    (true, Some(last)) => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
            Ok(Listing { entries, rev })
        })
    }

    fn txn(
        &self,
        conds: Vec<Cond>,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let compares: Vec<Compare> = conds
                .iter()
                .map(|c| match c {
                    Cond::Absent(k) => Compare::create_revision(self.full(k), CompareOp::Equal, 0),
                    Cond::ModRev(k, r) => Compare::mod_revision(self.full(k), CompareOp::Equal, *r),
                })
                .collect();
            let txn_ops: Vec<TxnOp> = ops
                .iter()
                .map(|op| match op {
                    Op::Put(k, v) => TxnOp::put(self.full(k), v.as_bytes(), None),
                    Op::Delete(k) => TxnOp::delete(self.full(k), None),
                })
                .collect();
            let txn = Txn::new().when(compares).and_then(txn_ops);
            let (resp, retried) = self
                .call("txn", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(Some(resp.header().map_or(0, |h| h.revision())));
            }
            // An attempt that failed (a member lost mid-request) may have
            // been applied: its own writes then fail the conditions.
            if retried {
                return self.applied(&ops).await;
            }
            Ok(None)
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_rev: i64,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<WatchEvent>, StoreError>> {
        Box::pin(async move {
            let full = self.full(prefix);
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from_rev)
                .with_progress_notify()
                // A watcher catching up gets big batches: etcd splits them.
                .with_fragment();
            let (stream, _) = self
                .call("watch", |mut c| {
                    let (full, opts) = (full.clone(), opts.clone());
                    async move { c.watch(full, Some(opts)).await }
                })
                .await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let w = watch::Resuming {
                members: self.members.clone(),
                key: full,
                options: opts,
                prefix: self.prefix.clone(),
                resume_from: from_rev,
                delivered: Default::default(),
            };
            tokio::spawn(w.run(stream, tx));
            Ok(rx)
        })
    }

    fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!(
            "{scheme}://{} (prefix {})",
            self.endpoints.join(","),
            self.prefix
        )
    }

    fn link(&self) -> Option<Link> {
        Some(Link {
            member: self.members.current().to_string(),
            failovers: self.members.failovers(),
        })
    }
}

impl Etcd {
    /// Whether the store holds what `ops` write (every put's value, no
    /// deleted key), read at one revision: then a transaction whose answer
    /// was lost was applied, at the revision of its puts.
    async fn applied(&self, ops: &[Op]) -> Result<Option<i64>, StoreError> {
        let gets: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, _) | Op::Delete(k) => TxnOp::get(self.full(k), None),
            })
            .collect();
        let check = Txn::new().and_then(gets);
        let resp = self
            .read("txn check", |mut c| {
                let check = check.clone();
                async move { c.txn(check).await }
            })
            .await?;
        let mut rev = None;
        for (op, got) in ops.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(got) = got else {
                return Ok(None);
            };
            let kv = got.kvs().first();
            match (op, kv) {
                (Op::Put(_, v), Some(kv)) if kv.value() == v.as_bytes() => {
                    rev = rev.max(Some(kv.mod_revision()));
                }
                (Op::Delete(_), None) => {}
                _ => return Ok(None),
            }
        }
        log::info!("store: a transaction whose answer was lost had been applied");
        Ok(Some(rev.unwrap_or_else(|| {
            resp.header().map_or(0, |h| h.revision())
        })))
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
