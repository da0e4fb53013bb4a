//! Attacks from inside a host: another process on the host answering DNS in
//! the agent's name, a container posing in ARP, a user who is not root
//! talking to the agent's API.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use pn_agent::error::ErrorKind;
use pn_tests::{
    Cli, Host, Namespace, agent_bin, eventually, net,
    scenario::{Member, OneApp},
    unique_prefix,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const ZONE: &str = "private-network.internal";

struct Fixture {
    host: Host,
    net: String,
    app: String,
    c1: Member,
    c2: Member,
    /// c1's interface inside it, and its veth's end on the host.
    if1: String,
    host_if1: String,
}

/// One network, one app: c1 (web-1) and c2 (web-2).
fn fixture() -> Fixture {
    let host = Host::start(&unique_prefix(), "h1");
    let OneApp { net, app, c1, c2 } = OneApp::new(&host, &host, ["web", "web"]);
    let name = |k: &str| c1.attached[k].as_str().unwrap().to_string();
    Fixture {
        if1: name("interface"),
        host_if1: name("host_interface"),
        host,
        net,
        app,
        c1,
        c2,
    }
}

fn dig(ns: &Namespace, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1", "+short", "@169.254.1.1"];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&ns.exec(&full).stdout)
        .trim()
        .to_string()
}

#[test]
fn dns_answers_from_the_gateway_come_only_from_the_agent() {
    let f = fixture();
    // The agent's own answers, over UDP and over TCP (an accepted
    // connection inherits the listener's mark).
    let name = format!("1.web.{}.{}.{ZONE}", f.app, f.net);
    assert_eq!(dig(&f.c2, &[&name]), f.c1.addr.to_string(), "over UDP");
    assert_eq!(
        dig(&f.c2, &["+tcp", &name]),
        f.c1.addr.to_string(),
        "over TCP"
    );
    assert!(f.host.packets(&f.app, "web-2", "gateway") >= 2);
    assert_eq!(f.host.packets(&f.app, "web-2", "forged_gateway"), 0);

    // Another process on the host sends "answers" from 169.254.1.1:53
    // (a raw socket here; a socket bound to the address while the agent
    // restarts is the same packet): they never reach the container.
    let got = net::udp_collector(&f.c1, 5353);
    for _ in 0..3 {
        let forged = net::udp_packet(GATEWAY, 53, f.c1.addr, 5353, b"forged answer");
        net::send_raw_ipv4(&f.host.ns, forged).expect("sending from the host");
    }
    assert!(
        got.received(Duration::from_millis(800)).is_empty(),
        "a forged answer from the gateway reached the container"
    );
    assert!(
        eventually(Duration::from_secs(3), || f.host.packets(
            &f.app,
            "web-1",
            "forged_gateway"
        ) >= 3),
        "forged answers not counted: {}",
        f.host.packets(&f.app, "web-1", "forged_gateway")
    );
    // The kernel's ICMP from the gateway (ping from the host) still passes.
    let out = f
        .host
        .ns
        .exec(&["ping", "-c", "1", "-W", "2", &f.c1.addr.to_string()]);
    assert!(out.status.success(), "ping from the gateway failed");
    // And the agent still answers.
    assert_eq!(dig(&f.c1, &[&name]), f.c1.addr.to_string());
}

fn mac_of(ns: &Namespace, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let mut mac = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).unwrap();
    }
    mac
}

