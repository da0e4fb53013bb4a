//! XDP on the underlay interface: the guard of rule 6. Drops, before they
//! cost the agent anything, tunnel packets from hosts that are not peers or
//! for networks with no local member, and any clear-text packet addressed to
//! a member. Everything else is left to the host's stack, uncounted.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use pn_common::{
    Reason,
    event::Direction,
    policy::{
        self, ETH_HLEN, IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, Ipv4Summary, Ipv6Summary,
        UnderlayPacket,
    },
    tunnel::{DATA_HEADER_LEN, TAG_OFFSET},
};

use crate::{
    maps::{PN_CONFIG, PN_ENDPOINTS, PN_ENDPOINTS6, PN_IFACES, PN_PEERS, PN_TAGS},
    report::{PacketCtx, count, report_drop},
};

const UDP_HLEN: usize = 8;

#[xdp]
pub fn pn_underlay(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN + IPV4_MIN_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked just above (the verifier checks it again).
    let ethertype = u16::from_be(unsafe { core::ptr::read_unaligned((data + 12) as *const u16) });
    if ethertype == policy::ETH_P_IPV6 {
        return underlay6(&ctx, data, end);
    }
    if ethertype != policy::ETH_P_IP {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let raw: [u8; IPV4_MIN_HLEN] =
        unsafe { core::ptr::read_unaligned((data + ETH_HLEN) as *const _) };
    let Some(ip) = policy::parse_ipv4(&raw) else {
        // Not ours to judge: the host's stack drops broken IPv4 itself.
        return xdp_action::XDP_PASS;
    };
    let mut pkt = UnderlayPacket {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        dport: 0,
        msg_type: None,
        tag: None,
        payload_len: 0,
    };
    if ip.proto == IPPROTO_UDP && !ip.later_fragment && ip.header_len <= 60 {
        let udp = data + ETH_HLEN + ip.header_len;
        if udp + UDP_HLEN <= end {
            // SAFETY: bounds checked.
            pkt.dport = u16::from_be(unsafe { core::ptr::read_unaligned((udp + 2) as *const u16) });
            // SAFETY: bounds checked.
            let udp_len =
                u16::from_be(unsafe { core::ptr::read_unaligned((udp + 4) as *const u16) });
            pkt.payload_len = udp_len.saturating_sub(UDP_HLEN as u16);
            let payload = udp + UDP_HLEN;
            if payload < end {
                // SAFETY: bounds checked.
                pkt.msg_type = Some(unsafe { *(payload as *const u8) });
            }
            if payload + DATA_HEADER_LEN <= end {
                // SAFETY: bounds checked.
                pkt.tag = Some(u32::from_be(unsafe {
                    core::ptr::read_unaligned((payload + TAG_OFFSET) as *const u32)
                }));
            }
        }
    }
    let cfg = PN_CONFIG.get(0).copied().unwrap_or_default();
    // SAFETY: values are plain data, read-only here.
    let member = unsafe { PN_ENDPOINTS.get(pkt.dst) }.copied();
    let decision = policy::underlay(
        &pkt,
        &cfg,
        member.is_some(),
        // SAFETY: as above.
        |ip| unsafe { PN_PEERS.get(ip) }.is_some(),
        // SAFETY: as above.
        |tag| unsafe { PN_TAGS.get(tag) }.is_some(),
    );
    let Some(reason) = decision else {
        return xdp_action::XDP_PASS;
    };
    let len = (end - data) as u32;
    // Clear text to a local member counts in that member's row; the rest
    // (remote members included) in the host's. Rows are the interfaces'
    // slots: whatever the underlay sends, it adds none.
    let slot = match member {
        Some(ep) if reason == Reason::CleartextToMember && !ep.is_remote() => {
            // SAFETY: plain data, see tc.rs.
            unsafe { PN_IFACES.get(ep.ifindex) }.map_or(0, |i| i.slot)
        }
        _ => 0,
    };
    count(slot, reason, len);
    if reason.is_drop() {
        // SAFETY: the context pointer is valid for the whole program run.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let summary = Ipv4Summary {
            src: pkt.src,
            dst: pkt.dst,
            proto: pkt.proto,
            sport: 0,
            dport: pkt.dport,
        };
        let at = PacketCtx {
            cfg: &cfg,
            dir: Direction::Underlay,
            ifindex,
            len,
        };
        report_drop(&at, reason, Some(&summary));
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// IPv6 on the underlay: the tunnel runs over IPv4 only today, so the guard
/// has one rule here, the clear-text one: a packet addressed to a member's
/// IPv6 address is dropped (`cleartext_to_member`), whatever extension
/// headers follow (the destination is in the fixed header); the rest is
/// left to the host's stack.
#[inline(always)]
fn underlay6(ctx: &XdpContext, data: usize, end: usize) -> u32 {
    if data + ETH_HLEN + IPV6_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked just above.
    let raw: [u8; IPV6_HLEN] = unsafe { core::ptr::read_unaligned((data + ETH_HLEN) as *const _) };
    let mut dst = [0u8; 16];
    for (d, s) in dst.iter_mut().zip(&raw[24..40]) {
        *d = *s;
    }
    // SAFETY: values are plain data, read-only here.
    let Some(ep) = (unsafe { PN_ENDPOINTS6.get(dst) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let len = (end - data) as u32;
    let reason = Reason::CleartextToMember;
    let slot = if ep.is_remote() {
        0
    } else {
        // SAFETY: plain data, see tc.rs.
        unsafe { PN_IFACES.get(ep.ifindex) }.map_or(0, |i| i.slot)
    };
    count(slot, reason, len);
    let mut src = [0u8; 16];
    for (d, s) in src.iter_mut().zip(&raw[8..24]) {
        *d = *s;
    }
    let cfg = PN_CONFIG.get(0).copied().unwrap_or_default();
    let at = PacketCtx {
        cfg: &cfg,
        dir: Direction::Underlay,
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        len,
    };
    let summary = Ipv6Summary {
        src,
        dst,
        proto: raw[6],
        sport: 0,
        dport: 0,
    };
    report_drop(&at, reason, Some(&summary));
    xdp_action::XDP_DROP
}
