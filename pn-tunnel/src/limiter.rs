//! How many handshakes the tunnel does: a budget per second for all sources
//! together ([`Load`]: beyond it, cookies are required), and a token bucket
//! per source ([`RateLimiter`]) for the sources a cookie has proven.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

/// After the budget ran out, the tunnel stays under load this long past the
/// last initiation it refused (as WireGuard), so a steady flood never
/// reaches a DH.
pub(crate) const LOAD_HOLD: Duration = Duration::from_secs(1);

/// The handshakes of all sources together, per second: so many, and so
/// much time spent on them (the count alone would let a slow machine, or a
/// debug build, spend all its time on DHs).
pub(crate) struct Load {
    rate: f64,
    tokens: f64,
    /// Seconds of handshake work allowed per second, and left now (may go
    /// below zero: the last one cost more than was left).
    cpu_rate: f64,
    cpu: f64,
    last: Option<Instant>,
    until: Option<Instant>,
}

impl Load {
    pub(crate) fn new(rate: f64, cpu_per_sec: Duration) -> Load {
        Load {
            rate,
            tokens: rate,
            cpu_rate: cpu_per_sec.as_secs_f64(),
            cpu: cpu_per_sec.as_secs_f64(),
            last: None,
            until: None,
        }
    }

    /// Takes one handshake from the budget; false when under load.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.cpu = (self.cpu + elapsed * self.cpu_rate).min(self.cpu_rate);
        self.last = Some(now);
        if self.until.is_some_and(|u| now < u) {
            return false;
        }
        if self.tokens >= 1.0 && self.cpu > 0.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.until = Some(now + LOAD_HOLD);
            false
        }
    }

    /// An initiation refused for want of a cookie: the load goes on.
    pub(crate) fn refused(&mut self, now: Instant) {
        self.until = Some(now + LOAD_HOLD);
    }

    /// Handshake work took this long.
    pub(crate) fn spent(&mut self, work: Duration) {
        self.cpu -= work.as_secs_f64();
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// When it was last used, in calls: matches its newest `order` record.
    seen: u64,
}

/// Token bucket per source address, at most `max` of them. When full, a
/// new source takes the place of the one seen longest ago — idle ones
/// first, whose buckets had refilled anyway — never the whole table: a
/// source that keeps sending keeps its (empty) bucket however many others
/// come and go.
pub(crate) struct RateLimiter {
    rate: f64,
    max: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// (source, call number) each time a source is used, oldest first; a
    /// record is stale once its source was used again. Compacted when it
    /// gets long, so it stays within 2 × `max` records.
    order: VecDeque<(IpAddr, u64)>,
    calls: u64,
}

impl RateLimiter {
    pub(crate) const MAX_SOURCES: usize = 4096;

    pub(crate) fn new(rate: f64) -> RateLimiter {
        Self::with_capacity(rate, Self::MAX_SOURCES)
    }

    pub(crate) fn with_capacity(rate: f64, max: usize) -> RateLimiter {
        RateLimiter {
            rate,
            max: max.max(1),
            buckets: HashMap::new(),
            order: VecDeque::new(),
            calls: 0,
        }
    }

    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.calls += 1;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max {
            self.evict_oldest();
        }
        let burst = self.rate * 2.0;
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
            seen: 0,
        });
        b.tokens =
            (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate).min(burst);
        b.last = now;
        b.seen = self.calls;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        self.order.push_back((ip, self.calls));
        if self.order.len() > 2 * self.max {
            let buckets = &self.buckets;
            self.order
                .retain(|(ip, seen)| buckets.get(ip).is_some_and(|b| b.seen == *seen));
        }
        allowed
    }

    fn evict_oldest(&mut self) {
        while let Some((ip, seen)) = self.order.pop_front() {
            if self.buckets.get(&ip).is_some_and(|b| b.seen == seen) {
                self.buckets.remove(&ip);
                return;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut l = RateLimiter::new(10.0);
        let t = Instant::now();
        assert_eq!((0..40).filter(|_| l.allow(ip(1), t)).count(), 20);
        assert!(l.allow(ip(2), t), "another source has its own bucket");
        assert!(!l.allow(ip(1), t + Duration::from_millis(50)));
        assert!(l.allow(ip(1), t + Duration::from_millis(150)));
    }

    #[test]
    fn a_flood_of_sources_evicts_the_idle_and_keeps_the_active() {
        let mut l = RateLimiter::with_capacity(10.0, 64);
        let mut t = Instant::now();
        // A hammering source, out of tokens.
        while l.allow(ip(1), t) {}
        // An honest source, well within its rate.
        assert!(l.allow(ip(2), t));
        let mut hammer_passed = 0;
        // One second of other sources, 10 000 of them: 150 times the table.
        for i in 0..10_000u32 {
            t += Duration::from_micros(100);
            l.allow(ip(1000 + i), t);
            if i % 16 == 0 && l.allow(ip(1), t) {
                hammer_passed += 1;
            }
            if i % 1000 == 0 {
                assert!(l.allow(ip(2), t), "the honest source still passes ({i})");
            }
            assert!(l.len() <= 64);
            assert!(l.order.len() <= 2 * 64 + 1);
        }
        // Its rate over that second (10), not a fresh burst (20) each time
        // the flood went round the table.
        assert!(hammer_passed <= 11, "{hammer_passed}");
        // Entries were evicted one by one, never all: the active one stayed
        // (an idle one may go: its bucket had refilled, nothing is lost).
        assert!(l.buckets.contains_key(&ip(1)));
    }

    #[test]
    fn under_load_after_the_budget_until_a_quiet_second() {
        let mut load = Load::new(5.0, Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!((0..10).filter(|_| load.admit(t)).count(), 5);
        // Refusals keep it under load even once the budget refilled.
        let mut now = t;
        for _ in 0..30 {
            now += Duration::from_millis(100);
            assert!(!load.admit(now));
            load.refused(now);
        }
        assert!(load.admit(now + LOAD_HOLD), "a quiet second ends it");
    }

    #[test]
    fn slow_handshakes_spend_the_budget_sooner() {
        let mut load = Load::new(100.0, Duration::from_millis(100));
        let t = Instant::now();
        let mut admitted = 0;
        while load.admit(t) {
            admitted += 1;
            load.spent(Duration::from_millis(30));
        }
        assert_eq!(admitted, 4, "100 ms of work, not 100 handshakes");
        assert!(load.admit(t + LOAD_HOLD));
    }
}
