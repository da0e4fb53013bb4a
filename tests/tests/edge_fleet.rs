//! The edge across a fleet: two hosts on an underlay bridge with real etcd,
//! the world behind the underlay's gateway, a router and a stranger on the
//! underlay. Each host translates its own containers; the seed's WAF is
//! queried from the public side through its host's published port and
//! proxies by private name to a backend on the other host.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use pn_tests::{
    bulk,
    edge::{FLEET_ROUTER, FLEET_STRANGER, FleetOutside, WORLD, listed, published},
    eventually,
    fleet::{Fleet, UNDERLAY_NET},
    metric_value, net,
    nginx::{curl, nginx},
    scenario::OneApp,
    unique_prefix,
};

const WAIT: Duration = Duration::from_secs(5);

/// One fleet at a time: the 1 GB transfer through one host's NAT keeps both
/// cores' softirq busy, and a fleet started beside it missed etcd's 2 s
/// keepalive and its stranger's SYNs (a flake seen twice in full runs).
static ONE_FLEET: Mutex<()> = Mutex::new(());

fn one_fleet() -> MutexGuard<'static, ()> {
    ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner())
}
const FAIL: Duration = Duration::from_millis(800);

fn fleet() -> (Fleet, FleetOutside) {
    let p = unique_prefix();
    let f = Fleet::with_flags(&p, 2, &["--router-cidr", &format!("{FLEET_ROUTER}/32")]);
    let o = FleetOutside::around(&p, &f);
    (f, o)
}

