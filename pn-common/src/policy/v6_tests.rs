//! The member rules over IPv6: the same code path as IPv4's (`Family`),
//! pinned here with IPv6 addresses so the twin rules cannot drift.

use super::{
    tests::{MarkOnly, NET_A, NET_B, Untouched, ep},
    *,
};
use crate::{GATEWAY6, IP6_UNSPECIFIED, Ip6, edge::MARK_GATEWAY};

const fn ula(subnet: u8, host: u8) -> Ip6 {
    [
        0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, subnet, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}
const A1: Ip6 = ula(1, 1);
const A2: Ip6 = ula(1, 2);
const B1: Ip6 = ula(2, 1);
/// Outside the pool: the IPv6 world.
const WORLD: Ip6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const ICMP6: u8 = IPPROTO_ICMPV6;

fn cfg() -> Config {
    let mut mask = [0u8; 16];
    mask[..6].fill(0xff);
    Config {
        dns_addr: crate::GATEWAY,
        dns_port: 53,
        pool6_addr: ula(0, 0),
        pool6_mask: mask,
        ..Default::default()
    }
}

fn iface_a1() -> Iface {
    Iface {
        addr: crate::ip4(10, 240, 0, 1),
        addr6: A1,
        tag: NET_A,
        ..Default::default()
    }
}

fn pkt(src: Ip6, dst: Ip6, proto: u8, sport: u16, dport: u16) -> Ipv6Summary {
    Ipv6Summary {
        src,
        dst,
        proto,
        sport,
        dport,
    }
}

/// The edge for a packet with the world: the deny list holds `denied`.
struct World {
    denied: Option<Ip6>,
    conn: Option<ConnKind>,
}

impl EdgeLookup<Ip6> for World {
    fn conn(&mut self) -> Option<ConnKind> {
        self.conn
    }
    fn egress_denied(&mut self, dst: Ip6) -> bool {
        self.denied.is_some_and(|d| same6(&d, &dst))
    }
    fn mark(&mut self) -> u32 {
        0
    }
}

fn from(p: &Ipv6Summary, dst: Option<&Endpoint>) -> Reason {
    from_container(p, Some(&iface_a1()), dst, &cfg(), &mut Untouched)
}

#[test]
fn pool6_is_an_address_and_a_mask() {
    let c = cfg();
    assert!(c.in_pool6(&A1) && c.in_pool6(&B1));
    assert!(!c.in_pool6(&WORLD));
    assert!(!c.in_pool6(&GATEWAY6));
    // The zero default keeps every address in the pool, the world out.
    assert!(Config::default().in_pool6(&WORLD));
    assert!(same6(&A1, &ula(1, 1)) && !same6(&A1, &A2));
}

#[test]
fn same_network_tcp_udp_icmp6_pass_and_others_are_denied() {
    for (proto, port) in [(IPPROTO_TCP, 1), (IPPROTO_UDP, 65535), (ICMP6, 0)] {
        assert_eq!(
            from(&pkt(A1, A2, proto, 40000, port), Some(&ep(NET_A))),
            Reason::Forwarded
        );
    }
    assert_eq!(
        from(&pkt(A1, B1, IPPROTO_TCP, 1, 80), Some(&ep(NET_B))),
        Reason::PolicyDenied
    );
    // A pool address nobody holds.
    assert_eq!(
        from(&pkt(A1, ula(9, 9), IPPROTO_TCP, 1, 80), None),
        Reason::PolicyDenied
    );
    // IPv4's ICMP number means nothing over IPv6; SCTP, ESP as for IPv4.
    for proto in [IPPROTO_ICMP, 132, 50] {
        assert_eq!(
            from(&pkt(A1, A2, proto, 0, 0), Some(&ep(NET_A))),
            Reason::ProtoDenied
        );
    }
}

#[test]
fn sources_are_the_interface_s_own() {
    assert_eq!(
        from(&pkt(A2, A1, IPPROTO_TCP, 1, 80), Some(&ep(NET_A))),
        Reason::SpoofedSource
    );
    assert_eq!(
        from(
            &pkt(container_link_local(&A1), A2, IPPROTO_TCP, 1, 80),
            Some(&ep(NET_A))
        ),
        Reason::SpoofedSource
    );
    // An interface without an IPv6 address owns no IPv6 source, not even `::`.
    let v4_only = Iface {
        addr6: IP6_UNSPECIFIED,
        ..iface_a1()
    };
    let p = pkt(IP6_UNSPECIFIED, A2, IPPROTO_UDP, 1, 80);
    assert_eq!(
        from_container(&p, Some(&v4_only), Some(&ep(NET_A)), &cfg(), &mut Untouched),
        Reason::SpoofedSource
    );
    assert_eq!(
        from_container(&p, None, Some(&ep(NET_A)), &cfg(), &mut Untouched),
        Reason::UnknownInterface
    );
}

#[test]
fn the_gateway_answers_dns_and_icmp6_only() {
    assert_eq!(
        from(&pkt(A1, GATEWAY6, IPPROTO_UDP, 5353, 53), None),
        Reason::Gateway
    );
    assert_eq!(
        from(&pkt(A1, GATEWAY6, IPPROTO_TCP, 5353, 53), None),
        Reason::Gateway
    );
    assert_eq!(from(&pkt(A1, GATEWAY6, ICMP6, 0, 0), None), Reason::Gateway);
    // Another port of the gateway is the host: never the world.
    let mut edge = World {
        denied: Some(GATEWAY6),
        conn: None,
    };
    let p = pkt(A1, GATEWAY6, IPPROTO_TCP, 1, 22);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut edge),
        Reason::EgressDenied
    );
}

