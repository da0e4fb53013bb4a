//! Neighbour discovery on a container's veth: IPv6's ARP (see `arp.rs`).
//! Both ends hold a permanent neighbour entry for the other (set at attach),
//! so traffic needs none; what is left is a container asking for its
//! gateway `fe80::1` (after flushing its entry) or soliciting a router, and
//! the host asking and answering as that gateway. Anything else — an
//! advertisement for another member's address or for the gateway, a router
//! advertisement or a redirect from a container, duplicate-address probes,
//! a message that crossed a router or came in fragments — is a container
//! probing or posing, and is dropped (`nd_denied`).
//!
//! A container's own names on its link: its address and the link-local
//! address with the same interface identifier
//! ([`container_link_local`]), which pn gives it so that the rule knows it
//! without a map.

use super::{family::same6, ipv6::Ipv6Packet};
use crate::{GATEWAY6, IP6_UNSPECIFIED, Ip6, Reason, maps::Iface};

pub const ICMP6_ROUTER_SOLICIT: u8 = 133;
pub const ICMP6_ROUTER_ADVERT: u8 = 134;
pub const ICMP6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMP6_NEIGHBOR_ADVERT: u8 = 136;
pub const ICMP6_REDIRECT: u8 = 137;

/// Bytes of a message the parse reads at once (from the ICMPv6 header).
pub const ND_PEEK: usize = 8;

const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;
/// `ff02::2`, every router on the link.
const ALL_ROUTERS: Ip6 = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// ICMPv6 types that are neighbour discovery: the programs hand these to
/// the rules below, never to the member policy (whose ICMPv6 toward the
/// gateway would pass them).
pub const fn is_nd(icmp_type: u8) -> bool {
    matches!(icmp_type, ICMP6_ROUTER_SOLICIT..=ICMP6_REDIRECT)
}

/// Multicast listener discovery (RFC 2710, 3810): queries, reports,
/// done. Every IPv6 host reports the groups it joins (its solicited-node
/// group) to the routers of its link, from its link-local address: the
/// container's kernel does so on its own.
pub const fn is_mld(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=132 | 143)
}

/// Listener discovery leaving a container: from one of its own names on
/// the link (or `::`, before it has one) to a link-scope group, never
/// routed (hop limit 1, as RFC 3810 §5 sends it). Passed (`nd`) to the
/// host, the link's only other end, which routes no multicast; anything
/// else `nd_denied`. Its link-local address is good for this and for
/// neighbour discovery only: every other packet must come from its address.
pub fn mld_from_container(pkt: &Ipv6Packet, iface: Option<&Iface>) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    let own = &iface.addr6;
    let (src, dst) = (&pkt.ip.src, &pkt.ip.dst);
    let from = owns(own, src) || same6(src, &IP6_UNSPECIFIED);
    let link_scope = dst[0] == 0xff && dst[1] & 0x0f == 2;
    if !same6(own, &IP6_UNSPECIFIED) && from && link_scope && pkt.hop_limit == 1 {
        Reason::Nd
    } else {
        Reason::NdDenied
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NdKind {
    RouterSolicitation,
    RouterAdvertisement,
    NeighborSolicitation,
    NeighborAdvertisement,
    Redirect,
}

impl NdKind {
    const fn of(icmp_type: u8) -> Option<NdKind> {
        match icmp_type {
            ICMP6_ROUTER_SOLICIT => Some(NdKind::RouterSolicitation),
            ICMP6_ROUTER_ADVERT => Some(NdKind::RouterAdvertisement),
            ICMP6_NEIGHBOR_SOLICIT => Some(NdKind::NeighborSolicitation),
            ICMP6_NEIGHBOR_ADVERT => Some(NdKind::NeighborAdvertisement),
            ICMP6_REDIRECT => Some(NdKind::Redirect),
            _ => None,
        }
    }

    /// Bytes before the options (RFC 4861 §4).
    const fn fixed_len(self) -> usize {
        match self {
            NdKind::RouterSolicitation => 8,
            NdKind::RouterAdvertisement => 16,
            NdKind::NeighborSolicitation | NdKind::NeighborAdvertisement => 24,
            NdKind::Redirect => 40,
        }
    }
}

/// The link-layer address a message announces in its options: a kind and
/// a MAC (zero unless [`LinkAddrKind::Mac`]). A struct rather than an enum
/// with the MAC inside: an enum's other variants leave those bytes
/// undefined, and the verifier refuses a program that copies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkAddr {
    pub kind: LinkAddrKind,
    pub mac: [u8; 6],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAddrKind {
    Absent,
    Mac,
    /// Options other than exactly one link-layer address of the kind the
    /// message carries: nothing the container or the host send here.
    Unexpected,
}

impl LinkAddr {
    pub const ABSENT: LinkAddr = LinkAddr {
        kind: LinkAddrKind::Absent,
        mac: [0; 6],
    };
    pub const UNEXPECTED: LinkAddr = LinkAddr {
        kind: LinkAddrKind::Unexpected,
        mac: [0; 6],
    };

    pub const fn mac(mac: [u8; 6]) -> LinkAddr {
        LinkAddr {
            kind: LinkAddrKind::Mac,
            mac,
        }
    }
}

/// A neighbour discovery message, as far as the rules look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdMessage {
    pub kind: NdKind,
    pub code: u8,
    /// The address solicited or advertised; `::` for router messages.
    pub target: Ip6,
    pub lla: LinkAddr,
}

