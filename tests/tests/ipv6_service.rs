//! IPv6 service addresses, the twins of `service.rs`: a `--balance vip`
//! app's type gets an IPv6 address in its network's /64 beside its IPv4
//! one, answered in AAAA, and connections to it are balanced per
//! connection in the kernel (`lb6`) to the backends' IPv6 addresses, with
//! replies from the service address, on one host and across two.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use pn_tests::{
    Host, Namespace, eventually, fleet::Fleet, metric_value, net, scenario::Member, unique_prefix,
};

const PORT: u16 = 8080;
const T: Duration = Duration::from_secs(3);
const ZONE: &str = "private-network.internal";

/// A `--balance vip` app in `net`, its `web` backends `b1…` attached on
/// `hosts` (one each, in order) answering on PORT (both families) with
/// their own address, and a client `cl` (a `worker` of another app of
/// `net`) on the first host.
struct Vip {
    svc: String,
    _servers: Vec<net::Server>,
    backends: Vec<Member>,
    client: Member,
}

fn vip_app(net: &str, hosts: &[&Host]) -> Vip {
    let h = hosts[0];
    let svc = h.create_app_with(net, &["--balance", "vip"]);
    let client_app = h.create_app(net);
    let backends: Vec<Member> = (hosts.iter().enumerate())
        .map(|(i, b)| b.member(&svc, "web", &format!("b{}", i + 1)))
        .collect();
    let servers = (backends.iter())
        .map(|b| net::tcp_whoami_self_server6(b, PORT))
        .collect();
    let client = h.member(&client_app, "worker", "cl");
    Vip {
        svc,
        _servers: servers,
        backends,
        client,
    }
}

fn ip6(m: &Member) -> Ipv6Addr {
    m.attached["ip6"]
        .as_str()
        .unwrap_or_else(|| panic!("no ip6 in {}", m.attached))
        .parse()
        .unwrap()
}

/// The service addresses of `ctype` (IPv4, IPv6) and its backends, from
/// `app list`.
fn service(host: &Host, app: &str, ctype: &str) -> Option<(Ipv4Addr, Ipv6Addr, usize)> {
    let list = host.json(&["app", "list"]);
    let a = list.as_array()?.iter().find(|a| a["id"] == app)?;
    let s = a["services"]
        .as_array()?
        .iter()
        .find(|s| s["type"] == ctype)?;
    let addr = s["addr"].as_str()?.parse().ok()?;
    let addr6 = s["addr6"].as_str()?.parse().ok()?;
    Some((addr, addr6, s["backends"].as_array()?.len()))
}

/// Which backend (by its IPv6 address) a new connection to `vip` reached.
fn who(client: &Namespace, vip: Ipv6Addr) -> Option<Ipv6Addr> {
    let (line, _) = net::tcp_whoami(client, SocketAddr::from((vip, PORT)), T).ok()?;
    line.parse().ok()
}

fn spread(client: &Namespace, vip: Ipv6Addr, n: usize) -> BTreeMap<Ipv6Addr, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let b = who(client, vip).expect("a connection through the IPv6 service address");
        *out.entry(b).or_default() += 1;
    }
    out
}