#[test]
fn the_world_through_the_edge() {
    let mut edge = World {
        denied: None,
        conn: None,
    };
    let p = pkt(A1, WORLD, IPPROTO_TCP, 40000, 443);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut edge),
        Reason::Egress
    );
    edge.denied = Some(WORLD);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut edge),
        Reason::EgressDenied
    );
    // The answer comes back on its connection; the unsolicited does not.
    let back = pkt(WORLD, A1, IPPROTO_TCP, 443, 40000);
    let mut edge = World {
        denied: None,
        conn: Some(ConnKind::Egress),
    };
    assert_eq!(
        to_container(&back, 3, Some(&iface_a1()), None, &cfg(), &mut edge),
        Reason::Egress
    );
    edge.conn = None;
    assert_eq!(
        to_container(&back, 3, Some(&iface_a1()), None, &cfg(), &mut edge),
        Reason::NotMember
    );
}

#[test]
fn toward_a_container_members_from_their_home_and_the_gateway_from_the_host() {
    let to = |p: &Ipv6Summary, ingress: u32, src: Option<&Endpoint>, mark: u32| {
        to_container(
            p,
            ingress,
            Some(&iface_a1()),
            src,
            &cfg(),
            &mut MarkOnly(mark),
        )
    };
    let p = pkt(A2, A1, IPPROTO_TCP, 40000, 80);
    assert_eq!(to(&p, 7, Some(&ep(NET_A)), 0), Reason::Delivered);
    assert_eq!(to(&p, 8, Some(&ep(NET_A)), 0), Reason::SpoofedSource);
    assert_eq!(
        to(&pkt(B1, A1, IPPROTO_TCP, 1, 80), 7, Some(&ep(NET_B)), 0),
        Reason::NotMember
    );
    assert_eq!(
        to(&pkt(ula(9, 9), A1, IPPROTO_TCP, 1, 80), 7, None, 0),
        Reason::NotMember
    );
    let answer = pkt(GATEWAY6, A1, IPPROTO_UDP, 53, 5353);
    assert_eq!(to(&answer, 0, None, MARK_GATEWAY), Reason::Gateway);
    assert_eq!(to(&answer, 0, None, 0), Reason::ForgedGateway);
    assert_eq!(to(&answer, 4, None, MARK_GATEWAY), Reason::SpoofedSource);
    let too_big = pkt(GATEWAY6, A1, ICMP6, 0, 0);
    assert_eq!(to(&too_big, 0, None, 0), Reason::Gateway);
    assert_eq!(
        to(&pkt(A2, A1, 132, 0, 0), 7, Some(&ep(NET_A)), 0),
        Reason::ProtoDenied
    );
}

