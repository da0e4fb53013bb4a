//! TC egress of the tunnel's device: what enters the tunnel came from a
//! member's own veth, under its own address (finding 2 of the hardening
//! issue). The device is L3: the packet starts with its IP header, whose
//! version says the family (as the TUN device itself reads it).

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use pn_common::{
    Ip6, Reason,
    policy::{self, IPV4_MIN_HLEN},
};

use crate::{maps::PN_IFACES, report::count};

/// `PN_COUNTERS` row of the tunnel's drops: the host's.
const HOST: u16 = 0;

/// Where an IPv6 header holds its source and destination addresses.
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;

#[classifier]
pub fn pn_into_tunnel(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let len = ctx.len();
    // SAFETY: plain data, see tc.rs.
    let from = unsafe { PN_IFACES.get(ingress) }.copied();
    let reason = match ctx.load::<u8>(0).ok().map(|b| b >> 4) {
        // The host's own stack sends listener reports (from `::` to
        // ff02::16) on the tunnel's device once it has IPv6: link chatter,
        // never a member's packet, and no forged source either.
        Some(6) if ctx.load::<u8>(IPV6_DST).ok() == Some(0xff) => Reason::NdDenied,
        Some(6) => match ctx.load::<Ip6>(IPV6_SRC).ok() {
            Some(src) => policy::into_tunnel(src, from.as_ref()),
            None => Reason::Malformed,
        },
        _ => match ctx
            .load::<[u8; IPV4_MIN_HLEN]>(0)
            .ok()
            .and_then(|h| policy::parse_ipv4(&h))
        {
            Some(ip) => policy::into_tunnel(ip.src, from.as_ref()),
            None => Reason::Malformed,
        },
    };
    if reason.is_drop() {
        count(HOST, reason, len);
        TC_ACT_SHOT
    } else {
        TC_ACT_PIPE
    }
}