/// An Ethernet frame carrying an ARP message (op 1 request, 2 reply).
fn arp_frame(op: u8, src_mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

fn with_eth_src(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}

#[test]
fn arp_only_between_a_container_and_its_gateway() {
    let f = fixture();
    let ifname = f.if1.as_str();
    let mac1 = mac_of(&f.c1, ifname);
    let before = f.host.packets(&f.app, "web-1", "arp_denied");
    // Gratuitous announcements of its own address and of another
    // member's, a question about a host address that is not the gateway,
    // a sender MAC that is not the frame's.
    let posing = [
        arp_frame(1, mac1, f.c1.addr, f.c1.addr),
        arp_frame(2, mac1, f.c1.addr, f.c1.addr),
        arp_frame(1, mac1, f.c2.addr, GATEWAY),
        arp_frame(2, mac1, f.c2.addr, f.c2.addr),
        arp_frame(1, mac1, f.c1.addr, Ipv4Addr::new(127, 0, 0, 1)),
        with_eth_src(
            arp_frame(1, [2, 0xde, 0xad, 0, 0, 1], f.c1.addr, GATEWAY),
            mac1,
        ),
    ];
    let n = posing.len() as u64;
    for frame in posing {
        net::send_frame(&f.c1, ifname, frame).expect("sending ARP from the container");
    }
    assert!(
        eventually(Duration::from_secs(3), || f.host.packets(
            &f.app,
            "web-1",
            "arp_denied"
        ) >= before + n),
        "posing ARP not dropped: {} arp_denied, {} arp",
        f.host.packets(&f.app, "web-1", "arp_denied"),
        f.host.packets(&f.app, "web-1", "arp")
    );
    // Toward a container, only the gateway: a host process claiming
    // another member's address is dropped too.
    let before = f.host.packets(&f.app, "web-1", "arp_denied");
    let host_mac = mac_of(&f.host.ns, &f.host_if1);
    let mut lie = arp_frame(2, host_mac, f.c2.addr, f.c1.addr);
    lie[..6].copy_from_slice(&mac1);
    // The program's drop shows to the sender as ENOBUFS.
    let _ = net::send_frame(&f.host.ns, &f.host_if1, lie);
    assert!(
        eventually(Duration::from_secs(3), || f.host.packets(
            &f.app,
            "web-1",
            "arp_denied"
        ) > before),
        "ARP toward the container from another sender not dropped"
    );

    // A container that lost its neighbour entry asks for the gateway, is
    // answered, and its traffic flows.
    let arp_before = f.host.packets(&f.app, "web-1", "arp");
    f.c1.ip(&["neigh", "del", "169.254.1.1", "dev", ifname]);
    let _echo = net::udp_echo_server(&f.c2, 7000);
    let got = net::udp_echo(
        &f.c1,
        SocketAddr::from((f.c2.addr, 7000)),
        b"after arp",
        Duration::from_secs(5),
    )
    .expect("traffic after resolving the gateway");
    assert_eq!(got, b"after arp");
    assert!(
        f.host.packets(&f.app, "web-1", "arp") >= arp_before + 2,
        "the request and its answer are counted as arp"
    );
}

/// The CLI as another user.
fn cli_as(host: &Host, uid: u32, args: &[&str]) -> Cli {
    Command::new(agent_bin())
        .arg("--api-socket")
        .arg(host.api_socket())
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("running pn-agent as another user")
        .into()
}

const NOBODY: u32 = 65534;

#[test]
fn the_api_serves_root_and_refuses_other_users() {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let sock = host.api_socket();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket's mode");
    host.cli_ok(&["network", "list"]);

    // Someone widened the socket's mode (or passed a descriptor on): the
    // agent itself refuses by the peer's credentials, counted and logged.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["network", "create"][..], &["network", "list"]] {
        cli_as(&host, NOBODY, args).assert_error(ErrorKind::Denied, "permission denied: uid 65534");
    }
    assert!(
        host.json(&["network", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused request changed something"
    );
    let refused = host
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("pn_api_refused_total ")?.parse::<u64>().ok());
    assert_eq!(refused, Some(2), "pn_api_refused_total");
    assert!(host.log().contains("API: refused uid 65534"));

    // As the agent made it, the socket's mode keeps others out, and the
    // CLI says why.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    cli_as(&host, NOBODY, &["network", "list"]).assert_error(ErrorKind::Denied, "not allowed");
    // Root still works.
    host.create_network(&[]);
}
