//! The datapath's decisions as pure functions. The programs parse headers and
//! look up maps, then call these; the host tests below pin every rule of the
//! contract ("Data-plane rules") without a kernel.

use crate::{
    Ip4, Reason,
    edge::Marked,
    maps::{Config, ConnKey, ConnKind, ConnState, Endpoint, EventBudget, Iface},
};

mod arp;
mod family;
mod header;
mod ipv6;
mod nd;
mod share;
mod tunnel;
pub use arp::{ARP_LEN, ArpMessage, arp_from_container, arp_to_container, parse_arp};
pub use family::{Family, same6};
pub use header::{
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, IpHeader,
    Ipv4Summary, Ipv6Summary, PacketSummary,
};
pub use ipv6::{
    ETH_P_IPV6, EXT_PEEK, ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_PARAMETER_PROBLEM,
    ICMP6_TIME_EXCEEDED, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6,
    IPPROTO_ROUTING, IPV6_HLEN, Ipv6Header, Ipv6Packet, L4_OFFSET_MASK, MAX_EXT_HEADERS,
    MAX_L4_OFFSET, allowed_proto6, icmp6_is_error, parse_ipv6,
};
pub use nd::{
    ICMP6_NEIGHBOR_ADVERT, ICMP6_NEIGHBOR_SOLICIT, ICMP6_REDIRECT, ICMP6_ROUTER_ADVERT,
    ICMP6_ROUTER_SOLICIT, LinkAddr, LinkAddrKind, ND_PEEK, NdKind, NdMessage, container_link_local,
    is_mld, is_nd, mld_from_container, nd_from_container, nd_to_container, parse_nd,
    solicited_node,
};
pub use share::{recounted, within_share};
pub use tunnel::{TunnelMember, tunnel_incoming, tunnel_outgoing};

/// What the Ethernet type says the frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Ipv4,
    Ipv6,
    Arp,
    Other,
}

/// `ethertype` in host order.
pub const fn classify_ethertype(ethertype: u16) -> L3 {
    match ethertype {
        ETH_P_IP => L3::Ipv4,
        ETH_P_IPV6 => L3::Ipv6,
        ETH_P_ARP => L3::Arp,
        _ => L3::Other,
    }
}

/// The fixed IPv4 header, as far as the policy cares.
pub type Ipv4Header = IpHeader<Ip4>;

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

/// TCP, UDP and the family's ICMP.
fn allowed_proto<A: Family>(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == A::ICMP
}

/// The edge's state, consulted only when the other end of a packet is
/// outside the pool: the member-to-member path never calls it, so its
/// per-packet cost stays one endpoint lookup.
pub trait EdgeLookup<A = Ip4> {
    /// The `PN_CONNS` entry of the packet's connection, keyed from the
    /// container's side (for an ICMP error toward a container: the
    /// connection of the packet it quotes).
    fn conn(&mut self) -> Option<ConnKind>;
    /// `PN_EGRESS_DENY` covers `dst`.
    fn egress_denied(&mut self, dst: A) -> bool;
    /// The packet's mark (see [`crate::edge`]).
    fn mark(&mut self) -> u32;
    /// For an ICMP error toward a container: the source of the packet it
    /// quotes (`None`: not an error, or nothing readable quoted). Only a
    /// lookup whose `conn` never answers (IPv6's today, with no world
    /// connections) may keep this default.
    fn quoted_src(&mut self) -> Option<A> {
        None
    }
}

/// Rules 1–4 and the edge, on a packet leaving a container (host-side
/// ingress of its veth). `iface` is what the agent recorded for that veth,
/// `dst` the endpoint entry of the destination address, if any.
pub fn from_container<A: Family>(
    pkt: &PacketSummary<A>,
    iface: Option<&Iface>,
    dst: Option<&Endpoint>,
    cfg: &Config,
    edge: &mut impl EdgeLookup<A>,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    match A::own(iface) {
        Some(own) if own.same(&pkt.src) => {}
        _ => return Reason::SpoofedSource,
    }
    if !allowed_proto::<A>(pkt.proto) {
        return Reason::ProtoDenied;
    }
    let to_dns = pkt.dst.same(&A::dns(cfg)) && has_ports(pkt.proto) && pkt.dport == cfg.dns_port;
    let to_gateway = pkt.dst.same(&A::GATEWAY) && pkt.proto == A::ICMP;
    if to_dns || to_gateway {
        return Reason::Gateway;
    }
    match dst {
        // A remote member only through the tunnel: with none up (the agent
        // stopped or restarting) the packet would leave in clear text.
        Some(ep) if ep.tag == iface.tag && ep.is_remote() && cfg.tunnel_ifindex == 0 => {
            return Reason::NoTunnel;
        }
        Some(ep) if ep.tag == iface.tag => return Reason::Forwarded,
        Some(_) => return Reason::PolicyDenied,
        None if pkt.dst.in_pool(cfg) => return Reason::PolicyDenied,
        None => {}
    }
    // The world. A reply to a router's connection goes back whatever the
    // network's egress setting or the deny list (routers often sit on the
    // underlay's subnet): the router opened it through the published port.
    if edge.conn() == Some(ConnKind::Published) {
        return Reason::Published;
    }
    if iface.egress_denied() || edge.egress_denied(pkt.dst) {
        return Reason::EgressDenied;
    }
    Reason::Egress
}

