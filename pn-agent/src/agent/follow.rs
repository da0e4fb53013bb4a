//! Following the store: a full listing, then a watch from its revision; each
//! change updates the view and is converged for the containers it touched;
//! a broken watch (store outage, compaction, lag) means listing again, with
//! backoff, while the kernel keeps enforcing the last state it was given.

use std::{sync::Arc, time::Duration};

use super::{Agent, reconcile::Touched};
use crate::store::{WatchEvent, view::Change};

impl Agent {
    /// Lists the whole store and brings view and kernel in line with it.
    pub(super) async fn resync(&self) -> anyhow::Result<i64> {
        let listing = match self.membership.backend().list("").await {
            Ok(l) => l,
            Err(e) => {
                self.store_health.set(false, Some(e.to_string()));
                return Err(e.into());
            }
        };
        self.store_health.set(true, None);
        // Records that fail their checks are skipped, counted and logged
        // by the view itself.
        let view = self.view().reloaded(&listing);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.converge(&Touched::All).await;
        self.applied.send_replace(listing.rev);
        Ok(listing.rev)
    }

    /// Keeps the view and the kernel following the store, forever.
    pub(super) async fn follow_store(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        let mut from = self.view().rev + 1;
        loop {
            match self.membership.backend().watch("", from).await {
                Ok(mut rx) => {
                    let mut next = rx.recv().await;
                    while let Some(ev) = next.take() {
                        if ev == WatchEvent::Resync {
                            break;
                        }
                        self.apply_event(&ev).await;
                        // A transaction's events share its revision and come
                        // together: the revision is applied once its last
                        // event is (a command waiting for it must find all of
                        // it in the kernel, not only the first key).
                        let rev = event_rev(&ev);
                        next = match rx.try_recv() {
                            Ok(n) => {
                                if event_rev(&n) != rev {
                                    self.applied.send_replace(rev);
                                }
                                Some(n)
                            }
                            Err(_) => {
                                self.applied.send_replace(rev);
                                rx.recv().await
                            }
                        };
                    }
                    log::info!("store watch ended; resynchronising");
                }
                Err(e) => self.store_health.set(false, Some(e.to_string())),
            }
            loop {
                match self.resync().await {
                    Ok(rev) => {
                        backoff = Duration::from_millis(200);
                        from = rev + 1;
                        break;
                    }
                    Err(e) => {
                        log::debug!("resync failed: {e:#}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    async fn apply_event(&self, ev: &WatchEvent) {
        if *ev == WatchEvent::Resync {
            return;
        }
        let change = self
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(ev);
        match change {
            Ok(Change::ContainerPut { new, old }) => {
                let mut touched = vec![*new];
                touched.extend(old.map(|o| *o));
                self.converge(&Touched::Containers(touched)).await;
            }
            Ok(Change::ContainerDeleted(c)) => {
                self.pending.remove(&c.key);
                self.converge(&Touched::Containers(vec![*c])).await;
            }
            Ok(Change::Network(id)) => self.converge(&Touched::Network(id)).await,
            // An app's service addresses (and peers, tags) are in the
            // fleet-wide part.
            Ok(Change::App) => self.converge(&Touched::Fleet).await,
            Ok(Change::Host) => {
                self.converge(&Touched::Fleet).await;
                if let WatchEvent::Delete { key, .. } = ev
                    && key.ends_with(&format!("/{}", self.cfg.host_id))
                {
                    // Somebody removed this host's record while it runs: put it back.
                    if let Err(e) = self.register_host().await {
                        log::warn!("re-registering host: {e}");
                    }
                }
            }
            // Refused records are counted and logged by the view.
            Ok(_) | Err(_) => {}
        }
    }
}

fn event_rev(ev: &WatchEvent) -> i64 {
    match ev {
        WatchEvent::Put { rev, .. } | WatchEvent::Delete { rev, .. } => *rev,
        WatchEvent::Resync => 0,
    }
}