/// `len`: the ICMPv6 message's length (`Ipv6Packet::end - ip.header_len`);
/// `peek(at)`: the [`ND_PEEK`] bytes at `at` from the ICMPv6
/// header, `None` past the packet. `None` means malformed: not neighbour
/// discovery, or shorter than its kind.
pub fn parse_nd(
    len: usize,
    mut peek: impl FnMut(usize) -> Option<[u8; ND_PEEK]>,
) -> Option<NdMessage> {
    let head = peek(0)?;
    let kind = NdKind::of(head[0])?;
    let fixed = kind.fixed_len();
    if len < fixed {
        return None;
    }
    let mut target = IP6_UNSPECIFIED;
    if fixed == 24 {
        let (hi, lo) = (peek(8)?, peek(16)?);
        for (d, s) in target.iter_mut().zip(hi.iter().chain(lo.iter())) {
            *d = *s;
        }
    }
    let lla = if len == fixed {
        LinkAddr::ABSENT
    } else if len == fixed + 8 {
        let o = peek(fixed)?;
        let want = if matches!(kind, NdKind::NeighborAdvertisement) {
            OPT_TARGET_LLA
        } else {
            OPT_SOURCE_LLA
        };
        if o[0] == want && o[1] == 1 {
            LinkAddr::mac([o[2], o[3], o[4], o[5], o[6], o[7]])
        } else {
            LinkAddr::UNEXPECTED
        }
    } else {
        LinkAddr::UNEXPECTED
    };
    Some(NdMessage {
        kind,
        code: head[1],
        target,
        lla,
    })
}

/// `fe80::` and the interface identifier of the container's address: the
/// link-local address pn configures in the container.
pub const fn container_link_local(addr: &Ip6) -> Ip6 {
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    let mut i = 8;
    while i < 16 {
        ll[i] = addr[i];
        i += 1;
    }
    ll
}

/// `a` is one of the container's names on its link. Never the gateway's,
/// whatever address the agent gave it (one ending in `::1` would have the
/// gateway's link-local address).
fn owns(own: &Ip6, a: &Ip6) -> bool {
    !same6(a, &GATEWAY6) && (same6(a, own) || same6(a, &container_link_local(own)))
}

/// `ff02::1:ffXX:XXXX`: where a solicitation for `addr` is sent.
pub const fn solicited_node(addr: &Ip6) -> Ip6 {
    [
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, addr[13], addr[14], addr[15],
    ]
}

/// Checks every message must pass, whoever sends it: built on the link
/// (hop limit 255), whole, and with no options but its link-layer address.
fn well_formed(pkt: &Ipv6Packet, m: &NdMessage) -> bool {
    pkt.hop_limit == 255 && !pkt.fragmented && m.code == 0 && m.lla.kind != LinkAddrKind::Unexpected
}

/// Neighbour discovery leaving a container (host-side ingress of its veth):
/// a router solicitation toward the gateway, a solicitation for the
/// gateway, an advertisement of its own addresses to the gateway; from its
/// own addresses and announcing its own MAC (`eth_src`, the frame's source).
/// A container without an IPv6 address has no names: nothing passes.
pub fn nd_from_container(
    pkt: &Ipv6Packet,
    msg: Option<&NdMessage>,
    eth_src: [u8; 6],
    iface: Option<&Iface>,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    let Some(m) = msg else {
        return Reason::Malformed;
    };
    let own = &iface.addr6;
    let is_own = |a: &Ip6| owns(own, a);
    let mac_ok = m.lla.kind != LinkAddrKind::Mac || m.lla.mac == eth_src;
    let (src, dst) = (&pkt.ip.src, &pkt.ip.dst);
    let allowed = match m.kind {
        NdKind::RouterSolicitation => {
            // RFC 4861 §4.1: from `::` only without a link-layer address.
            let from =
                is_own(src) || (same6(src, &IP6_UNSPECIFIED) && m.lla.kind == LinkAddrKind::Absent);
            from && (same6(dst, &GATEWAY6) || same6(dst, &ALL_ROUTERS))
        }
        NdKind::NeighborSolicitation => {
            is_own(src)
                && same6(&m.target, &GATEWAY6)
                && (same6(dst, &GATEWAY6) || same6(dst, &solicited_node(&GATEWAY6)))
        }
        NdKind::NeighborAdvertisement => is_own(src) && is_own(&m.target) && same6(dst, &GATEWAY6),
        NdKind::RouterAdvertisement | NdKind::Redirect => false,
    };
    if !same6(own, &IP6_UNSPECIFIED) && allowed && mac_ok && well_formed(pkt, m) {
        Reason::Nd
    } else {
        Reason::NdDenied
    }
}

/// Neighbour discovery entering a container (host-side egress of its veth):
/// only the host itself (`ingress` 0) as the gateway, soliciting the
/// container's own addresses or advertising the gateway to them.
pub fn nd_to_container(
    pkt: &Ipv6Packet,
    msg: Option<&NdMessage>,
    ingress: u32,
    iface: Option<&Iface>,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    let Some(m) = msg else {
        return Reason::Malformed;
    };
    let own = &iface.addr6;
    let is_own = |a: &Ip6| owns(own, a);
    let dst = &pkt.ip.dst;
    let allowed = match m.kind {
        // Both own addresses share their solicited-node group (same
        // interface identifier).
        NdKind::NeighborSolicitation => {
            is_own(&m.target) && (is_own(dst) || same6(dst, &solicited_node(own)))
        }
        NdKind::NeighborAdvertisement => same6(&m.target, &GATEWAY6) && is_own(dst),
        // pn routes statically: the host neither advertises itself as a
        // router nor redirects.
        _ => false,
    };
    if ingress == 0
        && same6(&pkt.ip.src, &GATEWAY6)
        && !same6(own, &IP6_UNSPECIFIED)
        && allowed
        && well_formed(pkt, m)
    {
        Reason::Nd
    } else {
        Reason::NdDenied
    }
}

#[cfg(test)]
mod tests;
