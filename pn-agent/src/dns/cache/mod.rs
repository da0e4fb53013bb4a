//! Forwarded answers kept for their TTL, so a name of the world asked again
//! is answered without going upstream.
//!
//! Pure: no I/O, the clock is an argument. Messages are read and patched in
//! their wire form (RFC 1035 4.1): a hit costs a copy of the stored answer,
//! the client's id and question case written over it, and each TTL counted
//! down — no parsing into records and no serializing, which is what makes a
//! hit cheaper than the upstream itself.
//!
//! What is kept (RFC 2308 for the negative answers):
//! - NOERROR with answers: for the smallest TTL of its records, at most
//!   [`CacheLimits::max_ttl`];
//! - NXDOMAIN, and NOERROR without answers (NODATA): for the smaller of the
//!   authority SOA's TTL and its MINIMUM field, at most
//!   [`CacheLimits::max_negative_ttl`]; without an SOA, not at all (RFC 2308
//!   section 5);
//! - nothing else: SERVFAIL, REFUSED and the like, truncated answers, TTL 0.
//!   SERVFAIL is not cached at all: a failing upstream is asked again by the
//!   next query (coalescing still shares one failure among the queries that
//!   waited on it).
//!
//! The key is the question (name lowercased, type, class) and the query
//! bits that change an answer: RD, CD, whether the query had EDNS and its DO
//! bit. EDNS options are not part of it: they are stripped from stored
//! answers (a client's COOKIE echoed to another would be a mismatch), and
//! queries carrying a client subnet (whose answer may be tailored to it) are
//! not cached.
//!
//! Bounded in entries and in bytes, least recently used out first (the
//! `lru` crate: an O(1) map and recency list; `moka` was the other fit, but
//! its admission policy may refuse a new entry and evicts in the background,
//! where here bounds and counters must be exact and testable).

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use lru::LruCache;
use pn_common::names::{self, ZoneName};

use super::{
    stats::{CacheStats, bump},
    zone::{EDNS_UDP_MAX, PLAIN_UDP_MAX},
};

const HEADER: usize = 12;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const TYPE_TSIG: u16 = 250;
const OPT_CLIENT_SUBNET: u16 = 8;
const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// Query bits in the key.
const BIT_RD: u8 = 1;
const BIT_CD: u8 = 2;
const BIT_EDNS: u8 = 4;
const BIT_DO: u8 = 8;

/// Bytes counted for an entry beyond its answer and name: the map's and
/// the list's nodes, the entry's fields.
const ENTRY_OVERHEAD: usize = 128;

/// Bounds of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Answers kept at once (0: no cache).
    pub entries: usize,
    /// Bytes kept at once, answers, names and bookkeeping together.
    pub bytes: usize,
    /// Longest time a positive answer is kept, seconds; longer TTLs are
    /// served as this.
    pub max_ttl: u32,
    /// Longest time a negative answer is kept, seconds.
    pub max_negative_ttl: u32,
}

impl Default for CacheLimits {
    fn default() -> CacheLimits {
        CacheLimits {
            entries: 16_384,
            bytes: 8 << 20,
            // As unbound's cache-max-ttl and cache-max-negative-ttl.
            max_ttl: 86_400,
            max_negative_ttl: 3_600,
        }
    }
}

/// What an answer is stored under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The question's name in wire form, lowercased.
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    bits: u8,
}

