//! The edge as the agent wires it, on one host: the agent's eBPF programs
//! on the container's veth, its nftables table in the host's namespace,
//! real sockets from the world, a router and a stranger. Nothing here
//! writes a map or a route itself: `network create/update`, `app create`,
//! `container attach` and `pn-agent run` flags do it all.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace,
    edge::{HOST, Outside, ROUTER, STRANGER, WORLD, listed, nft_counter, published},
    eventually, metric_value, net,
    scenario::Member,
    unique_prefix,
};

const WAIT: Duration = Duration::from_secs(5);
const FAIL: Duration = Duration::from_millis(700);

struct Fixture {
    host: Host,
    out: Outside,
    net: String,
    app: String,
    c1: Member,
    /// Where `attach` said web-1 is published.
    port: SocketAddr,
}

/// One host on a LAN with the world behind a gateway, its agent told that
/// the router is one; a web container attached.
fn fixture(flags: &[&str]) -> Fixture {
    fixture_on(Before::NotForwarding, flags)
}

/// The host's IPv4 forwarding when its agent starts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    /// Off (the harness's baseline): the agent turns it on, pn's own.
    NotForwarding,
    /// Already on, as on most container hosts (Docker, podman, Kubernetes).
    Forwarding,
}

fn fixture_on(before: Before, flags: &[&str]) -> Fixture {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    assert_eq!(
        host.ns.sysctl_value("net.ipv4.ip_forward"),
        "0",
        "a new host does not forward, whatever the machine does"
    );
    if before == Before::Forwarding {
        host.ns.sysctl("net.ipv4.ip_forward=1");
    }
    let mut all = vec!["--router-cidr", "192.168.50.7/32"];
    all.extend_from_slice(flags);
    host.launch(&all);
    let (net, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    let port = published(&c1.attached).expect("a web container is published");
    Fixture {
        host,
        out,
        net,
        app,
        c1,
        port,
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn counted(f: &Fixture, reason: &str) -> u64 {
    f.host.packets(&f.app, "web-1", reason)
}

/// What the edge's own rules dropped, by reason.
fn edge_dropped(host: &Host, reason: &str) -> u64 {
    metric_value(
        &host.metrics(),
        "pn_edge_dropped_packets_total",
        &[("reason", reason)],
    )
}

fn flows(host: &Host) -> Vec<serde_json::Value> {
    host.cli_ok(&["--output", "json", "flows"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_world_is_reached_through_the_host_and_answers_come_back() {
    let f = fixture(&[]);
    let _tcp = net::tcp_whoami_server(&f.out.world, 7000);
    let _udp = net::udp_whoami_server(&f.out.world, 7001);
    let (seen, mut s) = net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).expect("tcp to the world");
    assert_eq!(seen, HOST, "the world sees the host's address");
    net::echo_on(&mut s, &vec![0x5a; 1 << 20]).expect("1 MiB back whole");
    assert_eq!(net::udp_whoami(&f.c1, sa(WORLD, 7001), WAIT).unwrap(), HOST);
    let ping = f.c1.exec(&["ping", "-c1", "-W2", WORLD]);
    assert!(ping.status.success(), "{ping:?}");
    assert!(eventually(WAIT, || counted(&f, "egress") > 10), "counted");
    assert_eq!(counted(&f, "not_member"), 0, "no reply was refused");
    // The container's route to the world is the agent's.
    let route = f.c1.ip(&["route", "show", "default"]);
    assert!(route.contains("via 169.254.1.1"), "{route}");
    // `flows` shows the connection and the address it was translated to.
    let records = flows(&f.host);
    let out = records
        .iter()
        .find(|r| r["reason"] == "egress" && r["dst"] == WORLD && r["dport"] == 7000)
        .unwrap_or_else(|| panic!("an egress flow: {records:?}"));
    assert_eq!(out["src"], f.c1.addr.to_string());
    assert_eq!(out["translated"], HOST);
    let table = f.host.cli_ok(&["flows"]);
    assert!(
        table.contains(&format!("{WORLD}:7000 (as {HOST})")),
        "{table}"
    );
    // Unsolicited from the world: the host is no router for it.
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    f.out
        .world
        .ip(&["route", "add", "10.240.0.0/12", "via", "203.0.113.1"]);
    f.out.gw.ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
    assert!(net::tcp_whoami(&f.out.world, SocketAddr::from((f.c1.addr, 8080)), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_member") > 0));
}

#[test]
fn nothing_from_outside_reaches_a_container_address() {
    let f = fixture(&[]);
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    // A router routing the pool to the host, straight to the address.
    f.out
        .router
        .ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
    assert!(net::tcp_whoami(&f.out.router, SocketAddr::from((f.c1.addr, 8080)), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_member") > 0));
    assert_eq!(counted(&f, "published"), 0);
}

/// The edge's promises on a host that did not forward, on one that did
/// (pn leaves its routing alone), and on one that did with
/// `--forward-guard on` (pn makes it route nothing but pn's traffic).
#[test]
fn the_edge_holds_whether_the_host_forwarded_before_or_not() {
    for (before, flags, routes_strangers) in [
        (Before::NotForwarding, &[][..], false),
        (Before::Forwarding, &[][..], true),
        (Before::Forwarding, &["--forward-guard", "on"][..], false),
        (Before::NotForwarding, &["--forward-guard", "off"][..], true),
    ] {
        let case = format!("{before:?} {flags:?}");
        let f = fixture_on(before, flags);
        let status = f.host.json(&["status"]);
        assert_eq!(
            status["edge"]["forwarding"],
            if routes_strangers {
                "shared"
            } else {
                "pn-only"
            },
            "{case}: {status}"
        );
        assert_eq!(
            status["edge"]["forwarded_before_pn"],
            before == Before::Forwarding,
            "{case}"
        );
        let _world = net::tcp_whoami_server(&f.out.world, 7000);
        let _web = net::tcp_whoami_server(&f.c1, 8080);
        // Containers reach the world; routers reach the published port.
        assert_eq!(
            net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap().0,
            HOST,
            "{case}"
        );
        assert_eq!(
            net::tcp_whoami(&f.out.router, f.port, WAIT).unwrap().0,
            ROUTER,
            "{case}"
        );
        // The stranger's own way to the world: the guard's business.
        let through = net::tcp_whoami(&f.out.stranger, sa(WORLD, 7000), FAIL);
        assert_eq!(
            through.as_ref().map(|(who, _)| who.as_str()).ok(),
            routes_strangers.then_some(STRANGER),
            "{case}"
        );
        if !routes_strangers {
            assert!(
                eventually(WAIT, || edge_dropped(&f.host, "forward_denied") > 0),
                "{case}"
            );
        }
        // pn's containers are never a stranger's path, guard or not.
        f.out
            .stranger
            .ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
        assert!(
            net::tcp_whoami(&f.out.stranger, SocketAddr::from((f.c1.addr, 8080)), FAIL).is_err(),
            "{case}"
        );
        // Refused by the container's program, counted on the container
        // and shown in flows, like every decision of the edge.
        assert!(eventually(WAIT, || counted(&f, "not_member") > 0), "{case}");
        assert!(
            eventually(WAIT, || flows(&f.host)
                .iter()
                .any(|r| r["reason"] == "not_member" && r["src"] == STRANGER)),
            "{case}"
        );
        // Nor is a container's address, claimed by the stranger.
        let world = net::udp_collector(&f.out.world, 7001);
        net::send_raw_ipv4(
            &f.out.stranger,
            net::udp_packet(f.c1.addr, 4000, WORLD.parse().unwrap(), 7001, b"x"),
        )
        .unwrap();
        assert!(world.received(FAIL).is_empty(), "{case}");
        assert!(
            eventually(WAIT, || edge_dropped(&f.host, "pool_spoofed") > 0),
            "{case}"
        );
    }
}

#[test]
fn routers_reach_the_published_port_and_strangers_do_not() {
    let f = fixture(&[]);
    assert_eq!(
        f.port,
        sa(HOST, 30000),
        "the first port of the default range"
    );
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    let (seen, mut s) =
        net::tcp_whoami(&f.out.router, f.port, WAIT).expect("router through the port");
    assert_eq!(seen, ROUTER, "the container sees the router");
    net::echo_on(&mut s, b"GET / HTTP/1.1\r\nHost: waf\r\n\r\n").unwrap();
    assert!(
        eventually(WAIT, || counted(&f, "published") >= 6),
        "both directions"
    );
    assert!(net::tcp_whoami(&f.out.stranger, f.port, FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_router") > 0));
    let records = flows(&f.host);
    assert!(
        records.iter().any(|r| r["reason"] == "published"
            && r["src"] == ROUTER
            && r["translated"] == f.port.to_string()),
        "{records:?}"
    );
    // The list says the same as attach; `env` gives the port to listen on.
    let list = listed(&f.host);
    assert_eq!(
        list[&format!("{}/web-1", f.app)]["published"],
        f.port.to_string()
    );
    let table = f.host.cli_ok(&["container", "list"]);
    assert!(
        table.contains("PUBLISHED") && table.contains(&f.port.to_string()),
        "{table}"
    );
    let env = f
        .host
        .cli_ok(&["env", "--app", &f.app, "--type", "web", "--index", "1"]);
    assert!(env.contains("PORT=8080\n"), "{env}");
}

#[test]
fn only_web_containers_are_published_on_the_apps_port_and_ports_come_back() {
    let f = fixture(&["--publish-ports", "31000-31001"]);
    assert_eq!(f.port, sa(HOST, 31000));
    // Another app, serving on 3000; a worker and a second web container.
    let app2 = f.host.create_app_with(&f.net, &["--web-port", "3000"]);
    let worker = f.host.member(&app2, "worker", "wk");
    assert_eq!(
        published(&worker.attached),
        None,
        "a worker is never published"
    );
    let env = f
        .host
        .cli_ok(&["env", "--app", &app2, "--type", "worker", "--index", "1"]);
    assert!(!env.contains("PORT="), "{env}");
    let web2 = f.host.member(&app2, "web", "w2");
    let at2 = published(&web2.attached).unwrap();
    assert_eq!(at2, sa(HOST, 31001));
    let env = f
        .host
        .cli_ok(&["env", "--app", &app2, "--type", "web", "--index", "1"]);
    assert!(env.contains("PORT=3000\n"), "{env}");
    let _on_3000 = net::tcp_whoami_server(&web2, 3000);
    let (seen, _s) = net::tcp_whoami(&f.out.router, at2, WAIT).expect("to the app's port");
    assert_eq!(seen, ROUTER);
    // The range is full: a third web container is refused, nothing half-made.
    let web3 = Namespace::new(&format!("{}-w3", f.host.prefix));
    let out = f.host.cli(&[
        "container",
        "attach",
        "--app",
        &app2,
        "--type",
        "web",
        "--netns",
        &web3.name,
    ]);
    out.assert_error(pn_agent::error::ErrorKind::Exhausted, "31000-31001");
    assert!(
        !web3.ip(&["link"]).contains("pn0"),
        "no interface left behind"
    );
    // Detaching gives the port back.
    f.host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &app2,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    let again = published(&f.host.attach(&app2, "web", &web3)).unwrap();
    assert_eq!(again, sa(HOST, 31001));
}

#[test]
fn without_routers_nothing_is_published() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    host.launch(&[]);
    let (_, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    assert_eq!(published(&c1.attached), None);
    let _web = net::tcp_whoami_server(&c1, 8080);
    assert!(net::tcp_whoami(&out.router, sa(HOST, 30000), FAIL).is_err());
    // The world is still reached.
    let _tcp = net::tcp_whoami_server(&out.world, 7000);
    assert_eq!(net::tcp_whoami(&c1, sa(WORLD, 7000), WAIT).unwrap().0, HOST);
}

#[test]
fn what_is_never_the_world_stays_out_of_reach() {
    let f = fixture(&[
        "--underlay-iface",
        "up0",
        "--egress-deny",
        "198.51.100.0/24",
    ]);
    let _on_underlay = net::tcp_whoami_server(&f.out.router, 7100);
    let _on_host = net::tcp_whoami_server(&f.host.ns, 7200);
    // An operator's range, served by the world.
    f.out
        .world
        .ip(&["addr", "add", "198.51.100.9/24", "dev", "eth0"]);
    let _operator = net::tcp_whoami_server(&f.out.world, 7300);
    for dst in [
        sa(ROUTER, 7100),
        sa(HOST, 7200),
        sa("192.168.50.255", 7200),
        sa("169.254.169.254", 80),
        sa("198.51.100.9", 7300),
    ] {
        let before = counted(&f, "egress_denied");
        assert!(net::tcp_whoami(&f.c1, dst, FAIL).is_err(), "{dst}");
        assert!(
            eventually(WAIT, || counted(&f, "egress_denied") > before),
            "{dst} counted"
        );
    }
    // The datapath stopped them; the forward hook's second line saw nothing.
    assert_eq!(nft_counter(&f.host.ns, "pn", "egress_denied"), 0);
    // The gateway stays reachable, link-local as it is.
    let ping = f.c1.exec(&["ping", "-c1", "-W2", "169.254.1.1"]);
    assert!(ping.status.success(), "{ping:?}");
    assert!(eventually(WAIT, || counted(&f, "gateway") > 0));
    // The rest of the world is not.
    let _world = net::tcp_whoami_server(&f.out.world, 7000);
    assert_eq!(
        net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap().0,
        HOST
    );
    let status = f.host.json(&["status"]);
    assert_eq!(status["edge"]["applied"], true, "{status}");
    assert_eq!(status["edge"]["published"], 1, "{status}");
}

#[test]
fn sealing_a_network_is_live_and_still_answers_its_routers() {
    let f = fixture(&[]);
    let _world = net::tcp_whoami_server(&f.out.world, 7000);
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    // An open connection with the world, and one from the router.
    let (_, mut before) = net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap();
    let (_, mut routed) = net::tcp_whoami(&f.out.router, f.port, WAIT).unwrap();
    f.host
        .cli_ok(&["network", "update", &f.net, "--egress", "deny"]);
    let nets = f.host.json(&["network", "list"]);
    assert_eq!(nets[0]["egress"], "deny", "{nets}");
    assert!(net::tcp_whoami(&f.c1, sa(WORLD, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "egress_denied") > 0));
    assert!(
        net::echo_on(&mut before, b"x").is_err(),
        "a sealed network's open connections stop too"
    );
    // Replies to routers leave a sealed network; new router connections too.
    net::echo_on(&mut routed, b"still served").unwrap();
    let (seen, mut s) = net::tcp_whoami(&f.out.router, f.port, WAIT).unwrap();
    assert_eq!(seen, ROUTER);
    net::echo_on(&mut s, b"and new ones").unwrap();
    // Open again, no container restarted.
    f.host
        .cli_ok(&["network", "update", &f.net, "--egress", "allow"]);
    assert_eq!(
        net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap().0,
        HOST
    );
    // Created sealed: nothing outside from the first packet.
    let (_, app) = f.host.network_and_app(&["--egress", "deny"]);
    let c = f.host.member(&app, "worker", "sl");
    assert!(net::tcp_whoami(&c, sa(WORLD, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || f.host.packets(
        &app,
        "worker-1",
        "egress_denied"
    ) > 0));
    let bad = f
        .host
        .cli(&["network", "update", &f.net, "--egress", "maybe"]);
    bad.assert_one_line_error("maybe");
}

#[test]
fn path_mtu_errors_from_the_world_reach_the_container() {
    let f = fixture(&[]);
    // A narrower link behind the gateway, and a world that still asks for
    // full-size segments: the gateway answers "fragmentation needed" to the
    // host's address, the kernel's NAT hands it to the container, whose
    // program must admit it as part of its connection.
    f.out.gw.ip(&["link", "set", "w0", "mtu", "1200"]);
    f.out.world.ip(&["link", "set", "eth0", "mtu", "1200"]);
    f.out.world.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "203.0.113.1",
        "advmss",
        "1460",
    ]);
    let _tcp = net::tcp_whoami_server(&f.out.world, 7000);
    let (_, mut s) = net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).expect("tcp to the world");
    net::echo_on(&mut s, &vec![0xa5; 256 * 1024]).expect("no black hole");
    assert_eq!(counted(&f, "not_member"), 0, "the ICMP error was admitted");
    let route = f.c1.ip(&["route", "get", WORLD]);
    assert!(
        route.contains("mtu 1200"),
        "the container learnt the path MTU: {route}"
    );
}

#[test]
fn an_agent_restart_keeps_open_connections_and_publications() {
    let mut f = fixture(&[]);
    let _world = net::tcp_whoami_server(&f.out.world, 7000);
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    let (_, mut out) = net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap();
    let (_, mut routed) = net::tcp_whoami(&f.out.router, f.port, WAIT).unwrap();
    net::echo_on(&mut out, b"before").unwrap();
    net::echo_on(&mut routed, b"before").unwrap();
    f.host.stop();
    // No agent: the programs, maps and table keep working.
    net::echo_on(&mut out, b"while stopped").unwrap();
    net::echo_on(&mut routed, b"while stopped").unwrap();
    f.host.restart();
    net::echo_on(&mut out, &vec![7; 256 * 1024]).expect("the translation survived");
    net::echo_on(&mut routed, &vec![8; 256 * 1024]).expect("the publication survived");
    // Same port after the restart; new connections both ways.
    let list = listed(&f.host);
    assert_eq!(
        list[&format!("{}/web-1", f.app)]["published"],
        f.port.to_string()
    );
    assert_eq!(
        net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).unwrap().0,
        HOST
    );
    assert_eq!(
        net::tcp_whoami(&f.out.router, f.port, WAIT).unwrap().0,
        ROUTER
    );
    assert_eq!(counted(&f, "not_member"), 0);
    let _ = &f.c1.addr;
}
