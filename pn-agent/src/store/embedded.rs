//! The default backend for one machine: the whole store in memory, every
//! transaction appended to a log file in the state directory (and synced to
//! disk before it is acknowledged), the log compacted into one snapshot line at
//! each start. Same semantics as etcd: revisions, compare-and-swap, watches
//! that can resume from a revision (from a bounded in-memory history).

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::backend::{Backend, Cond, Entry, Listing, Op, StoreError, WatchEvent};

/// Events kept for watchers that resume from an older revision.
const HISTORY: usize = 16_384;
/// A watcher this far behind is cut off and must list again.
const WATCH_BUFFER: usize = 65_536;

#[derive(Serialize, Deserialize)]
enum LogOp {
    #[serde(rename = "put")]
    Put(String, String),
    #[serde(rename = "del")]
    Del(String),
}

#[derive(Serialize, Deserialize)]
struct LogRecord {
    rev: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ops: Vec<LogOp>,
    /// Whole content `(key, value, mod_rev)`; only the first line of a compacted log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Vec<(String, String, i64)>>,
    /// With a snapshot: the creation revision of the keys changed since
    /// they were created (the others were created at their `mod_rev`). A
    /// field of its own, so that an older release still reads the log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    created: BTreeMap<String, i64>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
}

struct Inner {
    data: BTreeMap<String, Entry>,
    rev: i64,
    log: File,
    history: VecDeque<WatchEvent>,
    watchers: Vec<Watcher>,
}

pub struct Embedded {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
}

fn event_rev(ev: &WatchEvent) -> i64 {
    match ev {
        WatchEvent::Put { rev, .. } | WatchEvent::Delete { rev, .. } => *rev,
        WatchEvent::Resync => 0,
    }
}

fn event_key(ev: &WatchEvent) -> &str {
    match ev {
        WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        WatchEvent::Resync => "",
    }
}

impl Embedded {
    /// Opens (or creates) the store in `dir`, replaying and compacting its log.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("store.log");
        let (data, rev) = if path.exists() {
            load(&path)?
        } else {
            (BTreeMap::new(), 0)
        };
        compact(&path, &data, rev)?;
        let log = OpenOptions::new().append(true).open(&path)?;
        Ok(Embedded {
            inner: Arc::new(Mutex::new(Inner {
                data,
                rev,
                log,
                history: VecDeque::new(),
                watchers: Vec::new(),
            })),
            path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (the log is
        // written before memory changes), so poisoning is not fatal.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn txn_sync(&self, conds: Vec<Cond>, ops: Vec<Op>) -> Result<Option<i64>, StoreError> {
        let mut inner = self.lock();
        let holds = conds.iter().all(|c| match c {
            Cond::Absent(k) => !inner.data.contains_key(k),
            Cond::ModRev(k, r) => inner.data.get(k).is_some_and(|e| e.mod_rev == *r),
        });
        if !holds {
            return Ok(None);
        }
        let rev = inner.rev + 1;
        let record = LogRecord {
            rev,
            ops: ops
                .iter()
                .map(|op| match op {
                    Op::Put(k, v) => LogOp::Put(k.clone(), v.clone()),
                    Op::Delete(k) => LogOp::Del(k.clone()),
                })
                .collect(),
            snapshot: None,
            created: BTreeMap::new(),
        };
        let mut line =
            serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        line.push('\n');
        inner.log.write_all(line.as_bytes())?;
        // Acknowledged means durable: an attach that returned survives a crash.
        inner.log.sync_data()?;
        inner.rev = rev;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    put(&mut inner.data, key.clone(), value.clone(), rev);
                    events.push(WatchEvent::Put { key, value, rev });
                }
                Op::Delete(key) => {
                    if inner.data.remove(&key).is_some() {
                        events.push(WatchEvent::Delete { key, rev });
                    }
                }
            }
        }
        for ev in events {
            inner.watchers.retain(|w| {
                !event_key(&ev).starts_with(&w.prefix) || w.tx.try_send(ev.clone()).is_ok()
            });
            if inner.history.len() == HISTORY {
                inner.history.pop_front();
            }
            inner.history.push_back(ev);
        }
        Ok(Some(rev))
    }
}

