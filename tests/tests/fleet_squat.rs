//! Addresses squatted by an attacker host of a TLS fleet locked down by
//! `pn-agent fleet setup`, with its own `etcdctl` and certificate: a
//! container record of an address its host never leased (the allocator
//! only reads leases, so the victim's next attach is given that address:
//! the older record would keep it everywhere); leases in networks of apps
//! its host was not admitted to, or beyond its quota (which would exhaust
//! a tenant's range); its own host record put again and again (each put
//! made every agent run a full converge). Every agent refuses or ignores
//! them and counts each; the victims keep attaching and flowing.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{Host, Namespace, eventually, fleet::Fleet, metric_value, net, unique_prefix};

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

/// The attacker (h2, admitted to the app: it runs c2) records a container
/// at the address the victim's next attach will be given, without leasing
/// it. Every agent refuses it (`not_leased`), logged once; the victim's
/// attach gets the address and works across the tunnel.
#[test]
fn a_record_of_an_address_its_host_never_leased_is_refused() {
    let p = unique_prefix();
    let (mut f, (app, c1, c2, c3)) = Fleet::tls_with_roles(&p, 3, |f| {
        let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
        let app = h1.network_and_app(&[]).1;
        (
            app.clone(),
            h1.member(&app, "web", "c1"),
            h2.member(&app, "web", "c2"),
            h3.member(&app, "web", "c3"),
        )
    });
    // An honest agent would remove records of containers it never made.
    f.hosts[1].stop();
    let (victim, far) = (&f.hosts[0], &f.hosts[2]);
    let pki = f.pki.as_ref().unwrap();
    let as_attacker = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[1], args);
    let index = c2.attached["index"].as_u64().unwrap();
    let out = as_attacker(&[
        "get",
        &format!("/pn/on/h2/containers/{app}/web/{index}"),
        "--print-value-only",
    ]);
    let mut forged: serde_json::Value = serde_json::from_slice(&out.stdout).expect("c2's record");
    // The lowest free address: the next attach's.
    let squat = Ipv4Addr::from(
        [&c1, &c2, &c3]
            .map(|m| u32::from(m.addr))
            .into_iter()
            .max()
            .unwrap()
            + 1,
    );
    forged["index"] = 61.into();
    forged["host_ifname"] = host_ifname(&app, 61).into();
    forged["ip"] = squat.to_string().into();
    forged["ip6"] = serde_json::Value::Null;
    forged["netns"] = "squat".into();
    let out = as_attacker(&[
        "put",
        &format!("/pn/on/h2/containers/{app}/web/61"),
        &forged.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    // Taken in (an agent that does not check leases) or refused: either
    // way every agent has read it.
    for h in [victim, far] {
        assert!(
            eventually(WAIT, || refused(h, "container", "not_leased") == 1
                || h.container_count() == 4),
            "{}: {}",
            h.id,
            h.metrics()
        );
    }
    let _servers: Vec<_> = [&c1, &c3]
        .iter()
        .map(|m| net::tcp_echo_server(m, 9000))
        .collect();
    let c1c = victim.member(&app, "web", "c1c");
    assert_eq!(c1c.addr, squat, "the attach was given the squatted address");
    let _server = net::tcp_echo_server(&c1c, 9000);
    assert!(
        eventually(WAIT, || talks(&c3, c1c.addr) && talks(&c1c, c3.addr)),
        "c1c works across the tunnel: {}",
        far.metrics()
    );
    for h in [victim, far] {
        assert_eq!(refused(h, "container", "address_taken"), 0, "{}", h.id);
        assert_eq!(refused(h, "container", "not_leased"), 1, "{}", h.id);
    }
    assert_eq!(far.log().matches("refused (not_leased)").count(), 1);
}

/// The attacker (h2, admitted to the app of network 1 only) leases every
/// address of another tenant's network, and more of network 1 than twice
/// its quota, with `etcdctl put`s in its own range. Every agent ignores
/// and counts them (`lease` `not_admitted`, `quota`); the allocator skips
/// only its counted ones: the other tenant still attaches, network 1's next
/// attach takes the first address beyond them.
#[test]
fn leases_in_networks_of_no_admitted_app_or_beyond_the_quota_exhaust_nothing() {
    let p = unique_prefix();
    let (mut f, (app, vapp, vnet, c1, c2, c3, v1)) = Fleet::tls_with_roles(&p, 3, |f| {
        let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
        let app = h1.network_and_app(&[]).1;
        let vnet = h1.create_network(&["--cidr", "10.250.7.0/28"]);
        let vapp = h1.create_app(&vnet);
        let v1 = h1.member(&vapp, "web", "v1");
        // h3 runs the other tenant's too (admitted by `setup`).
        let v0 = h3.member(&vapp, "web", "v0");
        (
            app.clone(),
            vapp,
            vnet,
            h1.member(&app, "web", "c1"),
            h2.member(&app, "web", "c2"),
            h3.member(&app, "web", "c3"),
            (v1, v0),
        )
    });
    let (v1, _v0) = v1;
    // Eight leases per network and family counted per host.
    f.relaunch(&["--host-quota", "4"]);
    // Its own agent would release leases of containers it never attached.
    f.hosts[1].stop();
    let (victim, far) = (&f.hosts[0], &f.hosts[2]);
    let pki = f.pki.as_ref().unwrap();
    let as_attacker = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[1], args);
    let put = |key: String| {
        let lease = serde_json::json!({"app": app, "ctype": "web", "index": 90, "host": "h2"});
        let out = as_attacker(&["put", &key, &lease.to_string()]);
        assert!(out.status.success(), "{key}: {out:?}");
    };
    for i in 1..=14u8 {
        put(format!("/pn/on/h2/ips/{vnet}/10.250.7.{i}"));
    }
    let index = c2.attached["index"].as_u64().unwrap();
    let out = as_attacker(&[
        "get",
        &format!("/pn/on/h2/containers/{app}/web/{index}"),
        "--print-value-only",
    ]);
    let c2_rec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("c2's record");
    let net = c2_rec["network"].as_str().unwrap().to_string();
    let last = u32::from([&c1, &c2, &c3].map(|m| m.addr).into_iter().max().unwrap());
    // c2's lease and seven of these count; three do not.
    for n in 1..=10 {
        put(format!("/pn/on/h2/ips/{net}/{}", Ipv4Addr::from(last + n)));
    }
    let v3 = far.member(&vapp, "web", "v3");
    let _servers: Vec<_> = [&v1, &c1]
        .iter()
        .map(|m| net::tcp_echo_server(m, 9000))
        .collect();
    assert!(eventually(WAIT, || talks(&v3, v1.addr)), "v3 reaches v1");
    let c3b = far.member(&app, "web", "c3b");
    assert_eq!(c3b.addr, Ipv4Addr::from(last + 8), "the first uncounted");
    assert!(eventually(WAIT, || talks(&c3b, c1.addr)), "c3b reaches c1");
    for h in [victim, far] {
        assert!(
            eventually(WAIT, || refused(h, "lease", "not_admitted") == 14
                && refused(h, "lease", "quota") == 3),
            "{}: {}",
            h.id,
            h.metrics()
        );
    }
    let log = far.log();
    assert_eq!(log.matches("refused (quota)").count(), 3, "{log}");
}

