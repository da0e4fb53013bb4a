//! The cache's rules on messages built with hickory, read back with it.

use std::{
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME, SOA, opt::EdnsOption},
    },
};

use super::*;

fn query_msg(name: &str, t: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x1111;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        m.set_edns(Edns::new());
    }
    m
}

fn q(name: &str) -> Vec<u8> {
    query_msg(name, RecordType::A, false).to_vec().unwrap()
}

fn a(name: &str, ttl: u32, last: u8) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        ttl,
        RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
    )
}

fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    let n = |s: &str| Name::from_ascii(s).unwrap();
    Record::from_rdata(
        n(zone),
        ttl,
        RData::SOA(SOA::new(
            n("ns.example."),
            n("hostmaster.example."),
            1,
            3600,
            600,
            86400,
            minimum,
        )),
    )
}

/// The upstream's answer to `query` (its id, its question as upstream
/// spells it: lowercase).
fn answer(
    query: &[u8],
    code: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
) -> Vec<u8> {
    let req = Message::from_vec(query).unwrap();
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.response_code = code;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    for q in &req.queries {
        let mut q = q.clone();
        q.set_name(Name::from_ascii(q.name().to_ascii().to_lowercase()).unwrap());
        m.add_query(q);
    }
    m.add_answers(answers);
    m.add_authorities(authority);
    if let Some(e) = &req.edns {
        m.set_edns(e.clone());
    }
    m.to_vec().unwrap()
}

fn entry(query: &[u8], answer: &[u8], at: Instant) -> Entry {
    let key = question(query).unwrap().key;
    Entry::from_answer(&key, answer, at, &CacheLimits::default()).unwrap()
}

fn ttls(wire: &[u8]) -> Vec<u32> {
    let m = Message::from_vec(wire).unwrap();
    m.answers
        .iter()
        .chain(&m.authorities)
        .map(|r| r.ttl)
        .collect()
}

fn cache(limits: CacheLimits) -> (Cache, Arc<CacheStats>) {
    let stats = Arc::new(CacheStats::default());
    (Cache::new(limits, stats.clone()), stats)
}

#[test]
fn the_key_ignores_case_and_keeps_what_changes_an_answer() {
    let key = |m: Message| question(&m.to_vec().unwrap()).unwrap().key;
    let plain = key(query_msg("example.com.", RecordType::A, false));
    assert_eq!(key(query_msg("ExAmPle.COM.", RecordType::A, false)), plain);
    assert_ne!(key(query_msg("example.org.", RecordType::A, false)), plain);
    assert_ne!(
        key(query_msg("example.com.", RecordType::AAAA, false)),
        plain
    );
    assert_ne!(key(query_msg("example.com.", RecordType::A, true)), plain);
    let mut cd = query_msg("example.com.", RecordType::A, false);
    cd.metadata.checking_disabled = true;
    assert_ne!(key(cd), plain);
    let mut norec = query_msg("example.com.", RecordType::A, false);
    norec.metadata.recursion_desired = false;
    assert_ne!(key(norec), plain);
    let mut dnssec = query_msg("example.com.", RecordType::A, true);
    dnssec.edns.as_mut().unwrap().set_dnssec_ok(true);
    assert_ne!(
        key(dnssec),
        key(query_msg("example.com.", RecordType::A, true))
    );
    // A cookie does not change the key; a client subnet is never cached.
    let mut cookie = query_msg("example.com.", RecordType::A, true);
    cookie
        .edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(10, vec![7; 8]));
    assert_eq!(
        key(cookie),
        key(query_msg("example.com.", RecordType::A, true))
    );
    let mut subnet = query_msg("example.com.", RecordType::A, true);
    subnet
        .edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(8, vec![0, 1, 24, 0, 192, 0, 2]));
    assert!(question(&subnet.to_vec().unwrap()).is_none());
}

