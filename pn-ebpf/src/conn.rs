//! Connection and request tracking for TCP between members: an event for each
//! boundary segment (SYN, FIN, RST) and for each segment whose first bytes
//! look like an HTTP/1.x request or status line, sent once per segment
//! (by the program it leaves) when both ends are local. Everything else costs a
//! flag test (pure ACKs), plus an inlined array read and, tracking HTTP, a
//! four-byte read and compare (data); the headers come parsed from `tc`.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use pn_common::{
    conn::{
        self, CONN_EVENTS_BYTES, CONN_WAKE_BYTES, ConnEvent, LostKind, PAYLOAD, TRACK_CONNS,
        TRACK_HTTP,
    },
    event::Direction,
    policy::{IPPROTO_TCP, Ipv4Summary},
};

use crate::packet::load;

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

/// What the TC program already parsed of a TCP segment, handed over so that
/// tracking reads no header again: on bulk data the whole cost is the
/// tests below, one array read and (tracking HTTP) one four-byte read.
#[derive(Clone, Copy)]
pub struct Seg {
    /// TCP flags; 0 for anything but TCP.
    pub flags: u8,
    /// Sequence and acknowledgement numbers as on the wire.
    pub seq_ack: [u8; 8],
    /// Where the payload starts in the packet.
    pub at: u16,
    /// Payload length by the IP header's total length.
    pub len: u16,
}

impl Seg {
    pub const NONE: Seg = Seg {
        flags: 0,
        seq_ack: [0; 8],
        at: 0,
        len: 0,
    };
}

/// Called for every packet between members (leaving one, entering one).
/// `both_local`: the other end is a member on this host too (`tc` looked
/// its endpoint up for the verdict).
#[inline(always)]
pub fn observe(
    ctx: &TcContext,
    dir: Direction,
    ifindex: u32,
    pkt: &Ipv4Summary,
    seg: &Seg,
    both_local: bool,
) {
    // Between two local members each segment passes two of our programs:
    // only the one it leaves sends the event (half the events, payload
    // copies and agent work per request); the agent reads it as both. Tested
    // first: the receiver's side reads nothing, not even the payload's first
    // bytes, which on a stream's segments sit in a page fragment (a helper
    // call, not a direct read).
    if pkt.proto != IPPROTO_TCP || (both_local && !matches!(dir, Direction::FromContainer)) {
        return;
    }
    let flags = seg.flags;
    let boundary = conn::is_boundary(flags);
    // Bulk data and pure ACKs leave here or after the payload check: no
    // helper call before knowing the segment is worth an event.
    if !boundary && (flags & conn::TCP_ACK == 0 || seg.len < 4) {
        return;
    }
    // An array read the verifier inlines (no helper call).
    let Some(&track) = PN_CONN_CFG.get(0) else {
        return;
    };
    let want = if boundary { TRACK_CONNS } else { TRACK_HTTP };
    if track & want == 0 {
        return;
    }
    let at = usize::from(seg.at);
    let data = seg.len;
    let mut http = false;
    if data >= 4 && track & TRACK_HTTP != 0 {
        // Direct access when the payload is in the linear part.
        match load::<[u8; 4]>(ctx, at) {
            Some(first) => http = conn::may_start_http(first),
            None => return,
        }
    }
    if !boundary && !http {
        return;
    }
    let h = seg.seq_ack;
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
        both_local: both_local as u8,
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
    // The reader drains the ring on a tick: wake it only when it fills.
    let wake = if PN_CONN_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= CONN_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if PN_CONN_EVENTS
        .output::<ConnEvent>(&ev, u64::from(wake))
        .is_err()
    {
        lost(LostKind::Conn);
    }
}
