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
    Ip4, Ip6, Reason,
    event::{Direction, EventKind},
    maps::Endpoint,
    policy::{
        self, ETH_HLEN, EXT_PEEK, IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, Ipv4Summary, Ipv6Summary,
        L4_OFFSET_MASK, PacketSummary, UnderlayPacket,
    },
    tunnel::{DATA_HEADER_LEN, TAG_OFFSET},
};

use crate::{
    maps::{PN_CONFIG, PN_ENDPOINTS, PN_ENDPOINTS6, PN_IFACES, PN_PEERS, PN_PEERS6, PN_TAGS},
    report::{PacketCtx, admit_drop, count, send},
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

/// IPv4 on the underlay. Clear text to a member, the guard's flood, is
/// judged inlined in the entry: a subprogram's call and return cost about
/// 10 ns here (the kernel returns through its SRSO thunk), a tenth of such
/// a drop. The rest, tunnel datagrams above all, in a subprogram as
/// before: summed with IPv6's subprogram the entry's frame must stay
/// within the verifier's 512 bytes.
#[inline(always)]
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
    let pkt = UnderlayPacket {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        dport: 0,
        msg_type: None,
        tag: None,
        payload_len: 0,
    };
    // Where the UDP header starts in the frame; 0: no UDP header to read.
    let udp = if ip.proto == IPPROTO_UDP && !ip.later_fragment && ip.header_len <= 60 {
        ETH_HLEN + ip.header_len
    } else {
        0
    };
    // SAFETY: values are plain data, read-only here.
    let Some(ep) = unsafe { PN_ENDPOINTS.get(pkt.dst) }.copied() else {
        return stranger4(ctx, pkt.src, pkt.dst, pkt.proto, udp);
    };
    // Element 0 of a one-element array: always there. By reference, not
    // copied onto a frame the verifier counts.
    let Some(cfg) = PN_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // Clear text to a member is dropped whatever follows its IP header
    // (`policy::underlay`'s first rule): the UDP header is read only for
    // an event the budget lets through.
    let decision = policy::underlay(&pkt, cfg, true, |_| true, |_| true);
    let summary = || summary4(ctx, pkt, udp);
    verdict(ctx, cfg, decision, Some(ep), summary, (end - data) as u32)
}

/// IPv4 to no member: tunnel datagrams must come from a peer and carry a
/// local network's tag; the rest is the host's. Its header's fields come
/// by value: a packet by reference would sit on
/// the entry's frame.
#[inline(never)]
fn stranger4(ctx: &XdpContext, src: Ip4, dst: Ip4, proto: u8, udp: usize) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut pkt = UnderlayPacket {
        src,
        dst,
        proto,
        dport: 0,
        msg_type: None,
        tag: None,
        payload_len: 0,
    };
    if udp != 0 {
        read_udp(&mut pkt, data + (udp & L4_OFFSET_MASK), end);
    }
    let Some(cfg) = PN_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let decision = policy::underlay(
        &pkt,
        cfg,
        false,
        // SAFETY: values are plain data, read-only here.
        |ip| unsafe { PN_PEERS.get(ip) }.is_some(),
        // SAFETY: as above.
        |tag| unsafe { PN_TAGS.get(tag) }.is_some(),
    );
    let summary = || summary4(ctx, pkt, 0);
    verdict(ctx, cfg, decision, None, summary, (end - data) as u32)
}

/// An IPv4 event's headers; the UDP header's port read from `udp` (as in
/// [`underlay4`]) when not 0.
#[inline(always)]
fn summary4(ctx: &XdpContext, mut pkt: UnderlayPacket, udp: usize) -> Ipv4Summary {
    if udp != 0 {
        read_udp(
            &mut pkt,
            ctx.data() + (udp & L4_OFFSET_MASK),
            ctx.data_end(),
        );
    }
    Ipv4Summary {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        sport: 0,
        dport: pkt.dport,
    }
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

/// Counts and reports the guard's decision (either family), and the
/// action. `summary` makes the event's headers, read only for an event
/// the budget lets through.
#[inline(always)]
fn verdict<A: DropEvent>(
    ctx: &XdpContext,
    cfg: &pn_common::maps::Config,
    decision: Option<Reason>,
    member: Option<Endpoint>,
    summary: impl FnOnce() -> PacketSummary<A>,
    len: u32,
) -> u32 {
    let Some(reason) = decision else {
        return xdp_action::XDP_PASS;
    };
    // Clear text to a local member counts in that member's row; the rest
    // (remote members included) in the host's. Rows are the interfaces'
    // slots: whatever the underlay sends, it adds none. The endpoint
    // carries its row; an entry an earlier agent wrote does not, then its
    // interface is looked up (a second hash lookup, about 35 ns here).
    let slot = match member {
        Some(ep) if reason == Reason::CleartextToMember && !ep.is_remote() => match ep.row() {
            // SAFETY: plain data, see tc.rs.
            0 => unsafe { PN_IFACES.get(ep.ifindex) }.map_or(0, |i| i.slot),
            row => row,
        },
        _ => 0,
    };
    count(slot, reason, len);
    if !reason.is_drop() {
        return xdp_action::XDP_PASS;
    }
    if let Some(now) = admit_drop(cfg.drop_events_per_sec) {
        let at = PacketCtx {
            cfg,
            dir: Direction::Underlay,
            // SAFETY: the context pointer is valid for the whole program run.
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
            len,
        };
        A::send(&at, now, reason, &summary());
    }
    xdp_action::XDP_DROP
}

/// A drop event of either family, into the ring buffer.
trait DropEvent: Copy + Default {
    fn send(at: &PacketCtx, now: u64, reason: Reason, pkt: &PacketSummary<Self>);
}

impl DropEvent for Ip4 {
    /// A subprogram of its own: the event (rare under a flood) is then
    /// no part of the entry's frame, which IPv6's subprogram sits on (the
    /// verifier sums a call chain's frames against 512 bytes).
    #[inline(never)]
    fn send(at: &PacketCtx, now: u64, reason: Reason, pkt: &PacketSummary<Self>) {
        send(at, now, EventKind::Drop, reason, Some(pkt));
    }
}

impl DropEvent for Ip6 {
    /// Inlined in IPv6's subprogram, already off the entry's frame.
    #[inline(always)]
    fn send(at: &PacketCtx, now: u64, reason: Reason, pkt: &PacketSummary<Self>) {
        send(at, now, EventKind::Drop, reason, Some(pkt));
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
    let Some(cfg) = PN_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let decision = policy::underlay(
        &pkt,
        cfg,
        member.is_some(),
        // SAFETY: values are plain data, read-only here.
        |ip| unsafe { PN_PEERS6.get(ip) }.is_some(),
        // SAFETY: as above.
        |tag| unsafe { PN_TAGS.get(tag) }.is_some(),
    );
    let summary = || Ipv6Summary {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        sport: 0,
        dport: pkt.dport,
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    verdict(ctx, cfg, decision, member, summary, len)
}