#[test]
fn only_plain_queries_are_read() {
    let good = q("example.com.");
    assert!(question(&good).is_some());
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(question(&trailing).is_none());
    assert!(question(&good[..good.len() - 1]).is_none());
    assert!(question(&good[..5]).is_none());
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(question(&response).is_none());
    let mut two = query_msg("example.com.", RecordType::A, false);
    two.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::A,
    ));
    assert!(question(&two.to_vec().unwrap()).is_none());
    let mut notify = good.clone();
    notify[2] |= 4 << 3;
    assert!(question(&notify).is_none());
    // A compression pointer in a question.
    let mut ptr = good[..12].to_vec();
    ptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(question(&ptr).is_none());
    // The UDP size the client announced, within 512..=1232.
    let mut big = query_msg("example.com.", RecordType::A, true);
    big.edns.as_mut().unwrap().set_max_payload(4096);
    assert_eq!(question(&big.to_vec().unwrap()).unwrap().udp_limit, 1232);
    assert_eq!(question(&good).unwrap().udp_limit, 512);
}

#[test]
fn a_positive_answer_lives_its_smallest_ttl_and_counts_down() {
    let query = q("www.example.com.");
    let cname = Record::from_rdata(
        Name::from_ascii("www.example.com.").unwrap(),
        300,
        RData::CNAME(CNAME(Name::from_ascii("web.example.net.").unwrap())),
    );
    let ans = answer(
        &query,
        ResponseCode::NoError,
        vec![cname, a("web.example.net.", 60, 1)],
        vec![],
    );
    let t0 = Instant::now();
    let e = entry(&query, &ans, t0);
    assert_eq!(e.life(), 60);
    let q0 = question(&query).unwrap();
    assert_eq!(ttls(&e.reply(&q0, &query, t0).unwrap()), [300, 60]);
    let later = e
        .reply(&q0, &query, t0 + Duration::from_millis(10_900))
        .unwrap();
    assert_eq!(ttls(&later), [290, 50], "whole seconds elapsed");
    assert_eq!(
        ttls(&e.reply(&q0, &query, t0 + Duration::from_secs(59)).unwrap()),
        [241, 1]
    );
    assert!(e.reply(&q0, &query, t0 + Duration::from_secs(60)).is_none());
}

#[test]
fn long_ttls_are_capped() {
    let query = q("example.com.");
    let ans = answer(
        &query,
        ResponseCode::NoError,
        vec![a("example.com.", 7 * 86_400, 1)],
        vec![],
    );
    let e = entry(&query, &ans, Instant::now());
    assert_eq!(e.life(), 86_400);
    let q0 = question(&query).unwrap();
    assert_eq!(ttls(&e.reply(&q0, &query, e.stored).unwrap()), [86_400]);
    // A TTL with its top bit set is 0: not cached.
    let ans = answer(
        &query,
        ResponseCode::NoError,
        vec![a("example.com.", 0x8000_0001, 1)],
        vec![],
    );
    assert_eq!(entry(&query, &ans, Instant::now()).life(), 0);
}