fn host_updates(h: &Host, outcome: &str) -> u64 {
    metric_value(
        &h.metrics(),
        "pn_store_host_updates_total",
        &[("outcome", outcome)],
    )
}

/// The attacker re-puts its own host record in a loop (its to write): a
/// put that changes nothing agents use (peer id, key, endpoint) makes no
/// agent converge (`unchanged`); the victims keep flowing.
#[test]
fn a_host_record_put_again_and_again_converges_nothing() {
    let p = unique_prefix();
    let (f, (c1, c3)) = Fleet::tls_with_roles(&p, 3, |f| {
        let app = f.hosts[0].network_and_app(&[]).1;
        (
            f.hosts[0].member(&app, "web", "c1"),
            f.hosts[2].member(&app, "web", "c3"),
        )
    });
    let (victim, far) = (&f.hosts[0], &f.hosts[2]);
    let pki = f.pki.as_ref().unwrap();
    let as_attacker = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[1], args);
    let out = as_attacker(&["get", "/pn/hosts/h2", "--print-value-only"]);
    let mut record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("h2's record");
    let _server = net::tcp_echo_server(&c1, 9000);
    assert!(eventually(WAIT, || talks(&c3, c1.addr)), "c3 reaches c1");
    let before: Vec<u64> = [victim, far]
        .iter()
        .map(|h| host_updates(h, "converged"))
        .collect();
    for i in 0..30u64 {
        record["started_at"] = i.into();
        let out = as_attacker(&["put", "/pn/hosts/h2", &record.to_string()]);
        assert!(out.status.success(), "{out:?}");
    }
    for (h, was) in [victim, far].into_iter().zip(before) {
        assert!(
            eventually(WAIT, || host_updates(h, "unchanged") == 30),
            "{}: {}",
            h.id,
            h.metrics()
        );
        assert_eq!(host_updates(h, "converged"), was, "{}", h.id);
    }
    assert!(talks(&c3, c1.addr), "c3 still reaches c1");
}