fn dig_short(ns: &Namespace, name: &str, qtype: &str) -> Vec<String> {
    let out = ns.exec(&["dig", "+time=2", "+tries=1", "+short", name, qtype]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn connections_to_an_ipv6_service_address_spread_stick_and_follow_the_rotation() {
    let host = Host::start(&unique_prefix(), "h1");
    let net_a = host.create_network(&[]);
    let (net_b, stranger_app) = host.network_and_app(&[]);
    let Vip {
        svc,
        mut _servers,
        backends,
        client,
    } = vip_app(&net_a, &[&host; 3]);
    let stranger = host.member(&stranger_app, "web", "st");
    let mut ips: Vec<Ipv6Addr> = backends.iter().map(ip6).collect();

    // Beside the IPv4 one, in the network's /64, no container's.
    let (vip4, vip, n) = service(&host, &svc, "web").expect("an IPv6 service address");
    assert_eq!(n, 3);
    assert!(!ips.contains(&vip), "the service address is no container's");
    assert_eq!(
        vip.segments()[..4],
        ips[0].segments()[..4],
        "{vip} in the network's /64"
    );
    // Answered in AAAA (the A record still the IPv4 one), not the backends'.
    let name = format!("{svc}.{net_a}.{ZONE}.");
    assert_eq!(dig_short(&client, &name, "AAAA"), [vip.to_string()]);
    assert_eq!(
        dig_short(&client, &format!("web.{svc}.{net_a}.{ZONE}."), "AAAA"),
        [vip.to_string()]
    );
    assert_eq!(dig_short(&client, &name, "A"), [vip4.to_string()]);

    // Connections of a client that never re-resolves: every backend a
    // share (IPv4's test holds ±20 % over 600; a looser bound here).
    let s = spread(&client, vip, 300);
    eprintln!("300 connections over IPv6: {s:?}");
    assert_eq!(s.len(), 3, "{s:?}");
    for (b, n) in &s {
        assert!((50..=150).contains(n), "{b}: {n} of 300 ({s:?})");
    }
    // IPv4 through its own service address goes on beside it.
    let (line, _) = net::tcp_whoami(&client, SocketAddr::from((vip4, PORT)), T)
        .expect("the IPv4 service address still balances");
    // (The servers listen on `[::]`: an IPv4 client's address is mapped.)
    let seen = line.trim_start_matches("::ffff:");
    assert!(
        backends.iter().any(|b| b.addr.to_string() == seen),
        "{line}"
    );

    // A connection keeps its backend through a backend added, and its
    // replies come from the service address.
    let (first, mut kept) =
        net::tcp_whoami(&client, SocketAddr::from((vip, PORT)), T).expect("connect");
    assert_eq!(kept.peer_addr().unwrap(), SocketAddr::from((vip, PORT)));
    let b4 = host.member(&svc, "web", "b4");
    ips.push(ip6(&b4));
    _servers.push(net::tcp_whoami_self_server6(&b4, PORT));
    assert!(eventually(T, || service(&host, &svc, "web")
        .is_some_and(|(_, _, n)| n == 4)));
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
        "a stranger of {net_b} reached the service"
    );
    assert!(
        host.packets(&stranger_app, "web-1", "policy_denied") > 0,
        "the stranger's packets are dropped as policy_denied"
    );

    // Back to dns: both addresses freed, the names answer containers.
    host.cli_ok(&["app", "update", &svc, "--balance", "dns"]);
    assert!(service(&host, &svc, "web").is_none());
    assert!(
        who(&client, vip).is_none(),
        "the freed address reaches nobody"
    );
    assert_eq!(dig_short(&client, &name, "AAAA").len(), 3);
}

#[test]
fn a_connection_to_a_detached_ipv6_backend_is_reset_not_left_to_hang() {
    let host = Host::start(&unique_prefix(), "h1");
    let net = host.create_network(&[]);
    let v = vip_app(&net, &[&host; 3]);
    let (svc, client) = (&v.svc, &v.client);
    let ips: Vec<Ipv6Addr> = v.backends.iter().map(ip6).collect();
    let (_, vip, _) = service(&host, svc, "web").expect("an IPv6 service address");

    let (first, mut kept) =
        net::tcp_whoami(client, SocketAddr::from((vip, PORT)), T).expect("connect");
    net::echo_on(&mut kept, b"before").expect("echo before the detach");
    let first: Ipv6Addr = first.parse().unwrap();
    let index = ips.iter().position(|ip| *ip == first).unwrap() + 1;
    host.cli_ok(&[
        "container",
        "detach",
        "--app",
        svc,
        "--type",
        "web",
        "--index",
        &index.to_string(),
    ]);
    assert!(eventually(T, || service(&host, svc, "web")
        .is_some_and(|(_, _, n)| n == 2)));
    let sent = Instant::now();
    let err = net::echo_on(&mut kept, b"after").expect_err("the removed backend cannot answer");
    eprintln!("after the detach: {:?} in {:?}", err.kind(), sent.elapsed());
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "reset, not a hang ({err})"
    );
    // New connections go on to the others.
    let s = spread(client, vip, 40);
    assert!(!s.contains_key(&first), "{s:?}");
    // Counted in `app list` on the backends (rows named by their IPv4
    // address, both families summed) while they are members: the 40 new
    // connections; the one that left keeps a row under its IPv6 address:
    // the first connection, and its reset.
    let counters = || -> Vec<serde_json::Value> {
        let list = host.json(&["app", "list"]);
        list.as_array()
            .and_then(|l| l.iter().find(|a| a["id"] == svc.as_str()))
            .and_then(|a| a["services"][0]["counters"].as_array().cloned())
            .unwrap_or_default()
    };
    let rows = counters();
    let total: u64 = rows.iter().filter_map(|c| c["connections"].as_u64()).sum();
    assert_eq!(total, 41, "{rows:?}");
    let gone = rows
        .iter()
        .find(|c| c["backend"] == first.to_string().as_str())
        .unwrap_or_else(|| panic!("a row for {first} that left in {rows:?}"));
    assert_eq!(
        (gone["connections"].as_u64(), gone["resets"].as_u64()),
        (Some(1), Some(1)),
        "{rows:?}"
    );
    // The metrics have rows of the IPv6 address of their own, the backend
    // that left included (labelled by IPv6 addresses): its one reset, and
    // the 40 new connections on the others.
    let metrics = host.metrics();
    let value = |name: &str, backend: Ipv6Addr| -> Option<u64> {
        let line = metrics.lines().find(|l| {
            l.starts_with(name)
                && l.contains(&format!("addr=\"{vip}\""))
                && l.contains(&format!("backend=\"{backend}\""))
        })?;
        line.rsplit(' ').next()?.parse().ok()
    };
    assert_eq!(
        value("pn_service_resets_total", first),
        Some(1),
        "one reset counted on {first} in:\n{metrics}"
    );
    let new: u64 = ips
        .iter()
        .filter(|ip| **ip != first)
        .filter_map(|ip| value("pn_service_connections_total", *ip))
        .sum();
    assert_eq!(new, 40, "{metrics}");
}

