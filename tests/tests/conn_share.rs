//! Each container's share of the connection tables (`--conn-share`): one
//! container opening flows without end (to the world, or through a service
//! address) gets its new ones over the share dropped as `conn_quota`, and
//! cannot crowd another tenant's world and balanced connections out of the
//! shared tables.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use pn_tests::{
    Host, Namespace,
    edge::{HOST, Outside, WORLD},
    eventually, metric_value, net, unique_prefix,
};

const WAIT: Duration = Duration::from_secs(5);
const SHARE: u64 = 64;
/// Flows the greedy container opens: far over its share.
const FLOWS: u64 = 500;

/// The service address of `ctype` of `app`, from `app list`.
fn service_addr(host: &Host, app: &str, ctype: &str) -> Option<Ipv4Addr> {
    let list = host.json(&["app", "list"]);
    let a = list.as_array()?.iter().find(|a| a["id"] == app)?;
    let s = a["services"]
        .as_array()?
        .iter()
        .find(|s| s["type"] == ctype)?;
    s["addr"].as_str()?.parse().ok()
}

/// One datagram from each of `n` sockets (so `n` flows) toward `dst`, from
/// inside `ns`; the payload is the flow's number.
fn udp_flows(ns: &Namespace, dst: SocketAddr, n: u64) {
    ns.run(move || {
        let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        // Held open until all are sent: no source port is used twice.
        let socks: Vec<UdpSocket> = (0..n)
            .map(|i| {
                let s = UdpSocket::bind(any).expect("udp bind");
                // A refused flow's datagram is dropped, not an error here.
                let _ = s.send_to(i.to_string().as_bytes(), dst);
                s
            })
            .collect();
        drop(socks);
    });
}

fn entries(host: &Host, app: &str, table: &str) -> u64 {
    metric_value(
        &host.metrics(),
        "pn_conn_entries",
        &[("app", app), ("table", table)],
    )
}