#[test]
fn negative_answers_live_the_soa_minimum_or_ttl_capped() {
    let query = q("nope.example.com.");
    let t0 = Instant::now();
    let q0 = question(&query).unwrap();
    // NXDOMAIN: min(SOA TTL 900, MINIMUM 300), and the SOA served with it.
    let nx = answer(
        &query,
        ResponseCode::NXDomain,
        vec![],
        vec![soa("example.com.", 900, 300)],
    );
    let e = entry(&query, &nx, t0);
    assert_eq!(e.life(), 300);
    let r = e.reply(&q0, &query, t0 + Duration::from_secs(20)).unwrap();
    assert_eq!(ttls(&r), [280]);
    assert_eq!(
        Message::from_vec(&r).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    // NODATA: the SOA's TTL when it is the smaller.
    let nodata = answer(
        &query,
        ResponseCode::NoError,
        vec![],
        vec![soa("example.com.", 30, 300)],
    );
    assert_eq!(entry(&query, &nodata, t0).life(), 30);
    // Capped at an hour.
    let long = answer(
        &query,
        ResponseCode::NXDomain,
        vec![],
        vec![soa("example.com.", 86_400, 86_400)],
    );
    let e = entry(&query, &long, t0);
    assert_eq!(e.life(), 3_600);
    assert_eq!(ttls(&e.reply(&q0, &query, t0).unwrap()), [3_600]);
    // Without an SOA there is nothing to say how long: not kept.
    let bare = answer(&query, ResponseCode::NXDomain, vec![], vec![]);
    assert_eq!(entry(&query, &bare, t0).life(), 0);
}

#[test]
fn failures_truncated_and_zero_ttl_answers_are_not_kept() {
    let query = q("example.com.");
    let t0 = Instant::now();
    let (c, _) = cache(CacheLimits::default());
    let key = question(&query).unwrap().key;
    for code in [
        ResponseCode::ServFail,
        ResponseCode::Refused,
        ResponseCode::FormErr,
    ] {
        let ans = answer(&query, code, vec![], vec![soa("example.com.", 60, 60)]);
        let e = entry(&query, &ans, t0);
        assert_eq!(e.life(), 0, "{code}");
        c.insert(key.clone(), Arc::new(e));
    }
    let mut tc = answer(
        &query,
        ResponseCode::NoError,
        vec![a("example.com.", 60, 1)],
        vec![],
    );
    tc[2] |= 0x02;
    assert_eq!(entry(&query, &tc, t0).life(), 0);
    let zero = answer(
        &query,
        ResponseCode::NoError,
        vec![a("example.com.", 0, 1)],
        vec![],
    );
    let e = entry(&query, &zero, t0);
    assert_eq!(e.life(), 0);
    c.insert(key.clone(), Arc::new(e));
    assert_eq!(c.len(), 0);
    assert!(c.get(&key, t0).is_none());
}

#[test]
fn a_reply_has_the_clients_id_and_spelling_and_no_one_elses_options() {
    let asked = {
        let mut m = query_msg("example.com.", RecordType::A, true);
        m.edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Unknown(10, vec![1; 8]));
        m.to_vec().unwrap()
    };
    let mut ans = Message::from_vec(&answer(
        &asked,
        ResponseCode::NoError,
        vec![a("example.com.", 60, 1)],
        vec![],
    ))
    .unwrap();
    // The upstream echoes the first client's cookie with its own.
    ans.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(10, vec![1; 24]));
    let e = entry(&asked, &ans.to_vec().unwrap(), Instant::now());
    let other = {
        let mut m = query_msg("EXAMPLE.com.", RecordType::A, true);
        m.metadata.id = 0xbeef;
        m.to_vec().unwrap()
    };
    let qo = question(&other).unwrap();
    let r = Message::from_vec(&e.reply(&qo, &other, e.stored).unwrap()).unwrap();
    assert_eq!(r.metadata.id, 0xbeef);
    assert_eq!(r.queries[0].name().to_ascii(), "EXAMPLE.com.");
    // The answer's owner points at the question: the client's case too.
    assert_eq!(r.answers[0].name.to_ascii(), "EXAMPLE.com.");
    let edns = r.edns.expect("EDNS kept");
    assert_eq!(edns.max_payload(), Edns::new().max_payload());
    assert!(
        edns.options().as_ref().is_empty(),
        "options were the first client's"
    );
}

#[test]
fn an_answer_to_another_question_is_refused() {
    let query = q("example.com.");
    let other = answer(
        &q("example.org."),
        ResponseCode::NoError,
        vec![a("example.org.", 60, 1)],
        vec![],
    );
    let key = question(&query).unwrap().key;
    assert!(Entry::from_answer(&key, &other, Instant::now(), &CacheLimits::default()).is_none());
    assert!(!same_question(&query, &other));
    let mine = answer(&query, ResponseCode::NoError, vec![], vec![]);
    assert!(same_question(&query, &mine));
    // Garbage, or a query rather than an answer.
    assert!(
        Entry::from_answer(&key, &[0xff; 40], Instant::now(), &CacheLimits::default()).is_none()
    );
    assert!(Entry::from_answer(&key, &query, Instant::now(), &CacheLimits::default()).is_none());
    // An answer that does not read to its end.
    let mut long = answer(
        &query,
        ResponseCode::NoError,
        vec![a("example.com.", 60, 1)],
        vec![],
    );
    long.push(0);
    assert!(Entry::from_answer(&key, &long, Instant::now(), &CacheLimits::default()).is_none());
}

fn stored(c: &Cache, name: &str, ttl: u32, at: Instant) -> Key {
    let query = q(name);
    let ans = answer(&query, ResponseCode::NoError, vec![a(name, ttl, 1)], vec![]);
    let key = question(&query).unwrap().key;
    c.insert(key.clone(), Arc::new(entry(&query, &ans, at)));
    key
}

