//! Which member of an etcd cluster the agent talks to: one at a time, the
//! next one in `--store`'s order once it fails (a failover, counted).
//!
//! Not etcd-client's own multi-endpoint client: it balances requests over
//! every endpoint (tonic's p2c over lazy connections), and a member that is
//! down stays in the rotation, each request sent there failing with
//! "connection refused" (measured with etcd-client 0.21.1 on a 3-member
//! cluster, one member killed: 14 of 60 reads failed), for as long as it is
//! down. Pinned to one member, a failure moves the agent on once, and
//! `status` says where it is.

use std::{
    sync::{
        Mutex as SyncMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;

const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection to one member, with what to name when it fails.
pub(super) struct Conn {
    pub client: Client,
    /// Which connection this is: a failure on an older one moves nothing.
    pub generation: u64,
    /// Made for this request (not one that may have died since it was made).
    pub fresh: bool,
}

struct Pinned {
    at: usize,
    generation: u64,
    client: Option<Client>,
}

pub(super) struct Members {
    /// `scheme://HOST:PORT`, in `--store`'s order.
    urls: Vec<String>,
    options: ConnectOptions,
    pinned: Mutex<Pinned>,
    failovers: AtomicU64,
    /// The member in use, for `status` and the metrics (read without
    /// waiting on a request).
    current: SyncMutex<usize>,
}

impl Members {
    pub fn new(urls: Vec<String>, options: ConnectOptions) -> Members {
        Members {
            urls,
            options,
            pinned: Mutex::new(Pinned {
                at: 0,
                generation: 0,
                client: None,
            }),
            failovers: AtomicU64::new(0),
            current: SyncMutex::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// The connection to the current member, made now if there is none.
    /// etcd-client connects lazily: a member that is down fails the first
    /// request, not this.
    pub async fn conn(&self) -> Result<Conn, etcd_client::Error> {
        let mut p = self.pinned.lock().await;
        if let Some(c) = &p.client {
            return Ok(Conn {
                client: c.clone(),
                generation: p.generation,
                fresh: false,
            });
        }
        let client = Client::connect([&self.urls[p.at]], Some(self.options.clone())).await?;
        p.client = Some(client.clone());
        Ok(Conn {
            client,
            generation: p.generation,
            fresh: true,
        })
    }

    /// The connection of `generation` failed: the next request connects
    /// again, to the next member when there are several. A failure seen by
    /// several requests at once moves the agent once.
    pub async fn failed(&self, generation: u64) {
        let mut p = self.pinned.lock().await;
        if p.generation != generation {
            return;
        }
        p.client = None;
        p.generation += 1;
        if self.urls.len() > 1 {
            let from = p.at;
            p.at = (p.at + 1) % self.urls.len();
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = p.at;
            self.failovers.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "etcd member {} failed; now talking to {}",
                self.urls[from],
                self.urls[p.at]
            );
        }
    }

    /// Whether the member behind `client` answers its status (served by
    /// the member itself) within half a second, or says it has no leader.
    pub async fn answers(mut client: Client) -> bool {
        match tokio::time::timeout(STATUS_TIMEOUT, client.status()).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.to_string().contains("no leader"),
            Err(_) => false,
        }
    }

    /// The member in use (`scheme://HOST:PORT`).
    pub fn current(&self) -> &str {
        &self.urls[*self.current.lock().unwrap_or_else(|e| e.into_inner())]
    }

    /// How many times the agent moved to another member.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }
}