#[test]
fn a_container_over_its_share_cannot_crowd_out_another_tenants_connections() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    host.launch(&["--conn-share", &SHARE.to_string()]);

    // The victim (tenant 1): a connection with the world and one through a
    // service address of its network.
    let (net_a, app_a) = host.network_and_app(&[]);
    let svc_a = host.create_app_with(&net_a, &["--balance", "vip"]);
    let backend_a = host.member(&svc_a, "web", "ba");
    let _srv_a = net::tcp_whoami_self_server(&backend_a, 8080);
    let victim = host.member(&app_a, "web", "vic");
    let _world_tcp = net::tcp_whoami_server(&out.world, 7000);
    let world = SocketAddr::from((WORLD.parse::<Ipv4Addr>().unwrap(), 7000));
    let (seen, mut world_conn) = net::tcp_whoami(&victim, world, WAIT).expect("tcp to the world");
    assert_eq!(seen, HOST);
    let vip_a = service_addr(&host, &svc_a, "web").expect("a service address");
    let vip_a = SocketAddr::from((vip_a, 8080));
    let (seen, mut balanced_conn) =
        net::tcp_whoami(&victim, vip_a, WAIT).expect("tcp through the service address");
    assert_eq!(seen, backend_a.addr.to_string());

    // The greedy one (tenant 2): far more UDP flows to the world than its
    // share. Only its share gets out.
    let (net_b, app_b) = host.network_and_app(&[]);
    let greedy = host.member(&app_b, "web", "grd");
    let collector = net::udp_collector(&out.world, 9000);
    udp_flows(
        &greedy,
        SocketAddr::from((WORLD.parse::<Ipv4Addr>().unwrap(), 9000)),
        FLOWS,
    );
    let got = collector.received(Duration::from_secs(2));
    assert_eq!(
        got.len() as u64,
        SHARE,
        "flows of the greedy container that reached the world"
    );
    let refused = FLOWS - SHARE;
    assert!(
        eventually(WAIT, || host.packets(&app_b, "web-1", "conn_quota")
            == refused),
        "conn_quota of the greedy container: {} (want {refused})",
        host.packets(&app_b, "web-1", "conn_quota")
    );
    assert!(
        eventually(WAIT, || entries(&host, &app_b, "world") == SHARE),
        "pn_conn_entries of the greedy container: {}",
        entries(&host, &app_b, "world")
    );

    // And as many flows through a service address of its own network: the
    // balanced table holds its share too.
    let svc_b = host.create_app_with(&net_b, &["--balance", "vip"]);
    let backend_b = host.member(&svc_b, "web", "bb");
    let balanced = net::udp_collector(&backend_b, 5300);
    assert!(eventually(WAIT, || service_addr(&host, &svc_b, "web").is_some()));
    let vip_b = service_addr(&host, &svc_b, "web").unwrap();
    udp_flows(&greedy, SocketAddr::from((vip_b, 5300)), FLOWS);
    let got = balanced.received(Duration::from_secs(2));
    assert_eq!(
        got.len() as u64,
        SHARE,
        "balanced flows of the greedy container"
    );
    assert!(
        eventually(WAIT, || host.packets(&app_b, "web-1", "conn_quota")
            == 2 * refused),
        "conn_quota of the greedy container: {}",
        host.packets(&app_b, "web-1", "conn_quota")
    );

    // The victim's connections go on, and it opens new ones: its share is
    // its own.
    net::echo_on(&mut world_conn, b"still there").expect("the victim's world connection");
    net::echo_on(&mut balanced_conn, b"still there").expect("the victim's balanced connection");
    let (seen, _) = net::tcp_whoami(&victim, world, WAIT).expect("a new world connection");
    assert_eq!(seen, HOST);
    let (seen, _) = net::tcp_whoami(&victim, vip_a, WAIT).expect("a new balanced connection");
    assert_eq!(seen, backend_a.addr.to_string());
    assert_eq!(host.packets(&app_a, "web-1", "conn_quota"), 0);

    // The agent's sweep (every 10 s) recounts: live flows stay counted,
    // nothing is taken from the victim.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(entries(&host, &app_b, "world"), SHARE);
    assert_eq!(entries(&host, &app_b, "balanced"), SHARE);
    assert!(entries(&host, &app_a, "world") >= 1);
    assert!(entries(&host, &app_a, "balanced") >= 1);
    net::echo_on(&mut world_conn, b"after the sweep").expect("the victim's world connection");
    net::echo_on(&mut balanced_conn, b"after the sweep").expect("the balanced connection");
}

/// The IPv6 world of `ipv6_edge.rs`: the host `2001:db8:50::1`, through
/// the gateway `::fe` to the world `2001:db8:113::10`.
const WORLD6: &str = "2001:db8:113::10";

fn ipv6_outside(host: &Namespace, out: &Outside) {
    let addr = |ns: &Namespace, a: &str, dev: &str| {
        ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"]);
    };
    addr(host, "2001:db8:50::1/64", "up0");
    host.ip(&["-6", "route", "add", "default", "via", "2001:db8:50::fe"]);
    addr(&out.gw, "2001:db8:50::fe/64", "up0");
    addr(&out.gw, "2001:db8:113::1/64", "w0");
    addr(&out.world, &format!("{WORLD6}/64"), "eth0");
    out.world
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"]);
    out.gw.sysctl("net.ipv6.conf.all.forwarding=1");
    host.sysctl("net.ipv6.conf.all.forwarding=1");
}

