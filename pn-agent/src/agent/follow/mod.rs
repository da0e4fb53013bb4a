//! Following the store: a full listing, then a watch from its revision; each
//! change updates the view at once (DNS answers from it), and the kernel is
//! converged for the containers the changes touched, batch by batch
//! (`batch`); a broken watch (store outage, compaction, lag) means listing
//! again, with backoff, while the kernel keeps enforcing the last state it
//! was given.

mod batch;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use batch::{Batch, Step};

use super::{Agent, reconcile::Touched};
use crate::store::{
    WatchEvent,
    view::{Change, HostUpdate},
};

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
        let rev = listing.rev;
        let view = self.view().reloaded(&listing);
        drop(listing);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.converge(&Touched::All).await;
        // A listing is the biggest burst of all (every record's key and
        // value at once, beside the view it replaces): its memory goes
        // back now, not at the next burst of the watch.
        release_freed_memory();
        self.applied.send_replace(rev);
        Ok(rev)
    }

    /// Keeps the view and the kernel following the store, forever.
    pub(super) async fn follow_store(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        let mut from = self.view().rev + 1;
        loop {
            match self.membership.backend().watch("", from).await {
                Ok(mut rx) => {
                    let mut batch = Batch::default();
                    let mut gate = HostGate::default();
                    // The last revision whose events the view has all taken.
                    let mut settled = None;
                    let mut since_trim = 0usize;
                    let mut next = rx.recv().await;
                    while let Some(ev) = next.take() {
                        if ev == WatchEvent::Resync {
                            break;
                        }
                        self.take_event(&ev, &mut batch, &mut gate).await;
                        let rev = event_rev(&ev);
                        next = rx.try_recv().ok();
                        settled = batch::settled(rev, next.as_ref().map(event_rev)).or(settled);
                        // Waiting for more (or a full batch): converge what
                        // the view took, then say which revision is applied.
                        if next.is_none() || batch.is_full() {
                            self.flush(&mut batch).await;
                        }
                        // A host change waiting for its converge is not
                        // applied yet.
                        if batch.is_empty()
                            && !gate.pending
                            && let Some(r) = settled.take()
                        {
                            self.applied.send_replace(r);
                        }
                        since_trim += 1;
                        if next.is_none() && since_trim >= TRIM_AFTER {
                            // Quiet for a moment after a burst: its freed
                            // memory goes back (once, at its end).
                            match tokio::time::timeout(QUIET, rx.recv()).await {
                                Ok(n) => next = n,
                                Err(_) => {
                                    since_trim = 0;
                                    self.view
                                        .write()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .compact();
                                    release_freed_memory();
                                }
                            }
                        }
                        if next.is_none()
                            && let Some(wait) = gate.wait(Instant::now())
                        {
                            match tokio::time::timeout(wait, rx.recv()).await {
                                Ok(n) => next = n,
                                Err(_) => {
                                    self.converge_hosts(&mut gate).await;
                                    if let Some(r) = settled.take() {
                                        self.applied.send_replace(r);
                                    }
                                }
                            }
                        }
                        if next.is_none() {
                            next = rx.recv().await;
                        }
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

    /// Converges the containers of the batch, if any.
    async fn flush(&self, batch: &mut Batch) {
        if let Some(touched) = batch.take() {
            self.converge(&touched).await;
        }
    }

    /// Takes one event into the view; a container change joins the batch,
    /// anything else the kernel depends on is converged right away (after
    /// the batch before it).
    async fn take_event(&self, ev: &WatchEvent, batch: &mut Batch, gate: &mut HostGate) {
        let key = match ev {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
            WatchEvent::Resync => return,
        };
        let mut step = batch.step(key);
        // A lease's delete takes the container that held its address out
        // of the view (when its record outlives it): a container's change.
        if let WatchEvent::Delete { key, .. } = ev
            && let Some(k) = self.view().unleased_by(key)
        {
            step = batch.step_of(&k);
        }
        if matches!(step, Step::FlushThenJoin | Step::Alone) {
            self.flush(batch).await;
        }
        let change = self
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(ev);
        // Refused records are counted and logged by the view.
        let Ok(change) = change else {
            return;
        };
        match step {
            Step::Join | Step::FlushThenJoin => {
                if let Change::ContainerDeleted(c) = &change {
                    self.pending.remove(&c.key);
                }
                batch.add(change);
            }
            Step::Alone => self.converge_alone(ev, change, gate).await,
            Step::Skip => {}
        }
    }

    /// The full converge host changes wait for, now.
    async fn converge_hosts(&self, gate: &mut HostGate) {
        gate.converged(Instant::now());
        self.view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .host_updates
            .count(HostUpdate::Converged);
        self.converge(&Touched::All).await;
    }

    async fn converge_alone(&self, ev: &WatchEvent, change: Change, gate: &mut HostGate) {
        match change {
            Change::Network(id) => self.converge(&Touched::Network(id)).await,
            // An app's service addresses (and peers, tags) are in the
            // fleet-wide part.
            Change::App => self.converge(&Touched::Fleet).await,
            // Which hosts may run which app changed: every container record
            // is judged again, from a fresh listing (rare: the operator's).
            Change::Admissions => {
                if let Err(e) = self.resync().await {
                    log::warn!("reading the store again after new admissions: {e:#}");
                }
            }
            // A host's record decides whether its containers get endpoints
            // (none while it is unknown: fail closed), so a host that comes
            // after its containers, or goes, changes theirs too. Hosts come
            // and go rarely: a full converge (which also repairs drift), at
            // most one per HOST_CONVERGE_EVERY (a host re-putting its record
            // in a loop must not keep every agent converging: the changes
            // of a period are converged together at its end; a re-put that
            // changes nothing an agent uses converges nothing, `view`).
            Change::Host => {
                if gate.defer(Instant::now()) {
                    self.view
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .host_updates
                        .count(HostUpdate::Coalesced);
                } else {
                    self.converge_hosts(gate).await;
                }
                if let WatchEvent::Delete { key, .. } = ev
                    && key.ends_with(&format!("/{}", self.cfg.host_id))
                {
                    // Somebody removed this host's record while it runs: put it back.
                    if let Err(e) = self.register_host().await {
                        log::warn!("re-registering host: {e}");
                    }
                }
            }
            _ => {}
        }
    }
}

/// The least time between two full converges host records trigger.
const HOST_CONVERGE_EVERY: Duration = Duration::from_secs(1);

/// When the next full converge for host changes may run.
#[derive(Debug, Default)]
struct HostGate {
    last: Option<Instant>,
    /// A change came within the period: converged at its end.
    pending: bool,
}

impl HostGate {
    /// Whether a host change at `now` waits (the last converge was less
    /// than a period ago).
    fn defer(&mut self, now: Instant) -> bool {
        let wait = self
            .last
            .is_some_and(|l| now.duration_since(l) < HOST_CONVERGE_EVERY);
        self.pending |= wait;
        wait
    }

    fn converged(&mut self, now: Instant) {
        self.last = Some(now);
        self.pending = false;
    }

    /// How long until the waiting converge is due (`None`: none waits).
    fn wait(&self, now: Instant) -> Option<Duration> {
        let last = self.last.filter(|_| self.pending)?;
        Some(HOST_CONVERGE_EVERY.saturating_sub(now.duration_since(last)))
    }
}

/// Events that make a burst, and the pause that ends it.
const TRIM_AFTER: usize = 256;
const QUIET: Duration = Duration::from_millis(200);

/// Gives the pages freed after a burst of events back to the system. A big
/// registration leaves its events (key and JSON value, a backlog of up to
/// the watch buffer) freed between the view's long-lived records; returned
/// once the burst is over (the watch is idle), the agent's memory is what
/// its view and maps hold. Each allocator is asked its own way (the one in
/// use is the binary's, chosen by the same features).
fn release_freed_memory() {
    #[cfg(feature = "mimalloc")]
    {
        // mimalloc's own (libmimalloc-sys declares it only behind a feature
        // that pulls in another crate).
        unsafe extern "C" {
            fn mi_collect(force: bool);
        }
        // SAFETY: mi_collect only frees mimalloc's own unused pages; it
        // takes no pointer.
        unsafe { mi_collect(true) };
    }
    #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
    // SAFETY: "arena.4096.purge" (MALLCTL_ARENAS_ALL) takes and returns no
    // value: null pointers and 0 lengths are its documented call.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    #[cfg(all(
        not(any(feature = "mimalloc", feature = "jemalloc")),
        target_os = "linux",
        target_env = "gnu"
    ))]
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn event_rev(ev: &WatchEvent) -> i64 {
    match ev {
        WatchEvent::Put { rev, .. } | WatchEvent::Delete { rev, .. } => *rev,
        WatchEvent::Resync => 0,
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn host_changes_converge_at_most_once_a_period_and_the_last_one_waits() {
        let mut g = HostGate::default();
        let t0 = Instant::now();
        assert!(!g.defer(t0), "the first converges at once");
        g.converged(t0);
        assert_eq!(g.wait(t0), None);
        let t1 = t0 + Duration::from_millis(300);
        assert!(g.defer(t1) && g.defer(t1 + Duration::from_millis(1)));
        assert_eq!(g.wait(t1), Some(Duration::from_millis(700)));
        let t2 = t0 + HOST_CONVERGE_EVERY;
        assert_eq!(g.wait(t2), Some(Duration::ZERO));
        g.converged(t2);
        assert_eq!(g.wait(t2), None);
        assert!(
            !g.defer(t2 + HOST_CONVERGE_EVERY),
            "a period later: at once"
        );
    }
}
