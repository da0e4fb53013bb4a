//! Bounds on what one client can take from the DNS server: TCP connections,
//! forwarding slots and query rate are counted per client address, so a
//! hostile container cannot starve the agent (its descriptors, its tasks)
//! or the other containers. Pure bookkeeping, no I/O: the server loops ask
//! and act on the answer.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::cache::CacheLimits;

/// Every bound of the DNS server. The defaults suit a host with hundreds of
/// containers; [`Limits::fit_descriptors`] lowers the global TCP bound on a
/// process with few descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections one client may have open at once.
    pub tcp_per_client: usize,
    /// TCP connections open at once, all clients together.
    pub tcp_total: usize,
    /// A TCP connection silent this long (no query, or a query that does
    /// not arrive whole, or an answer the client does not read) is closed.
    pub tcp_idle: Duration,
    /// A TCP connection is closed this long after it was accepted, however
    /// busy, so a slow client cannot keep one forever.
    pub tcp_lifetime: Duration,
    /// Queries answered on one TCP connection before it is closed.
    pub tcp_queries: u32,
    /// Forwarded queries one client may have in flight.
    pub forwards_per_client: usize,
    /// Forwarded queries in flight, all clients together.
    pub forwards_total: usize,
    /// Sustained queries per second from one client (UDP and TCP together)…
    pub queries_per_sec: u32,
    /// …and how many it may send at once after a silence.
    pub query_burst: u32,
    /// First and longest pause after a failed accept (descriptors exhausted).
    pub accept_backoff: (Duration, Duration),
    /// Queries waiting on one question already in flight (each holding a
    /// forwarding slot of its client); past it they ask upstream alone.
    pub followers_per_flight: usize,
    /// Bounds of the cache of forwarded answers.
    pub cache: CacheLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tcp_per_client: 8,
            tcp_total: 256,
            tcp_idle: Duration::from_secs(5),
            tcp_lifetime: Duration::from_secs(30),
            tcp_queries: 64,
            forwards_per_client: 32,
            forwards_total: 256,
            queries_per_sec: 1000,
            query_burst: 2000,
            accept_backoff: (Duration::from_millis(5), Duration::from_secs(1)),
            followers_per_flight: 128,
            cache: CacheLimits::default(),
        }
    }
}

impl Limits {
    /// The sustained query rate of one client (`--dns-query-rate`), with a
    /// burst of two seconds' worth.
    pub fn with_query_rate(mut self, per_sec: u32) -> Limits {
        self.queries_per_sec = per_sec.max(1);
        self.query_burst = self.queries_per_sec.saturating_mul(2);
        self
    }

    /// Keeps TCP connections and forwards (each holds a descriptor) under a
    /// quarter of the process's descriptor limit each, so the API, the
    /// store and the tunnel always have room.
    pub fn fit_descriptors(mut self, nofile: u64) -> Limits {
        let quarter = usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(1);
        self.tcp_total = self.tcp_total.min(quarter);
        self.forwards_total = self.forwards_total.min(quarter);
        self.tcp_per_client = self.tcp_per_client.min(self.tcp_total);
        self.forwards_per_client = self.forwards_per_client.min(self.forwards_total);
        self
    }
}

/// The soft limit on descriptors of this process.
pub fn descriptor_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Why a slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client holds its share.
    Client,
    /// Every slot is taken.
    Global,
}

/// A bounded pool shared fairly among clients: a client holds at most
/// `per_client` slots, all together at most `total`; and once half the pool
/// is taken, a client holding its even share of that half among the clients
/// in flight is refused, so a client with nothing in flight finds a slot
/// while any remains, however many a few greedy clients want.
#[derive(Debug)]
pub struct Slots {
    per_client: usize,
    total: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    used: usize,
    /// Only clients holding at least one slot: the map never outgrows `total`.
    held: HashMap<Ipv4Addr, usize>,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Slots>,
    client: Ipv4Addr,
}

impl Slots {
    pub fn new(per_client: usize, total: usize) -> Arc<Slots> {
        Arc::new(Slots {
            per_client,
            total,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_take(self: &Arc<Self>, client: Ipv4Addr) -> Result<Slot, Refusal> {
        let mut s = self.state();
        let mine = s.held.get(&client).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(Refusal::Client);
        }
        if s.used >= self.total {
            return Err(Refusal::Global);
        }
        let half = self.total / 2;
        if s.used >= half {
            let active = s.held.len() + usize::from(mine == 0);
            if mine > 0 && mine >= (half / active).max(1) {
                return Err(Refusal::Client);
            }
        }
        s.used += 1;
        *s.held.entry(client).or_insert(0) += 1;
        Ok(Slot {
            pool: self.clone(),
            client,
        })
    }

    /// Slots taken now (all clients, one client).
    #[cfg(test)]
    fn used(&self, client: Option<Ipv4Addr>) -> usize {
        let s = self.state();
        match client {
            None => s.used,
            Some(c) => s.held.get(&c).copied().unwrap_or(0),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.pool.state();
        s.used = s.used.saturating_sub(1);
        if let Some(n) = s.held.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.held.remove(&self.client);
            }
        }
    }
}

/// Clients remembered by the rate limiter before idle ones are forgotten.
const RATE_CLIENTS: usize = 16_384;

/// A token bucket per client address. Only members reach it (strangers are
/// dropped before), and clients whose bucket has filled up again are
/// forgotten when the table is full, so it stays bounded.
#[derive(Debug)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Ipv4Addr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_sec: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(burst);
        self.at = now;
    }
}

