//! The contract's data-plane rules, member to member and on the underlay.

use super::*;
use crate::{GATEWAY, ip4};

pub(super) const A1: Ip4 = ip4(10, 240, 0, 1);
pub(super) const A2: Ip4 = ip4(10, 240, 0, 2);
pub(super) const B1: Ip4 = ip4(10, 240, 4, 1);
const OUTSIDE: Ip4 = ip4(192, 168, 1, 7);
pub(super) const NET_A: u32 = 1;
pub(super) const NET_B: u32 = 2;

pub(super) fn cfg() -> Config {
    Config {
        dns_addr: GATEWAY,
        dns_port: 53,
        drop_events_per_sec: 100,
        ..Default::default()
    }
}
pub(super) fn iface_a1() -> Iface {
    Iface {
        addr: A1,
        tag: NET_A,
        ..Default::default()
    }
}

/// The member-to-member path must not consult the edge at all.
pub(super) struct Untouched;

/// Only the packet's mark is there to read (the gateway's path).
pub(super) struct MarkOnly(pub(super) u32);

impl<A> EdgeLookup<A> for MarkOnly {
    fn conn(&mut self) -> Option<ConnKind> {
        panic!("connection table consulted")
    }
    fn egress_denied(&mut self, _: A) -> bool {
        panic!("deny list consulted")
    }
    fn mark(&mut self) -> u32 {
        self.0
    }
}

impl<A> EdgeLookup<A> for Untouched {
    fn conn(&mut self) -> Option<ConnKind> {
        panic!("connection table consulted")
    }
    fn egress_denied(&mut self, _: A) -> bool {
        panic!("deny list consulted")
    }
    fn mark(&mut self) -> u32 {
        panic!("mark read")
    }
}
pub(super) fn ep(tag: u32) -> Endpoint {
    Endpoint {
        tag,
        ifindex: 7,
        ..Default::default()
    }
}
pub(super) fn pkt(src: Ip4, dst: Ip4, proto: u8, sport: u16, dport: u16) -> Ipv4Summary {
    Ipv4Summary {
        src,
        dst,
        proto,
        sport,
        dport,
    }
}

#[test]
fn same_network_any_port_and_icmp_pass() {
    for (proto, port) in [(IPPROTO_TCP, 1), (IPPROTO_UDP, 65535), (IPPROTO_ICMP, 0)] {
        let p = pkt(A1, A2, proto, 40000, port);
        assert_eq!(
            from_container(
                &p,
                Some(&iface_a1()),
                Some(&ep(NET_A)),
                &cfg(),
                &mut Untouched
            ),
            Reason::Forwarded
        );
        let back = pkt(A2, A1, proto, port, 40000);
        assert_eq!(
            to_container(
                &back,
                7,
                Some(&iface_a1()),
                Some(&ep(NET_A)),
                &cfg(),
                &mut Untouched
            ),
            Reason::Delivered
        );
    }
}

#[test]
fn other_network_and_non_members_are_denied_at_the_sender() {
    let p = pkt(A1, B1, IPPROTO_TCP, 1234, 80);
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&ep(NET_B)),
            &cfg(),
            &mut Untouched
        ),
        Reason::PolicyDenied
    );
    let p = pkt(A1, OUTSIDE, IPPROTO_UDP, 1234, 53);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::PolicyDenied
    );
}

#[test]
fn forged_source_is_caught_before_anything_else() {
    let p = pkt(A2, A1, IPPROTO_TCP, 1, 2);
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&ep(NET_A)),
            &cfg(),
            &mut Untouched
        ),
        Reason::SpoofedSource
    );
    // Even toward the gateway.
    let p = pkt(OUTSIDE, GATEWAY, IPPROTO_UDP, 1, 53);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::SpoofedSource
    );
}

#[test]
fn other_protocols_are_denied_both_ways() {
    for proto in [2u8, 47, 50, 132] {
        let p = pkt(A1, A2, proto, 0, 0);
        assert_eq!(
            from_container(
                &p,
                Some(&iface_a1()),
                Some(&ep(NET_A)),
                &cfg(),
                &mut Untouched
            ),
            Reason::ProtoDenied
        );
        let p = pkt(A2, A1, proto, 0, 0);
        assert_eq!(
            to_container(
                &p,
                7,
                Some(&iface_a1()),
                Some(&ep(NET_A)),
                &cfg(),
                &mut Untouched
            ),
            Reason::ProtoDenied
        );
    }
}