impl Key {
    /// Whether the question's name is outside the zone (the zone's own
    /// reading of names: [`names::parse_labels`]).
    pub fn outside_zone(&self) -> bool {
        let mut labels: Vec<&[u8]> = Vec::with_capacity(8);
        let mut i = 0;
        // The name was read whole by `question`: uncompressed, ends at 0.
        while let Some(&len) = self.name.get(i) {
            let Some(l) = self.name.get(i + 1..i + 1 + usize::from(len)) else {
                break;
            };
            labels.push(l);
            i += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        matches!(names::parse_labels(labels), ZoneName::Outside)
    }
}

/// What the cache needs of a query, read from its bytes.
#[derive(Clone, Debug)]
pub struct Question {
    pub key: Key,
    /// Where the question's name ends in the query (it starts at 12).
    name_end: usize,
    /// The size the client's UDP answer must fit (RFC 6891: at least 512).
    pub udp_limit: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The end of the uncompressed name at `at` (a question's).
fn name_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    loop {
        let len = usize::from(*b.get(i)?);
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
        if i - at > 255 {
            return None;
        }
    }
}

/// The end of the possibly compressed name at `at` (a record's owner).
fn skip_name(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    loop {
        let len = *b.get(i)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(i + 1),
            0 => i += 1 + usize::from(len),
            0xc0 => return b.get(i + 1).map(|_| i + 2),
            _ => return None,
        }
        if i - at > 255 {
            return None;
        }
    }
}

/// The end of a message's only question, when it has exactly one.
pub fn question_end(msg: &[u8]) -> Option<usize> {
    if u16_at(msg, 4)? != 1 {
        return None;
    }
    let end = name_end(msg, HEADER)? + 4;
    (end <= msg.len()).then_some(end)
}

/// Whether `answer`'s question is `query`'s (names compared without case).
pub fn same_question(query: &[u8], answer: &[u8]) -> bool {
    match (question_end(query), question_end(answer)) {
        (Some(q), Some(a)) if q == a => query[HEADER..q].eq_ignore_ascii_case(&answer[HEADER..a]),
        _ => false,
    }
}

/// Reads a plain query (one question, at most an OPT record, nothing after)
/// for its key; None for anything else, which then takes the long way.
pub fn question(raw: &[u8]) -> Option<Question> {
    let flags = *raw.get(2)?;
    // A query, opcode QUERY.
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 {
        return None;
    }
    let counts = (u16_at(raw, 4)?, u16_at(raw, 6)?, u16_at(raw, 8)?);
    let additional = u16_at(raw, 10)?;
    if counts != (1, 0, 0) || additional > 1 {
        return None;
    }
    let name_end = name_end(raw, HEADER)?;
    let qtype = u16_at(raw, name_end)?;
    let qclass = u16_at(raw, name_end + 2)?;
    let mut at = name_end + 4;
    let mut bits = 0;
    if flags & 0x01 != 0 {
        bits |= BIT_RD;
    }
    if raw.get(3)? & 0x10 != 0 {
        bits |= BIT_CD;
    }
    let mut udp_limit = PLAIN_UDP_MAX;
    if additional == 1 {
        // The OPT pseudo-record: root name, type 41, class = UDP size,
        // TTL = extended rcode, version, flags (DO first).
        if *raw.get(at)? != 0 || u16_at(raw, at + 1)? != TYPE_OPT || *raw.get(at + 6)? != 0 {
            return None;
        }
        let size = u16_at(raw, at + 3)?;
        udp_limit = usize::from(size.clamp(PLAIN_UDP_MAX as u16, EDNS_UDP_MAX));
        bits |= BIT_EDNS;
        if raw.get(at + 7)? & 0x80 != 0 {
            bits |= BIT_DO;
        }
        let rdlen = usize::from(u16_at(raw, at + 9)?);
        let mut opt = at + 11;
        at = opt + rdlen;
        while opt < at {
            if u16_at(raw, opt)? == OPT_CLIENT_SUBNET {
                return None;
            }
            opt += 4 + usize::from(u16_at(raw, opt + 2)?);
        }
        if opt != at {
            return None;
        }
    }
    if at != raw.len() {
        return None;
    }
    let mut name: Box<[u8]> = raw[HEADER..name_end].into();
    // Label lengths are below 64, so lowercasing the whole wire name only
    // touches the letters.
    name.make_ascii_lowercase();
    Some(Question {
        key: Key {
            name,
            qtype,
            qclass,
            bits,
        },
        name_end,
        udp_limit,
    })
}

/// A record of an answer, as far as the cache cares.
struct Rec {
    rtype: u16,
    ttl_at: usize,
    rdata: std::ops::Range<usize>,
    authority: bool,
}

/// Every record of a message whose question is at 12, or None when it does
/// not read to its exact end.
fn records(msg: &[u8], question_end: usize) -> Option<Vec<Rec>> {
    let an = usize::from(u16_at(msg, 6)?);
    let ns = usize::from(u16_at(msg, 8)?);
    let ar = usize::from(u16_at(msg, 10)?);
    let mut out = Vec::with_capacity(an + ns + ar);
    let mut at = question_end;
    for i in 0..an + ns + ar {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let rdlen = usize::from(u16_at(msg, at + 8)?);
        let start = at + 10;
        at = start + rdlen;
        if at > msg.len() {
            return None;
        }
        out.push(Rec {
            rtype,
            ttl_at: at - rdlen - 6,
            rdata: start..at,
            authority: (an..an + ns).contains(&i),
        });
    }
    (at == msg.len()).then_some(out)
}

/// An upstream's answer, ready to be served to any client with the same
/// key: kept in the cache for `life` seconds, or only handed to the queries
/// that waited on it when `life` is 0.
#[derive(Debug)]
pub struct Entry {
    /// The answer with EDNS options stripped, TTLs capped.
    wire: Box<[u8]>,
    /// Where each record's TTL is (the OPT record's is no TTL).
    ttls: Box<[u16]>,
    stored: Instant,
    life: u32,
}

impl Entry {
    /// The entry for an upstream's `answer` to a query of `key`; None when
    /// it cannot be read, is not for that question, or cannot be handed to
    /// another client as it is (signed, or an OPT record not last).
    pub fn from_answer(
        key: &Key,
        answer: &[u8],
        now: Instant,
        limits: &CacheLimits,
    ) -> Option<Entry> {
        let flags = *answer.get(2)?;
        if flags & 0x80 == 0 {
            return None;
        }
        let qend = question_end(answer)?;
        let name = answer.get(HEADER..qend - 4)?;
        if !name.eq_ignore_ascii_case(&key.name)
            || u16_at(answer, qend - 4)? != key.qtype
            || u16_at(answer, qend - 2)? != key.qclass
        {
            return None;
        }
        let recs = records(answer, qend)?;
        let mut wire = answer.to_vec();
        let mut opt_error = false;
        for (i, r) in recs.iter().enumerate() {
            match r.rtype {
                TYPE_TSIG => return None,
                TYPE_OPT if i + 1 != recs.len() => return None,
                TYPE_OPT => {
                    opt_error = answer[r.ttl_at] != 0;
                    // Its options were for the client that asked first.
                    wire.truncate(r.rdata.start);
                    let len = wire.len();
                    wire[len - 2..].copy_from_slice(&[0, 0]);
                }
                _ => {}
            }
        }
        let ttls: Vec<u16> = recs
            .iter()
            .filter(|r| r.rtype != TYPE_OPT)
            .map(|r| u16::try_from(r.ttl_at).ok())
            .collect::<Option<_>>()?;
        let life = life(answer, &recs, opt_error, limits);
        if life > 0 {
            // No record is served with more than the entry lives (negative
            // answers: the SOA's TTL is the negative TTL, RFC 2308 section
            // 3), nor positive ones past the cap.
            let negative = is_negative(answer);
            let cap = if negative { life } else { limits.max_ttl };
            for &at in &ttls {
                let at = usize::from(at);
                let ttl = clean_ttl(u32_at(&wire, at)?).min(cap);
                wire[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
            }
        }
        Some(Entry {
            wire: wire.into(),
            ttls: ttls.into(),
            stored: now,
            life,
        })
    }

    /// Seconds the entry is kept; 0 when it is not to be cached.
    #[cfg(test)]
    pub fn life(&self) -> u32 {
        self.life
    }

    fn expired(&self, now: Instant) -> bool {
        self.life > 0 && self.elapsed(now) >= u64::from(self.life)
    }

    fn elapsed(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored).as_secs()
    }

