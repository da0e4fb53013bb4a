//! Issue 25: etcd as a 3-member cluster under a fleet. Two hosts with the
//! tunnel on, numbered datagrams from c1 to c2 (same host) and to c3 (the
//! other host), containers attached and detached on both hosts all along;
//! the leader killed, then the member the agents talk to (or another
//! follower), each started again. The data plane does not depend on etcd:
//! no datagram is lost. An attach waits at most for the election (and the
//! failover to another member); the agents' views equal the store after.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use pn_agent::testing::etcd_cluster::EtcdCluster;
use pn_tests::{
    Host, Namespace, eventually, fleet::Fleet, metric_value, net, scenario::OneApp, stream::Stream,
    unique_prefix,
};

const RATE: u32 = 1_000;
/// Slack over the election for one attach: the failover itself, the
/// attach's own store round trips and interface work on a shared machine.
const ATTACH_SLACK: Duration = Duration::from_secs(3);

/// One attach of the churn: when it began (since the test's start), how
/// long it took (and its detach), and its error if it failed.
struct Attach {
    at: Duration,
    took: Duration,
    detach: Duration,
    error: Option<String>,
}

/// Attaches and detaches `worker` containers of `app` on `host` until
/// `stop`, timing each attach.
fn churn(host: &Host, app: &str, name: &str, start: Instant, stop: &AtomicBool) -> Vec<Attach> {
    let mut out = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let ns = Namespace::new(&format!("{}-{name}{i}", host.prefix));
        let at = start.elapsed();
        let t = Instant::now();
        let r = host.cli(&[
            "container",
            "attach",
            "--app",
            app,
            "--type",
            "churn",
            "--netns",
            &ns.name,
        ]);
        let took = t.elapsed();
        if r.code != 0 {
            out.push(Attach {
                at,
                took,
                detach: Duration::ZERO,
                error: Some(r.stderr),
            });
            continue;
        }
        let attached: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let index = attached["index"].to_string();
        // A detach is retried until it is done: the next attach must not
        // find the store full of leftovers.
        let detach = [
            "container",
            "detach",
            "--app",
            app,
            "--type",
            "churn",
            "--index",
            &index,
        ];
        let t = Instant::now();
        let done = eventually(Duration::from_secs(20), || host.cli(&detach).code == 0);
        assert!(done, "detach {index} on {}: {}", host.id, host.log());
        out.push(Attach {
            at,
            took,
            detach: t.elapsed(),
            error: None,
        });
    }
    out
}

/// The member (index in the cluster) the agent of `h` talks to.
fn member_of(h: &Host, etcd: &EtcdCluster) -> Option<usize> {
    let status = h.json(&["status"]);
    let member = status["store"]["member"].as_str()?.to_string();
    etcd.endpoints().iter().position(|e| member.ends_with(e))
}

/// Container addresses in a host's view, and in the store.
fn view_ips(h: &Host) -> BTreeSet<String> {
    let list = h.json(&["container", "list"]);
    let list = list.as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|c| c["ip"].as_str().map(str::to_string))
        .collect()
}

