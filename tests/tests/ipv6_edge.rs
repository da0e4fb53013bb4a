//! The edge over IPv6, as the agent wires it on one host: the twins of
//! `edge_agent.rs`'s egress and publication tests. The LAN of
//! [`Outside`] gains IPv6 (documentation addresses, 2001:db8::/32): the
//! host `2001:db8:50::1`, the router `::7`, the stranger `::66`, the
//! gateway `::fe` to the world `2001:db8:113::10`.

use std::{
    net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use pn_tests::{
    Host, Namespace,
    edge::{Outside, published},
    eventually, metric_value, net,
    scenario::Member,
    unique_prefix,
};

const HOST6: &str = "2001:db8:50::1";
const GW6: &str = "2001:db8:50::fe";
const ROUTER6: &str = "2001:db8:50::7";
const STRANGER6: &str = "2001:db8:50::66";
const WORLD6: &str = "2001:db8:113::10";
/// The agent learns the fleet's IPv6 pool from the store within its
/// repair period (10 s) once the first network has one.
const LEARN: Duration = Duration::from_secs(25);
const WAIT: Duration = Duration::from_secs(5);
const FAIL: Duration = Duration::from_millis(700);

struct Fixture {
    host: Host,
    out: Outside,
    net: String,
    app: String,
    c1: Member,
}

/// IPv6 on the LAN and behind its gateway; the host's own global address
/// only with `host_address`.
fn ipv6_outside(host: &Namespace, out: &Outside, host_address: bool) {
    let addr = |ns: &Namespace, a: &str, dev: &str| {
        ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"]);
    };
    if host_address {
        addr(host, &format!("{HOST6}/64"), "up0");
        host.ip(&["-6", "route", "add", "default", "via", GW6]);
    }
    addr(&out.gw, &format!("{GW6}/64"), "up0");
    addr(&out.router, &format!("{ROUTER6}/64"), "up0");
    addr(&out.stranger, &format!("{STRANGER6}/64"), "up0");
    addr(&out.gw, "2001:db8:113::1/64", "w0");
    addr(&out.world, &format!("{WORLD6}/64"), "eth0");
    out.world
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"]);
    out.gw.sysctl("net.ipv6.conf.all.forwarding=1");
    // The edge's forwarding is another part's: on, as for any container
    // with IPv6.
    host.sysctl("net.ipv6.conf.all.forwarding=1");
}

fn fixture_with(host_address: bool, net_flags: &[&str]) -> Fixture {
    fixture_launched(host_address, net_flags, &[])
}

/// `agent_flags` on top of the routers.
fn fixture_launched(host_address: bool, net_flags: &[&str], agent_flags: &[&str]) -> Fixture {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    ipv6_outside(&host.ns, &out, host_address);
    let routers6 = format!("{ROUTER6}/128");
    let mut flags = vec![
        "--router-cidr",
        "192.168.50.7/32",
        "--router-cidr6",
        routers6.as_str(),
    ];
    flags.extend_from_slice(agent_flags);
    host.launch(&flags);
    let (net, app) = host.network_and_app(net_flags);
    let c1 = host.member(&app, "web", "c1");
    Fixture {
        host,
        out,
        net,
        app,
        c1,
    }
}

fn fixture() -> Fixture {
    fixture_with(true, &[])
}

fn ip6(m: &Member) -> Ipv6Addr {
    m.attached["ip6"]
        .as_str()
        .unwrap_or_else(|| panic!("no ip6 in {}", m.attached))
        .parse()
        .unwrap()
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::from((ip.parse::<Ipv6Addr>().unwrap(), port))
}

fn counted(f: &Fixture, reason: &str) -> u64 {
    f.host.packets(&f.app, "web-1", reason)
}

#[test]
fn the_ipv6_world_is_reached_through_the_hosts_ipv6_address() {
    let f = fixture();
    let _tcp = net::tcp_whoami_server6(&f.out.world, 7000);
    let _udp = net::udp_whoami_server6(&f.out.world, 7001);
    let mut seen = None;
    // The first tries may come before the agent knows the pool.
    assert!(
        eventually(LEARN, || {
            seen = net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL).ok();
            seen.is_some()
        }),
        "tcp to the IPv6 world"
    );
    let (who, mut s) = seen.unwrap();
    assert_eq!(who, HOST6, "the world sees the host's IPv6 address");
    net::echo_on(&mut s, &vec![0x5a; 1 << 20]).expect("1 MiB back whole");
    assert_eq!(
        net::udp_whoami(&f.c1.ns, sa(WORLD6, 7001), WAIT).unwrap(),
        HOST6
    );
    let ping = f.c1.ns.exec(&["ping", "-6", "-c1", "-W2", WORLD6]);
    assert!(ping.status.success(), "{ping:?}");
    assert!(eventually(WAIT, || counted(&f, "egress") > 10), "counted");
    assert_eq!(counted(&f, "not_member"), 0, "no answer was refused");
    // IPv4 beside, unchanged.
    let _tcp4 = net::tcp_whoami_server(&f.out.world, 7002);
    let (who4, _) = net::tcp_whoami(
        &f.c1.ns,
        format!("{}:7002", pn_tests::edge::WORLD).parse().unwrap(),
        WAIT,
    )
    .expect("tcp to the IPv4 world");
    assert_eq!(who4, pn_tests::edge::HOST);

    // Unsolicited from the world, routed to the pool through the host.
    let _web = net::tcp_whoami_server6(&f.c1.ns, 8080);
    let c1 = ip6(&f.c1);
    let s = c1.segments();
    let pool6 = format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]);
    f.out.gw.ip(&["-6", "route", "add", &pool6, "via", HOST6]);
    let before = counted(&f, "not_member");
    assert!(net::tcp_whoami(&f.out.world, SocketAddr::from((c1, 8080)), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_member") > before));
}

#[test]
fn a_sealed_network_reaches_no_ipv6_world() {
    let f = fixture_with(true, &["--egress", "deny"]);
    let _tcp = net::tcp_whoami_server6(&f.out.world, 7000);
    let _udp = net::udp_whoami_server6(&f.out.world, 7001);
    // Until the agent knows the pool, the world is the pool's (policy);
    // then it is the seal that holds.
    assert!(eventually(LEARN, || {
        assert!(net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL).is_err());
        counted(&f, "egress_denied") > 0
    }));
    assert!(net::udp_whoami(&f.c1.ns, sa(WORLD6, 7001), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "egress_denied") >= 2));
    assert_eq!(counted(&f, "egress"), 0);
    // Unsealed live: the same container reaches it.
    f.host
        .cli_ok(&["network", "update", &f.net, "--egress", "allow"]);
    assert!(eventually(WAIT, || net::tcp_whoami(
        &f.c1.ns,
        sa(WORLD6, 7000),
        FAIL
    )
    .is_ok()));
}