impl Rate {
    pub fn new(per_sec: u32, burst: u32) -> Rate {
        Rate {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Whether one more query of `client` at `now` is within its rate.
    pub fn allow(&self, client: Ipv4Addr, now: Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= RATE_CLIENTS && !b.contains_key(&client) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, k| {
                k.refill(now, per_sec, burst);
                k.tokens < burst
            });
            if b.len() >= RATE_CLIENTS {
                // Every one of them is busy: forgetting them all only hands
                // them a fresh burst, which is still a bound.
                b.clear();
            }
        }
        let k = b.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        k.refill(now, self.per_sec, self.burst);
        if k.tokens >= 1.0 {
            k.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// Pauses after consecutive failures (of `accept`, typically EMFILE while
/// descriptors are exhausted): doubling from `min` up to `max`, back to
/// `min` after a success, so the loop neither spins nor stalls for long.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new((min, max): (Duration, Duration)) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            failures: 0,
        }
    }

    /// How long to pause after this failure.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn succeeded(&mut self) {
        self.next = self.min;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn client(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a01_0000 + n)
    }

    #[test]
    fn a_client_holds_at_most_its_bound_and_gets_slots_back() {
        let pool = Slots::new(3, 100);
        let held: Vec<Slot> = (0..3).map(|_| pool.try_take(A).unwrap()).collect();
        assert_eq!(pool.try_take(A).unwrap_err(), Refusal::Client);
        // Another client is not affected.
        let b = pool.try_take(B).unwrap();
        assert_eq!(pool.used(None), 4);
        drop(held);
        assert_eq!(pool.used(Some(A)), 0);
        assert!(pool.try_take(A).is_ok());
        drop(b);
        assert_eq!(pool.used(None), 0);
        assert!(pool.state().held.is_empty(), "no entry outlives its slots");
    }

    #[test]
    fn the_pool_as_a_whole_is_bounded() {
        let pool = Slots::new(1, 4);
        let held: Vec<Slot> = (0..4).map(|i| pool.try_take(client(i)).unwrap()).collect();
        assert_eq!(pool.try_take(client(9)).unwrap_err(), Refusal::Global);
        drop(held);
        assert!(pool.try_take(client(9)).is_ok());
    }

    #[test]
    fn past_half_the_pool_a_newcomer_still_finds_a_slot() {
        // Without the fair share, 4 greedy clients of 32 each fill 128.
        let pool = Slots::new(32, 128);
        let mut greedy = Vec::new();
        for g in 0..4 {
            while let Ok(s) = pool.try_take(client(g)) {
                greedy.push(s);
            }
        }
        assert!(
            pool.used(None) < 128,
            "greedy clients left room: {}",
            pool.used(None)
        );
        // Each newcomer gets a slot, however many greedy clients keep asking.
        let mut newcomers = Vec::new();
        for n in 100..110 {
            newcomers.push(pool.try_take(client(n)).expect("a newcomer's first slot"));
            for g in 0..4 {
                if let Ok(s) = pool.try_take(client(g)) {
                    greedy.push(s);
                }
            }
        }
        for g in 0..4 {
            assert!(pool.used(Some(client(g))) <= 32);
        }
        // Below half the pool, one client takes up to its own bound.
        let pool = Slots::new(8, 128);
        let mine: Vec<Slot> = (0..8).map(|_| pool.try_take(A).unwrap()).collect();
        assert_eq!(mine.len(), 8);
    }

    #[test]
    fn many_greedy_clients_cannot_take_the_last_slots_from_a_newcomer() {
        let pool = Slots::new(16, 64);
        let mut held = Vec::new();
        // 6 greedy clients take turns, one slot each per round.
        for _ in 0..40 {
            for g in 0..6 {
                if let Ok(s) = pool.try_take(client(g)) {
                    held.push(s);
                }
            }
        }
        assert!(pool.used(None) < 64, "{}", pool.used(None));
        assert!(pool.try_take(client(50)).is_ok());
    }

    #[test]
    fn the_rate_allows_a_burst_then_the_sustained_rate() {
        let r = Rate::new(10, 5);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| r.allow(A, t0)).count(), 5);
        assert!(r.allow(B, t0), "another client has its own bucket");
        // One second later: ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            (0..20).filter(|_| r.allow(A, t1)).count(),
            5,
            "capped at the burst"
        );
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| r.allow(A, t2)).count(), 3);
    }

    #[test]
    fn the_rate_table_forgets_idle_clients() {
        let r = Rate::new(1000, 10);
        let t0 = Instant::now();
        for n in 0..RATE_CLIENTS as u32 {
            assert!(r.allow(client(n), t0));
        }
        assert_eq!(r.remembered(), RATE_CLIENTS);
        // A second later every bucket is full again: all forgotten.
        assert!(r.allow(client(u32::MAX >> 8), t0 + Duration::from_secs(1)));
        assert_eq!(r.remembered(), 1);
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut b = Backoff::new((Duration::from_millis(5), Duration::from_millis(40)));
        let got: Vec<_> = (0..6).map(|_| b.failed().as_millis()).collect();
        assert_eq!(got, [5, 10, 20, 40, 40, 40]);
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.failed().as_millis(), 5);
        assert_eq!(b.failures(), 1);
    }

    #[test]
    fn bounds_fit_a_small_descriptor_limit() {
        let l = Limits::default().fit_descriptors(256);
        assert_eq!(l.tcp_total, 64);
        assert_eq!(l.forwards_total, 64);
        assert_eq!(
            Limits::default().fit_descriptors(1 << 20),
            Limits::default()
        );
        let tiny = Limits::default().fit_descriptors(8);
        assert!(tiny.tcp_per_client <= tiny.tcp_total && tiny.tcp_total == 2);
    }
}
