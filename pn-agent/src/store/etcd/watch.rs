//! A watch that outlives the member it was made on: when its stream breaks
//! (the member killed, its connection reset or silent), it is made again on
//! the next member from the last revision it delivered, so the agent
//! misses no event and lists nothing again. That revision is asked again
//! because etcd may split one revision's events over fragments of a big
//! response (and etcd-client does not say which message is a fragment):
//! its events already passed on are skipped (a revision changes a key at
//! most once). When no member takes the watch up within a request's time,
//! the channel ends and the agent lists again.

use std::{collections::HashSet, sync::Arc, time::Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;

use super::{ATTEMPT_TIMEOUT, ELECTION_PAUSE, REQUEST_TIMEOUT, members::Members};
use crate::store::WatchEvent;

pub(super) struct Resuming {
    pub members: Arc<Members>,
    /// The full key (prefix included) watched with `options`.
    pub key: String,
    pub options: WatchOptions,
    /// The backend's prefix, cut from the keys passed on.
    pub prefix: String,
    /// Where to resume: no event before it is missing.
    pub resume_from: i64,
    /// The keys of `resume_from`'s events already delivered.
    pub delivered: HashSet<String>,
}

/// Why a stream stopped.
enum Stop {
    /// The agent dropped its end.
    Closed,
    /// The history the watch needs is compacted: the agent must list.
    Resync,
    /// The member or its connection went: resume elsewhere.
    Broken(String),
}

impl Resuming {
    pub async fn run(mut self, mut stream: WatchStream, tx: mpsc::Sender<WatchEvent>) {
        let mut generation = None;
        loop {
            match self.pump(&mut stream, &tx).await {
                Stop::Closed => return,
                Stop::Resync => {
                    let _ = tx.send(WatchEvent::Resync).await;
                    return;
                }
                Stop::Broken(why) => {
                    log::info!("etcd watch broke at revision {}: {why}", self.resume_from);
                    if let Some(g) = generation {
                        self.members.failed(g).await;
                    }
                }
            }
            match self.resume().await {
                Some((s, g)) => (stream, generation) = (s, Some(g)),
                // Closing the channel makes the agent list again.
                None => return,
            }
        }
    }

    /// The watch made again from `resume_from`, on the member in use or
    /// the next ones, within a request's time.
    async fn resume(&self) -> Option<(WatchStream, u64)> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let options = self.options.clone().with_start_revision(self.resume_from);
        while Instant::now() < deadline {
            let conn = self.members.conn().await.ok()?;
            let mut client = conn.client;
            let made = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                client.watch(self.key.clone(), Some(options.clone())),
            )
            .await;
            match made {
                Ok(Ok(stream)) => {
                    log::info!(
                        "etcd watch resumed at revision {} on {}",
                        self.resume_from,
                        self.members.current()
                    );
                    return Some((stream, conn.generation));
                }
                Ok(Err(e)) => log::debug!("etcd watch: resuming: {e}"),
                Err(_) => log::debug!("etcd watch: resuming: no answer"),
            }
            self.members.failed(conn.generation).await;
            tokio::time::sleep(ELECTION_PAUSE).await;
        }
        None
    }

    /// Passes the stream's events on until it stops.
    async fn pump(&mut self, stream: &mut WatchStream, tx: &mpsc::Sender<WatchEvent>) -> Stop {
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Stop::Broken("the stream ended".into()),
                Err(e) => return Stop::Broken(e.to_string()),
            };
            if msg.compact_revision() > 0 {
                return Stop::Resync;
            }
            if msg.canceled() {
                return Stop::Broken(format!("canceled: {}", msg.cancel_reason()));
            }
            if msg.events().is_empty() {
                if !msg.created()
                    && let Some(h) = msg.header()
                {
                    // A progress notice: etcd sends it only to a watcher
                    // that has every event up to that revision.
                    self.passed(h.revision() + 1, None);
                }
                continue;
            }
            for ev in self.events(&msg) {
                let (WatchEvent::Put { key, rev, .. } | WatchEvent::Delete { key, rev }) = &ev
                else {
                    continue;
                };
                if !self.passed(*rev, Some(key)) {
                    continue;
                }
                if tx.send(ev).await.is_err() {
                    return Stop::Closed;
                }
            }
        }
    }

    /// Records that `rev` (with `key`'s event) is delivered; false for an
    /// event delivered before the watch resumed.
    fn passed(&mut self, rev: i64, key: Option<&String>) -> bool {
        if rev < self.resume_from {
            return false;
        }
        if rev > self.resume_from {
            self.resume_from = rev;
            self.delivered.clear();
        }
        match key {
            Some(k) => self.delivered.insert(k.clone()),
            None => true,
        }
    }

    /// The response's events under the prefix, as the agent takes them.
    fn events(&self, msg: &WatchResponse) -> Vec<WatchEvent> {
        let mut out = Vec::with_capacity(msg.events().len());
        for ev in msg.events() {
            let Some(kv) = ev.kv() else {
                continue;
            };
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&self.prefix))
            else {
                continue;
            };
            out.push(match ev.event_type() {
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
            });
        }
        out
    }
}
