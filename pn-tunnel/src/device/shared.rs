//! What the device's threads share: the tunnel behind its lock, the
//! counters they keep, and the stop flag and waker that end them.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use pn_common::Reason;

use super::sys::Waker;
use crate::{Members, Tunnel};

/// What the data path did, for metrics: packets and bytes each way, and
/// drops per reason.
#[derive(Debug)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; Reason::COUNT],
    /// Syscalls per direction: how well batching works (packets per call).
    pub tun_reads: AtomicU64,
    pub udp_sends: AtomicU64,
    pub udp_reads: AtomicU64,
    pub tun_writes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            tun_reads: AtomicU64::new(0),
            udp_sends: AtomicU64::new(0),
            udp_reads: AtomicU64::new(0),
            tun_writes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub(super) fn drop(&self, r: Reason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A panic in one thread must not take the tunnel down with it: the state
/// is consistent between calls.
pub(super) fn lock(tunnel: &Mutex<Tunnel>) -> MutexGuard<'_, Tunnel> {
    tunnel.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the data threads share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) tunnel: Arc<Mutex<Tunnel>>,
    pub(super) members: Arc<dyn Members + Send + Sync>,
    pub(super) counters: Arc<Counters>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) waker: Arc<Waker>,
}
