//! The datapath's decisions as pure functions. The programs parse headers and
//! look up maps, then call these; the host tests below pin every rule of the
//! contract ("Data-plane rules") without a kernel.

use crate::{
    GATEWAY, Ip4, Reason,
    maps::{Config, Endpoint, EventBudget, Iface},
};

mod tunnel;
pub use tunnel::{TunnelMember, tunnel_incoming, tunnel_outgoing};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Bytes of the IPv4 header the programs load at once (the fixed part).
pub const IPV4_MIN_HLEN: usize = 20;

/// What the Ethernet type says the frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Ipv4,
    Arp,
    Other,
}

/// `ethertype` in host order.
pub const fn classify_ethertype(ethertype: u16) -> L3 {
    match ethertype {
        ETH_P_IP => L3::Ipv4,
        ETH_P_ARP => L3::Arp,
        _ => L3::Other,
    }
}

/// The fixed IPv4 header, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes (where L4 starts, relative to the IP header).
    pub header_len: usize,
    pub proto: u8,
    pub src: Ip4,
    pub dst: Ip4,
    /// A non-first fragment carries no L4 header.
    pub later_fragment: bool,
}

/// Parses the first 20 bytes of an IPv4 header. `None` means malformed.
pub fn parse_ipv4(h: &[u8; IPV4_MIN_HLEN]) -> Option<Ipv4Header> {
    let version = h[0] >> 4;
    let header_len = ((h[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if version != 4 || header_len < IPV4_MIN_HLEN || total_len < header_len {
        return None;
    }
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    Some(Ipv4Header {
        header_len,
        proto: h[9],
        src: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        later_fragment: frag_offset != 0,
    })
}

/// True when the protocol's first four L4 bytes are source and destination ports.
pub const fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// An IPv4 packet reduced to what the rules look at. Ports in host order, 0
/// when the packet has none (ICMP, later fragments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ip4,
    pub dst: Ip4,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

const fn allowed_proto(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP)
}

/// Rule 1–4 on a packet leaving a container (host-side ingress of its veth).
/// `iface` is what the agent recorded for that veth, `dst` the endpoint entry
/// of the destination address, if any.
pub fn from_container(
    pkt: &Ipv4Summary,
    iface: Option<&Iface>,
    dst: Option<&Endpoint>,
    cfg: &Config,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    if pkt.src != iface.addr {
        return Reason::SpoofedSource;
    }
    if !allowed_proto(pkt.proto) {
        return Reason::ProtoDenied;
    }
    let to_dns = pkt.dst == cfg.dns_addr && has_ports(pkt.proto) && pkt.dport == cfg.dns_port;
    let to_gateway = pkt.dst == GATEWAY && pkt.proto == IPPROTO_ICMP;
    if to_dns || to_gateway {
        return Reason::Gateway;
    }
    match dst {
        Some(ep) if ep.tag == iface.tag => Reason::Forwarded,
        _ => Reason::PolicyDenied,
    }
}

/// Rule 5 on a packet entering a container (host-side egress of its veth):
/// only members of its network and the agent's gateway (DNS answers, ICMP such
/// as the "fragmentation needed" that path-MTU discovery relies on).
pub fn to_container(
    pkt: &Ipv4Summary,
    iface: Option<&Iface>,
    src: Option<&Endpoint>,
    cfg: &Config,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    if !allowed_proto(pkt.proto) {
        return Reason::ProtoDenied;
    }
    let from_dns = pkt.src == cfg.dns_addr && has_ports(pkt.proto) && pkt.sport == cfg.dns_port;
    let from_gateway = pkt.src == GATEWAY && pkt.proto == IPPROTO_ICMP;
    if from_dns || from_gateway {
        return Reason::Gateway;
    }
    match src {
        Some(ep) if ep.tag == iface.tag => Reason::Delivered,
        _ => Reason::NotMember,
    }
}

/// An IPv4 packet arriving on the underlay, reduced to what the guard reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlayPacket {
    pub src: Ip4,
    pub dst: Ip4,
    pub proto: u8,
    /// UDP destination port (host order), 0 when not UDP or a later fragment.
    pub dport: u16,
    /// First byte of the UDP payload, if there is one.
    pub msg_type: Option<u8>,
    /// Network tag of a data message, if the payload is long enough.
    pub tag: Option<u32>,
    /// UDP payload length, from the UDP header.
    pub payload_len: u16,
}

/// Rule 6 on the underlay interface (XDP): member traffic crosses hosts only
/// inside the tunnel, and tunnel packets come only from peers, for networks
/// with local members. `None`: not pn's traffic, left to the host's stack.
pub fn underlay(
    pkt: &UnderlayPacket,
    cfg: &Config,
    is_member: impl Fn(Ip4) -> bool,
    is_peer: impl Fn(Ip4) -> bool,
    is_local_tag: impl Fn(u32) -> bool,
) -> Option<Reason> {
    if is_member(pkt.dst) {
        return Some(Reason::CleartextToMember);
    }
    if pkt.proto != IPPROTO_UDP || cfg.tunnel_port == 0 || pkt.dport != cfg.tunnel_port {
        return None;
    }
    if !is_peer(pkt.src) {
        return Some(Reason::UnknownPeer);
    }
    match pkt.msg_type {
        Some(crate::tunnel::MSG_DATA) => match pkt.tag {
            Some(tag) if is_local_tag(tag) => Some(Reason::Tunnel),
            // Keepalive: tag 0 and nothing inside, it confirms a session.
            Some(0)
                if usize::from(pkt.payload_len)
                    == crate::tunnel::DATA_HEADER_LEN + crate::tunnel::AEAD_TAG_LEN =>
            {
                Some(Reason::Tunnel)
            }
            Some(_) => Some(Reason::UnknownTag),
            None => Some(Reason::Malformed),
        },
        Some(_) => Some(Reason::Tunnel),
        None => Some(Reason::Malformed),
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How a forwarded packet is checked for being a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCheck {
    /// A TCP connection opening (SYN without ACK): new by definition, no
    /// table needed.
    Opening,
    /// Connectionless (UDP, ICMP): look it up in the flow table.
    Table,
    /// TCP past its opening: nothing to do, the per-packet fast path.
    Established,
}

/// TCP flows are known by their SYN, so bulk TCP costs no flow-table lookup.
pub const fn flow_check(proto: u8, tcp_flags: u8) -> FlowCheck {
    if proto == IPPROTO_TCP {
        if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            FlowCheck::Opening
        } else {
            FlowCheck::Established
        }
    } else {
        FlowCheck::Table
    }
}

/// A flow entry is rewritten at most this often, so steady traffic does not
/// write the map on every packet.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;
/// A flow idle for this long is reported again as new.
pub const FLOW_IDLE_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowUpdate {
    /// First packet (or first after idling): record it and emit an event.
    New,
    /// Known flow whose timestamp is stale enough to rewrite.
    Refresh,
    /// Known flow, nothing to do.
    Keep,
}

pub const fn flow_update(last_seen_ns: Option<u64>, now_ns: u64) -> FlowUpdate {
    match last_seen_ns {
        None => FlowUpdate::New,
        Some(last) => {
            let age = now_ns.saturating_sub(last);
            if age >= FLOW_IDLE_NS {
                FlowUpdate::New
            } else if age >= FLOW_REFRESH_NS {
                FlowUpdate::Refresh
            } else {
                FlowUpdate::Keep
            }
        }
    }
}

impl EventBudget {
    /// One-second windows; at most `per_sec` events pass in each, the rest is
    /// counted in `suppressed`.
    pub fn admit(&mut self, now_ns: u64, per_sec: u32) -> bool {
        if now_ns.saturating_sub(self.window_start_ns) >= 1_000_000_000 {
            self.window_start_ns = now_ns;
            self.sent = 0;
        }
        if self.sent < per_sec {
            self.sent += 1;
            true
        } else {
            self.suppressed = self.suppressed.wrapping_add(1);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip4;

    const A1: Ip4 = ip4(10, 240, 0, 1);
    const A2: Ip4 = ip4(10, 240, 0, 2);
    const B1: Ip4 = ip4(10, 240, 4, 1);
    const OUTSIDE: Ip4 = ip4(192, 168, 1, 7);
    const NET_A: u32 = 1;
    const NET_B: u32 = 2;

    fn cfg() -> Config {
        Config {
            dns_addr: GATEWAY,
            dns_port: 53,
            drop_events_per_sec: 100,
            ..Default::default()
        }
    }
    fn iface_a1() -> Iface {
        Iface {
            addr: A1,
            tag: NET_A,
        }
    }
    fn ep(tag: u32) -> Endpoint {
        Endpoint {
            tag,
            ifindex: 7,
            ..Default::default()
        }
    }
    fn pkt(src: Ip4, dst: Ip4, proto: u8, sport: u16, dport: u16) -> Ipv4Summary {
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
                from_container(&p, Some(&iface_a1()), Some(&ep(NET_A)), &cfg()),
                Reason::Forwarded
            );
            let back = pkt(A2, A1, proto, port, 40000);
            assert_eq!(
                to_container(&back, Some(&iface_a1()), Some(&ep(NET_A)), &cfg()),
                Reason::Delivered
            );
        }
    }

    #[test]
    fn other_network_and_non_members_are_denied_at_the_sender() {
        let p = pkt(A1, B1, IPPROTO_TCP, 1234, 80);
        assert_eq!(
            from_container(&p, Some(&iface_a1()), Some(&ep(NET_B)), &cfg()),
            Reason::PolicyDenied
        );
        let p = pkt(A1, OUTSIDE, IPPROTO_UDP, 1234, 53);
        assert_eq!(
            from_container(&p, Some(&iface_a1()), None, &cfg()),
            Reason::PolicyDenied
        );
    }

    #[test]
    fn forged_source_is_caught_before_anything_else() {
        let p = pkt(A2, A1, IPPROTO_TCP, 1, 2);
        assert_eq!(
            from_container(&p, Some(&iface_a1()), Some(&ep(NET_A)), &cfg()),
            Reason::SpoofedSource
        );
        // Even toward the gateway.
        let p = pkt(OUTSIDE, GATEWAY, IPPROTO_UDP, 1, 53);
        assert_eq!(
            from_container(&p, Some(&iface_a1()), None, &cfg()),
            Reason::SpoofedSource
        );
    }

    #[test]
    fn other_protocols_are_denied_both_ways() {
        for proto in [2u8, 47, 50, 132] {
            let p = pkt(A1, A2, proto, 0, 0);
            assert_eq!(
                from_container(&p, Some(&iface_a1()), Some(&ep(NET_A)), &cfg()),
                Reason::ProtoDenied
            );
            let p = pkt(A2, A1, proto, 0, 0);
            assert_eq!(
                to_container(&p, Some(&iface_a1()), Some(&ep(NET_A)), &cfg()),
                Reason::ProtoDenied
            );
        }
    }

    #[test]
    fn only_members_and_the_gateway_reach_a_container() {
        let p = pkt(OUTSIDE, A1, IPPROTO_TCP, 5555, 22);
        assert_eq!(
            to_container(&p, Some(&iface_a1()), None, &cfg()),
            Reason::NotMember
        );
        let p = pkt(B1, A1, IPPROTO_TCP, 5555, 22);
        assert_eq!(
            to_container(&p, Some(&iface_a1()), Some(&ep(NET_B)), &cfg()),
            Reason::NotMember
        );
        // DNS answers and ICMP errors from the gateway.
        let p = pkt(GATEWAY, A1, IPPROTO_UDP, 53, 40000);
        assert_eq!(
            to_container(&p, Some(&iface_a1()), None, &cfg()),
            Reason::Gateway
        );
        let p = pkt(GATEWAY, A1, IPPROTO_ICMP, 0, 0);
        assert_eq!(
            to_container(&p, Some(&iface_a1()), None, &cfg()),
            Reason::Gateway
        );
        // But not any port of the gateway.
        let p = pkt(GATEWAY, A1, IPPROTO_TCP, 22, 40000);
        assert_eq!(
            to_container(&p, Some(&iface_a1()), None, &cfg()),
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
            assert_eq!(from_container(&p, Some(&iface_a1()), None, &cfg()), want);
        }
    }

    #[test]
    fn unknown_interfaces_fail_closed() {
        let p = pkt(A1, A2, IPPROTO_TCP, 1, 2);
        assert_eq!(
            from_container(&p, None, Some(&ep(NET_A)), &cfg()),
            Reason::UnknownInterface
        );
        assert_eq!(
            to_container(&p, None, Some(&ep(NET_A)), &cfg()),
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
        assert_eq!(classify_ethertype(0x86dd), L3::Other);
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
        let decide = |p: UnderlayPacket| underlay(&p, &cfg, member, is_peer, local_tag);
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
                member,
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
}
