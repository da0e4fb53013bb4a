//! How a loop waits for its descriptor: a poll that sleeps, after — when
//! traffic was flowing — a short bounded spin, which saves the wake-up of
//! a round trip's answer arriving within it. Idle loops never spin; the
//! time spent spinning is counted (its CPU cost).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{
    shared::Counters,
    sys::{Waker, readable},
};

/// How long a sleeping loop waits before looking at the stop flag again.
const SLEEP_MS: i32 = 200;

pub(super) struct Waiter<'a> {
    fd: i32,
    waker: &'a Waker,
    spin: Duration,
    counters: &'a Counters,
    /// The last wait found something: traffic is flowing.
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

    /// Waits until the descriptor is readable (true) or a while passed or
    /// the device stops (false).
    pub(super) fn wait(&mut self) -> bool {
        if self.busy && !self.spin.is_zero() {
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
            if found {
                return true;
            }
        }
        self.busy = readable(self.fd, self.waker, SLEEP_MS);
        self.busy
    }
}
