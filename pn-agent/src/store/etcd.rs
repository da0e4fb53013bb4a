//! The fleet backend: etcd v3 through `etcd-client` (tonic gRPC). All keys
//! live under one prefix. Conditions map to etcd compares (`Absent` is
//! "create revision 0"), transactions to etcd transactions, watches to etcd
//! watches from a revision. Every call is bounded in time and an outage is
//! reported as [`StoreError::Unavailable`]; a watch that breaks ends its
//! channel, which makes the agent list again and resume from there.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};

use super::backend::{Backend, Cond, Entry, Listing, Op, StoreError, WatchEvent};

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
    // Connected lazily and again after a failure, so the agent starts (and
    // keeps enforcing) while etcd is down.
    client: Mutex<Option<Client>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string().replace('\n', " "))
}

impl Etcd {
    pub fn new(endpoints: Vec<String>, prefix: String) -> Etcd {
        Etcd {
            endpoints,
            prefix,
            client: Mutex::new(None),
        }
    }

    fn options() -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let urls: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let c = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&urls, Some(Self::options())),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "connecting to etcd {} timed out",
                self.endpoints.join(",")
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "connecting to etcd {}: {e}",
                self.endpoints.join(",")
            ))
        })?;
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
                Err(unavailable(format!("etcd {what}: {e}")))
            }
            Err(_) => {
                *self.client.lock().await = None;
                Err(unavailable(format!(
                    "etcd {what}: no answer within {REQUEST_TIMEOUT:?}"
                )))
            }
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
                .call("get", |mut c| async move { c.get(full, None).await })
                .await?;
            match resp.kvs().first() {
                Some(kv) => Ok(Some(Entry {
                    value: value_string(kv.value())?,
                    mod_rev: kv.mod_revision(),
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
                let key = from.clone();
                let resp = self
                    .call("list", |mut c| async move { c.get(key, Some(opts)).await })
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
        format!("etcd {} (prefix {})", self.endpoints.join(","), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn range_ends() {
        assert_eq!(prefix_end(b"/pn/"), b"/pn0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real etcd (Debian's `etcd` binary) on loopback for the unit tests.

    use std::{
        net::TcpListener,
        path::PathBuf,
        process::{Child, Command, Stdio},
        time::Instant,
    };

    pub struct EtcdServer {
        child: Child,
        dir: PathBuf,
        pub endpoint: String,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl EtcdServer {
        pub fn start(name: &str) -> EtcdServer {
            let dir = std::env::temp_dir().join(format!("pn-etcd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("127.0.0.1:{client}");
            let child = Command::new("etcd")
                .args(["--name", name, "--data-dir"])
                .arg(&dir)
                .args([
                    "--listen-client-urls",
                    &format!("http://{endpoint}"),
                    "--advertise-client-urls",
                    &format!("http://{endpoint}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("{name}=http://127.0.0.1:{peer}"),
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd must be installed (cargo xtask installs Debian's etcd-server)");
            let server = EtcdServer {
                child,
                dir,
                endpoint,
            };
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            while std::net::TcpStream::connect(&server.endpoint).is_err() {
                assert!(Instant::now() < deadline, "etcd did not start");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            server
        }
    }

    impl Drop for EtcdServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::{Etcd, testing::EtcdServer};
    use crate::store::Backend;

    /// Each test gets its own etcd; the server lives as long as the backend
    /// (leaked into a holder that outlives the test body).
    async fn fresh(name: &str) -> Arc<dyn Backend> {
        let server = EtcdServer::start(name);
        let kv = Etcd::new(vec![server.endpoint.clone()], "/pn-test/".into());
        Arc::new(Held {
            kv,
            _server: server,
        })
    }

    struct Held {
        kv: Etcd,
        _server: EtcdServer,
    }

    impl Backend for Held {
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<
            'a,
            Result<Option<crate::store::Entry>, crate::store::StoreError>,
        > {
            self.kv.get(key)
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::store::Listing, crate::store::StoreError>>
        {
            self.kv.list(prefix)
        }
        fn txn(
            &self,
            conds: Vec<crate::store::Cond>,
            ops: Vec<crate::store::Op>,
        ) -> futures::future::BoxFuture<'_, Result<Option<i64>, crate::store::StoreError>> {
            self.kv.txn(conds, ops)
        }
        fn watch<'a>(
            &'a self,
            prefix: &'a str,
            from_rev: i64,
        ) -> futures::future::BoxFuture<
            'a,
            Result<tokio::sync::mpsc::Receiver<crate::store::WatchEvent>, crate::store::StoreError>,
        > {
            self.kv.watch(prefix, from_rev)
        }
        fn describe(&self) -> String {
            self.kv.describe()
        }
    }

    crate::store_conformance_tests!(fresh);

    #[tokio::test]
    async fn big_stores_list_in_pages_and_watch_in_big_batches() {
        use crate::store::{Op, WatchEvent};
        let server = EtcdServer::start("pages");
        let kv = Etcd::new(vec![server.endpoint.clone()], "/pn-test/".into());
        let value = "v".repeat(1000);
        // 5 MB in all: more than one gRPC message, more than two pages.
        for batch in 0..50 {
            let ops = (0..100)
                .map(|i| Op::Put(format!("k/{:05}", batch * 100 + i), value.clone()))
                .collect();
            kv.txn(vec![], ops).await.unwrap();
        }
        let l = kv.list("k/").await.unwrap();
        assert_eq!(l.entries.len(), 5000);
        assert!(
            l.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "in key order, no repeats"
        );
        // A watcher starting from the beginning catches up on all of it.
        let mut rx = kv.watch("k/", 1).await.unwrap();
        let mut n = 0;
        while n < 5000 {
            match tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv()).await {
                Ok(Some(WatchEvent::Put { .. })) => n += 1,
                other => panic!("after {n} events: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_outage_is_reported_and_survived() {
        use crate::store::{Op, StoreError};
        let server = EtcdServer::start("outage");
        let endpoint = server.endpoint.clone();
        let kv = Etcd::new(vec![endpoint], "/pn-test/".into());
        kv.txn(vec![], vec![Op::Put("a".into(), "1".into())])
            .await
            .unwrap();
        let mut rx = kv.watch("", 1).await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(crate::store::WatchEvent::Put { .. })
        ));
        drop(server);
        // The watch ends, requests fail fast with one line.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert!(
            matches!(ended, Ok(None)),
            "watch should end when etcd goes away"
        );
        match kv.get("a").await {
            Err(StoreError::Unavailable(msg)) => {
                assert!(!msg.contains('\n') && msg.contains("etcd"), "{msg}")
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}