fn store_ips(f: &Fleet) -> BTreeSet<String> {
    // Container records live under their host (`on/<host>/containers/…`).
    let out = f.etcdctl(&["get", "--prefix", "--print-value-only", "/pn/on/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|c| c.get("netns").is_some())
        .filter_map(|c| c["ip"].as_str().map(str::to_string))
        .collect()
}

fn keys(f: &Fleet, prefix: &str) -> usize {
    let out = f.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn members_killed_under_traffic_and_churn_lose_nothing() {
    let mut f = Fleet::cluster(&unique_prefix(), 2, 3, &[]);
    let OneApp { app, c1, c2, .. } = OneApp::new(&f.hosts[0], &f.hosts[0], ["web", "worker"]);
    let c3 = f.hosts[1].member(&app, "worker", "c3");
    f.wait_for_peers(Duration::from_secs(10));
    // Both paths answer (the tunnel is paired) before the stream.
    let _echo = [&c2, &c3].map(|c| net::udp_echo_server(c, 8999));
    for c in [&c2, &c3] {
        let to = SocketAddr::from((c.addr, 8999));
        let answers = || net::udp_echo(&c1, to, b"warm", Duration::from_millis(300)).is_ok();
        assert!(eventually(Duration::from_secs(10), answers), "{to} answers");
    }

    let start = Instant::now();
    let seconds = 24;
    let stream = Stream::start(
        &c1,
        &[
            (&c2.ns, SocketAddr::from((c2.addr, 9100))),
            (&c3.ns, SocketAddr::from((c3.addr, 9100))),
        ],
        RATE,
        RATE * seconds,
    );
    let stop = AtomicBool::new(false);
    let mut faults: Vec<(String, Duration)> = Vec::new();
    // Whether a member killed was the one the agents talked to.
    let mut theirs_killed = false;
    let (churned, elections) = std::thread::scope(|s| {
        let (h1, h2, app, stop) = (&f.hosts[0], &f.hosts[1], &app, &stop);
        let t1 = s.spawn(move || churn(h1, app, "a", start, stop));
        let t2 = s.spawn(move || churn(h2, app, "b", start, stop));
        let mut elections = Vec::new();
        std::thread::sleep(Duration::from_secs(3));

        // The leader, killed.
        let leader = f.etcd.leader().expect("a leader");
        theirs_killed |= member_of(&f.hosts[0], &f.etcd) == Some(leader);
        faults.push((format!("leader m{} killed", leader + 1), start.elapsed()));
        let t = Instant::now();
        f.etcd.kill_member(leader);
        let next = f
            .etcd
            .wait_leader(Duration::from_secs(15))
            .expect("a new leader");
        elections.push(t.elapsed());
        assert_ne!(next, leader);
        std::thread::sleep(Duration::from_secs(3));
        f.etcd.restart_member(leader);
        f.etcd
            .wait_leader(Duration::from_secs(15))
            .expect("a leader");
        faults.push((format!("m{} back", leader + 1), start.elapsed()));
        std::thread::sleep(Duration::from_secs(2));

        // A follower: the one the agents talk to when it does not lead.
        let on = member_of(&f.hosts[0], &f.etcd);
        let leader = f.etcd.leader();
        let victim = on
            .filter(|&m| Some(m) != leader)
            .or_else(|| f.etcd.follower())
            .expect("a follower");
        theirs_killed |= on == Some(victim);
        faults.push((format!("follower m{} killed", victim + 1), start.elapsed()));
        let t = Instant::now();
        f.etcd.kill_member(victim);
        f.etcd
            .wait_leader(Duration::from_secs(15))
            .expect("a leader");
        elections.push(t.elapsed());
        std::thread::sleep(Duration::from_secs(3));
        f.etcd.restart_member(victim);
        f.etcd
            .wait_leader(Duration::from_secs(15))
            .expect("a leader");
        faults.push((format!("m{} back", victim + 1), start.elapsed()));
        std::thread::sleep(Duration::from_secs(2));

        stop.store(true, Ordering::Relaxed);
        let mut churned = t1.join().unwrap();
        churned.extend(t2.join().unwrap());
        (churned, elections)
    });
    let received = stream.finish();

    for (what, at) in &faults {
        eprintln!("{:7.0} ms  {what}", ms(*at));
    }
    eprintln!("elections (kill until every member follows a leader): {elections:?}");
    let first_fault = faults[0].1;
    let (before, during): (Vec<&Attach>, Vec<&Attach>) =
        churned.iter().partition(|a| a.at + a.took < first_fault);
    let worst = |v: &[&Attach]| v.iter().map(|a| a.took).max().unwrap_or_default();
    let worst_detach = |v: &[&Attach]| v.iter().map(|a| a.detach).max().unwrap_or_default();
    eprintln!(
        "attaches: {} before the faults (slowest {:.0} ms, detach {:.0} ms), {} from the first \
         fault on (slowest {:.0} ms, detach {:.0} ms)",
        before.len(),
        ms(worst(&before)),
        ms(worst_detach(&before)),
        during.len(),
        ms(worst(&during)),
        ms(worst_detach(&during))
    );
    for a in churned
        .iter()
        .filter(|a| a.took.max(a.detach) > Duration::from_secs(1))
    {
        eprintln!(
            "  slow at {:.0} ms: attach {:.0} ms, detach {:.0} ms",
            ms(a.at),
            ms(a.took),
            ms(a.detach)
        );
    }
    for r in &received {
        eprintln!("{r}");
    }
    let failovers: Vec<u64> = f
        .hosts
        .iter()
        .map(|h| metric_value(&h.metrics(), "pn_store_failovers_total", &[]))
        .collect();
    eprintln!("failovers per host: {failovers:?}");
    for h in &f.hosts {
        for l in h.log().lines() {
            if l.contains("etcd member") || l.contains("etcd watch") {
                eprintln!("  {}: {l}", h.id);
            }
        }
    }

    // Every attach succeeded, none waited longer than an election and the
    // slack.
    for a in &churned {
        assert!(
            a.error.is_none(),
            "attach at {:?} failed: {:?}",
            a.at,
            a.error
        );
    }
    let bound = EtcdCluster::election_bound() + ATTACH_SLACK;
    assert!(
        worst(&during) < bound,
        "an attach took {:?} (bound {bound:?})",
        worst(&during)
    );
    let detach = worst_detach(&during);
    assert!(detach < bound, "a detach took {detach:?} (bound {bound:?})");
    assert!(!during.is_empty(), "attaches ran through the faults");
    // Not one datagram lost, on the same host or across hosts.
    for r in &received {
        assert_eq!(r.lost, 0, "{r}");
    }
    // The agents' views equal the store; nothing claimed or leased is left
    // over from the churn.
    let store = store_ips(&f);
    for h in &f.hosts {
        assert!(
            eventually(Duration::from_secs(10), || view_ips(h) == store),
            "{}'s view {:?} != store {store:?}",
            h.id,
            view_ips(h)
        );
    }
    assert_eq!(store.len(), 3, "c1, c2, c3 and no churn container left");
    // A claim lives as long as its container: one per container, none left
    // over from the churn.
    // (Claims are in their hosts' ranges: `on/<host>/claims/…`.)
    let claims = f.etcdctl(&["get", "--prefix", "--keys-only", "/pn/on/"]);
    let claims = String::from_utf8_lossy(&claims.stdout)
        .lines()
        .filter(|l| l.contains("/claims/"))
        .count();
    assert_eq!(claims, store.len(), "claims left over");
    assert_eq!(keys(&f, "/pn/claims/"), 0, "a shared claim written");
    // Their watches resumed where they broke: nothing listed again.
    for h in &f.hosts {
        assert!(
            !h.log().contains("resynchronising"),
            "{} listed again",
            h.id
        );
    }
    // The agents moved off a killed member they talked to, and `status`
    // names where they are.
    eprintln!("a member the agents talked to was killed: {theirs_killed}");
    if theirs_killed {
        assert!(failovers.iter().sum::<u64>() >= 1, "{failovers:?}");
    }
    for h in &f.hosts {
        assert!(member_of(h, &f.etcd).is_some(), "{} names no member", h.id);
    }
}