#[test]
fn what_is_never_the_world_stays_out_of_reach_over_ipv6() {
    let f = fixture();
    let _world = net::tcp_whoami_server6(&f.out.world, 7000);
    assert!(
        eventually(LEARN, || net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL)
            .is_ok()),
        "the world first, so the pool is known"
    );
    let _host = net::tcp_whoami_server6(&f.host.ns, 7000);
    let denied = counted(&f, "egress_denied");
    // The host's own address and another site's unique local address.
    for dst in [HOST6, "fd00:1:2::7"] {
        assert!(
            net::tcp_whoami(&f.c1.ns, sa(dst, 7000), FAIL).is_err(),
            "{dst}"
        );
    }
    assert!(eventually(WAIT, || counted(&f, "egress_denied") >= denied + 2));
    // A link-local address on the container's link: nothing answers (its
    // neighbour solicitation is not the gateway's, `nd_denied`; a packet
    // routed there would be `egress_denied`).
    let ping = f.c1.ns.exec(&["ping", "-6", "-c1", "-W1", "fe80::7%pn0"]);
    assert!(!ping.status.success(), "{ping:?}");
    // An address of the pool that is nobody's: a member's rule, not the
    // world's.
    let s = ip6(&f.c1).segments();
    let nobody = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0x7777);
    let policy = counted(&f, "policy_denied");
    assert!(net::tcp_whoami(&f.c1.ns, SocketAddr::from((nobody, 7000)), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "policy_denied") > policy));
}

