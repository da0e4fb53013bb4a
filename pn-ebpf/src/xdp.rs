//! XDP on the underlay interface: the guard of rule 6. Drops, before they
//! cost the agent anything, tunnel packets from hosts that are not peers or
//! for networks with no local member, and any clear-text packet addressed to
//! a member. Everything else is left to the host's stack, uncounted. IPv4
//! and IPv6 outer packets alike: a host's peers advertise endpoints of its
//! own family, found in `PN_PEERS` or `PN_PEERS6`.

use aya_ebpf::{
    bindings::xdp_action, cty::c_void, helpers::bpf_xdp_load_bytes, macros::xdp,
    programs::XdpContext,
};
use pn_common::{
    Reason,
    event::Direction,
    maps::Endpoint,
    policy::{
        self, ETH_HLEN, EXT_PEEK, IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, Ipv4Summary, Ipv6Summary,
        L4_OFFSET_MASK, PacketSummary, UnderlayPacket,
    },
    tunnel::{DATA_HEADER_LEN, TAG_OFFSET},
};

use crate::{
    maps::{PN_CONFIG, PN_ENDPOINTS, PN_ENDPOINTS6, PN_IFACES, PN_PEERS, PN_PEERS6, PN_TAGS},
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
    match ethertype {
        policy::ETH_P_IP => underlay4(&ctx),
        policy::ETH_P_IPV6 => underlay6(&ctx),
        _ => xdp_action::XDP_PASS,
    }
}

/// IPv4 on the underlay. Each family its own subprogram: their frames are
/// then not summed in one (IPv6's 16-byte addresses and extension header
/// walk would take IPv4's frame past the verifier's 512 bytes).
#[inline(never)]
fn underlay4(ctx: &XdpContext) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN + IPV4_MIN_HLEN > end {
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
        read_udp(&mut pkt, data + ETH_HLEN + ip.header_len, end);
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
    let summary = Ipv4Summary {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        sport: 0,
        dport: pkt.dport,
    };
    verdict(ctx, &cfg, decision, member, &summary, (end - data) as u32)
}

/// The UDP header's destination port and length, and the tunnel message's
/// type and tag when the payload holds them, from the UDP header at `udp`.
#[inline(always)]
fn read_udp<A>(pkt: &mut UnderlayPacket<A>, udp: usize, end: usize) {
    if udp + UDP_HLEN > end {
        return;
    }
    // SAFETY: bounds checked.
    pkt.dport = u16::from_be(unsafe { core::ptr::read_unaligned((udp + 2) as *const u16) });
    // SAFETY: bounds checked.
    let udp_len = u16::from_be(unsafe { core::ptr::read_unaligned((udp + 4) as *const u16) });
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

/// Counts and reports the guard's decision (either family), and the action.
#[inline(always)]
fn verdict<A: Copy + Default>(
    ctx: &XdpContext,
    cfg: &pn_common::maps::Config,
    decision: Option<Reason>,
    member: Option<Endpoint>,
    summary: &PacketSummary<A>,
    len: u32,
) -> u32 {
    let Some(reason) = decision else {
        return xdp_action::XDP_PASS;
    };
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
        let at = PacketCtx {
            cfg,
            dir: Direction::Underlay,
            // SAFETY: the context pointer is valid for the whole program run.
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
            len,
        };
        report_drop(&at, reason, Some(summary));
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// `size_of::<T>()` bytes at `off` from the frame's start, through the
/// helper: past IPv6's extension headers the offset is a variable the
/// verifier cannot bound against the packet's end as direct access needs.
#[inline(always)]
fn xload<T>(ctx: &XdpContext, off: usize) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes `size_of::<T>()` bytes into our own buffer
    // and checks the packet's bounds itself.
    let r = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            v.as_mut_ptr() as *mut c_void,
            size_of::<T>() as u32,
        )
    };
    // SAFETY: 0 means every byte was written (T is plain bytes here).
    (r == 0).then(|| unsafe { v.assume_init() })
}

/// [`read_udp`] for IPv6: the UDP header at `udp` (from the frame's
/// start), read through the helper.
#[inline(always)]
fn read_udp6(ctx: &XdpContext, pkt: &mut UnderlayPacket<pn_common::Ip6>, udp: usize) {
    let Some(h) = xload::<[u8; UDP_HLEN]>(ctx, udp) else {
        return;
    };
    pkt.dport = u16::from_be_bytes([h[2], h[3]]);
    pkt.payload_len = u16::from_be_bytes([h[4], h[5]]).saturating_sub(UDP_HLEN as u16);
    let payload = udp + UDP_HLEN;
    if let Some(d) = xload::<[u8; DATA_HEADER_LEN]>(ctx, payload) {
        pkt.msg_type = Some(d[0]);
        pkt.tag = Some(u32::from_be_bytes([
            d[TAG_OFFSET],
            d[TAG_OFFSET + 1],
            d[TAG_OFFSET + 2],
            d[TAG_OFFSET + 3],
        ]));
    } else if let Some(t) = xload::<u8>(ctx, payload) {
        pkt.msg_type = Some(t);
    }
}

/// IPv6 on the underlay, IPv4's rules: a packet addressed to a member's
/// IPv6 address is dropped (`cleartext_to_member`), whatever extension
/// headers follow (the destination is in the fixed header); UDP to the
/// tunnel's port must come from a peer of `PN_PEERS6` (`unknown_peer`)
/// and carry a local network's tag (`unknown_tag`). Extension headers are
/// walked as the containers' programs walk them (`policy::parse_ipv6`); a
/// chain it cannot walk is the host stack's to refuse, as broken IPv4 is.
/// Its own subprogram: IPv6's 16-byte addresses in the packet and the
/// summary would crowd IPv4's frame.
#[inline(never)]
fn underlay6(ctx: &XdpContext) -> u32 {
    let Some(raw) = xload::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    let mut pkt = UnderlayPacket {
        src: [0u8; 16],
        dst: [0u8; 16],
        proto: raw[6],
        dport: 0,
        msg_type: None,
        tag: None,
        payload_len: 0,
    };
    for (d, s) in pkt.src.iter_mut().zip(&raw[8..24]) {
        *d = *s;
    }
    for (d, s) in pkt.dst.iter_mut().zip(&raw[24..40]) {
        *d = *s;
    }
    // SAFETY: values are plain data, read-only here.
    let member = unsafe { PN_ENDPOINTS6.get(pkt.dst) }.copied();
    if member.is_none() {
        // Offsets masked: the verifier then knows each read's bound.
        let peek = |off: usize| xload::<[u8; EXT_PEEK]>(ctx, ETH_HLEN + (off & L4_OFFSET_MASK));
        let Some(p) = policy::parse_ipv6(&raw, peek) else {
            return xdp_action::XDP_PASS;
        };
        pkt.proto = p.ip.proto;
        if p.ip.proto == IPPROTO_UDP && !p.ip.later_fragment {
            read_udp6(ctx, &mut pkt, ETH_HLEN + (p.ip.header_len & L4_OFFSET_MASK));
        }
    }
    let cfg = PN_CONFIG.get(0).copied().unwrap_or_default();
    let decision = policy::underlay(
        &pkt,
        &cfg,
        member.is_some(),
        // SAFETY: values are plain data, read-only here.
        |ip| unsafe { PN_PEERS6.get(ip) }.is_some(),
        // SAFETY: as above.
        |tag| unsafe { PN_TAGS.get(tag) }.is_some(),
    );
    let summary = Ipv6Summary {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        sport: 0,
        dport: pkt.dport,
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    verdict(ctx, &cfg, decision, member, &summary, len)
}
