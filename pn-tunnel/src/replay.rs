//! Sliding replay window (RFC 6479, as WireGuard's): a ring of 64-bit words
//! remembering which of the last [`WINDOW`] counters were seen. Checking
//! and recording are separate, so a counter is recorded only once its packet
//! has been authenticated.

/// Words of the ring (what a successor agent receives of a window).
pub const WORDS: usize = 128;
const RING_BITS: u64 = (WORDS * 64) as u64;
/// Counters this far behind the newest are still accepted once (8128 ≥ 2048).
pub const WINDOW: u64 = RING_BITS - 64;
const _: () = assert!(WINDOW >= 2048);

#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter recorded, plus one (0: nothing yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bitmap: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// The window's state, to carry it to a successor agent.
    pub fn parts(&self) -> (u64, &[u64; WORDS]) {
        (self.next, &self.bitmap)
    }

    /// A window carried over from a predecessor.
    pub fn from_parts(next: u64, bitmap: [u64; WORDS]) -> ReplayWindow {
        ReplayWindow { next, bitmap }
    }

    /// Would `counter` be accepted? (No change.)
    pub fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        let c = counter + 1;
        if c.saturating_add(WINDOW) < self.next {
            return false;
        }
        if c > self.next {
            return true;
        }
        let bit = c % 64;
        self.bitmap[((c / 64) % WORDS as u64) as usize] & (1 << bit) == 0
    }

    /// Records `counter` as seen; returns false (and changes nothing) if it
    /// was not acceptable.
    pub fn record(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let c = counter + 1;
        let index = c / 64;
        if c > self.next {
            let current = self.next / 64;
            let advance = (index - current).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.next = c;
        }
        self.bitmap[(index % WORDS as u64) as usize] |= 1 << (c % 64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..10_000 {
            assert!(w.record(c), "{c}");
            assert!(!w.record(c), "duplicate {c}");
        }
    }

    #[test]
    fn reordered_within_the_window_once() {
        let mut w = ReplayWindow::default();
        assert!(w.record(20_000));
        for c in (20_000 - WINDOW + 1..20_000).rev() {
            assert!(w.record(c), "{c}");
        }
        for c in 20_000 - WINDOW + 1..=20_000 {
            assert!(!w.record(c), "second time {c}");
        }
    }

    #[test]
    fn too_old_is_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.record(100_000));
        assert!(!w.check(100_000 - WINDOW - 1));
        assert!(w.check(100_000 - WINDOW + 1));
    }

    #[test]
    fn far_jumps_clear_the_ring() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            w.record(c);
        }
        assert!(w.record(1_000_000));
        // Old bits must not shadow new counters after a jump.
        for c in 1_000_000 - 100..1_000_000 {
            assert!(w.record(c), "{c}");
        }
        assert!(w.record(1_000_001));
    }

    #[test]
    fn check_does_not_record() {
        let mut w = ReplayWindow::default();
        assert!(w.check(7));
        assert!(w.check(7));
        assert!(w.record(7));
        assert!(!w.check(7));
    }

    #[test]
    fn edges_of_the_counter_space() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(u64::MAX));
        assert!(w.record(u64::MAX - 1));
        assert!(!w.record(u64::MAX - 1));
        assert!(w.record(u64::MAX - 2));
    }
}