#[test]
fn an_ipv6_local_route_of_the_host_is_never_the_world() {
    let f = fixture();
    let _world = net::tcp_whoami_server6(&f.out.world, 7000);
    assert!(
        eventually(LEARN, || net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL)
            .is_ok()),
        "the world first, so the pool is known"
    );
    let _host = net::tcp_whoami_server6(&f.host.ns, 7000);
    // An AnyIP range of the host, added while the agent runs: no interface
    // holds it, the host takes it as its own.
    f.host.ns.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:53::/64",
        "dev",
        "lo",
    ]);
    assert!(net::tcp_whoami(&f.host.ns, sa("2001:db8:53::53", 7000), WAIT).is_ok());
    // Denied within the repair period (10 s) at the latest.
    assert!(
        eventually(LEARN, || net::tcp_whoami(
            &f.c1.ns,
            sa("2001:db8:53::53", 7000),
            FAIL
        )
        .is_err()),
        "the local range is the host"
    );
    let (denied, egress) = (counted(&f, "egress_denied"), counted(&f, "egress"));
    for dst in ["2001:db8:53::53", "2001:db8:53::1:2"] {
        assert!(
            net::tcp_whoami(&f.c1.ns, sa(dst, 7000), FAIL).is_err(),
            "{dst}"
        );
    }
    assert!(eventually(WAIT, || counted(&f, "egress_denied") >= denied + 2));
    assert_eq!(counted(&f, "egress"), egress, "nothing passed as the world");
}

#[test]
fn an_ipv6_egress_deny_range_is_never_the_world() {
    // One address of the world denied by the operator, an IPv4 range beside.
    let f = fixture_launched(
        true,
        &[],
        &["--egress-deny", &format!("{WORLD6}/128,198.51.100.0/24")],
    );
    let other = "2001:db8:113::11";
    f.out.world.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{other}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let _tcp = net::tcp_whoami_server6(&f.out.world, 7000);
    assert!(
        eventually(LEARN, || net::tcp_whoami(&f.c1.ns, sa(other, 7000), FAIL)
            .is_ok()),
        "the rest of the world first, so the pool is known"
    );
    let denied = counted(&f, "egress_denied");
    assert!(net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "egress_denied") > denied));
}

#[test]
fn without_a_global_ipv6_address_the_ipv6_world_is_denied() {
    let f = fixture_with(false, &[]);
    let _tcp = net::tcp_whoami_server6(&f.out.world, 7000);
    assert!(eventually(LEARN, || {
        assert!(net::tcp_whoami(&f.c1.ns, sa(WORLD6, 7000), FAIL).is_err());
        counted(&f, "egress_denied") > 0
    }));
    assert_eq!(counted(&f, "egress"), 0);
}

