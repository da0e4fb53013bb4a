//! How a loop waits for its descriptor: a blocking read, which sleeps in
//! the kernel and wakes with the packet (one system call per wake-up, not a
//! poll then a read; the device's stop ends it with a signal). Before it,
//! when traffic was flowing and a spin is set, a short bounded spin, which
//! saves the wake-up of a round trip's answer arriving within it. Idle
//! loops never spin; the time spent spinning is counted (its CPU cost).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{
    shared::Counters,
    sys::{Waker, readable},
};

pub(super) struct Waiter<'a> {
    fd: i32,
    waker: &'a Waker,
    spin: Duration,
    counters: &'a Counters,
    /// The last read found something: traffic is flowing.
    busy: bool,
}

impl<'a> Waiter<'a> {
    pub(super) fn new(fd: i32, waker: &'a Waker, spin: Duration, counters: &'a Counters) -> Self {
        Waiter {
            fd,
            waker,
            spin,
            counters,
            busy: false,
        }
    }

    /// Before the blocking read: spins while the descriptor is not
    /// readable, if traffic was flowing and a spin is set, for at most the
    /// spin (the read then finds the datagram at once, or sleeps).
    pub(super) fn spin(&mut self) {
        if !self.busy || self.spin.is_zero() {
            return;
        }
        let start = Instant::now();
        let found = loop {
            if readable(self.fd, self.waker, 0) {
                break true;
            }
            if start.elapsed() >= self.spin {
                break false;
            }
            std::hint::spin_loop();
        };
        let c = self.counters;
        c.spin_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let outcome = if found { &c.spin_hits } else { &c.spin_misses };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    /// What the read gave: something (traffic flows: the next wait may
    /// spin) or nothing (an interruption, an error).
    pub(super) fn read(&mut self, found: bool) {
        self.busy = found;
    }
}
