//! The seed's use case end to end: an nginx WAF in network A proxies by
//! private name to two backend containers on port 3000; nobody else reaches
//! the backends.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use pn_tests::{
    Host, eventually, net,
    nginx::{curl, nginx},
    unique_prefix,
};

#[test]
fn a_waf_reaches_hidden_backends_by_private_name_and_nobody_else_does() {
    let host = Host::start(&unique_prefix(), "h1");
    let net_a = host.create_network(&[]);
    let waf_app = host.create_app_with(&net_a, &["--name", "waf"]);
    let backend_app = host.create_app_with(&net_a, &["--name", "backend"]);
    let waf = host.member(&waf_app, "web", "waf");
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=2 {
        let be = host.member(&backend_app, "myappbackend", &format!("be{i}"));
        servers.push(net::http_server(&be, 3000, &format!("backend-{i}")));
        backends.push(be);
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
    let (_, other_app) = host.network_and_app(&[]);
    let other = host.member(&other_app, "web", "oth");
    for be in &backends {
        assert_eq!(
            curl(&other, &format!("http://{}:3000/", be.addr)),
            None,
            "network B reached a backend"
        );
    }
    // …nor can it resolve their name.
    let out = other.exec(&["dig", "+time=2", "+tries=1", &name]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: REFUSED"));
    // …nor can a namespace outside every network.
    let outside = host.plug("out", "out0", 78, "10.240.0.0/12");
    for be in &backends {
        assert!(
            net::tcp_echo(
                &outside,
                SocketAddr::from((be.addr, 3000)),
                b"GET / HTTP/1.0\r\n\r\n",
                Duration::from_millis(800)
            )
            .is_err(),
            "an outsider reached a backend"
        );
    }
    assert!(host.packets(&backend_app, "myappbackend-1", "delivered") > 0);
}