#[test]
fn only_members_and_the_gateway_reach_a_container() {
    let p = pkt(OUTSIDE, A1, IPPROTO_TCP, 5555, 22);
    assert_eq!(
        to_container(&p, 0, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::NotMember
    );
    let p = pkt(B1, A1, IPPROTO_TCP, 5555, 22);
    assert_eq!(
        to_container(
            &p,
            7,
            Some(&iface_a1()),
            Some(&ep(NET_B)),
            &cfg(),
            &mut Untouched
        ),
        Reason::NotMember
    );
    // DNS answers (from the agent's marked sockets) and ICMP errors from the
    // gateway.
    let agent = crate::edge::MARK_GATEWAY;
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let p = pkt(GATEWAY, A1, proto, 53, 40000);
        assert_eq!(
            to_container(&p, 0, Some(&iface_a1()), None, &cfg(), &mut MarkOnly(agent)),
            Reason::Gateway
        );
    }
    let p = pkt(GATEWAY, A1, IPPROTO_ICMP, 0, 0);
    assert_eq!(
        to_container(&p, 0, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::Gateway
    );
    // But not any port of the gateway.
    let p = pkt(GATEWAY, A1, IPPROTO_TCP, 22, 40000);
    assert_eq!(
        to_container(&p, 0, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::NotMember
    );
}

#[test]
fn containers_reach_the_gateway_only_for_dns_and_icmp() {
    for (proto, dport, want) in [
        (IPPROTO_UDP, 53, Reason::Gateway),
        (IPPROTO_TCP, 53, Reason::Gateway),
        (IPPROTO_ICMP, 0, Reason::Gateway),
        (IPPROTO_TCP, 22, Reason::PolicyDenied),
        (IPPROTO_UDP, 9464, Reason::PolicyDenied),
    ] {
        let p = pkt(A1, GATEWAY, proto, 40000, dport);
        assert_eq!(
            from_container(&p, Some(&iface_a1()), None, &cfg(), &mut Untouched),
            want
        );
    }
}

#[test]
fn unknown_interfaces_fail_closed() {
    let p = pkt(A1, A2, IPPROTO_TCP, 1, 2);
    assert_eq!(
        from_container(&p, None, Some(&ep(NET_A)), &cfg(), &mut Untouched),
        Reason::UnknownInterface
    );
    assert_eq!(
        to_container(&p, 7, None, Some(&ep(NET_A)), &cfg(), &mut Untouched),
        Reason::UnknownInterface
    );
}

fn header(ver_ihl: u8, total_len: u16, frag: u16, proto: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = ver_ihl;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 240, 0, 1]);
    h[16..20].copy_from_slice(&[10, 240, 0, 2]);
    h
}

#[test]
fn ipv4_header_parsing() {
    let h = parse_ipv4(&header(0x45, 60, 0x4000, IPPROTO_TCP)).unwrap();
    assert_eq!(h.header_len, 20);
    assert_eq!(h.proto, IPPROTO_TCP);
    assert_eq!(h.src, A1);
    assert_eq!(h.dst, A2);
    assert!(!h.later_fragment);
    let h = parse_ipv4(&header(0x46, 60, 0x0010, IPPROTO_UDP)).unwrap();
    assert_eq!(h.header_len, 24);
    assert!(h.later_fragment);
    // Wrong version, short header, total length below header length.
    assert_eq!(parse_ipv4(&header(0x65, 60, 0, 6)), None);
    assert_eq!(parse_ipv4(&header(0x44, 60, 0, 6)), None);
    assert_eq!(parse_ipv4(&header(0x45, 19, 0, 6)), None);
}

#[test]
fn ethertypes() {
    assert_eq!(classify_ethertype(0x0800), L3::Ipv4);
    assert_eq!(classify_ethertype(0x0806), L3::Arp);
    assert_eq!(classify_ethertype(0x86dd), L3::Ipv6);
    assert_eq!(classify_ethertype(0x8100), L3::Other);
}

