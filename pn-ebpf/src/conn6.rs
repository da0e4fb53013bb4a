//! `conn`'s connection and request events for IPv6 between members: the
//! same segments (boundaries, and data whose first four bytes may start an
//! HTTP/1.x message), the same rule for two local members (only the copy
//! leaving the sender is sent), the same ring (`PN_CONN_EVENTS`), with
//! `ConnEvent<Ip6>` records the agent tells apart by their length.
//!
//! Called from `tc6::handle` once the verdict is `forwarded` or
//! `delivered`. A subprogram of its own (see `tc6`): IPv6's event is
//! written straight into the ring (reserved, then filled) rather than
//! built on the stack, so the frame stays small beside `handle`'s.
//! `tc6` keeps TCP's flags and where the L4 header starts; the sequence
//! numbers and data offset are read here, from the TCP header, only for a
//! segment that may be worth an event.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use pn_common::{
    Ip6,
    conn::{self, CONN_WAKE_BYTES, ConnEvent, LostKind, PAYLOAD, TRACK_CONNS, TRACK_HTTP},
    event::Direction,
    policy::{ETH_HLEN, IPPROTO_TCP, IPV6_HLEN, Ipv6Summary, L4_OFFSET_MASK},
};

use crate::{
    conn::{PN_CONN_CFG, PN_CONN_EVENTS, lost},
    maps::PN_ENDPOINTS6,
    packet::load,
};

/// For every IPv6 packet between members. `flags`: TCP's (0 when not TCP);
/// `l4`: where the L4 header starts (0 for a later fragment: none). The
/// cheap tests run inline; the rest in `segment`.
#[inline(always)]
pub fn observe(ctx: &TcContext, dir: Direction, pkt: &Ipv6Summary, flags: u8, l4: u16) {
    if pkt.proto != IPPROTO_TCP || l4 == 0 {
        return;
    }
    // Neither a boundary nor data (data always carries ACK): nothing.
    if !conn::is_boundary(flags) && flags & conn::TCP_ACK == 0 {
        return;
    }
    let sent = segment(ctx, dir, pkt, flags, l4);
    // Read, volatile: a result left unused lets the compiler drop it, and
    // the subprogram would return whatever its last register held (see
    // `tc6::handle`).
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&sent) };
}

/// The event of one TCP segment, if it is worth one (as `conn::observe`);
/// 1 when one was sent.
#[inline(never)]
fn segment(ctx: &TcContext, dir: Direction, pkt: &Ipv6Summary, flags: u8, l4: u16) -> u8 {
    // An array read the verifier inlines (no helper call).
    let Some(&track) = PN_CONN_CFG.get(0) else {
        return 0;
    };
    let boundary = conn::is_boundary(flags);
    let want = if boundary { TRACK_CONNS } else { TRACK_HTTP };
    if track & want == 0 {
        return 0;
    }
    // Masked: the verifier then knows every read below stays within a
    // packet's offsets (as `tc6::quoted_source`).
    let l4 = usize::from(l4) & (2 * L4_OFFSET_MASK + 1);
    // Ports, sequence and ack numbers, offset, flags.
    let Some(h) = load::<[u8; 14]>(ctx, l4) else {
        return 0;
    };
    let Some(plen) = load::<[u8; 2]>(ctx, ETH_HLEN + 4) else {
        return 0;
    };
    let doff = usize::from(h[12] >> 4) << 2;
    let at = l4 + doff;
    // The payload's length by the IPv6 header's payload length, as IPv4's
    // by its total length.
    let end = ETH_HLEN + IPV6_HLEN + usize::from(u16::from_be_bytes(plen));
    let data = end.saturating_sub(at) as u16;
    if !boundary && data < 4 {
        return 0;
    }
    let mut http = false;
    if data >= 4 && track & TRACK_HTTP != 0 {
        match load::<[u8; 4]>(ctx, at) {
            Some(first) => http = conn::may_start_http(first),
            None => return 0,
        }
    }
    if !boundary && !http {
        return 0;
    }
    // Two local members: only the copy leaving the sender (see `conn`).
    let from = matches!(dir, Direction::FromContainer);
    let other: &Ip6 = if from { &pkt.dst } else { &pkt.src };
    // SAFETY: plain-data values, see `tc::handle`.
    let both_local = unsafe { PN_ENDPOINTS6.get(other) }.is_some_and(|e| e.ifindex != 0);
    if both_local && !from {
        return 0;
    }
    // The reader drains the ring on a tick: wake it only when it fills.
    let wake = if PN_CONN_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= CONN_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let Some(mut entry) = PN_CONN_EVENTS.reserve::<ConnEvent<Ip6>>(0) else {
        lost(LostKind::Conn);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, `size_of::<ConnEvent<Ip6>>()`
    // bytes of ring memory that only this program writes until submitted;
    // the payload copy writes at most `PAYLOAD` bytes into its field, and
    // the helper checks the packet's bounds; the context pointer is valid
    // for the whole program run; bpf_ktime_get_ns has no preconditions.
    unsafe {
        ev.write(ConnEvent {
            ts_ns: bpf_ktime_get_ns(),
            src: pkt.src,
            dst: pkt.dst,
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            ifindex: (*ctx.skb.skb).ifindex,
            sport: pkt.sport,
            dport: pkt.dport,
            data_len: data,
            copied: 0,
            flags,
            direction: dir as u8,
            both_local: both_local as u8,
            _pad: [0; 2],
            payload: [0; PAYLOAD],
        });
        if http {
            // In 1..=64 in a form the verifier can bound (`data` is at least 4).
            let n = ((u32::from(data).min(PAYLOAD as u32) - 1) & (PAYLOAD as u32 - 1)) + 1;
            let r = bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                at as u32,
                (*ev).payload.as_mut_ptr() as *mut c_void,
                n,
            );
            if r == 0 {
                (*ev).copied = n as u8;
            }
        }
    }
    entry.submit(u64::from(wake));
    1
}
