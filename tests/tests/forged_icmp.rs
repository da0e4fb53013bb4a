//! ICMP errors from the world are admitted into a container as part of the
//! connection they quote; one that quotes another container's connection
//! (another tenant's, on the same host) must not be.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{
    Host,
    edge::{HOST, Outside, WORLD},
    net, unique_prefix,
};

const WAIT: Duration = Duration::from_secs(5);

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// "Host unreachable" about a TCP segment `quoted_src → quoted_dst`.
fn unreachable_about(quoted_src: SocketAddr, quoted_dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (quoted_src, quoted_dst) else {
        panic!("IPv4 only")
    };
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&s.port().to_be_bytes());
    tcp.extend_from_slice(&d.port().to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1]);
    let inner = net::ipv4_packet(*s.ip(), *d.ip(), 6, &tcp);
    let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&inner);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    icmp
}

#[test]
fn an_icmp_error_quoting_another_containers_connection_is_not_admitted() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    host.launch(&[]);
    // Two tenants on one host: the victim, and the one that talks to the world.
    let (_, victim_app) = host.network_and_app(&[]);
    let (_, other_app) = host.network_and_app(&[]);
    let victim = host.member(&victim_app, "web", "vic");
    let other = host.member(&other_app, "web", "oth");
    let _srv = net::tcp_whoami_server(&out.world, 7000);
    let world = SocketAddr::from((WORLD.parse::<std::net::Ipv4Addr>().unwrap(), 7000));
    let (seen, conn) = net::tcp_whoami(&other, world, WAIT).expect("tcp to the world");
    assert_eq!(seen, HOST);
    let quoted = conn.local_addr().unwrap();
    assert_eq!(quoted.ip(), other.addr);

    // The world (the stranger on the LAN, which routes the pool to the
    // host as any neighbour can) aims errors at the victim quoting the
    // other tenant's open connection.
    out.stranger
        .ip(&["route", "add", "10.240.0.0/12", "via", HOST]);
    let victim_if = victim.attached["interface"].as_str().unwrap().to_string();
    let cap = net::Capture::start(&victim, &victim_if, "icmp");
    let egress_before = host.packets(&victim_app, "web-1", "egress");
    let stranger = "192.168.50.66".parse().unwrap();
    for _ in 0..5 {
        let forged = net::ipv4_packet(stranger, victim.addr, 1, &unreachable_about(quoted, world));
        net::send_raw_ipv4(&out.stranger, forged).expect("sending from the stranger");
    }
    std::thread::sleep(Duration::from_millis(500));
    let frames = cap.finish();
    assert!(
        frames.is_empty(),
        "{} forged ICMP errors reached the victim (not_member: {})",
        frames.len(),
        host.packets(&victim_app, "web-1", "not_member")
    );
    assert_eq!(
        host.packets(&victim_app, "web-1", "egress"),
        egress_before,
        "a forged error was admitted as the victim's connection"
    );
    // The quoted connection itself is untouched.
    let mut conn = conn;
    net::echo_on(&mut conn, b"still there").expect("the other tenant's connection");
}
