//! The seed's use case end to end: an nginx WAF in network A proxies by
//! private name to two backend containers on port 3000; nobody else reaches
//! the backends.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace, eventually, net,
    nginx::{curl, nginx},
    unique_prefix,
};

#[test]
fn a_waf_reaches_hidden_backends_by_private_name_and_nobody_else_does() {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let net_a = host.create_network(&[]);
    let waf_app = host
        .cli_ok(&["app", "create", "--network", &net_a, "--name", "waf"])
        .trim()
        .to_string();
    let backend_app = host
        .cli_ok(&["app", "create", "--network", &net_a, "--name", "backend"])
        .trim()
        .to_string();
    let waf = Namespace::new(&format!("{p}-waf"));
    host.attach(&waf_app, "web", &waf);
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let mut backend_ips = Vec::new();
    for i in 1..=2 {
        let ns = Namespace::new(&format!("{p}-be{i}"));
        let v = host.attach(&backend_app, "myappbackend", &ns);
        backend_ips.push(
            v["ip"]
                .as_str()
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .unwrap(),
        );
        servers.push(net::http_server(&ns, 3000, &format!("backend-{i}")));
        backends.push(ns);
    }
    let name = format!("myappbackend.{backend_app}.{net_a}.private-network.internal");
    let _nginx = nginx(&waf, &name);
    assert!(
        eventually(Duration::from_secs(10), || curl(
            &waf,
            "http://127.0.0.1:8080/"
        )
        .is_some()),
        "nginx did not come up"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        if let Some(body) = curl(&waf, "http://127.0.0.1:8080/") {
            seen.insert(body);
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["backend-1".to_string(), "backend-2".to_string()]),
        "nginx reaches both backends through the private name"
    );
    // A container of another network cannot reach the backends…
    let net_b = host.create_network(&[]);
    let other_app = host.create_app(&net_b);
    let other = Namespace::new(&format!("{p}-oth"));
    host.attach(&other_app, "web", &other);
    for ip in &backend_ips {
        assert_eq!(
            curl(&other, &format!("http://{ip}:3000/")),
            None,
            "network B reached a backend"
        );
    }
    // …nor can it resolve their name.
    let out = other.exec(&["dig", "+time=2", "+tries=1", &name]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: REFUSED"));
    // …nor can a namespace outside every network.
    let outside = Namespace::new(&format!("{p}-out"));
    let hif = format!("{}o", &p[..p.len().min(12)]);
    host.ns.ip(&[
        "link",
        "add",
        &hif,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    host.ns.ip(&["addr", "add", "192.168.78.1/24", "dev", &hif]);
    host.ns.ip(&["link", "set", &hif, "up"]);
    outside.ip(&["addr", "add", "192.168.78.2/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    outside.ip(&["route", "add", "10.240.0.0/12", "via", "192.168.78.1"]);
    for ip in &backend_ips {
        assert!(
            net::tcp_echo(
                &outside,
                SocketAddr::from((*ip, 3000)),
                b"GET / HTTP/1.0\r\n\r\n",
                Duration::from_millis(800)
            )
            .is_err(),
            "an outsider reached a backend"
        );
    }
    assert!(host.packets(&backend_app, "myappbackend-1", "delivered") > 0);
}