fn host_addr(i: usize) -> String {
    format!("{UNDERLAY_NET}.{i}")
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// How many bytes the long transfer carries: 1 GB, as the issue asks,
/// unless `PN_EDGE_TRANSFER_BYTES` says otherwise.
fn transfer_bytes() -> u64 {
    std::env::var("PN_EDGE_TRANSFER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000_000)
}

#[test]
fn each_host_translates_its_own_containers_and_long_transfers_arrive_whole() {
    let _one = one_fleet();
    let (f, o) = fleet();
    let OneApp { app, c1, c2, .. } = OneApp::new(&f.hosts[0], &f.hosts[1], ["worker", "worker"]);
    let _who = net::tcp_whoami_server(&o.world, 7000);
    assert_eq!(
        net::tcp_whoami(&c1, sa(WORLD, 7000), WAIT).unwrap().0,
        host_addr(1)
    );
    assert_eq!(
        net::tcp_whoami(&c2, sa(WORLD, 7000), WAIT).unwrap().0,
        host_addr(2)
    );
    // Members still reach each other through the tunnel, untranslated.
    let _echo = net::tcp_whoami_server(&c2, 5000);
    let seen = eventually(Duration::from_secs(10), || {
        net::tcp_whoami(&c1, SocketAddr::from((c2.addr, 5000)), FAIL)
            .is_ok_and(|(who, _)| who == c1.addr.to_string())
    });
    assert!(seen, "c1 reaches c2 with its own address");
    // A long download from the world, every byte checked.
    let bytes = transfer_bytes();
    let _source = bulk::tcp_source_server(&o.world, 7100, bytes);
    let t = Instant::now();
    let got = bulk::tcp_download(&c2, sa(WORLD, 7100), Duration::from_secs(10))
        .expect("the transfer completes, every byte right");
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "transfer from the world: {got} bytes in {secs:.1}s ({:.2} Gbit/s)",
        got as f64 * 8.0 / secs / 1e9
    );
    assert_eq!(got, bytes);
    assert!(
        f.hosts[1].packets(&app, "worker-2", "egress") > 0,
        "counted on c2's host"
    );
    assert_eq!(f.hosts[1].packets(&app, "worker-2", "not_member"), 0);
    // The hosts route nothing else: the stranger's way to the world
    // through h1 is closed, and counted.
    assert!(net::tcp_whoami(&o.stranger, sa(WORLD, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || metric_value(
        &f.hosts[0].metrics(),
        "pn_edge_dropped_packets_total",
        &[("reason", "forward_denied")]
    ) > 0));
}

/// Hosts that forwarded before their agents (most container hosts): pn
/// leaves their routing alone unless asked; with `--forward-guard on` they
/// route nothing but pn's traffic, and pn's containers still reach the
/// world and its routers the published ports.
#[test]
fn hosts_that_forwarded_before_pn_route_strangers_only_without_the_guard() {
    let _one = one_fleet();
    let p = unique_prefix();
    let flags = ["--router-cidr", &format!("{FLEET_ROUTER}/32")];
    let mut f = Fleet::forwarding_before(&p, 2, &flags);
    let o = FleetOutside::around(&p, &f);
    let _who = net::tcp_whoami_server(&o.world, 7000);
    assert_eq!(
        net::tcp_whoami(&o.stranger, sa(WORLD, 7000), WAIT)
            .unwrap()
            .0,
        FLEET_STRANGER,
        "without the guard, the host routes for others as it did before pn"
    );
    let guarded = [flags[0], flags[1], "--forward-guard", "on"];
    f.relaunch(&guarded);
    let net_id = f.hosts[0].create_network(&[]);
    let app = f.hosts[0].create_app(&net_id);
    let web = f.hosts[0].member(&app, "web", "w");
    let public = published(&web.attached).expect("published");
    let _web = net::tcp_whoami_server(&web, 8080);
    assert_eq!(
        net::tcp_whoami(&web, sa(WORLD, 7000), WAIT).unwrap().0,
        host_addr(1)
    );
    assert_eq!(
        net::tcp_whoami(&o.router, public, WAIT).unwrap().0,
        FLEET_ROUTER
    );
    assert!(net::tcp_whoami(&o.stranger, sa(WORLD, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || metric_value(
        &f.hosts[0].metrics(),
        "pn_edge_dropped_packets_total",
        &[("reason", "forward_denied")]
    ) > 0));
    assert_eq!(
        f.hosts[0].json(&["status"])["edge"]["forwarding"],
        "pn-only"
    );
}

#[test]
fn the_seeds_waf_answers_the_public_side_and_hides_its_backend() {
    let _one = one_fleet();
    let (f, o) = fleet();
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let net_a = h1.create_network(&[]);
    let waf_app = h1.create_app_with(&net_a, &["--name", "waf"]);
    let backend_app = h1.create_app_with(&net_a, &["--name", "backend", "--web-port", "3000"]);
    let waf = h1.member(&waf_app, "web", "waf");
    let public = published(&waf.attached).expect("the waf is published");
    assert_eq!(public.ip().to_string(), host_addr(1));
    let be = h2.member(&backend_app, "myappbackend", "be");
    assert_eq!(
        published(&be.attached),
        None,
        "the backend is published nowhere"
    );
    let _backend = net::http_server(&be, 3000, "backend-on-h2");
    let name = format!("myappbackend.{backend_app}.{net_a}.private-network.internal");
    let _nginx = nginx(&waf, &name);
    assert!(
        eventually(Duration::from_secs(15), || curl(
            &waf,
            "http://127.0.0.1:8080/"
        )
        .is_some_and(|b| b == "backend-on-h2")),
        "nginx reaches the backend on h2 by its private name"
    );
    // The public side: the router, through the published port.
    let url = format!("http://{public}/");
    assert_eq!(
        curl(&o.router, &url).as_deref(),
        Some("backend-on-h2"),
        "the router gets the backend's answer through the waf"
    );
    assert!(h1.packets(&waf_app, "web-1", "published") > 0);
    // The stranger on the underlay cannot.
    assert_eq!(curl(&o.stranger, &url), None);
    assert!(eventually(WAIT, || h1.packets(
        &waf_app,
        "web-1",
        "not_router"
    ) > 0));
    // The backend is published on neither host, and its address is no way in.
    for h in [h1, h2] {
        let list = listed(h);
        assert_eq!(
            list[&format!("{backend_app}/myappbackend-1")]["published"],
            serde_json::Value::Null
        );
        assert_eq!(
            list[&format!("{waf_app}/web-1")]["published"],
            public.to_string(),
            "every host sees where the waf is"
        );
    }
    for (i, port) in [(2, 30000), (1, 30001)] {
        assert_eq!(
            curl(&o.router, &format!("http://{}:{port}/", host_addr(i))),
            None
        );
    }
    o.router
        .ip(&["route", "add", "10.240.0.0/12", "via", &host_addr(2)]);
    assert_eq!(curl(&o.router, &format!("http://{}:3000/", be.addr)), None);
}
