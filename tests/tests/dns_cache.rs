//! The cache of forwarded answers from inside containers: a name of the
//! world asked twice reaches the upstream once, its TTL counting down; an
//! NXDOMAIN is kept too; a record whose TTL ran out is asked again.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use pn_tests::{Host, Namespace, metric_value, net, scenario::OneApp, unique_prefix};

/// `dig` from `ns` at the agent: (status, TTL of the first record of the
/// answer or, for a negative answer, of the authority's SOA).
fn dig(ns: &Namespace, name: &str) -> (String, u32) {
    let out = ns.exec(&[
        "dig",
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        "+authority",
        name,
        "A",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {text}"))
        .to_string();
    // The first record line: NAME TTL IN TYPE DATA.
    let ttl = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no record in {text}"));
    (status, ttl)
}

fn asked(count: &AtomicU64) -> u64 {
    count.load(Ordering::SeqCst)
}

#[test]
fn answers_of_the_world_are_cached_within_their_ttl() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let (_up, count) = net::counting_dns_upstream(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44));
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let OneApp { c1, c2, .. } = OneApp::new(&host, &host, ["web", "worker"]);

    // Asked twice (by two containers, spelled differently): upstream once,
    // and the TTL shown the second time is what remains of it.
    assert_eq!(dig(&c1, "www.example.com"), ("NOERROR".into(), 60));
    assert_eq!(asked(&count), 1);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, ttl) = dig(&c2, "WWW.Example.COM");
    assert_eq!(status, "NOERROR");
    assert!((50..=58).contains(&ttl), "TTL counted down: {ttl}");
    assert_eq!(asked(&count), 1, "answered from the cache");

    // NXDOMAIN is kept for the SOA's 30 s.
    assert_eq!(dig(&c1, "nx1.example.com").0, "NXDOMAIN");
    assert_eq!(asked(&count), 2);
    let (status, ttl) = dig(&c2, "nx1.example.com");
    assert_eq!(status, "NXDOMAIN");
    assert!(ttl <= 30, "{ttl}");
    assert_eq!(asked(&count), 2, "the negative answer came from the cache");

    // A record of TTL 2 s: kept, then asked again once it ran out.
    assert_eq!(dig(&c1, "short1.example.com"), ("NOERROR".into(), 2));
    assert_eq!(dig(&c1, "short1.example.com").0, "NOERROR");
    assert_eq!(asked(&count), 3);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(dig(&c1, "short1.example.com"), ("NOERROR".into(), 2));
    assert_eq!(asked(&count), 4, "expired, so asked upstream again");

    let m = host.metrics();
    assert_eq!(
        metric_value(&m, "pn_dns_cache_total", &[("event", "hit")]),
        3,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "pn_dns_cache_total", &[("event", "miss")]),
        4
    );
    assert_eq!(
        metric_value(&m, "pn_dns_cache_total", &[("event", "expired")]),
        1
    );
    assert_eq!(
        metric_value(&m, "pn_dns_queries_total", &[("outcome", "cached")]),
        3
    );
    assert!(
        m.lines().any(|l| l == "pn_dns_cache_entries 3"),
        "three answers kept: {m}"
    );
    let status = host.cli_ok(&["status"]);
    assert!(status.contains("cache 3 answers"), "{status}");
    assert!(status.contains("3 hits, 4 misses"), "{status}");
}
