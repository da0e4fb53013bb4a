//! One host of a three-host TLS fleet turned attacker. The fleet is locked
//! down by `pn-agent fleet setup` (the operator's role, one role per host,
//! authentication on, each host admitted to the apps it runs). The
//! attacker, with its own agent and `etcdctl` under its own certificate:
//! writes what only the operator may (apps, admissions, legacy container
//! records) and what only another host may (its container records, to
//! delete or to point at another namespace): etcd refuses each; writes in
//! its own range what the view must refuse (a container of an app it was
//! not admitted to, a record naming another host, another host's container
//! key, the victim's tunnel key, a loopback endpoint): every agent refuses
//! and counts each (`pn_store_records_refused_total{kind,reason}`). The
//! victims' connections, on one host and across the tunnel, keep flowing;
//! the other tenant's namespace is untouched; the attacker still runs its
//! own containers.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{
    Host, Namespace, eventually, fleet::Fleet, metric_value, net, scenario::Member, unique_prefix,
};

const WAIT: Duration = Duration::from_secs(15);

fn refused(h: &Host, kind: &str, reason: &str) -> u64 {
    metric_value(
        &h.metrics(),
        "pn_store_records_refused_total",
        &[("kind", kind), ("reason", reason)],
    )
}

fn talks(from: &Namespace, to: Ipv4Addr) -> bool {
    net::tcp_echo(
        from,
        SocketAddr::from((to, 9000)),
        b"still mine",
        Duration::from_secs(3),
    )
    .is_ok()
}

/// What the fleet runs before it is locked down.
struct Tenants {
    app: String,
    evil: String,
    other_app: String,
    /// The tenant's: c1 and c1b on h1, c2 on the attacker h2, c3 on h3.
    c1: Member,
    c1b: Member,
    c2: Member,
    c3: Member,
    /// The attacker's own app's container.
    mine: Member,
    /// Another tenant's container on h1, in a network of its own.
    other: Member,
}