#[test]
fn underlay_guard() {
    let cfg = Config {
        tunnel_port: 51871,
        ..cfg()
    };
    let peer = ip4(192, 168, 50, 2);
    let stranger = ip4(192, 168, 50, 66);
    let me = ip4(192, 168, 50, 1);
    let member = |ip| ip == A1;
    let is_peer = |ip| ip == peer;
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
    let decide = |p: UnderlayPacket| underlay(&p, &cfg, member(p.dst), is_peer, local_tag);
    assert_eq!(decide(tun(peer, data, Some(NET_A))), Some(Reason::Tunnel));
    assert_eq!(decide(tun(peer, init, None)), Some(Reason::Tunnel));
    assert_eq!(
        decide(tun(peer, data, Some(NET_B))),
        Some(Reason::UnknownTag)
    );
    assert_eq!(decide(tun(peer, data, None)), Some(Reason::Malformed));
    let keepalive = UnderlayPacket {
        payload_len: 36,
        ..tun(peer, data, Some(0))
    };
    assert_eq!(decide(keepalive), Some(Reason::Tunnel));
    assert_eq!(
        decide(tun(peer, data, Some(0))),
        Some(Reason::UnknownTag),
        "tag 0 carries nothing"
    );
    assert_eq!(decide(tun(peer, None, None)), Some(Reason::Malformed));
    assert_eq!(
        decide(tun(stranger, data, Some(NET_A))),
        Some(Reason::UnknownPeer)
    );
    assert_eq!(decide(tun(stranger, init, None)), Some(Reason::UnknownPeer));
    // Clear text to a member, whatever it is.
    for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP] {
        let p = UnderlayPacket {
            dst: A1,
            proto,
            ..tun(peer, None, None)
        };
        assert_eq!(decide(p), Some(Reason::CleartextToMember));
    }
    // Anything else is the host's business.
    let ssh = UnderlayPacket {
        proto: IPPROTO_TCP,
        dport: 22,
        ..tun(stranger, None, None)
    };
    assert_eq!(decide(ssh), None);
    let other_udp = UnderlayPacket {
        dport: 53,
        ..tun(stranger, None, None)
    };
    assert_eq!(decide(other_udp), None);
    // No tunnel configured: no tunnel verdicts.
    let off = Config {
        tunnel_port: 0,
        ..cfg
    };
    assert_eq!(
        underlay(
            &tun(stranger, data, Some(NET_A)),
            &off,
            member(me),
            is_peer,
            local_tag
        ),
        None
    );
}

#[test]
fn tcp_flows_are_known_by_their_syn() {
    assert_eq!(flow_check(IPPROTO_TCP, TCP_SYN), FlowCheck::Opening);
    assert_eq!(
        flow_check(IPPROTO_TCP, TCP_SYN | TCP_ACK),
        FlowCheck::Established
    );
    assert_eq!(flow_check(IPPROTO_TCP, TCP_ACK), FlowCheck::Established);
    assert_eq!(
        flow_check(IPPROTO_TCP, TCP_FIN | TCP_ACK),
        FlowCheck::Established
    );
    assert_eq!(flow_check(IPPROTO_UDP, 0), FlowCheck::Table);
    assert_eq!(flow_check(IPPROTO_ICMP, 0), FlowCheck::Table);
}

#[test]
fn flow_table_writes_rarely() {
    assert_eq!(flow_update(None, 5), FlowUpdate::New);
    assert_eq!(flow_update(Some(100), 100 + 10), FlowUpdate::Keep);
    assert_eq!(
        flow_update(Some(100), 100 + FLOW_REFRESH_NS),
        FlowUpdate::Refresh
    );
    assert_eq!(flow_update(Some(100), 100 + FLOW_IDLE_NS), FlowUpdate::New);
    // A clock that went backwards is not a new flow.
    assert_eq!(flow_update(Some(100), 50), FlowUpdate::Keep);
}

#[test]
fn event_budget_limits_per_second() {
    let mut b = EventBudget::default();
    let t0 = 10_000_000_000;
    let admitted = (0..10).filter(|_| b.admit(t0, 3)).count();
    assert_eq!(admitted, 3);
    assert_eq!(b.suppressed, 7);
    assert!(b.admit(t0 + 1_000_000_000, 3));
}

#[test]
fn event_budget_caps_a_flood_and_counts_every_event_it_holds_back() {
    // 10 000 events a second for 5 s against a budget of 20 a second.
    let mut b = EventBudget::default();
    let t0 = 7_000_000_000;
    let sent = (0..50_000u64)
        .filter(|i| b.admit(t0 + i * 100_000, 20))
        .count() as u64;
    assert_eq!(sent, 5 * 20);
    assert_eq!(b.suppressed, 50_000 - sent);
    // A budget of 0 sends nothing and still counts.
    let mut none = EventBudget::default();
    assert!(!(0..10).any(|i| none.admit(t0 + i, 0)));
    assert_eq!(none.suppressed, 10);
    // Kinds have their own element: drops and new flows do not share.
    assert_ne!(
        EventBudget::index(crate::event::EventKind::Drop),
        EventBudget::index(crate::event::EventKind::NewFlow)
    );
    assert!(EventBudget::index(crate::event::EventKind::NewFlow) < EventBudget::KINDS);
}