    /// The answer for the client that sent `query` (whose [`Question`] is
    /// `q`): its id and question case, every TTL counted down by the time
    /// spent in the cache. None once expired.
    pub fn reply(&self, q: &Question, query: &[u8], now: Instant) -> Option<Vec<u8>> {
        if self.expired(now) {
            return None;
        }
        let elapsed = u32::try_from(self.elapsed(now)).unwrap_or(u32::MAX);
        let mut out = self.wire.to_vec();
        out[..2].copy_from_slice(query.get(..2)?);
        // Same key, so same name length: the client's spelling over ours.
        out[HEADER..q.name_end].copy_from_slice(query.get(HEADER..q.name_end)?);
        for &at in &self.ttls {
            let at = usize::from(at);
            let ttl = u32_at(&out, at)?.saturating_sub(elapsed);
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        Some(out)
    }

    /// Bytes counted against [`CacheLimits::bytes`].
    fn size(&self, key: &Key) -> usize {
        self.wire.len() + self.ttls.len() * 2 + key.name.len() + ENTRY_OVERHEAD
    }
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

fn is_negative(answer: &[u8]) -> bool {
    rcode(answer) == RCODE_NXDOMAIN || u16_at(answer, 6) == Some(0)
}

/// A TTL with its top bit set is read as 0 (RFC 2181 section 8).
fn clean_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

/// How long an answer may be kept, seconds; 0: not at all.
fn life(answer: &[u8], recs: &[Rec], opt_error: bool, limits: &CacheLimits) -> u32 {
    let truncated = answer[2] & 0x02 != 0;
    if truncated || opt_error || !matches!(rcode(answer), RCODE_NOERROR | RCODE_NXDOMAIN) {
        return 0;
    }
    let mut ttl = u32::MAX;
    let mut soa = false;
    for r in recs.iter().filter(|r| r.rtype != TYPE_OPT) {
        ttl = ttl.min(clean_ttl(u32_at(answer, r.ttl_at).unwrap_or(0)));
        if r.rtype == TYPE_SOA && r.authority && r.rdata.len() >= 22 {
            // MINIMUM, the last field of the SOA's data.
            let minimum = u32_at(answer, r.rdata.end - 4).unwrap_or(0);
            ttl = ttl.min(clean_ttl(minimum));
            soa = true;
        }
    }
    if is_negative(answer) {
        if !soa {
            return 0;
        }
        ttl.min(limits.max_negative_ttl)
    } else {
        ttl.min(limits.max_ttl)
    }
}

/// The cache itself: shared by the server loops, each lookup and insert
/// under one short lock.
pub struct Cache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
    stats: Arc<CacheStats>,
}

struct Inner {
    lru: LruCache<Key, Arc<Entry>>,
    bytes: usize,
}

impl Cache {
    pub fn new(limits: CacheLimits, stats: Arc<CacheStats>) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                // Bounded by the checks in `insert`, so that the bytes bound
                // and the counters see every removal.
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            limits,
            stats,
        }
    }

    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry for `key`, if any (an expired one is dropped).
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let mut inner = self.inner();
        let e = inner.lru.get(key)?.clone();
        if e.expired(now) {
            inner.lru.pop(key);
            inner.bytes -= e.size(key);
            bump(&self.stats.expired);
            self.publish(&inner);
            return None;
        }
        Some(e)
    }

    /// Keeps `entry` (if it is to be kept at all), the least recently used
    /// ones out while the bounds are passed.
    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        let size = entry.size(&key);
        if entry.life == 0 || self.limits.entries == 0 || size > self.limits.bytes {
            return;
        }
        let mut inner = self.inner();
        if let Some(old) = inner.lru.put(key.clone(), entry) {
            inner.bytes -= old.size(&key);
        }
        inner.bytes += size;
        while inner.lru.len() > self.limits.entries || inner.bytes > self.limits.bytes {
            let Some((k, e)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= e.size(&k);
            bump(&self.stats.evictions);
        }
        self.publish(&inner);
    }

    fn publish(&self, inner: &Inner) {
        let s = &self.stats;
        s.entries.store(inner.lru.len() as u64, Ordering::Relaxed);
        s.bytes.store(inner.bytes as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner().bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner().lru.len()
    }
}

#[cfg(test)]
mod tests;