#[test]
fn ipv6_flows_count_against_the_same_share() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    ipv6_outside(&host.ns, &out);
    host.launch(&["--conn-share", &SHARE.to_string()]);
    let (_, app) = host.network_and_app(&[]);
    let greedy = host.member(&app, "web", "grd");
    let world6 = IpAddr::V6(WORLD6.parse::<Ipv6Addr>().unwrap());
    let _whoami = net::udp_whoami_server6(&out.world, 7001);
    // The agent learns the fleet's IPv6 pool within its repair period;
    // until then the IPv6 world is out of reach (and no entry is made).
    assert!(
        eventually(Duration::from_secs(25), || net::udp_whoami(
            &greedy,
            SocketAddr::new(world6, 7001),
            Duration::from_millis(700)
        )
        .is_ok()),
        "udp to the IPv6 world"
    );
    let held = entries(&host, &app, "world");
    assert!(
        (1..=4).contains(&held),
        "entries after reaching the world: {held}"
    );

    // IPv4 flows, then IPv6 ones: one count for both families.
    let v4 = 40;
    let collector = net::udp_collector(&out.world, 9000);
    udp_flows(
        &greedy,
        SocketAddr::from((WORLD.parse::<Ipv4Addr>().unwrap(), 9000)),
        v4,
    );
    assert_eq!(collector.received(Duration::from_secs(2)).len() as u64, v4);
    let collector6 = net::udp_collector6(&out.world, 9001);
    udp_flows(&greedy, SocketAddr::new(world6, 9001), FLOWS);
    let admitted = SHARE - v4 - held;
    assert_eq!(
        collector6.received(Duration::from_secs(2)).len() as u64,
        admitted,
        "IPv6 flows of the greedy container that reached the world"
    );
    assert!(
        eventually(WAIT, || host.packets(&app, "web-1", "conn_quota")
            == FLOWS - admitted),
        "conn_quota: {} (want {})",
        host.packets(&app, "web-1", "conn_quota"),
        FLOWS - admitted
    );
    assert_eq!(entries(&host, &app, "world"), SHARE);
}

/// The service addresses (IPv4, IPv6) of `ctype` of `app`, from `app list`.
fn service_addrs(host: &Host, app: &str, ctype: &str) -> Option<(Ipv4Addr, Ipv6Addr)> {
    let list = host.json(&["app", "list"]);
    let a = list.as_array()?.iter().find(|a| a["id"] == app)?;
    let s = a["services"]
        .as_array()?
        .iter()
        .find(|s| s["type"] == ctype)?;
    Some((
        s["addr"].as_str()?.parse().ok()?,
        s["addr6"].as_str()?.parse().ok()?,
    ))
}

#[test]
fn balanced_ipv6_flows_count_against_the_same_share() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    host.launch(&["--conn-share", &SHARE.to_string()]);
    let (net, app) = host.network_and_app(&[]);
    let svc = host.create_app_with(&net, &["--balance", "vip"]);
    let backend = host.member(&svc, "web", "bk");
    let greedy = host.member(&app, "web", "grd");
    let collector = net::udp_collector6(&backend, 5300);
    assert!(eventually(WAIT, || service_addrs(&host, &svc, "web").is_some()));
    let (vip4, vip6) = service_addrs(&host, &svc, "web").unwrap();

    // Balanced IPv4 flows, then IPv6 ones (`lb6`): one balanced count for
    // both families (`PN_LB_CONNS` and `PN_LB6_CONNS`).
    let v4 = 40;
    udp_flows(&greedy, SocketAddr::from((vip4, 5300)), v4);
    assert_eq!(collector.received(Duration::from_secs(2)).len() as u64, v4);
    udp_flows(&greedy, SocketAddr::from((vip6, 5300)), FLOWS);
    let admitted = SHARE - v4;
    assert_eq!(
        collector.received(Duration::from_secs(2)).len() as u64,
        admitted,
        "balanced IPv6 flows of the greedy container"
    );
    assert!(
        eventually(WAIT, || host.packets(&app, "web-1", "conn_quota")
            == FLOWS - admitted),
        "conn_quota: {} (want {})",
        host.packets(&app, "web-1", "conn_quota"),
        FLOWS - admitted
    );
    assert_eq!(entries(&host, &app, "balanced"), SHARE);

    // The sweep counts the IPv6 entries too: the count stays, and so does
    // the refusal of a new flow.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(entries(&host, &app, "balanced"), SHARE);
    udp_flows(&greedy, SocketAddr::from((vip6, 5300)), 1);
    assert!(collector.received(Duration::from_secs(1)).is_empty());
    assert!(
        eventually(WAIT, || host.packets(&app, "web-1", "conn_quota")
            == FLOWS - admitted + 1),
        "conn_quota after the sweep: {}",
        host.packets(&app, "web-1", "conn_quota")
    );
}