#[test]
fn an_ipv6_service_address_balances_over_backends_on_two_hosts() {
    let f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let net = h1.create_network(&[]);
    // Backends 1 and 2 on host 1 (the client's), 3 and 4 on host 2.
    let v = vip_app(&net, &[h1, h1, h2, h2]);
    let (svc, client) = (&v.svc, &v.client);
    let ips: Vec<Ipv6Addr> = v.backends.iter().map(ip6).collect();
    let (local, remote) = ips.split_at(2);
    let long = Duration::from_secs(10);
    assert!(eventually(long, || service(h1, svc, "web")
        .is_some_and(|(_, _, n)| n == 4)));
    let (_, vip, _) = service(h1, svc, "web").unwrap();
    // The tunnel to host 2 is up once a remote backend answers directly.
    assert!(eventually(long, || net::tcp_whoami(
        client,
        SocketAddr::from((remote[0], PORT)),
        T
    )
    .is_ok()));

    // Every connection opens (its replies come from the service address,
    // else the client's stack would refuse them) and echoes; both hosts'
    // backends get a share.
    let mut s: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
    for _ in 0..200 {
        let (line, mut conn) = net::tcp_whoami(client, SocketAddr::from((vip, PORT)), T)
            .expect("a connection through the IPv6 service address");
        assert_eq!(conn.peer_addr().unwrap(), SocketAddr::from((vip, PORT)));
        net::echo_on(&mut conn, b"via the service").expect("echo through the service");
        *s.entry(line.parse().unwrap()).or_default() += 1;
    }
    eprintln!("200 connections from host 1: {s:?} (local {local:?}, remote {remote:?})");
    assert_eq!(s.len(), 4, "{s:?}");
    for (b, n) in &s {
        assert!(*n >= 20, "{b}: {n} of 200 ({s:?})");
    }
}

/// Whoever can write the store (here anyone reaching the plain-text etcd)
/// forges an app whose IPv6 service address is a member's: every agent
/// refuses the record, counts it, and the member's connections go on.
#[test]
fn a_forged_ipv6_service_address_over_a_member_is_refused() {
    let f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let net = h1.create_network(&[]);
    let v = vip_app(&net, &[h2]);
    let victim = &v.backends[0];
    let victim6 = ip6(victim);
    let (_, vip, _) = service(h1, &v.svc, "web").expect("an IPv6 service address");
    let long = Duration::from_secs(10);
    assert!(eventually(long, || who(&v.client, victim6) == Some(victim6)));

    let evil = h1.create_app(&net);
    let key = format!("/pn/apps/{evil}");
    let out = f.etcdctl(&["get", &key, "--print-value-only"]);
    let mut forged: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the app record");
    forged["balance"] = "vip".into();
    // An IPv6 address over a member's is what this test is about: the IPv4
    // one is a free address of the network (IPv4's check has its test).
    let free4 = {
        let o = victim.addr.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 200)
    };
    forged["services"] = serde_json::json!({ "web": free4.to_string() });
    forged["services6"] = serde_json::json!({ "web": victim6.to_string() });
    let put = f.etcdctl(&["put", &key, &forged.to_string()]);
    assert!(put.status.success(), "{put:?}");
    for h in [h1, h2] {
        assert!(
            eventually(long, || metric_value(
                &h.metrics(),
                "pn_store_records_refused_total",
                &[("kind", "app"), ("reason", "address_taken")]
            ) == 1),
            "{} did not count the forged app: {}",
            h.id,
            h.metrics()
        );
    }
    // The victim still answers as itself, the real service still balances.
    assert_eq!(who(&v.client, victim6), Some(victim6));
    assert_eq!(who(&v.client, vip), Some(victim6));
}