#[test]
fn a_published_port_answers_routers_on_the_hosts_ipv6_address() {
    let f = fixture();
    let port = published(&f.c1.attached).expect("a web container is published");
    let _web = net::tcp_whoami_server6(&f.c1.ns, 8080);
    let at = sa(HOST6, port.port());
    let mut seen = None;
    assert!(
        eventually(LEARN, || {
            seen = net::tcp_whoami(&f.out.router, at, FAIL).ok();
            seen.is_some()
        }),
        "the router through the host's IPv6 address"
    );
    assert_eq!(seen.unwrap().0, ROUTER6, "the container sees the router");
    assert!(eventually(WAIT, || counted(&f, "published") > 0));
    // Anyone else through the same port: dropped at the container.
    assert!(net::tcp_whoami(&f.out.stranger, at, FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_router") > 0));
    // IPv4's publication beside, unchanged.
    let (who4, _) = net::tcp_whoami(&f.out.router, port, WAIT).unwrap();
    assert!(who4.ends_with("192.168.50.7"), "{who4}");
}

#[test]
fn the_underlay_cannot_reach_the_agents_ipv6_dns() {
    let f = fixture();
    let denied = |h: &Host| {
        metric_value(
            &h.metrics(),
            "pn_edge_dropped_packets_total",
            &[("reason", "dns_denied")],
        )
    };
    let before = denied(&f.host);
    // The DNS's IPv6 sockets are on `[::]:53` (for `fe80::1`): the host's
    // IPv6 address holds that port too. A neighbour on the underlay gets
    // no connection and no answer.
    let dns = sa(HOST6, 53);
    let tcp = f
        .out
        .stranger
        .run(move || TcpStream::connect_timeout(&dns, FAIL));
    assert!(
        tcp.is_err(),
        "the underlay connected to the agent's IPv6 DNS"
    );
    let udp = f.out.stranger.run(move || {
        let s = UdpSocket::bind("[::]:0").unwrap();
        s.set_read_timeout(Some(FAIL)).unwrap();
        // A query for example.com, id 0x1234, RD.
        let q = [
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        s.send_to(&q, dns).unwrap();
        let mut buf = [0u8; 512];
        s.recv(&mut buf).ok()
    });
    assert_eq!(udp, None);
    assert!(
        eventually(WAIT, || denied(&f.host) >= before + 2),
        "both dropped at the input hook"
    );
}

/// "Address unreachable" about a TCP segment `quoted_src → quoted_dst`,
/// its checksum left to the kernel (raw ICMPv6 sockets always sum).
fn unreachable_about6(quoted_src: SocketAddr, quoted_dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (quoted_src, quoted_dst) else {
        panic!("IPv6 only")
    };
    let mut msg = vec![1, 3, 0, 0, 0, 0, 0, 0];
    // The quoted header: version 6, 20 bytes of TCP, next header TCP.
    msg.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    msg.extend_from_slice(&s.ip().octets());
    msg.extend_from_slice(&d.ip().octets());
    msg.extend_from_slice(&s.port().to_be_bytes());
    msg.extend_from_slice(&d.port().to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0, 0, 0, 0, 0, 0]);
    msg
}

/// The twin of `forged_icmp.rs`: an ICMPv6 error from the world is
/// admitted as part of the connection it quotes only into the container
/// that connection is; one quoting another tenant's is `not_member`.
#[test]
fn an_icmpv6_error_quoting_another_containers_connection_is_not_admitted() {
    use socket2::{Domain, Protocol, Socket, Type};

    let f = fixture();
    let (_, other_app) = f.host.network_and_app(&[]);
    let other = f.host.member(&other_app, "web", "oth");
    let _srv = net::tcp_whoami_server6(&f.out.world, 7000);
    let world = sa(WORLD6, 7000);
    let mut open = None;
    assert!(eventually(LEARN, || {
        open = net::tcp_whoami(&other.ns, world, FAIL).ok();
        open.is_some()
    }));
    let (_, conn) = open.unwrap();
    let quoted = conn.local_addr().unwrap();
    assert_eq!(quoted.ip(), std::net::IpAddr::V6(ip6(&other)));
    // The stranger routes the pool to the host, as any neighbour can, and
    // aims errors at the victim (c1) quoting the other tenant's connection.
    let s = ip6(&f.c1).segments();
    let pool6 = format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]);
    f.out
        .stranger
        .ip(&["-6", "route", "add", &pool6, "via", HOST6]);
    let victim_if = f.c1.attached["interface"].as_str().unwrap().to_string();
    let cap = net::Capture::start(&f.c1.ns, &victim_if, "icmp6 and ip6[40] == 1");
    let (before, egress) = (counted(&f, "not_member"), counted(&f, "egress"));
    let victim = SocketAddr::from((ip6(&f.c1), 0));
    let msg = unreachable_about6(quoted, world);
    f.out
        .stranger
        .run(move || {
            let raw = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
            for _ in 0..5 {
                raw.send_to(&msg, &victim.into())?;
            }
            Ok::<_, std::io::Error>(())
        })
        .expect("sending from the stranger");
    assert!(eventually(WAIT, || counted(&f, "not_member") >= before + 5));
    std::thread::sleep(Duration::from_millis(300));
    let frames = cap.finish();
    assert!(
        frames.is_empty(),
        "{} forged ICMPv6 errors reached the victim",
        frames.len()
    );
    assert_eq!(counted(&f, "egress"), egress, "admitted as the victim's");
    let mut conn = conn;
    net::echo_on(&mut conn, b"still there").expect("the other tenant's connection");
}
