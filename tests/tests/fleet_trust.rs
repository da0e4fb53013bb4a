//! One host of a TLS fleet turned attacker (its own certificate and role,
//! as README sets them up, and `etcdctl`) writes the records the view must
//! refuse: a service address over a member's and over the world's, the
//! other host's tunnel key, a loopback endpoint, another namespace for the
//! victim's container. Every agent refuses each one and counts it
//! (`pn_store_records_refused_total{kind,reason}`); the victim's
//! connections, local and across the tunnel, keep flowing, and the other
//! namespace is untouched.

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

fn ip_of(attached: &serde_json::Value) -> Ipv4Addr {
    attached["ip"].as_str().unwrap().parse().unwrap()
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

#[test]
fn an_attacker_hosts_forged_records_are_refused_and_the_victims_traffic_flows() {
    let p = unique_prefix();
    let f = Fleet::tls_with_roles(&p, 2);
    let (victim, attacker) = (&f.hosts[0], &f.hosts[1]);
    let pki = f.pki.as_ref().unwrap();
    let etcdctl = |args: &[&str]| {
        let out = pki.etcdctl(&f.underlay, &pki.hosts[1], args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let get = |key: &str| -> serde_json::Value {
        serde_json::from_str(&etcdctl(&["get", key, "--print-value-only"])).unwrap()
    };
    let put = |key: &str, v: &serde_json::Value| {
        etcdctl(&["put", key, &v.to_string()]);
    };

    let network = victim.create_network(&[]);
    let app = victim.create_app(&network);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let c1b = Namespace::new(&format!("{p}-c1b"));
    let c2 = Namespace::new(&format!("{p}-c2"));
    let a1 = victim.attach(&app, "web", &c1);
    let ip1 = ip_of(&a1);
    victim.attach(&app, "web", &c1b);
    let ip2 = ip_of(&attacker.attach(&app, "web", &c2));
    // The attacker's own app and container (no server): where a hijacked
    // connection would lead.
    let evil = attacker.create_app(&network);
    let c3 = Namespace::new(&format!("{p}-c3"));
    attacker.attach(&evil, "web", &c3);
    // Another tenant's container on the victim's host.
    let other_net = victim.create_network(&[]);
    let other_app = victim.create_app(&other_net);
    let other = Namespace::new(&format!("{p}-other"));
    let other_ip = ip_of(&victim.attach(&other_app, "web", &other));
    for h in [victim, attacker] {
        assert!(
            eventually(WAIT, || h
                .json(&["container", "list"])
                .as_array()
                .unwrap()
                .len()
                == 5),
            "{} lists every container",
            h.id
        );
    }
    let _servers: Vec<_> = [&c1, &c2]
        .iter()
        .map(|ns| net::tcp_echo_server(ns, 9000))
        .collect();
    let flows = || talks(&c1b, ip1) && talks(&c1, ip2) && talks(&c2, ip1);
    assert!(eventually(WAIT, flows), "the fleet works before the attack");
    // After each attack: every agent counted it once, and the victim's
    // connections, on its host and across the tunnel, flow.
    let survived = |what: &str, kind: &str, reason: &str| {
        for h in [victim, attacker] {
            assert!(
                eventually(WAIT, || refused(h, kind, reason) == 1),
                "{what}: {} did not count it: {}",
                h.id,
                h.metrics()
            );
        }
        assert!(flows(), "{what}: the victim's connections broke");
    };

    // 1. A service address over a member's (the victim's c1), then over
    // the world's.
    let evil_key = format!("/pn/apps/{evil}");
    let mut forged = get(&evil_key);
    forged["balance"] = "vip".into();
    forged["services"] = serde_json::json!({ "web": ip1 });
    put(&evil_key, &forged);
    survived("a service address over c1's", "app", "address_taken");
    forged["services"] = serde_json::json!({ "web": "1.1.1.1" });
    put(&evil_key, &forged);
    survived(
        "a service address over the world's",
        "app",
        "service_address",
    );

    // 2. The victim's tunnel key in the attacker's host record; then its
    // own again.
    let victim_record = get("/pn/hosts/h1");
    let honest = get("/pn/hosts/h2");
    let mut own = honest.clone();
    own["public_key"] = victim_record["public_key"].clone();
    put("/pn/hosts/h2", &own);
    survived("the victim's key copied", "host", "host_key_taken");
    put("/pn/hosts/h2", &honest);
    assert!(eventually(WAIT, flows), "the honest record back");

    // 3. Its endpoint on loopback: the victim would send its tunnel's
    // packets to itself.
    let mut own = honest.clone();
    own["advertise"] = "127.0.0.1:51871".into();
    put("/pn/hosts/h2", &own);
    survived("a loopback endpoint", "host", "endpoint");
    put("/pn/hosts/h2", &honest);
    assert!(eventually(WAIT, flows), "the honest record back");

    // 4. The victim's container record pointed at the other tenant's
    // namespace, with a new address; the attacker's host record written
    // again makes every agent converge everything.
    let index = a1["index"].as_u64().expect("attach JSON has the index");
    let key = format!("/pn/containers/{app}/web/{index}");
    let mut moved = get(&key);
    moved["netns"] = other.name.clone().into();
    moved["ip"] = Ipv4Addr::from(u32::from(ip1) + 100).to_string().into();
    put(&key, &moved);
    put("/pn/hosts/h2", &honest);
    survived(
        "c1's record pointed at another namespace",
        "container",
        "immutable",
    );
    let addr = other.ip(&["-4", "-o", "addr", "show", "pn0"]);
    assert!(
        addr.contains(&format!("{other_ip}/32")) && addr.lines().count() == 1,
        "the other tenant's interface is untouched: {addr}"
    );

    // Each refusal of the attacker's host record logged once.
    assert_eq!(
        victim
            .log()
            .matches("store record hosts/h2 refused")
            .count(),
        2,
        "{}",
        victim.log()
    );
}