/// Writes `key` at `rev`, keeping the revision it was created at.
fn put(data: &mut BTreeMap<String, Entry>, key: String, value: String, rev: i64) {
    let create_rev = data.get(&key).map_or(rev, |e| e.create_rev);
    data.insert(
        key,
        Entry {
            value,
            mod_rev: rev,
            create_rev,
        },
    );
}

fn load(path: &Path) -> Result<(BTreeMap<String, Entry>, i64), StoreError> {
    let file = File::open(path)?;
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    let mut data = BTreeMap::new();
    let mut rev = 0;
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: LogRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            // A torn last line is a write that was never acknowledged.
            Err(e) if n + 1 == lines.len() => {
                log::warn!(
                    "{}: ignoring incomplete last record ({e}); it was never acknowledged",
                    path.display()
                );
                break;
            }
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "{} line {}: {e}",
                    path.display(),
                    n + 1
                )));
            }
        };
        if let Some(snapshot) = record.snapshot {
            data.clear();
            for (k, v, mod_rev) in snapshot {
                let create_rev = record.created.get(&k).copied().unwrap_or(mod_rev);
                data.insert(
                    k,
                    Entry {
                        value: v,
                        mod_rev,
                        create_rev,
                    },
                );
            }
        }
        for op in record.ops {
            match op {
                LogOp::Put(k, v) => put(&mut data, k, v, record.rev),
                LogOp::Del(k) => {
                    data.remove(&k);
                }
            }
        }
        rev = record.rev;
    }
    Ok((data, rev))
}