#[test]
fn an_ipv6_connection_has_one_key_both_ways() {
    let leaving = pkt(A1, WORLD, IPPROTO_TCP, 40000, 443);
    let entering = pkt(WORLD, A1, IPPROTO_TCP, 443, 40000);
    let k = ConnKey::leaving(&leaving);
    assert_eq!(k, ConnKey::entering(&entering));
    assert_eq!((k.container, k.remote), (A1, WORLD));
    assert_eq!((k.container_port, k.remote_port), (40000, 443));
    assert_ne!(
        k,
        ConnKey::leaving(&pkt(A1, WORLD, IPPROTO_UDP, 40000, 443))
    );
}

#[test]
fn remote_members_through_the_tunnel_and_only_a_members_own_veth_feeds_it() {
    let remote = Endpoint {
        peer: 2,
        flags: Endpoint::FLAG_REMOTE,
        ..ep(NET_A)
    };
    let up = Config {
        tunnel_ifindex: 9,
        ..cfg()
    };
    let out = pkt(A1, A2, IPPROTO_TCP, 1, 2);
    let from_a1 =
        |c: &Config| from_container(&out, Some(&iface_a1()), Some(&remote), c, &mut Untouched);
    assert_eq!(from_a1(&cfg()), Reason::NoTunnel);
    assert_eq!(from_a1(&up), Reason::Forwarded);
    let back = pkt(A2, A1, IPPROTO_TCP, 2, 1);
    let to = |ingress, c: &Config| {
        to_container(
            &back,
            ingress,
            Some(&iface_a1()),
            Some(&remote),
            c,
            &mut Untouched,
        )
    };
    assert_eq!(to(9, &up), Reason::Delivered);
    for ingress in [7, 0] {
        assert_eq!(to(ingress, &up), Reason::SpoofedSource);
    }
    assert_eq!(to(9, &cfg()), Reason::SpoofedSource);
    // Into the tunnel: the veth's own IPv6 address, nothing else; a veth
    // without one (an IPv4-only container) sends no IPv6 at all.
    assert_eq!(into_tunnel(A1, Some(&iface_a1())), Reason::Forwarded);
    assert_eq!(into_tunnel(A2, Some(&iface_a1())), Reason::SpoofedSource);
    assert_eq!(into_tunnel(A1, None), Reason::SpoofedSource);
    let v4_only = Iface {
        addr6: IP6_UNSPECIFIED,
        ..iface_a1()
    };
    assert_eq!(
        into_tunnel(IP6_UNSPECIFIED, Some(&v4_only)),
        Reason::SpoofedSource
    );
}

/// The same guard over an IPv6 underlay: peers are asked of their own
/// family's table, and the verdicts are IPv4's.
#[test]
fn underlay_guard_ipv6() {
    let cfg = Config {
        tunnel_port: 51871,
        ..super::tests::cfg()
    };
    let v6 = |last: u8| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = last;
        a
    };
    let (me, peer, stranger, member) = (v6(1), v6(2), v6(66), v6(200));
    let is_peer = |ip: Ip6| ip == peer;
    let local_tag = |t| t == NET_A;
    let tun = |src, msg_type, tag| UnderlayPacket {
        src,
        dst: me,
        proto: IPPROTO_UDP,
        dport: 51871,
        msg_type,
        tag,
        payload_len: 64,
    };
    let data = Some(crate::tunnel::MSG_DATA);
    let init = Some(crate::tunnel::MSG_INITIATION);
    let decide = |p: UnderlayPacket<Ip6>| underlay(&p, &cfg, p.dst == member, is_peer, local_tag);
    assert_eq!(decide(tun(peer, data, Some(NET_A))), Some(Reason::Tunnel));
    assert_eq!(decide(tun(peer, init, None)), Some(Reason::Tunnel));
    assert_eq!(
        decide(tun(peer, data, Some(NET_B))),
        Some(Reason::UnknownTag)
    );
    assert_eq!(decide(tun(stranger, init, None)), Some(Reason::UnknownPeer));
    let clear = UnderlayPacket {
        dst: member,
        proto: IPPROTO_TCP,
        ..tun(peer, None, None)
    };
    assert_eq!(decide(clear), Some(Reason::CleartextToMember));
    let ssh = UnderlayPacket {
        proto: IPPROTO_TCP,
        dport: 22,
        ..tun(stranger, None, None)
    };
    assert_eq!(decide(ssh), None);
}
