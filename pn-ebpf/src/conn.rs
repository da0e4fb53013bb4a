//! Connection and request tracking for TCP between members: an event for each
//! boundary segment (SYN, FIN, RST) and for each segment whose first bytes
//! look like an HTTP/1.x request or status line. Everything else (bulk data,
//! pure ACKs) costs one array lookup and, for data, a four-byte check.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use pn_common::{
    conn::{self, CONN_EVENTS_BYTES, ConnEvent, LostKind, PAYLOAD, TRACK_CONNS, TRACK_HTTP},
    event::Direction,
    policy::{ETH_HLEN, IPPROTO_TCP, Ipv4Summary},
};

/// What the agent wants tracked (`TRACK_*` bits); 0 or absent: nothing.
#[map]
pub static PN_CONN_CFG: Array<u32> = Array::pinned(1, 0);

#[map]
pub static PN_CONN_EVENTS: RingBuf = RingBuf::pinned(CONN_EVENTS_BYTES, 0);

/// Events lost to a full ring buffer, per [`LostKind`] (per CPU: exact
/// without atomics).
#[map]
pub static PN_LOST: PerCpuArray<u64> = PerCpuArray::pinned(LostKind::COUNT, 0);

#[inline(always)]
pub fn lost(kind: LostKind) {
    if let Some(n) = PN_LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { *n += 1 };
    }
}

/// Called for every packet between members (leaving one, entering one).
#[inline(always)]
pub fn observe(ctx: &TcContext, dir: Direction, ifindex: u32, pkt: &Ipv4Summary, flags: u8) {
    if pkt.proto != IPPROTO_TCP {
        return;
    }
    let Some(&track) = PN_CONN_CFG.get(0) else {
        return;
    };
    if track == 0 {
        return;
    }
    let boundary = conn::is_boundary(flags);
    if boundary && track & TRACK_CONNS == 0 {
        return;
    }
    if !boundary && (track & TRACK_HTTP == 0 || flags & conn::TCP_ACK == 0) {
        return;
    }
    let Ok(vhl) = ctx.load::<u8>(ETH_HLEN) else {
        return;
    };
    let Ok(tot) = ctx.load::<u16>(ETH_HLEN + 2) else {
        return;
    };
    let l4 = ETH_HLEN + usize::from((vhl & 0x0f) << 2);
    // Sequence, acknowledgement, data offset.
    let Ok(h) = ctx.load::<[u8; 9]>(l4 + 4) else {
        return;
    };
    let doff = usize::from((h[8] >> 4) << 2);
    let data = u16::from_be(tot)
        .saturating_sub(u16::from((vhl & 0x0f) << 2))
        .saturating_sub(doff as u16);
    let at = l4 + doff;
    let mut http = false;
    if data >= 4 && track & TRACK_HTTP != 0 {
        match ctx.load::<[u8; 4]>(at) {
            Ok(first) => http = conn::may_start_http(first),
            Err(_) => return,
        }
    }
    if !boundary && !http {
        return;
    }
    let mut ev = ConnEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        src: pkt.src,
        dst: pkt.dst,
        seq: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        ack: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ifindex,
        sport: pkt.sport,
        dport: pkt.dport,
        data_len: data,
        flags,
        direction: dir as u8,
        ..ConnEvent::default()
    };
    if http {
        // In 1..=64 in a form the verifier can bound (`data` is at least 4).
        let n = ((u32::from(data).min(PAYLOAD as u32) - 1) & (PAYLOAD as u32 - 1)) + 1;
        // SAFETY: the destination is `n <= PAYLOAD` bytes of our own buffer;
        // the helper checks the packet's bounds.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                at as u32,
                ev.payload.as_mut_ptr() as *mut c_void,
                n,
            )
        };
        if r == 0 {
            ev.copied = n as u8;
        }
    }
    if PN_CONN_EVENTS.output::<ConnEvent>(&ev, 0).is_err() {
        lost(LostKind::Conn);
    }
}
