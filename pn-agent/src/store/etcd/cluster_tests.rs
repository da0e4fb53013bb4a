//! The backend on a real 3-member etcd: a member killed under requests and
//! under a watch, the leader killed under writes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Etcd, between_leaders, members::Members};
use crate::{
    store::{Backend, Cond, Op, WatchEvent},
    testing::etcd_cluster::EtcdCluster,
};

fn backend(c: &EtcdCluster) -> Etcd {
    Etcd::new(c.endpoints(), "/pn-test/".into())
}

fn put(k: &str, v: &str) -> Vec<Op> {
    vec![Op::Put(k.into(), v.into())]
}

/// Which member (index) the backend talks to.
fn member_of(kv: &Etcd, c: &EtcdCluster) -> usize {
    let link = kv.link().unwrap();
    c.endpoints()
        .iter()
        .position(|e| link.member.ends_with(e.as_str()))
        .unwrap()
}

#[test]
fn etcds_own_answers_during_an_election_are_told_from_a_dead_member() {
    assert!(between_leaders(
        "etcd x: status: Unavailable, message: \"etcdserver: no leader\""
    ));
    assert!(between_leaders("etcdserver: request timed out"));
    assert!(between_leaders("etcdserver: leader changed"));
    assert!(!between_leaders(
        "etcd 127.0.0.1:1: transport error: tcp connect error: Connection refused"
    ));
}

#[tokio::test]
async fn a_failure_moves_to_the_next_member_once() {
    let urls = [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "http://127.0.0.1:3",
    ];
    let m = Members::new(
        urls.iter().map(|u| u.to_string()).collect(),
        Default::default(),
    );
    let first = m.conn().await.unwrap();
    assert!(first.fresh && m.current() == urls[0]);
    let again = m.conn().await.unwrap();
    assert!(!again.fresh);
    // Two requests saw the same connection fail: one move.
    m.failed(first.generation).await;
    m.failed(again.generation).await;
    assert_eq!((m.current(), m.failovers()), (urls[1], 1));
    let next = m.conn().await.unwrap();
    m.failed(next.generation).await;
    let last = m.conn().await.unwrap();
    m.failed(last.generation).await;
    // Round the list.
    assert_eq!((m.current(), m.failovers()), (urls[0], 3));
}

#[tokio::test]
async fn a_lost_answer_of_an_applied_write_is_told_from_a_lost_race() {
    let c = EtcdCluster::start("applied", 1);
    let kv = backend(&c);
    let rev = kv.txn(vec![], put("a", "1")).await.unwrap().unwrap();
    let ops = vec![Op::Put("a".into(), "1".into()), Op::Delete("gone".into())];
    assert_eq!(kv.applied(&ops).await.unwrap(), Some(rev));
    assert_eq!(kv.applied(&put("a", "2")).await.unwrap(), None);
    assert_eq!(kv.applied(&[Op::Delete("a".into())]).await.unwrap(), None);
}

#[tokio::test]
async fn requests_survive_the_member_in_use_killed() {
    let mut c = EtcdCluster::start("member", 3);
    let kv = backend(&c);
    kv.txn(vec![], put("a", "1")).await.unwrap();
    let at = member_of(&kv, &c);
    c.kill_member(at);
    // Each request right after the kill succeeds, on another member.
    let started = Instant::now();
    assert_eq!(kv.get("a").await.unwrap().unwrap().value, "1");
    kv.txn(vec![Cond::Absent("b".into())], put("b", "2"))
        .await
        .unwrap()
        .unwrap();
    // Both within one request's whole timeout: the dead member is left at
    // once, not waited out. (2 s here failed under a loaded machine's
    // scheduling at 2.05 and 2.56 s; the timeout is what the promise is
    // about.)
    assert!(
        started.elapsed() < super::REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_ne!(member_of(&kv, &c), at);
    assert_eq!(kv.link().unwrap().failovers, 1);
    c.restart_member(at);
    assert_eq!(kv.list("").await.unwrap().entries.len(), 2);
}

#[tokio::test]
async fn writes_survive_the_leader_killed_within_an_election() {
    let mut c = EtcdCluster::start("leader", 3);
    let kv = Arc::new(backend(&c));
    kv.txn(vec![], put("warm", "1")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, stop) = (kv.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut worst) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let k = format!("k{n}");
                let t = Instant::now();
                let r = kv.txn(vec![Cond::Absent(k.clone())], put(&k, "v")).await;
                assert!(matches!(r, Ok(Some(_))), "write {n}: {r:?}");
                worst = worst.max(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (n, worst)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.leader().unwrap();
    c.kill_member(leader);
    let elected = c.wait_leader(Duration::from_secs(10)).unwrap();
    assert_ne!(elected, leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (n, worst) = writer.await.unwrap();
    eprintln!("{n} writes, the slowest {worst:?} across the leader's loss");
    assert!(
        worst < EtcdCluster::election_bound() + Duration::from_secs(2),
        "{worst:?}"
    );
    assert_eq!(kv.list("k").await.unwrap().entries.len(), n as usize);
    c.restart_member(leader);
}

#[tokio::test]
async fn a_watch_resumes_on_another_member_and_misses_nothing() {
    let mut c = EtcdCluster::start("watch", 3);
    let kv = Arc::new(backend(&c));
    let mut rx = kv.watch("", 1).await.unwrap();
    let writer = {
        let kv = kv.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let k = format!("k{i:03}");
                let r = kv.txn(vec![Cond::Absent(k.clone())], put(&k, "v")).await;
                assert!(matches!(r, Ok(Some(_))), "{k}: {r:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The member the watch (and every request) is on.
    let at = member_of(&kv, &c);
    c.kill_member(at);
    let mut keys = Vec::new();
    while keys.len() < 300 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(WatchEvent::Put { key, .. })) => keys.push(key),
            other => panic!("after {} events: {other:?}", keys.len()),
        }
    }
    writer.await.unwrap();
    let want: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, want, "each event once, in order");
    assert_ne!(member_of(&kv, &c), at);
    c.restart_member(at);
}

#[tokio::test]
async fn over_tls_the_member_in_use_killed_is_failed_over_too() {
    use crate::{
        config::TlsFiles,
        testing::{etcd::ServerTls, pki::Pki},
    };
    let pki = Pki::new("cluster-tls");
    let ca = pki.ca("ca");
    let server = pki.issue(&ca, "etcd", &["127.0.0.1"]);
    let h1 = pki.issue(&ca, "h1", &[]);
    let tls = ServerTls {
        server,
        client_ca: ca.clone(),
    };
    let mut c = EtcdCluster::start_tls("tls", 3, tls);
    let files = TlsFiles {
        cacert: ca.crt.clone(),
        cert: h1.crt.clone(),
        key: h1.key.clone(),
    };
    let kv = Etcd::with_tls(c.endpoints(), "/pn-test/".into(), files).unwrap();
    kv.txn(vec![], put("a", "1")).await.unwrap();
    let at = member_of(&kv, &c);
    assert!(kv.link().unwrap().member.starts_with("https://"));
    c.kill_member(at);
    assert_eq!(kv.get("a").await.unwrap().unwrap().value, "1");
    assert_ne!(member_of(&kv, &c), at);
    c.restart_member(at);
}
