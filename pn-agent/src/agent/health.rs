//! Health checks of this host's containers whose app names a health port
//! (`--health-port`): every second a TCP connect to the container's address
//! on that port, made from inside the container's own namespace (a
//! connection from the host would come in through the veth as a
//! non-member and be dropped). Three failures in a row mark the container
//! `unhealthy` in its store record, one success clears it; every agent
//! then takes it out of (or back into) the service's rotation through the
//! ordinary watch → reconcile path. The store is written only when the
//! verdict differs from the record.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use crate::{
    model::ContainerKey,
    netlink::{Netns, open_netns_file},
};

use super::Agent;

/// How often each container is probed.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe waits for the connection: short enough that a round
/// ends well within [`INTERVAL`].
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// Failed probes in a row that take a container out of the rotation.
pub const FAILURES: u32 = 3;
/// Bound on one store write, so an outage does not stall the probes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One container's health as its probes tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    healthy: bool,
    failures: u32,
}

impl Check {
    /// Starts from what the store says (so a restarted agent neither flaps
    /// an unhealthy container back in nor needs three new failures).
    pub fn new(healthy: bool) -> Self {
        Check {
            healthy,
            failures: 0,
        }
    }

    /// Folds in one probe's result; returns whether the container is
    /// healthy now.
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.healthy = true;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= FAILURES {
                self.healthy = false;
            }
        }
        self.healthy
    }
}

/// A local container to check, as the view had it at the round's start.
struct Target {
    key: ContainerKey,
    ip: Ipv4Addr,
    netns: String,
    /// `None`: its app has no health port (any more): healthy by definition.
    port: Option<u16>,
    /// What its record says now.
    unhealthy: bool,
}

impl Agent {
    /// Probes the local containers until the agent ends.
    pub(super) async fn check_health(self: Arc<Self>) {
        let mut checks: HashMap<ContainerKey, (Ipv4Addr, Check)> = HashMap::new();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let targets = self.health_targets();
            // Containers gone (or no longer checked) leave with their state.
            checks.retain(|k, _| targets.iter().any(|t| t.key == *k && t.port.is_some()));
            let probes = targets.iter().map(|t| async move {
                match t.port {
                    Some(port) => Some(probe(&t.netns, SocketAddr::from((t.ip, port))).await),
                    None => None,
                }
            });
            let results = futures::future::join_all(probes).await;
            for (t, ok) in targets.iter().zip(results) {
                let healthy = match ok {
                    None => true,
                    Some(ok) => {
                        let entry = checks
                            .entry(t.key.clone())
                            .or_insert((t.ip, Check::new(!t.unhealthy)));
                        // Re-attached under the same key: a new container.
                        if entry.0 != t.ip {
                            *entry = (t.ip, Check::new(!t.unhealthy));
                        }
                        entry.1.observe(ok)
                    }
                };
                if healthy != t.unhealthy {
                    continue;
                }
                // The record disagrees with the probes: write the verdict
                // (again next round if this write fails).
                let write = self.membership.set_unhealthy(&t.key, !healthy);
                match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(Some(_))) => log::info!(
                        "container {} ({}) is {} its health check",
                        t.key,
                        t.ip,
                        if healthy { "passing" } else { "failing" }
                    ),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => log::warn!("recording the health of {}: {e}", t.key),
                    Err(_) => log::warn!("recording the health of {}: store timed out", t.key),
                }
            }
        }
    }

    fn health_targets(&self) -> Vec<Target> {
        let v = self.view();
        v.local_containers(&self.cfg.host_id)
            .filter_map(|c| {
                let port = v.apps.get(&c.key.app)?.health_port;
                // Probed in the namespace this agent attached it to.
                let netns = self.attached.local(c)?.netns;
                // Nothing to do for an unchecked container already healthy.
                (port.is_some() || c.unhealthy).then(|| Target {
                    key: c.key.clone(),
                    ip: c.ip,
                    netns,
                    port,
                    unhealthy: c.unhealthy,
                })
            })
            .collect()
    }
}

/// Whether a TCP connection to `addr` opens within [`TIMEOUT`] from inside
/// the namespace `netns` (name or path). `setns` is per thread, so each
/// probe runs on a short-lived thread of its own.
async fn probe(netns: &str, addr: SocketAddr) -> bool {
    let path = Netns::path_of(netns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Opened on the probe's thread, not the async worker's, without
    // following links, and checked to be a network namespace.
    let spawned = std::thread::Builder::new()
        .name("pn-health".into())
        .spawn(move || {
            let ok = open_netns_file(&path).is_ok_and(|file| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                    && TcpStream::connect_timeout(&addr, TIMEOUT).is_ok()
            });
            let _ = tx.send(ok);
        });
    spawned.is_ok() && rx.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_in_a_row_make_it_unhealthy() {
        let mut c = Check::new(true);
        assert!(c.observe(false));
        assert!(c.observe(false));
        assert!(!c.observe(false));
        assert!(!c.observe(false));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut c = Check::new(true);
        c.observe(false);
        c.observe(false);
        assert!(c.observe(true));
        assert!(c.observe(false));
        assert!(c.observe(false));
        assert!(!c.observe(false));
    }

    #[test]
    fn one_success_brings_it_back() {
        let mut c = Check::new(false);
        assert!(!c.observe(false));
        assert!(c.observe(true));
        assert!(c.observe(false));
    }

    #[test]
    fn starting_unhealthy_needs_no_new_failures() {
        let mut c = Check::new(false);
        assert!(!c.observe(false));
    }
}