fn remote(tag: u32) -> Endpoint {
    Endpoint {
        tag,
        peer: 3,
        flags: Endpoint::FLAG_REMOTE,
        ..Default::default()
    }
}

#[test]
fn remote_members_only_through_a_tunnel_that_is_up() {
    let p = pkt(A1, A2, IPPROTO_TCP, 1, 2);
    let down = cfg();
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&remote(NET_A)),
            &down,
            &mut Untouched
        ),
        Reason::NoTunnel
    );
    assert!(Reason::NoTunnel.is_drop());
    let up = Config {
        tunnel_ifindex: 9,
        ..cfg()
    };
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&remote(NET_A)),
            &up,
            &mut Untouched
        ),
        Reason::Forwarded
    );
    // Local members never depend on the tunnel.
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&ep(NET_A)),
            &down,
            &mut Untouched
        ),
        Reason::Forwarded
    );
}

#[test]
fn a_source_is_believed_only_from_its_own_interface() {
    let up = Config {
        tunnel_ifindex: 9,
        ..cfg()
    };
    let p = pkt(A2, A1, IPPROTO_TCP, 1, 2);
    let to = |ingress, src: &Endpoint, c: &Config| {
        to_container(&p, ingress, Some(&iface_a1()), Some(src), c, &mut Untouched)
    };
    // A local member (veth 7): from its veth only, not from a rogue veth,
    // the tunnel or the host.
    assert_eq!(to(7, &ep(NET_A), &up), Reason::Delivered);
    for ingress in [8, 9, 0] {
        assert_eq!(to(ingress, &ep(NET_A), &up), Reason::SpoofedSource);
    }
    // A remote member: from the tunnel only; with no tunnel, from nowhere.
    assert_eq!(to(9, &remote(NET_A), &up), Reason::Delivered);
    for ingress in [7, 8, 0] {
        assert_eq!(to(ingress, &remote(NET_A), &up), Reason::SpoofedSource);
    }
    assert_eq!(to(9, &remote(NET_A), &cfg()), Reason::SpoofedSource);
    assert_eq!(to(0, &remote(NET_A), &cfg()), Reason::SpoofedSource);
    // The gateway: from the host itself only.
    let dns = pkt(GATEWAY, A1, IPPROTO_UDP, 53, 40000);
    assert_eq!(
        to_container(
            &dns,
            0,
            Some(&iface_a1()),
            None,
            &up,
            &mut MarkOnly(crate::edge::MARK_GATEWAY)
        ),
        Reason::Gateway
    );
    assert_eq!(
        to_container(&dns, 8, Some(&iface_a1()), None, &up, &mut Untouched),
        Reason::SpoofedSource
    );
}

#[test]
fn only_a_members_own_veth_feeds_the_tunnel() {
    assert_eq!(into_tunnel(A1, Some(&iface_a1())), Reason::Forwarded);
    assert_eq!(into_tunnel(A2, Some(&iface_a1())), Reason::SpoofedSource);
    assert_eq!(into_tunnel(A1, None), Reason::SpoofedSource);
}

#[test]
fn dns_answers_from_the_gateway_only_from_the_agents_sockets() {
    use crate::edge::{MARK_GATEWAY, MARK_OTHER, MARK_ROUTER};
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let p = pkt(GATEWAY, A1, proto, 53, 40000);
        let to = |ingress, mark| {
            to_container(
                &p,
                ingress,
                Some(&iface_a1()),
                None,
                &cfg(),
                &mut MarkOnly(mark),
            )
        };
        assert_eq!(to(0, MARK_GATEWAY), Reason::Gateway);
        // Other software's bits beside ours do not matter.
        assert_eq!(to(0, MARK_GATEWAY | 0x4000), Reason::Gateway);
        // Another process on the host: no mark, or one bit of ours (a
        // publication's), is not the agent.
        for mark in [0, MARK_ROUTER, MARK_OTHER, 0xffff_0000] {
            assert_eq!(to(0, mark), Reason::ForgedGateway, "mark {mark:#x}");
        }
        // From outside the host, marked or not: spoofed.
        assert_eq!(to(8, MARK_GATEWAY), Reason::SpoofedSource);
    }
    // The kernel's ICMP from the gateway carries no mark and needs none.
    let icmp = pkt(GATEWAY, A1, IPPROTO_ICMP, 0, 0);
    assert_eq!(
        to_container(&icmp, 0, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::Gateway
    );
}