/// Rule 5 and the edge, on a packet entering a container (host-side egress
/// of its veth): members of its network, the agent's gateway (DNS answers,
/// ICMP such as the "fragmentation needed" that path-MTU discovery relies
/// on), replies of its connections with the world, and routers through its
/// published port.
///
/// `ingress` is the interface the packet entered the host on (0: the host
/// made it). A source is believed only from where it lives: a local
/// member from its own veth, a remote one from the tunnel, the gateway from
/// the host itself (and its DNS answers from the agent's marked sockets); a
/// namespace plugged in by someone else, another NIC, the underlay or
/// another process on the host cannot borrow it.
pub fn to_container<A: Family>(
    pkt: &PacketSummary<A>,
    ingress: u32,
    iface: Option<&Iface>,
    src: Option<&Endpoint>,
    cfg: &Config,
    edge: &mut impl EdgeLookup<A>,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    if !allowed_proto::<A>(pkt.proto) {
        return Reason::ProtoDenied;
    }
    let from_dns = pkt.src.same(&A::dns(cfg)) && has_ports(pkt.proto) && pkt.sport == cfg.dns_port;
    let from_gateway = pkt.src.same(&A::GATEWAY) && pkt.proto == A::ICMP;
    if from_dns || from_gateway {
        if ingress != 0 {
            return Reason::SpoofedSource;
        }
        // Any process on the host may send from the gateway's address (a
        // socket bound to it while the agent restarts, a raw socket): a DNS
        // answer counts only from the agent's own sockets, which mark theirs.
        // ICMP is the kernel's own (errors, path MTU) and carries no mark.
        if from_dns && !crate::edge::from_agent(edge.mark()) {
            return Reason::ForgedGateway;
        }
        return Reason::Gateway;
    }
    if let Some(ep) = src {
        let home = if ep.is_remote() {
            cfg.tunnel_ifindex
        } else {
            ep.ifindex
        };
        if home == 0 || ingress != home {
            return Reason::SpoofedSource;
        }
    }
    match src {
        Some(ep) if ep.tag == iface.tag => return Reason::Delivered,
        Some(_) => return Reason::NotMember,
        None if pkt.src.in_pool(cfg) => return Reason::NotMember,
        None => {}
    }
    match crate::edge::marked(edge.mark()) {
        // Only the app's web port of a published container, over TCP: the
        // translation says where it goes, this says it may.
        Marked::Router => {
            return if iface.published() && pkt.proto == IPPROTO_TCP && pkt.dport == iface.web_port {
                Reason::Published
            } else {
                Reason::NotMember
            };
        }
        Marked::Other => return Reason::NotRouter,
        Marked::No => {}
    }
    // An error quoting another container's packet would be admitted by that
    // container's connection: the world could aim ICMP at any container
    // that shares a host with one that talks to it.
    if pkt.proto == A::ICMP && edge.quoted_src().is_some_and(|q| !q.same(&pkt.dst)) {
        return Reason::NotMember;
    }
    match edge.conn() {
        Some(ConnKind::Egress) => Reason::Egress,
        // Router packets carry the mark; an unmarked one on a router's
        // connection is an ICMP error about it (or a router bypassing the
        // published port, which gets nothing).
        Some(ConnKind::Published) if pkt.proto == A::ICMP => Reason::Published,
        // Unsolicited from the world, or a router sending straight to the
        // container's address.
        _ => Reason::NotMember,
    }
}

impl<A: Copy> ConnKey<A> {
    /// The connection of a packet leaving a container.
    pub const fn leaving(pkt: &PacketSummary<A>) -> ConnKey<A> {
        ConnKey {
            container: pkt.src,
            remote: pkt.dst,
            container_port: pkt.sport,
            remote_port: pkt.dport,
            proto: pkt.proto,
            _pad: [0; 3],
        }
    }

    /// The connection of a packet entering a container.
    pub const fn entering(pkt: &PacketSummary<A>) -> ConnKey<A> {
        ConnKey {
            container: pkt.dst,
            remote: pkt.src,
            container_port: pkt.dport,
            remote_port: pkt.sport,
            proto: pkt.proto,
            _pad: [0; 3],
        }
    }
}