/// An upgrade: a vip app made while its host ran without IPv6 (a network
/// without a range, a service address without a twin) gains its IPv6
/// service address when the host restarts with IPv6 on, without a new
/// attach; its IPv4 one stays, and both balance.
#[test]
fn an_existing_service_gains_an_ipv6_address_on_restart() {
    let mut host = Host::start_with(&unique_prefix(), "h1", &["--ipv6", "off"]);
    let net = host.create_network(&[]);
    let v = vip_app(&net, &[&host; 2]);
    let (svc, client) = (&v.svc, &v.client);
    let ipv4 = |host: &Host| -> Option<Ipv4Addr> {
        let list = host.json(&["app", "list"]);
        let a = list.as_array()?.iter().find(|a| a["id"] == svc.as_str())?;
        a["services"][0]["addr"].as_str()?.parse().ok()
    };
    let vip4 = ipv4(&host).expect("an IPv4 service address");
    assert!(service(&host, svc, "web").is_none(), "no IPv6 twin yet");
    host.stop();
    host.launch(&[]);
    let long = Duration::from_secs(15);
    assert!(
        eventually(long, || service(&host, svc, "web").is_some()),
        "{}",
        host.json(&["app", "list"])
    );
    let (again4, vip, _) = service(&host, svc, "web").unwrap();
    assert_eq!(again4, vip4, "the IPv4 service address stays");
    let name = format!("{svc}.{net}.{ZONE}.");
    assert!(eventually(long, || dig_short(client, &name, "AAAA")
        == [vip.to_string()]));
    // Both backends gained IPv6 addresses and take connections over it.
    assert!(eventually(long, || spread(client, vip, 40).len() == 2));
    let (line, _) = net::tcp_whoami(client, SocketAddr::from((vip4, PORT)), T)
        .expect("the IPv4 service address still balances");
    assert!(line.starts_with("::ffff:"), "{line}");
}

/// A service whose only backend runs on a `--ipv6 off` host: its IPv6
/// service address exists (the network has a range) but reaches nobody,
/// so AAAA names nothing while A names the IPv4 one, which balances across
/// the hosts; once a backend with an IPv6 address joins, AAAA names the
/// twin, and connections to it reach only that backend.
#[test]
fn aaaa_names_a_service_address_only_while_a_backend_has_an_ipv6_address() {
    let mut f = Fleet::new(&unique_prefix(), 2);
    let flags = f.flags(2, &["--ipv6", "off"]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    f.hosts[1].stop();
    f.hosts[1].launch(&refs);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let net = h1.create_network(&[]);
    let svc = h1.create_app_with(&net, &["--balance", "vip"]);
    let client_app = h1.create_app(&net);
    let b1 = h2.member(&svc, "web", "b1");
    assert!(b1.attached["ip6"].is_null(), "{}", b1.attached);
    let _s1 = net::tcp_whoami_self_server6(&b1, PORT);
    let client = h1.member(&client_app, "worker", "cl");
    let long = Duration::from_secs(10);
    let name = format!("{svc}.{net}.{ZONE}.");
    let vip4 = || -> Option<Ipv4Addr> {
        let list = h1.json(&["app", "list"]);
        let a = list.as_array()?.iter().find(|a| a["id"] == svc.as_str())?;
        a["services"][0]["addr"].as_str()?.parse().ok()
    };
    assert!(eventually(long, || vip4().is_some_and(|v| dig_short(
        &client, &name, "A"
    ) == [
        v.to_string()
    ])));
    assert!(
        dig_short(&client, &name, "AAAA").is_empty(),
        "AAAA names an address no backend can take"
    );
    let vip4 = vip4().unwrap();
    let reached = eventually(long, || {
        net::tcp_whoami(&client, SocketAddr::from((vip4, PORT)), T)
            .is_ok_and(|(line, _)| line.trim_start_matches("::ffff:") == b1.addr.to_string())
    });
    assert!(reached, "the IPv4 service address reaches b1 on h2");

    let b2 = h1.member(&svc, "web", "b2");
    let _s2 = net::tcp_whoami_self_server6(&b2, PORT);
    assert!(eventually(long, || service(h1, &svc, "web").is_some()));
    let (_, vip6, _) = service(h1, &svc, "web").unwrap();
    assert!(
        eventually(long, || dig_short(&client, &name, "AAAA")
            == [vip6.to_string()]),
        "AAAA names the twin once b2 has an IPv6 address"
    );
    let s = spread(&client, vip6, 20);
    assert_eq!(s.keys().copied().collect::<Vec<_>>(), [ip6(&b2)], "{s:?}");
}