fn compact(path: &Path, data: &BTreeMap<String, Entry>, rev: i64) -> Result<(), StoreError> {
    let tmp = path.with_extension("log.tmp");
    let record = LogRecord {
        rev,
        ops: Vec::new(),
        snapshot: Some(
            data.iter()
                .map(|(k, e)| (k.clone(), e.value.clone(), e.mod_rev))
                .collect(),
        ),
        created: data
            .iter()
            .filter(|(_, e)| e.create_rev != e.mod_rev)
            .map(|(k, e)| (k.clone(), e.create_rev))
            .collect(),
    };
    let mut f = File::create(&tmp)?;
    serde_json::to_writer(&mut f, &record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Backend for Embedded {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move { Ok(self.lock().data.get(key).cloned()) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            let entries = inner
                .data
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            Ok(Listing {
                entries,
                rev: inner.rev,
            })
        })
    }

    fn txn(
        &self,
        conds: Vec<Cond>,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move { self.txn_sync(conds, ops) })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_rev: i64,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<WatchEvent>, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let mut inner = self.lock();
            let oldest = inner.history.front().map(event_rev);
            let missed_history = from_rev <= inner.rev && oldest.is_none_or(|o| o > from_rev);
            if missed_history {
                let _ = tx.try_send(WatchEvent::Resync);
            } else {
                for ev in inner.history.iter().filter(|e| event_rev(e) >= from_rev) {
                    if event_key(ev).starts_with(prefix) {
                        let _ = tx.try_send(ev.clone());
                    }
                }
            }
            inner.watchers.push(Watcher {
                prefix: prefix.to_string(),
                tx,
            });
            Ok(rx)
        })
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pn-embedded-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn survives_reopen_and_compacts() {
        let dir = tmpdir("reopen");
        {
            let s = Embedded::open(&dir).unwrap();
            for i in 0..10 {
                s.txn(vec![], vec![Op::Put(format!("k{i}"), format!("v{i}"))])
                    .await
                    .unwrap();
            }
            s.txn(vec![], vec![Op::Delete("k3".into())]).await.unwrap();
            // Changed after its creation: it keeps its creation revision.
            s.txn(vec![], vec![Op::Put("k2".into(), "v2'".into())])
                .await
                .unwrap();
        }
        let s = Embedded::open(&dir).unwrap();
        let l = s.list("k").await.unwrap();
        assert_eq!(l.rev, 12);
        assert_eq!(l.entries.len(), 9);
        assert_eq!(s.get("k5").await.unwrap().unwrap().mod_rev, 6);
        let k2 = s.get("k2").await.unwrap().unwrap();
        assert_eq!(
            (k2.mod_rev, k2.create_rev),
            (12, 3),
            "kept across a compaction"
        );
        let lines = std::fs::read_to_string(dir.join("store.log")).unwrap();
        assert_eq!(lines.lines().count(), 1, "compacted into one snapshot line");
        // Deleted and written again: a new record.
        s.txn(vec![], vec![Op::Put("k3".into(), "again".into())])
            .await
            .unwrap();
        assert_eq!(s.get("k3").await.unwrap().unwrap().create_rev, 13);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn torn_last_line_is_ignored_but_corruption_is_an_error() {
        let dir = tmpdir("torn");
        {
            let s = Embedded::open(&dir).unwrap();
            s.txn(vec![], vec![Op::Put("a".into(), "1".into())])
                .await
                .unwrap();
        }
        let log = dir.join("store.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"rev\":2,\"ops\":[{\"put\":[\"b\"").unwrap();
        drop(f);
        let s = Embedded::open(&dir).unwrap();
        assert!(s.get("a").await.unwrap().is_some());
        assert!(s.get("b").await.unwrap().is_none());
        drop(s);
        let content = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, format!("garbage\n{content}")).unwrap();
        match Embedded::open(&dir) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("line 1"), "{msg}"),
            other => panic!("expected corruption error, got {:?}", other.err()),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn watch_resumes_from_history_or_asks_for_resync() {
        let dir = tmpdir("watch");
        let s = Embedded::open(&dir).unwrap();
        for i in 0..3 {
            s.txn(vec![], vec![Op::Put(format!("x/{i}"), "v".into())])
                .await
                .unwrap();
        }
        let mut rx = s.watch("x/", 2).await.unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            WatchEvent::Put {
                key: "x/1".into(),
                value: "v".into(),
                rev: 2
            }
        );
        assert!(matches!(
            rx.recv().await.unwrap(),
            WatchEvent::Put { rev: 3, .. }
        ));
        s.txn(
            vec![],
            vec![Op::Delete("x/0".into()), Op::Put("y".into(), "v".into())],
        )
        .await
        .unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            WatchEvent::Delete {
                key: "x/0".into(),
                rev: 4
            }
        );
        drop(s);
        // After a restart the history is gone: a watcher asking for old
        // revisions is told to list again.
        let s = Embedded::open(&dir).unwrap();
        let mut rx = s.watch("", 2).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), WatchEvent::Resync);
        let mut rx = s.watch("", 5).await.unwrap();
        s.txn(vec![], vec![Op::Put("z".into(), "v".into())])
            .await
            .unwrap();
        assert!(matches!(
            rx.recv().await.unwrap(),
            WatchEvent::Put { rev: 5, .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::Embedded;
    use crate::store::Backend;

    async fn fresh(name: &str) -> Arc<dyn Backend> {
        let d =
            std::env::temp_dir().join(format!("pn-embedded-conf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = Embedded::open(&d).unwrap();
        // The store writes only through its open log from now on: the
        // directory can go at once, so no test leaves it behind.
        std::fs::remove_dir_all(&d).unwrap();
        Arc::new(store)
    }

    crate::store_conformance_tests!(fresh);
    crate::store_placement_tests!(fresh);
    crate::store_lease_tests!(fresh);
    crate::store_conformance6_tests!(fresh);
}