/// On the way into the tunnel's device (TC egress): only a member's packet
/// from its own veth (`from`: the entry of the interface it entered the host
/// on). A namespace plugged in by someone else, another NIC or the host
/// itself cannot send to remote members under a member's name. The same
/// for both families: an IPv6 source must be the veth's own IPv6 address.
pub fn into_tunnel<A: Family>(src: A, from: Option<&Iface>) -> Reason {
    match from.and_then(A::own) {
        Some(own) if own.same(&src) => Reason::Forwarded,
        _ => Reason::SpoofedSource,
    }
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Type, code, checksum and 4 bytes before an ICMP error's quoted packet.
pub const ICMP_HLEN: usize = 8;

/// ICMP types that quote the packet they are about (after [`ICMP_HLEN`]):
/// toward a container, they belong to the quoted packet's connection.
pub const fn icmp_is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// A packet arriving on the underlay, reduced to what the guard reads: an
/// IPv4 one ([`Ip4`] addresses) or an IPv6 one ([`Ip6`]), judged alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlayPacket<A = Ip4> {
    pub src: A,
    pub dst: A,
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
/// `dst_is_member`: the destination is a member (the program has looked it
/// up already, for its counter row). `is_peer` asks the peers of the
/// packet's family (`PN_PEERS` or `PN_PEERS6`).
pub fn underlay<A: Copy>(
    pkt: &UnderlayPacket<A>,
    cfg: &Config,
    dst_is_member: bool,
    is_peer: impl Fn(A) -> bool,
    is_local_tag: impl Fn(u32) -> bool,
) -> Option<Reason> {
    if dst_is_member {
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

/// A connection with the outside is honoured this long after the side that
/// opened it last refreshed it (at most every [`FLOW_REFRESH_NS`]): TCP as
/// RFC 5382 asks of a NAT (2 h 4 min, longer than TCP's keepalive), the rest
/// as RFC 4787 advises for UDP (5 min). Past it, the world's packets on it
/// are unsolicited again, whatever the LRU still holds.
pub const CONN_IDLE_TCP_NS: u64 = 7_440_000_000_000;
pub const CONN_IDLE_OTHER_NS: u64 = 300_000_000_000;
/// A TCP connection whose opener sent its FIN or a reset
/// ([`ConnState::closing`]) is honoured this long after its opener's last
/// segment (Linux conntrack's FIN_WAIT and TIME_WAIT: 2 min): the peer's
/// last data, FIN and ACKs. Without it, closed connections would hold
/// their container's share (`--conn-share`) for two hours.
pub const CONN_IDLE_CLOSING_NS: u64 = 120_000_000_000;

/// How long a `PN_CONNS` entry of protocol `proto` lives after its opener's
/// last refresh.
pub const fn conn_idle_ns(entry: &ConnState, proto: u8) -> u64 {
    if proto != IPPROTO_TCP {
        CONN_IDLE_OTHER_NS
    } else if entry.closing != 0 {
        CONN_IDLE_CLOSING_NS
    } else {
        CONN_IDLE_TCP_NS
    }
}

/// [`ConnState::closing`] after a segment of the side that opened the
/// connection (`tcp_flags`: 0 but for TCP): set by its FIN or reset, cleared
/// by its SYN (the tuple opens a new connection).
pub const fn conn_closing(closing: u8, tcp_flags: u8) -> u8 {
    if tcp_flags & TCP_SYN != 0 {
        0
    } else if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        1
    } else {
        closing
    }
}

/// The kind of a `PN_CONNS` entry of protocol `proto`, unless it has idled
/// out by `now_ns`.
pub const fn conn_live(entry: &ConnState, proto: u8, now_ns: u64) -> Option<ConnKind> {
    let idle = conn_idle_ns(entry, proto);
    if now_ns.saturating_sub(entry.last_seen_ns) >= idle {
        None
    } else {
        entry.kind()
    }
}

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
    /// counted in `suppressed`. A clock that went backwards (another CPU's
    /// stamp never lands here: the state is per CPU) opens no new window.
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

    /// Over budget in a tick (`jiffies`, low 32 bits) in which the clock
    /// already found the window open and spent: the event is suppressed
    /// (counted) without a clock read, which costs a helper call (about
    /// 40 ns on the bench machine, more than the rest of a drop) where
    /// jiffies cost a load. A window can then open up to one tick late,
    /// never early: still at most `per_sec` events a second.
    pub fn spent_this_tick(&mut self, jiffies: u32, per_sec: u32) -> bool {
        if self.sent >= per_sec && self.spent_tick == jiffies {
            self.suppressed = self.suppressed.wrapping_add(1);
            true
        } else {
            false
        }
    }

    /// [`EventBudget::admit`], remembering the tick of a refusal for
    /// [`EventBudget::spent_this_tick`].
    pub fn admit_at_tick(&mut self, now_ns: u64, jiffies: u32, per_sec: u32) -> bool {
        let sent = self.admit(now_ns, per_sec);
        if !sent {
            self.spent_tick = jiffies;
        }
        sent
    }
}

#[cfg(test)]
mod budget_tests;
#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v6_tests;
