//! Service addresses (`app create --balance vip`): balanced per connection
//! in the kernel, at the client's side, with replies from the service
//! address.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{Host, Namespace, eventually, net, unique_prefix};

const PORT: u16 = 8080;
const T: Duration = Duration::from_secs(3);

fn ip_of(v: &serde_json::Value) -> Ipv4Addr {
    v["ip"].as_str().unwrap().parse().unwrap()
}

/// The service address of `ctype` and its backends, from `app list`.
fn service(host: &Host, app: &str, ctype: &str) -> Option<(Ipv4Addr, Vec<Ipv4Addr>)> {
    let list = host.json(&["app", "list"]);
    let a = list.as_array()?.iter().find(|a| a["id"] == app)?;
    let s = a["services"]
        .as_array()?
        .iter()
        .find(|s| s["type"] == ctype)?;
    let addr = s["addr"].as_str()?.parse().ok()?;
    let backends = s["backends"]
        .as_array()?
        .iter()
        .filter_map(|b| b.as_str()?.parse().ok())
        .collect();
    Some((addr, backends))
}

/// Which backend a new connection to `vip` reached.
fn who(client: &Namespace, vip: Ipv4Addr) -> Option<Ipv4Addr> {
    let (line, _) = net::tcp_whoami(client, SocketAddr::from((vip, PORT)), T).ok()?;
    line.parse().ok()
}

fn spread(client: &Namespace, vip: Ipv4Addr, n: usize) -> BTreeMap<Ipv4Addr, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let b = who(client, vip).expect("a connection through the service address");
        *out.entry(b).or_default() += 1;
    }
    out
}

#[test]
fn connections_to_a_service_address_spread_stick_and_follow_the_rotation() {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let net_a = host.create_network(&[]);
    let net_b = host.create_network(&[]);
    let svc = host
        .cli_ok(&["app", "create", "--network", &net_a, "--balance", "vip"])
        .trim()
        .to_string();
    let client_app = host.create_app(&net_a);
    let stranger_app = host.create_app(&net_b);
    let ns: Vec<Namespace> = (1..=4)
        .map(|i| Namespace::new(&format!("{p}-b{i}")))
        .collect();
    let client = Namespace::new(&format!("{p}-cl"));
    let stranger = Namespace::new(&format!("{p}-st"));
    let mut ips = Vec::new();
    let mut servers = Vec::new();
    for b in &ns[..3] {
        ips.push(ip_of(&host.attach(&svc, "web", b)));
        servers.push(net::tcp_whoami_self_server(b, PORT));
    }
    host.attach(&client_app, "worker", &client);
    host.attach(&stranger_app, "web", &stranger);

    let (vip, backends) = service(&host, &svc, "web").expect("a service address");
    assert!(!ips.contains(&vip), "the service address is no container's");
    assert_eq!(backends.len(), 3);

    // Connections of a client that never re-resolves: ±20 % each. 600
    // rather than the 300: with a random 5-tuple hash, 300 miss
    // ±20 % about once in 25 runs (2.4 sigma); 600 once in ~2 000.
    let s = spread(&client, vip, 600);
    assert_eq!(s.len(), 3, "{s:?}");
    for (b, n) in &s {
        assert!((160..=240).contains(n), "{b}: {n} of 600 ({s:?})");
    }

    // A connection keeps its backend through a backend added.
    let (first, mut kept) =
        net::tcp_whoami(&client, SocketAddr::from((vip, PORT)), T).expect("connect");
    ips.push(ip_of(&host.attach(&svc, "web", &ns[3])));
    servers.push(net::tcp_whoami_self_server(&ns[3], PORT));
    assert!(eventually(T, || service(&host, &svc, "web")
        .is_some_and(|(_, b)| b.len() == 4)));
    for _ in 0..20 {
        net::echo_on(&mut kept, b"still there").expect("the kept connection still answers");
    }
    let s = spread(&client, vip, 200);
    assert!(
        s.contains_key(&ips[3]),
        "the new backend gets connections: {s:?}"
    );
    drop(kept);
    assert!(ips.contains(&first.parse().unwrap()));

    // A backend detached gets no new connection from then on.
    host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &svc,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    let s = spread(&client, vip, 150);
    assert!(
        !s.contains_key(&ips[0]),
        "{} detached, still chosen: {s:?}",
        ips[0]
    );
    assert_eq!(s.len(), 3, "{s:?}");

    // Another network's member cannot use the service address.
    assert!(
        who(&stranger, vip).is_none(),
        "a stranger reached the service"
    );
    let denied = host.packets(&stranger_app, "web-1", "policy_denied");
    assert!(
        denied > 0,
        "the stranger's packets are dropped as policy_denied"
    );

    // Back to dns: the address is freed, the names answer containers again.
    host.cli_ok(&["app", "update", &svc, "--balance", "dns"]);
    assert!(service(&host, &svc, "web").is_none());
    assert!(
        who(&client, vip).is_none(),
        "the freed address reaches nobody"
    );
}
