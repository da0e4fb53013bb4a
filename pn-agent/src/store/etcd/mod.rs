//! The fleet backend: etcd v3 through `etcd-client` (tonic gRPC), in plain
//! text (`etcd://`, development and tests) or over TLS with a client
//! certificate (`etcds://`, see [`tls`]). All keys live under one prefix.
//! Conditions map to etcd compares (`Absent` is "create revision 0"),
//! transactions to etcd transactions, watches to etcd watches from a
//! revision. Every call is bounded in time; an outage is reported as
//! [`StoreError::Unavailable`] and a refusal (TLS, permissions) as
//! [`StoreError::Refused`]. A watch that breaks ends its channel, which
//! makes the agent list again and resume from there.

mod probe;
pub mod roles;
mod tls;

use std::{sync::Arc, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};

pub use self::tls::TlsFileError;
use self::tls::{Context, Failure};
use super::backend::{Backend, Cond, Entry, Listing, Op, StoreError, WatchEvent};
use crate::config::TlsFiles;

/// Longest wait for one request before the store counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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

pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    /// For `etcds://`: the files (named in messages), etcd-client's TLS
    /// settings and the same identity for a [`probe`].
    tls: Option<(TlsFiles, TlsOptions, Arc<rustls::ClientConfig>)>,
    // Connected lazily and again after a failure, so the agent starts (and
    // keeps enforcing) while etcd is down.
    client: Mutex<Option<Client>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string().replace('\n', " "))
}

impl Etcd {
    /// Plain text, no authentication: for development and tests.
    pub fn new(endpoints: Vec<String>, prefix: String) -> Etcd {
        Etcd {
            endpoints,
            prefix,
            tls: None,
            client: Mutex::new(None),
        }
    }

    /// TLS with a client certificate; the files are read and checked now.
    pub fn with_tls(
        endpoints: Vec<String>,
        prefix: String,
        files: TlsFiles,
    ) -> Result<Etcd, TlsFileError> {
        let (options, probe) = files.load()?;
        Ok(Etcd {
            tls: Some((files, options, probe)),
            ..Etcd::new(endpoints, prefix)
        })
    }

    fn options(&self) -> ConnectOptions {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        match &self.tls {
            Some((_, tls, _)) => options.with_tls(tls.clone()),
            None => options,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// A failed request as the store error the agent acts on: a refusal
    /// (TLS, permissions) or an outage. A connection that merely closed is
    /// probed once to tell which.
    async fn failure(&self, what: &str, e: &etcd_client::Error) -> StoreError {
        let endpoints = self.endpoints.join(",");
        let ctx = Context {
            endpoints: &endpoints,
            tls: self.tls.as_ref().map(|(files, _, _)| files),
        };
        match tls::explain(e, &ctx) {
            Failure::Refused(msg) => StoreError::Refused(msg),
            Failure::Down(msg) => self.refused_or(what, msg).await,
        }
    }

    /// An outage (`down`), unless a probe finds etcd refusing this host.
    async fn refused_or(&self, what: &str, down: String) -> StoreError {
        let endpoints = self.endpoints.join(",");
        if tls::worth_probing(&down) {
            let config = self.tls.as_ref().map(|(_, _, c)| c.clone());
            if let Some(f) = probe::diagnose(self.endpoints.clone(), config).await {
                let ctx = Context {
                    endpoints: &endpoints,
                    tls: self.tls.as_ref().map(|(files, _, _)| files),
                };
                return StoreError::Refused(tls::explain_finding(&f, &ctx));
            }
        }
        if down.starts_with("etcd ") {
            unavailable(format!("{what}: {down}"))
        } else {
            unavailable(format!("etcd {endpoints} {what}: {down}"))
        }
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let urls: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| format!("{}://{e}", self.scheme()))
            .collect();
        let c = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&urls, Some(self.options())),
        )
        .await;
        let c = match c {
            Ok(c) => c,
            Err(_) => {
                let late = format!("connecting timed out after {REQUEST_TIMEOUT:?}");
                return Err(self.refused_or("connect", late).await);
            }
        };
        let c = match c {
            Ok(c) => c,
            Err(e) => return Err(self.failure("connecting", &e).await),
        };
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one request with a deadline; a failure drops the connection so the
    /// next request reconnects.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                Err(self.failure(what, &e).await)
            }
            Err(_) => {
                *self.client.lock().await = None;
                let late = format!("no answer within {REQUEST_TIMEOUT:?}");
                Err(self.refused_or(what, late).await)
            }
        }
    }

    /// A read, which is safe to ask twice: one that fails on a connection
    /// made earlier (an HTTP/2 keepalive missed while the host was busy
    /// leaves it dead) is asked once more on a new one before the store
    /// counts as unreachable, so a busy moment does not fail a command. A
    /// store that cannot be reached at all is not asked twice.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let had_connection = self.client.lock().await.is_some();
        match self.call(what, &f).await {
            Err(StoreError::Unavailable(e)) if had_connection => {
                log::info!("store: {what} failed on an earlier connection, asking again: {e}");
                self.call(what, f).await
            }
            r => r,
        }
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
            let resp = self
                .call("txn", |mut c| async move { c.txn(txn).await })
                .await?;
            if resp.succeeded() {
                Ok(Some(resp.header().map_or(0, |h| h.revision())))
            } else {
                Ok(None)
            }
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
            let mut stream = self
                .call(
                    "watch",
                    |mut c| async move { c.watch(full, Some(opts)).await },
                )
                .await?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let prefix = self.prefix.clone();
            tokio::spawn(async move {
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(m)) => m,
                        // Stream ended or broke: closing the channel makes the
                        // agent list again.
                        Ok(None) => return,
                        Err(e) => {
                            log::info!("etcd watch broke: {e}");
                            return;
                        }
                    };
                    if msg.canceled() || msg.compact_revision() > 0 {
                        let _ = tx.send(WatchEvent::Resync).await;
                        return;
                    }
                    for ev in msg.events() {
                        let Some(kv) = ev.kv() else {
                            continue;
                        };
                        let Some(key) = std::str::from_utf8(kv.key())
                            .ok()
                            .and_then(|k| k.strip_prefix(&prefix))
                        else {
                            continue;
                        };
                        let out = match ev.event_type() {
                            EventType::Put => match String::from_utf8(kv.value().to_vec()) {
                                Ok(value) => WatchEvent::Put {
                                    key: key.to_string(),
                                    value,
                                    rev: kv.mod_revision(),
                                },
                                Err(_) => continue,
                            },
                            EventType::Delete => WatchEvent::Delete {
                                key: key.to_string(),
                                rev: kv.mod_revision(),
                            },
                        };
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            });
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
}

#[cfg(test)]
mod tests;