#[test]
fn an_attacker_host_can_neither_write_others_records_nor_place_members_the_operator_did_not_admit()
{
    let p = unique_prefix();
    let (f, t) = Fleet::tls_with_roles(&p, 3, |f| {
        let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
        let network = h1.create_network(&[]);
        let app = h1.create_app(&network);
        let evil = h2.create_app(&network);
        let other_net = h1.create_network(&[]);
        let other_app = h1.create_app(&other_net);
        Tenants {
            c1: h1.member(&app, "web", "c1"),
            c1b: h1.member(&app, "web", "c1b"),
            c2: h2.member(&app, "web", "c2"),
            c3: h3.member(&app, "web", "c3"),
            mine: h2.member(&evil, "web", "mine"),
            other: h1.member(&other_app, "web", "other"),
            app,
            evil,
            other_app,
        }
    });
    let (victim, attacker, far) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
    let pki = f.pki.as_ref().unwrap();
    let as_attacker = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[1], args);
    let etcd_refuses = |args: &[&str]| {
        let out = as_attacker(args);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "etcd let the attacker {args:?}: {out:?}"
        );
    };
    let get = |key: &str| -> serde_json::Value {
        let out = as_attacker(&["get", key, "--print-value-only"]);
        assert!(out.status.success(), "get {key}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{key}: {e}: {out:?}"))
    };
    let put = |key: &str, v: &serde_json::Value| {
        let out = as_attacker(&["put", key, &v.to_string()]);
        assert!(out.status.success(), "put {key}: {out:?}");
    };
    for h in [victim, attacker, far] {
        assert!(
            eventually(WAIT, || h.container_count() == 6),
            "{} lists every container",
            h.id
        );
    }
    let _servers: Vec<_> = [&t.c1, &t.c3]
        .iter()
        .map(|m| net::tcp_echo_server(m, 9000))
        .collect();
    let flows = || {
        talks(&t.c1b, t.c1.addr)
            && talks(&t.c1, t.c3.addr)
            && talks(&t.c3, t.c1.addr)
            && talks(&t.c2, t.c1.addr)
    };
    assert!(eventually(WAIT, flows), "the fleet works once locked down");
    let counted = |what: &str, kind: &str, reason: &str, n: u64| {
        for h in [victim, attacker, far] {
            assert!(
                eventually(WAIT, || refused(h, kind, reason) == n),
                "{what}: {} did not count it: {}",
                h.id,
                h.metrics()
            );
        }
        assert!(flows(), "{what}: the victims' connections broke");
    };

    // 1. The operator's records: etcd refuses them all.
    let app_key = format!("/pn/apps/{}", t.evil);
    let mut forged = get(&app_key);
    forged["balance"] = "vip".into();
    forged["services"] = serde_json::json!({ "web": t.c1.addr });
    etcd_refuses(&["put", &app_key, &forged.to_string()]);
    etcd_refuses(&["put", "/pn/admissions", r#"{"enforced":false}"#]);
    etcd_refuses(&["del", "/pn/admissions"]);
    etcd_refuses(&[
        "del",
        &format!(
            "/pn/networks/{}",
            victim.json(&["network", "list"])[0]["id"].as_str().unwrap()
        ),
    ]);

    // 2. Another host's container records: neither rewritten (pointed at
    // another namespace) nor deleted, in the new layout or the old.
    let index = |m: &Member| m.attached["index"].as_u64().unwrap();
    let c1_key = format!("/pn/on/h1/containers/{}/web/{}", t.app, index(&t.c1));
    let c3_key = format!("/pn/on/h3/containers/{}/web/{}", t.app, index(&t.c3));
    let mut pointed = get(&c1_key);
    pointed["netns"] = t.other.ns.name.clone().into();
    etcd_refuses(&["put", &c1_key, &pointed.to_string()]);
    etcd_refuses(&["del", &c3_key]);
    etcd_refuses(&["del", "/pn/on/h3/", "--prefix"]);
    let legacy = format!("/pn/containers/{}/web/{}", t.app, index(&t.c1));
    etcd_refuses(&["put", &legacy, &pointed.to_string()]);
    etcd_refuses(&["put", "/pn/hosts/h1", &get("/pn/hosts/h2").to_string()]);
    assert!(flows(), "after etcd's refusals");

    // 3. Its own agent places a container into the other tenant's network,
    // an app it was never admitted to: every agent refuses the record, and
    // the other tenant is not reachable from it.
    let intruder = Namespace::new(&format!("{p}-intruder"));
    let _ = attacker.cli(&[
        "container",
        "attach",
        "--app",
        &t.other_app,
        "--type",
        "web",
        "--netns",
        &intruder.name,
    ]);
    counted(
        "a container of an app not admitted",
        "container",
        "not_admitted",
        1,
    );
    let _other_server = net::tcp_echo_server(&t.other, 9000);
    assert!(
        !talks(&intruder, t.other.addr),
        "the intruder reached the other tenant"
    );

    // 4. Records in its own range that name another host, or take another
    // host's container key pointed at another namespace.
    let mut wrong_host = get(&c1_key);
    wrong_host["index"] = 90.into();
    let k90 = format!("{}/web/90", t.app);
    wrong_host["host_ifname"] = host_ifname(&t.app, 90).into();
    put(&format!("/pn/on/h2/containers/{k90}"), &wrong_host);
    counted("a record naming host h1", "container", "wrong_host", 1);
    let mut taken = get(&c1_key);
    taken["host"] = "h2".into();
    taken["netns"] = t.other.ns.name.clone().into();
    put(
        &format!("/pn/on/h2/containers/{}/web/{}", t.app, index(&t.c1)),
        &taken,
    );
    counted("c1's key taken", "container", "container_taken", 1);

    // 5. Its own host record: the victim's tunnel key, then a loopback
    // endpoint (both still its own to write; the view refuses them).
    let honest = get("/pn/hosts/h2");
    let mut own = honest.clone();
    own["public_key"] = get("/pn/hosts/h1")["public_key"].clone();
    put("/pn/hosts/h2", &own);
    counted("the victim's key copied", "host", "host_key_taken", 1);
    put("/pn/hosts/h2", &honest);
    assert!(eventually(WAIT, flows), "the honest record back");
    let mut own = honest.clone();
    own["advertise"] = "127.0.0.1:51871".into();
    put("/pn/hosts/h2", &own);
    counted("a loopback endpoint", "host", "endpoint", 1);
    put("/pn/hosts/h2", &honest);
    assert!(eventually(WAIT, flows), "the honest record back");

    // The other tenant's namespace is untouched; the attacker still runs
    // its own containers (its member of the shared app included).
    let addr = t.other.ns.ip(&["-4", "-o", "addr", "show", "pn0"]);
    assert!(
        addr.contains(&format!("{}/32", t.other.addr)) && addr.lines().count() == 1,
        "the other tenant's interface is untouched: {addr}"
    );
    assert!(talks(&t.c2, t.c3.addr), "the attacker's member of the app");
    assert!(t.mine.ns.ip(&["link", "show", "pn0"]).contains("pn0"));
    // Each refusal logged once by each agent.
    // (Container records: the leases its own agent's attach took in a
    // network it was not admitted to are refused too, `lease` `not_admitted`.)
    for h in [victim, far] {
        let log = h.log();
        for reason in ["not_admitted", "wrong_host", "container_taken"] {
            let refusal = format!("refused ({reason})");
            assert_eq!(
                log.lines()
                    .filter(|l| l.contains("/containers/") && l.contains(&refusal))
                    .count(),
                1,
                "{}: {reason}: {log}",
                h.id
            );
        }
    }
}

/// The host-side interface every agent derives from a container key.
fn host_ifname(app: &str, index: u32) -> String {
    pn_agent::model::ContainerKey {
        app: app.parse().unwrap(),
        ctype: "web".parse().unwrap(),
        index,
    }
    .host_ifname()
}

/// A fleet of an older release (container records without their host in
/// the key) keeps working on this release, and `pn-agent fleet migrate`
/// moves the records under their hosts without a connection noticing.
#[test]
fn an_older_fleets_records_are_read_then_migrated_without_a_gap() {
    let p = unique_prefix();
    let (f, (c1, c2, vip, _web)) = Fleet::tls_with_roles(&p, 2, |f| {
        let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
        let (net, app) = h1.network_and_app(&[]);
        let vip = h1.create_app_with(&net, &["--balance", "vip"]);
        let web = h1.member(&vip, "web", "vipweb");
        (
            h1.member(&app, "web", "c1"),
            h2.member(&app, "web", "c2"),
            vip,
            web,
        )
    });
    // A new type of a `vip` app on a host: its service address is the
    // operator's to give (a host may not write the app): the container is
    // recorded without one, and works.
    let _worker = f.hosts[0].member(&vip, "worker", "worker");
    let services = &f.hosts[0].json(&["app", "list"]);
    let listed = services
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == vip.as_str());
    assert!(
        listed.is_some_and(|a| a["services"].to_string().contains("web")
            && !a["services"].to_string().contains("worker")),
        "{services}"
    );
    assert!(eventually(WAIT, || f.hosts[1].container_count() == 4));
    let pki = f.pki.as_ref().unwrap();
    let root = |args: &[&str]| {
        let out = pki.etcdctl(&f.underlay, &pki.root, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Made legacy by hand: as an older release wrote them.
    let app = c1.attached["app"].as_str().unwrap().to_string();
    for (c, h) in [(&c1, "h1"), (&c2, "h2")] {
        let i = c.attached["index"].as_u64().unwrap();
        let new = format!("/pn/on/{h}/containers/{app}/web/{i}");
        let value = root(&["get", &new, "--print-value-only"]);
        root(&[
            "put",
            &format!("/pn/containers/{app}/web/{i}"),
            value.trim(),
        ]);
        root(&["del", &new]);
    }
    let _server = net::tcp_echo_server(&c2, 9000);
    for h in &f.hosts {
        assert!(eventually(WAIT, || h.container_count() == 4), "{}", h.id);
    }
    assert!(
        eventually(WAIT, || talks(&c1, c2.addr)),
        "legacy records work"
    );
    let out = f.operator(&["migrate"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 container record(s) moved"),
        "{out:?}"
    );
    assert!(
        root(&["get", "/pn/containers/", "--prefix", "--keys-only"])
            .trim()
            .is_empty()
    );
    assert!(root(&["get", "/pn/on/", "--prefix", "--keys-only"]).contains("/pn/on/h2/"));
    for h in &f.hosts {
        assert_eq!(h.container_count(), 4, "{}", h.id);
    }
    assert!(talks(&c1, c2.addr), "migrated records work");
}

/// A container record rewritten while its host's agent is down (by whoever
/// may write it: the host itself, the operator) is read fresh by the agent
/// that starts, with no earlier version to compare. The agent re-addresses
/// its container as the record says, but in the namespace it attached it
/// to (its own record in the state directory): the other tenant's
/// namespace the record names is untouched.
#[test]
fn a_record_rewritten_while_its_agent_is_down_touches_only_the_namespace_it_attached() {
    let p = unique_prefix();
    let mut f = Fleet::new(&p, 1);
    let h1 = &f.hosts[0];
    let app = h1.network_and_app(&[]).1;
    let c1 = h1.member(&app, "web", "c1");
    let other = h1.member(&h1.network_and_app(&[]).1, "web", "other");
    let key = format!(
        "/pn/on/h1/containers/{app}/web/{}",
        c1.attached["index"].as_u64().unwrap()
    );
    let out = f.etcdctl(&["get", &key, "--print-value-only"]);
    let mut record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let moved = Ipv4Addr::from(u32::from(c1.addr) + 50);
    record["netns"] = other.ns.name.clone().into();
    record["ip"] = moved.to_string().into();
    f.hosts[0].stop();
    // With its lease (a record of an address its host does not lease is
    // refused by every agent, `not_leased`).
    let net = record["network"].as_str().unwrap();
    let lease = serde_json::json!({"app": app, "ctype": "web",
        "index": c1.attached["index"], "host": "h1"});
    for (k, v) in [
        (format!("/pn/on/h1/ips/{net}/{moved}"), lease.to_string()),
        (key.clone(), record.to_string()),
    ] {
        assert!(f.etcdctl(&["put", &k, &v]).status.success());
    }
    f.hosts[0].start_again();
    let in_c1 = || c1.ns.ip(&["-4", "-o", "addr", "show", "pn0"]);
    assert!(
        eventually(WAIT, || in_c1().contains(&format!("{moved}/32"))),
        "c1 re-addressed in its own namespace: {}",
        in_c1()
    );
    let addr = other.ns.ip(&["-4", "-o", "addr", "show", "pn0"]);
    assert!(
        addr.contains(&format!("{}/32", other.addr)) && addr.lines().count() == 1,
        "the other tenant's interface is untouched: {addr}"
    );
}

/// A container an older release attached (no record of the agent's own in
/// its state directory) whose store record was pointed meanwhile at another
/// tenant's namespace, with a new address (and its lease): the agent does
/// not take the store's word for it (that namespace holds no interface
/// with the record's address), so it never re-addresses it.
#[test]
fn an_older_releases_container_pointed_at_another_namespace_is_not_adopted() {
    let p = unique_prefix();
    let mut f = Fleet::new(&p, 1);
    let h1 = &f.hosts[0];
    let app = h1.network_and_app(&[]).1;
    let c1 = h1.member(&app, "web", "c1");
    let other = h1.member(&h1.network_and_app(&[]).1, "web", "other");
    let key = format!(
        "/pn/on/h1/containers/{app}/web/{}",
        c1.attached["index"].as_u64().unwrap()
    );
    let out = f.etcdctl(&["get", &key, "--print-value-only"]);
    let mut record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let moved = Ipv4Addr::from(u32::from(c1.addr) + 50);
    record["netns"] = other.ns.name.clone().into();
    record["ip"] = moved.to_string().into();
    let net = record["network"].as_str().unwrap();
    let lease = serde_json::json!({"app": app, "ctype": "web",
        "index": c1.attached["index"], "host": "h1"});
    f.hosts[0].stop();
    let ifname = record["host_ifname"].as_str().unwrap();
    std::fs::remove_file(f.hosts[0].dir.join("state/attached").join(ifname)).unwrap();
    for (k, v) in [
        (format!("/pn/on/h1/ips/{net}/{moved}"), lease.to_string()),
        (key.clone(), record.to_string()),
    ] {
        assert!(f.etcdctl(&["put", &k, &v]).status.success());
    }
    f.hosts[0].start_again();
    // Judged either way at start (`recorded in … as found` before).
    assert!(
        eventually(WAIT, || f.hosts[0].log().contains("as found")),
        "{}",
        f.hosts[0].log()
    );
    // A converge or two later, the other tenant's interface is as it was.
    std::thread::sleep(Duration::from_secs(2));
    let addr = other.ns.ip(&["-4", "-o", "addr", "show", "pn0"]);
    assert!(
        addr.contains(&format!("{}/32", other.addr)) && addr.lines().count() == 1,
        "the other tenant's interface is untouched: {addr}"
    );
    assert!(f.hosts[0].log().contains("not recorded as found"));
}

/// A host that joins later: `pn-agent fleet grant-host` as etcd's root
/// gives it its user and role, the operator admits it to an app, and it
/// runs that app's containers; its certificate writes nothing of another
/// host's.
#[test]
fn a_host_granted_later_runs_its_containers_and_writes_only_its_own() {
    let p = unique_prefix();
    let (f, (app, c1)) = Fleet::tls_with_roles(&p, 3, |f| {
        let (_, app) = f.hosts[0].network_and_app(&[]);
        let c1 = f.hosts[0].member(&app, "web", "c1");
        (app, c1)
    });
    let pki = f.pki.as_ref().unwrap();
    let h4_pair = pki.pki.issue(&pki.ca, "h4", &[]);
    let mut h4 = f.plumb(&p, 4);
    let mut flags = vec![
        "--store".to_string(),
        format!("etcds://{}", f.etcd.endpoint_list()),
        "--etcd-cacert".into(),
        pki.ca.crt().into(),
        "--etcd-cert".into(),
        h4_pair.crt().into(),
        "--etcd-key".into(),
        h4_pair.key().into(),
    ];
    flags.extend(Fleet::tunnel_flags(4));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Not granted yet: etcd has no user h4.
    let out = h4.run_to_exit(&flags, Duration::from_secs(20));
    assert_ne!(out.code, 0, "an ungranted host started: {}", out.stderr);
    let out = pki.fleet(&f.underlay, &pki.root, &["grant-host", "h4"]);
    assert!(out.status.success(), "grant-host: {out:?}");
    let out = f.operator(&["admit", &app, "h4"]);
    assert!(out.status.success(), "admit: {out:?}");
    h4.launch(&flags);
    let c4 = h4.member(&app, "web", "c4");
    let _server = net::tcp_echo_server(&c1, 9000);
    assert!(
        eventually(WAIT, || talks(&c4, c1.addr)),
        "h4's container reaches h1's"
    );
    for h in f.hosts.iter().chain([&h4]) {
        assert!(eventually(WAIT, || h.container_count() == 2), "{}", h.id);
    }
    // Its certificate writes its own records only.
    let c1_key = format!(
        "/pn/on/h1/containers/{app}/web/{}",
        c1.attached["index"].as_u64().unwrap()
    );
    let record = pki.etcdctl(
        &f.underlay,
        &h4_pair,
        &["get", &c1_key, "--print-value-only"],
    );
    let record = String::from_utf8_lossy(&record.stdout).trim().to_string();
    assert!(
        record.contains("\"host\""),
        "h4 reads the membership: {record}"
    );
    for args in [
        vec!["del", c1_key.as_str()],
        vec!["put", c1_key.as_str(), record.as_str()],
        vec!["del", "/pn/on/h2/", "--prefix"],
        vec!["put", "/pn/hosts/h1", "{}"],
        vec!["put", "/pn/admissions", r#"{"enforced":false}"#],
    ] {
        let out = pki.etcdctl(&f.underlay, &h4_pair, &args);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "etcd let h4 {args:?}: {out:?}"
        );
    }
    assert!(talks(&c4, c1.addr), "after the refusals");
    assert_eq!(f.hosts[0].container_count(), 2);
}
