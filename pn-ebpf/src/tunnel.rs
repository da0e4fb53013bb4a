//! TC egress of the tunnel's device: what enters the tunnel came from a
//! member's own veth, under its own address (finding 2 of the hardening
//! issue). The device is L3: the packet starts with its IPv4 header.

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use pn_common::policy::{self, IPV4_MIN_HLEN};

use crate::{maps::PN_IFACES, report::count};

/// `PN_COUNTERS` row of the tunnel's drops: the host's.
const HOST: u16 = 0;

#[classifier]
pub fn pn_into_tunnel(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let len = ctx.len();
    let src = match ctx
        .load::<[u8; IPV4_MIN_HLEN]>(0)
        .ok()
        .and_then(|h| policy::parse_ipv4(&h))
    {
        Some(ip) => ip.src,
        None => {
            count(HOST, pn_common::Reason::Malformed, len);
            return TC_ACT_SHOT;
        }
    };
    // SAFETY: plain data, see tc.rs.
    let from = unsafe { PN_IFACES.get(ingress) }.copied();
    let reason = policy::into_tunnel(src, from.as_ref());
    if reason.is_drop() {
        count(HOST, reason, len);
        TC_ACT_SHOT
    } else {
        TC_ACT_PIPE
    }
}
