//! Token bucket per source address, so a flood of initiations costs little.

use std::{collections::HashMap, net::IpAddr, time::Instant};

pub(crate) struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    const MAX_SOURCES: usize = 4096;

    pub(crate) fn new(rate: f64) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= Self::MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let burst = self.rate * 2.0;
        let (tokens, last) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