#[test]
fn entries_are_bounded_least_recently_used_out_first() {
    let (c, stats) = cache(CacheLimits {
        entries: 3,
        ..CacheLimits::default()
    });
    let t0 = Instant::now();
    let keys: Vec<Key> = (0..3)
        .map(|i| stored(&c, &format!("n{i}.example."), 60, t0))
        .collect();
    // n0 used again: n1 is the least recent.
    assert!(c.get(&keys[0], t0).is_some());
    let k3 = stored(&c, "n3.example.", 60, t0);
    assert_eq!(c.len(), 3);
    assert!(c.get(&keys[1], t0).is_none());
    assert!(c.get(&keys[0], t0).is_some() && c.get(&k3, t0).is_some());
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 1);
    assert_eq!(stats.entries.load(Ordering::Relaxed), 3);
    // Replacing an entry is no eviction, and the bytes stay exact.
    let before = c.bytes();
    stored(&c, "n3.example.", 60, t0);
    assert_eq!(c.bytes(), before);
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 1);
}

#[test]
fn bytes_are_bounded_too() {
    let (probe, _) = cache(CacheLimits::default());
    stored(&probe, "n00.example.", 60, Instant::now());
    let one = probe.bytes();
    let (c, stats) = cache(CacheLimits {
        bytes: one * 4 + one / 2,
        ..CacheLimits::default()
    });
    let t0 = Instant::now();
    for i in 0..10 {
        stored(&c, &format!("n{i:02}.example."), 60, t0);
        assert!(c.bytes() <= one * 4 + one / 2);
    }
    assert_eq!(c.len(), 4);
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 6);
    assert_eq!(stats.bytes.load(Ordering::Relaxed), c.bytes() as u64);
    // An answer larger than the whole cache is not kept at all.
    let (tiny, _) = cache(CacheLimits {
        bytes: 100,
        ..CacheLimits::default()
    });
    stored(&tiny, "n00.example.", 60, t0);
    assert_eq!(tiny.len(), 0);
}

#[test]
fn an_expired_entry_is_dropped_at_lookup() {
    let (c, stats) = cache(CacheLimits::default());
    let t0 = Instant::now();
    let k = stored(&c, "short.example.", 2, t0);
    assert!(c.get(&k, t0 + Duration::from_secs(1)).is_some());
    assert!(c.get(&k, t0 + Duration::from_secs(2)).is_none());
    assert_eq!(c.len(), 0);
    assert_eq!(c.bytes(), 0);
    assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 0);
}

#[test]
fn cut_and_corrupted_messages_are_refused_without_a_panic() {
    let query = q("www.example.com.");
    let key = question(&query).unwrap().key;
    let good = answer(
        &query,
        ResponseCode::NXDomain,
        vec![a("www.example.com.", 60, 1)],
        vec![soa("example.com.", 60, 30)],
    );
    let limits = CacheLimits::default();
    let now = Instant::now();
    for len in 0..good.len() {
        assert!(Entry::from_answer(&key, &good[..len], now, &limits).is_none());
        let _ = question(&good[..len]);
        let _ = question(&query[..len.min(query.len())]);
    }
    // Every byte set to a few telling values, one at a time.
    for i in 0..good.len() {
        for v in [0x00, 0x3f, 0x40, 0xc0, 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            if let Some(e) = Entry::from_answer(&key, &bad, now, &limits) {
                let q0 = question(&query).unwrap();
                let _ = e.reply(&q0, &query, now);
            }
            let _ = same_question(&query, &bad);
        }
    }
}

#[test]
fn names_outside_the_zone_are_told_from_the_key_as_the_zone_would() {
    for (name, outside) in [
        ("www.example.com.", true),
        ("internal.", true),
        (".", true),
        ("private-network.internal.evil.example.", true),
        ("private-network.internal.", false),
        ("PRIVATE-Network.Internal.", false),
        ("x.y.private-network.internal.", false),
        ("not-a-network.private-network.internal.", false),
    ] {
        let key = question(&q(name)).unwrap().key;
        assert_eq!(key.outside_zone(), outside, "{name}");
        // The zone reads the name as hickory parsed it: the same verdict.
        let n = Name::from_ascii(name).unwrap();
        let zone = names::parse_labels(n.iter());
        assert_eq!(matches!(zone, ZoneName::Outside), outside, "{name}");
    }
}
