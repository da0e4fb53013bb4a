//! The edge through the datapath: the real agent and its eBPF programs on
//! the container's veth, the edge's nftables table in the host namespace,
//! and real sockets from the world, a router and a stranger.
//!
//! TODO(lead): the agent does not wire the edge yet. Until it does, the
//! test plays its part: `edge-apply` loads the table, `wire` writes the map
//! entries the agent will write (the pool in PN_CONFIG, the deny list in
//! PN_EGRESS_DENY, the published/sealed flags and web port in PN_IFACES)
//! and the container gets the default route `container attach` will give.
//! Once wired, drop both and start the agent with `--router-cidr`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, lpm_trie::LpmTrie};
use pn_agent::edge::{
    EdgeConfig, Forwarding, Publication,
    deny::{self, HostFacts},
};
use pn_common::maps::{Config, DenyRange, Iface};
use pn_tests::{
    Host, Namespace,
    edge::{HOST, Outside, ROUTER, UNDERLAY, WORLD, nft_counter},
    eventually, net, unique_prefix,
};

const WAIT: Duration = Duration::from_secs(3);
const FAIL: Duration = Duration::from_millis(700);

struct Fixture {
    host: Host,
    out: Outside,
    app: String,
    c1: Namespace,
    ip1: Ipv4Addr,
}

fn pinned(host: &Host, name: &str) -> Map {
    let data = MapData::from_pin(host.bpffs().join("maps").join(name))
        .unwrap_or_else(|e| panic!("pinned map {name}: {e}"));
    Map::from_map_data(data).unwrap()
}

/// What the agent's wiring will write into the maps.
fn wire(f: &Fixture, flags: u32) {
    let mut cfg: Array<MapData, Config> = pinned(&f.host, "PN_CONFIG").try_into().unwrap();
    let mut c = cfg.get(&0, 0).unwrap();
    c.pool_addr = u32::from_ne_bytes([10, 240, 0, 0]);
    c.pool_mask = u32::from_ne_bytes([255, 240, 0, 0]);
    cfg.set(0, c, 0).unwrap();

    let mut denied: LpmTrie<MapData, u32, DenyRange> =
        pinned(&f.host, "PN_EGRESS_DENY").try_into().unwrap();
    let list = deny::deny_list(&HostFacts {
        addrs: vec![format!("{HOST}/24").parse().unwrap()],
        underlay: Some(UNDERLAY.parse().unwrap()),
        ..Default::default()
    });
    for ((addr, len), kind) in deny::lpm_entries(&list) {
        let key = aya::maps::lpm_trie::Key::new(u32::from(len), addr);
        denied.insert(&key, DenyRange { kind }, 0).unwrap();
    }

    let mut ifaces: HashMap<MapData, u32, Iface> = pinned(&f.host, "PN_IFACES").try_into().unwrap();
    let me = u32::from_ne_bytes(f.ip1.octets());
    let (idx, mut iface) = ifaces
        .iter()
        .map(Result::unwrap)
        .find(|(_, i)| i.addr == me)
        .expect("the container's interface");
    iface.flags = flags;
    iface.web_port = 8080;
    ifaces.insert(idx, iface, 0).unwrap();
}

