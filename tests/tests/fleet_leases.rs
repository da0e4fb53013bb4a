//! Leases, claims and quotas against an attacker host of a TLS fleet
//! locked down by `pn-agent fleet setup`: address leases and container key
//! claims live in their host's range (`on/<host>/ips/…`, `on/<host>/claims/…`),
//! which etcd gives that host alone; a host's container records beyond its
//! quota (`--host-quota`) are refused by every agent; leases and claims of
//! an older release are migrated, and `fleet grant-host` takes back the
//! shared prefixes an older release's roles could write.

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

/// The host-side interface every agent derives from a container key.
fn host_ifname(app: &str, index: u32) -> String {
    pn_agent::model::ContainerKey {
        app: app.parse().unwrap(),
        ctype: "web".parse().unwrap(),
        index,
    }
    .host_ifname()
}

/// Leases and claims are in their host's range: the attacker, under its own
/// certificate, can neither delete nor rewrite the victim's (etcd refuses),
/// nor write shared ones; an address it leases in its own range is skipped
/// by the victim's next attach. Its container records beyond its quota
/// (`--host-quota`), the newest, are refused by every agent and counted;
/// its own agent refuses an attach over the quota; the victims keep
/// flowing and attaching.
#[test]
fn an_attacker_host_can_neither_free_anothers_leases_nor_run_beyond_its_quota() {
    let p = unique_prefix();
    let (mut f, (app, c1, c1b, c2, c3)) = Fleet::tls_with_roles(&p, 3, |f| {
        let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
        let app = h1.network_and_app(&[]).1;
        (
            app.clone(),
            h1.member(&app, "web", "c1"),
            h1.member(&app, "web", "c1b"),
            h2.member(&app, "web", "c2"),
            h3.member(&app, "web", "c3"),
        )
    });
    // Room for the victim's four containers; the attacker (h2, admitted
    // to the app: it runs c2) may run three more. Its agent stopped: an
    // honest one would remove records of containers it never made.
    f.relaunch(&["--host-quota", "4"]);
    f.hosts[1].stop();
    let (victim, far) = (&f.hosts[0], &f.hosts[2]);
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
    let _servers: Vec<_> = [&c1, &c3]
        .iter()
        .map(|m| net::tcp_echo_server(m, 9000))
        .collect();
    let flows = || talks(&c1b, c1.addr) && talks(&c1, c3.addr) && talks(&c3, c1.addr);
    assert!(eventually(WAIT, flows), "the fleet works once locked down");

    // 1. The victim's lease and claim: neither deleted nor rewritten; no
    // shared lease or claim written.
    let index = |m: &Member| m.attached["index"].as_u64().unwrap();
    let c1_rec = get(&format!("/pn/on/h1/containers/{app}/web/{}", index(&c1)));
    let net = c1_rec["network"].as_str().unwrap().to_string();
    let lease = format!("/pn/on/h1/ips/{net}/{}", c1.addr);
    let claim = format!("/pn/on/h1/claims/{app}/web/{}", index(&c1));
    let held = get(&lease);
    assert_eq!(get(&claim)["host"], "h1");
    etcd_refuses(&["del", &lease]);
    etcd_refuses(&["del", &claim]);
    etcd_refuses(&["del", "/pn/on/h1/ips/", "--prefix"]);
    etcd_refuses(&["put", &lease, &held.to_string().replace("h1", "h2")]);
    etcd_refuses(&[
        "put",
        &format!("/pn/ips/{net}/{}", c1.addr),
        &held.to_string(),
    ]);
    etcd_refuses(&[
        "put",
        &format!("/pn/claims/{app}/web/77"),
        &held.to_string(),
    ]);

    // 2. An address it leases in its own range is never the victim's.
    let last = [&c1, &c1b, &c2, &c3]
        .map(|m| u32::from(m.addr))
        .into_iter()
        .max();
    let squat = Ipv4Addr::from(last.unwrap() + 1);
    let mut squatting = held.clone();
    squatting["host"] = "h2".into();
    squatting["index"] = 77.into();
    put(&format!("/pn/on/h2/ips/{net}/{squat}"), &squatting);
    let c1c = victim.member(&app, "web", "c1c");
    assert_ne!(c1c.addr, squat, "the victim's attach took a leased address");
    assert!(eventually(WAIT, || talks(&c1c, c1.addr)), "c1c works");

    // 3. Container records beyond its quota, each of an address it leased
    // (agents refuse a record of an address its host never leased): the
    // newest refused everywhere.
    let c2_rec = get(&format!("/pn/on/h2/containers/{app}/web/{}", index(&c2)));
    for n in 0..5u32 {
        let i = 60 + n;
        let mut forged = c2_rec.clone();
        let ip = Ipv4Addr::from(u32::from(c1.addr) + 100 + n);
        put(&format!("/pn/on/h2/ips/{net}/{ip}"), &squatting);
        forged["index"] = i.into();
        forged["host_ifname"] = host_ifname(&app, i).into();
        forged["ip"] = ip.to_string().into();
        forged["ip6"] = serde_json::Value::Null;
        forged["netns"] = format!("forged{i}").into();
        put(&format!("/pn/on/h2/containers/{app}/web/{i}"), &forged);
    }
    for h in [victim, far] {
        assert!(
            eventually(WAIT, || refused(h, "container", "quota") == 2),
            "{}: {}",
            h.id,
            h.metrics()
        );
    }
    assert!(flows(), "after the flood");
    assert_eq!(
        far.container_count(),
        3 + 4 + 1,
        "the victim's, c3, the attacker's four"
    );
    // The victim still attaches, up to its own quota; its agent refuses
    // one more.
    let c1d = victim.member(&app, "web", "c1d");
    assert!(eventually(WAIT, || talks(&c1d, c1.addr)), "c1d works");
    let over = Namespace::new(&format!("{p}-over"));
    let out = victim.cli(&[
        "container",
        "attach",
        "--app",
        &app,
        "--type",
        "web",
        "--netns",
        &over.name,
    ]);
    assert!(
        out.code == 5 && out.stderr.contains("quota"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // Each refusal logged once.
    let log = far.log();
    assert_eq!(log.matches("refused (quota)").count(), 2, "{log}");
}

/// Address leases and claims as an older release wrote them (shared
/// `ips/`, `claims/`) are held until `pn-agent fleet migrate` moves them
/// into their hosts' ranges, nothing lost; `fleet grant-host` then takes
/// back a host's write access to the shared prefixes an older release's
/// roles gave it.
#[test]
fn an_older_fleets_leases_are_migrated_and_the_shared_prefixes_taken_back() {
    let p = unique_prefix();
    let (f, (app, c1)) = Fleet::tls_with_roles(&p, 2, |f| {
        let app = f.hosts[0].network_and_app(&[]).1;
        let c1 = f.hosts[0].member(&app, "web", "c1");
        (app, c1)
    });
    let pki = f.pki.as_ref().unwrap();
    let root = |args: &[&str]| {
        let out = pki.etcdctl(&f.underlay, &pki.root, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let as_h1 = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[0], args);
    // Made shared by hand, as an older release wrote them.
    let i = c1.attached["index"].as_u64().unwrap();
    let rec = root(&[
        "get",
        &format!("/pn/on/h1/containers/{app}/web/{i}"),
        "--print-value-only",
    ]);
    let rec: serde_json::Value = serde_json::from_str(rec.trim()).unwrap();
    let net = rec["network"].as_str().unwrap();
    let moves = [
        (
            format!("/pn/on/h1/ips/{net}/{}", c1.addr),
            format!("/pn/ips/{net}/{}", c1.addr),
        ),
        (
            format!("/pn/on/h1/claims/{app}/web/{i}"),
            format!("/pn/claims/{app}/web/{i}"),
        ),
    ];
    for (new, old) in &moves {
        let value = root(&["get", new, "--print-value-only"]);
        root(&["put", old, value.trim()]);
        root(&["del", new]);
    }
    // Held meanwhile: another host's attach takes another address.
    let out = f.operator(&["admit", &app, "h2"]);
    assert!(out.status.success(), "{out:?}");
    let c2 = f.hosts[1].member(&app, "web", "c2");
    assert_ne!(c2.addr, c1.addr);
    assert_ne!(c2.attached["index"].as_u64().unwrap(), i);
    let _server = net::tcp_echo_server(&c1, 9000);
    assert!(eventually(WAIT, || talks(&c2, c1.addr)), "c2 reaches c1");
    let out = f.operator(&["migrate"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 address lease(s) and claim(s) moved"),
        "{out:?}"
    );
    for (new, old) in &moves {
        assert!(root(&["get", old]).trim().is_empty(), "{old} left");
        assert!(root(&["get", new]).contains("h1"), "{new} lost");
    }
    // A role of an older release could write the shared prefixes:
    // `grant-host` takes that back.
    root(&[
        "role",
        "grant-permission",
        "pn-host-h1",
        "readwrite",
        "/pn/ips/",
        "--prefix",
    ]);
    let probe = format!("/pn/ips/{net}/10.255.255.1");
    assert!(as_h1(&["put", &probe, "{}"]).status.success());
    root(&["del", &probe]);
    let out = pki.fleet(&f.underlay, &pki.root, &["grant-host", "h1"]);
    assert!(out.status.success(), "{out:?}");
    let out = as_h1(&["put", &probe, "{}"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );
    // Its container detaches, every key of it gone.
    let i = i.to_string();
    f.hosts[0].cli_ok(&[
        "container",
        "detach",
        "--app",
        &app,
        "--type",
        "web",
        "--index",
        &i,
    ]);
    for (new, _) in &moves {
        assert!(root(&["get", new]).trim().is_empty(), "{new} left");
    }
}
