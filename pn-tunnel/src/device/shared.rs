//! What the device's threads share: the tunnel behind its lock (shared on
//! the packet path, exclusive only for what changes the tunnel), the
//! counters they keep, and the stop flag and waker that end them.

use std::sync::{
    Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use pn_common::Reason;

use super::{options::Options, sys::Waker};
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
    /// Datagrams the sockets dropped for want of buffer (SO_RXQ_OVFL).
    pub rx_overflow: AtomicU64,
    /// Time spent spinning before sleeping, and how the spins ended
    /// (something arrived, or the loop slept after all).
    pub spin_ns: AtomicU64,
    pub spin_hits: AtomicU64,
    pub spin_misses: AtomicU64,
    /// Workers running (a TUN queue and a socket each).
    pub workers: AtomicU64,
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
            rx_overflow: AtomicU64::new(0),
            spin_ns: AtomicU64::new(0),
            spin_hits: AtomicU64::new(0),
            spin_misses: AtomicU64::new(0),
            workers: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub(super) fn drop(&self, r: Reason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The tunnel for the packet path: every worker at once. A panic in one
/// thread must not take the tunnel down with it: the state is consistent
/// between calls.
pub(super) fn read(tunnel: &RwLock<Tunnel>) -> RwLockReadGuard<'_, Tunnel> {
    tunnel.read().unwrap_or_else(|p| p.into_inner())
}

/// The tunnel to change (handshakes, timers, peers): one thread.
pub(super) fn write(tunnel: &RwLock<Tunnel>) -> RwLockWriteGuard<'_, Tunnel> {
    tunnel.write().unwrap_or_else(|p| p.into_inner())
}

/// What the data threads share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) tunnel: Arc<RwLock<Tunnel>>,
    pub(super) members: Arc<dyn Members + Send + Sync>,
    pub(super) counters: Arc<Counters>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) waker: Arc<Waker>,
    pub(super) options: Options,
}