/// One host with a web container, published on 30000 for the router.
fn fixture() -> Fixture {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    host.launch(&[]);
    let network = host.create_network(&[]);
    let app = host.create_app(&network);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let ip1: Ipv4Addr = host.attach(&app, "web", &c1)["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    c1.ip(&["route", "add", "default", "via", "169.254.1.1"]);
    pn_tests::edge::apply(
        &host.ns,
        &EdgeConfig {
            pool: "10.240.0.0/12".parse().unwrap(),
            host_addrs: vec![HOST.parse().unwrap()],
            router_cidrs: vec![format!("{ROUTER}/32").parse().unwrap()],
            publications: vec![Publication {
                host_port: 30000,
                container: ip1,
                web_port: 8080,
            }],
            egress_deny: deny::merged(&deny::deny_list(&HostFacts {
                addrs: vec![format!("{HOST}/24").parse().unwrap()],
                underlay: Some(UNDERLAY.parse().unwrap()),
                ..Default::default()
            })),
            interfaces: vec!["pnh*".into(), "pn-tun".into()],
            forwarding: Forwarding::PnOnly,
        },
    );
    let f = Fixture {
        host,
        out,
        app,
        c1,
        ip1,
    };
    wire(&f, Iface::FLAG_PUBLISHED);
    f
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn counted(f: &Fixture, reason: &str) -> u64 {
    f.host.packets(&f.app, "web-1", reason)
}

#[test]
fn the_world_is_reached_through_the_host_and_answers_come_back() {
    let f = fixture();
    let _tcp = net::tcp_whoami_server(&f.out.world, 7000);
    let _udp = net::udp_whoami_server(&f.out.world, 7001);
    let (seen, mut s) = net::tcp_whoami(&f.c1, sa(WORLD, 7000), WAIT).expect("tcp to the world");
    assert_eq!(seen, HOST);
    net::echo_on(&mut s, &vec![0x5a; 1 << 20]).expect("1 MiB back whole");
    assert_eq!(net::udp_whoami(&f.c1, sa(WORLD, 7001), WAIT).unwrap(), HOST);
    let ping = f.c1.exec(&["ping", "-c1", "-W2", WORLD]);
    assert!(ping.status.success(), "{ping:?}");
    // Super-packets (GSO/GRO) count once each: a handful, both ways.
    assert!(eventually(WAIT, || counted(&f, "egress") > 10), "counted");
    assert_eq!(counted(&f, "not_member"), 0, "no reply was refused");
}

#[test]
fn nothing_from_outside_reaches_a_container_address() {
    let f = fixture();
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    // A router (or anyone on the underlay) routing the pool to the host.
    f.out
        .router
        .ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
    assert!(net::tcp_whoami(&f.out.router, SocketAddr::from((f.ip1, 8080)), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_member") > 0));
    assert_eq!(counted(&f, "published"), 0);
}

#[test]
fn routers_reach_the_published_port_and_strangers_do_not() {
    let f = fixture();
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    let (seen, mut s) =
        net::tcp_whoami(&f.out.router, sa(HOST, 30000), WAIT).expect("router through the port");
    assert_eq!(seen, ROUTER);
    net::echo_on(&mut s, b"GET / HTTP/1.1\r\nHost: waf\r\n\r\n").unwrap();
    assert!(
        eventually(WAIT, || counted(&f, "published") >= 6),
        "both directions"
    );
    assert!(net::tcp_whoami(&f.out.stranger, sa(HOST, 30000), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "not_router") > 0));
}

#[test]
fn what_is_never_the_world_stays_out_of_reach() {
    let f = fixture();
    let _on_underlay = net::tcp_whoami_server(&f.out.router, 7100);
    let _on_host = net::tcp_whoami_server(&f.host.ns, 7200);
    for dst in [
        sa(ROUTER, 7100),
        sa(HOST, 7200),
        sa("169.254.169.254", 80),
        sa("127.0.0.1", 7200),
    ] {
        let before = counted(&f, "egress_denied");
        // 127.0.0.1 is the container's own loopback: nothing listens there.
        assert!(net::tcp_whoami(&f.c1, dst, FAIL).is_err(), "{dst}");
        if dst.ip() != Ipv4Addr::LOCALHOST {
            assert!(
                eventually(WAIT, || counted(&f, "egress_denied") > before),
                "{dst} counted"
            );
        }
    }
    // The datapath stopped them; the forward hook's second line saw nothing.
    assert_eq!(nft_counter(&f.host.ns, "pn", "egress_denied"), 0);
    // The gateway stays reachable, link-local as it is.
    let ping = f.c1.exec(&["ping", "-c1", "-W2", "169.254.1.1"]);
    assert!(ping.status.success(), "{ping:?}");
    assert!(eventually(WAIT, || counted(&f, "gateway") > 0));
}

#[test]
fn a_sealed_network_reaches_nothing_outside_yet_answers_its_routers() {
    let f = fixture();
    wire(&f, Iface::FLAG_PUBLISHED | Iface::FLAG_EGRESS_DENY);
    let _world = net::tcp_whoami_server(&f.out.world, 7000);
    let _web = net::tcp_whoami_server(&f.c1, 8080);
    assert!(net::tcp_whoami(&f.c1, sa(WORLD, 7000), FAIL).is_err());
    assert!(eventually(WAIT, || counted(&f, "egress_denied") > 0));
    let (seen, mut s) = net::tcp_whoami(&f.out.router, sa(HOST, 30000), WAIT)
        .expect("replies to a router leave a sealed network");
    assert_eq!(seen, ROUTER);
    net::echo_on(&mut s, b"still served").unwrap();
}

#[test]
fn path_mtu_errors_from_the_world_reach_the_container() {
    let f = fixture();
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
