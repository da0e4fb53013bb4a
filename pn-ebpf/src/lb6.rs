//! The balancer's packet rewriting over IPv6, `lb`'s twin: a client's
//! packets toward an IPv6 service address get the chosen backend's IPv6
//! address as destination (before the member policy judges them), the
//! backend's replies get the service address back as source (after). The
//! decisions are `pn_common::lb`'s, the same code as IPv4's over [`Ip6`];
//! the maps are IPv6's own (`PN_LB6_*`).
//!
//! Subprograms (`inline(never)`), called from `tc6::handle` only: each has
//! its own frame, as `tc6`'s steps (a key here is 40 bytes, an address 16).
//! IPv6 has no header checksum; the TCP/UDP checksum covers the addresses
//! in its pseudo-header, fixed by their difference (`bpf_csum_diff`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_ktime_get_ns},
    programs::TcContext,
};
use pn_common::{
    Ip6,
    lb::{self, LbConn, LbConnKey, LbCount, LbStats, LbStatsKey, LbStep, SlotKey},
    maps::Iface,
    policy::{ETH_HLEN, IPPROTO_TCP, Ipv6Summary, L4_OFFSET_MASK, same6},
};

use crate::maps::{PN_LB6_BACKENDS, PN_LB6_CONNS, PN_LB6_SERVICES, PN_LB6_SLOTS, PN_LB6_STATS};

/// Offsets of the addresses in the IPv6 header, and of the checksums.
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// A packet leaving a client (`tc6` calls it before the rules): toward an
/// IPv6 service address of its network, it leaves toward a backend
/// (`pkt.dst` follows). `l4`: where L4 starts (0: a later fragment, left
/// alone); `flags`: the TCP flags (0 for anything else).
#[inline(always)]
pub fn from_container(ctx: &TcContext, iface: &Iface, pkt: &mut Ipv6Summary, l4: u16, flags: u8) {
    if l4 == 0 {
        return;
    }
    let r = leaving(ctx, iface, pkt, l4, flags);
    // Read, volatile: see `tc6::handle` (a subprogram's unused result).
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&r) };
}

/// A packet entering a client that the rules delivered: a reply from a
/// backend it reached through an IPv6 service address comes from that
/// address.
#[inline(always)]
pub fn to_container(ctx: &TcContext, pkt: &Ipv6Summary, l4: u16, flags: u8) {
    if l4 == 0 || !pn_common::policy::has_ports(pkt.proto) {
        return;
    }
    let r = entering(ctx, pkt, l4, flags);
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&r) };
}

/// `from_container`'s work; whether it rewrote (a subprogram returns a
/// scalar, see `tc6::decide`).
#[inline(never)]
fn leaving(ctx: &TcContext, iface: &Iface, pkt: &mut Ipv6Summary, l4: u16, flags: u8) -> u8 {
    if !same6(&pkt.src, &iface.addr6) {
        return 0;
    }
    // SAFETY: plain-data values, see `tc::handle`.
    let svc = unsafe { PN_LB6_SERVICES.get(&pkt.dst) };
    if svc.is_none() {
        if lb::opens(pkt.proto, flags) {
            // As IPv4's: a connection straight to an address from a port
            // that earlier reached it through a service has its own replies.
            let _ = PN_LB6_CONNS.remove(&LbConnKey::reverse_of(pkt, pkt.dst));
        }
        return 0;
    }
    let key = LbConnKey::forward(pkt);
    // A pointer, not a copy (see `lb::from_container`).
    let entry = PN_LB6_CONNS.get_ptr_mut(&key);
    // SAFETY: a value of the map, valid for the program run; plain data.
    let known = entry.map(|p| unsafe { *p });
    let vip = pkt.dst;
    let live = |b: Ip6| {
        // SAFETY: as above.
        unsafe { PN_LB6_BACKENDS.get(&b) }.is_some_and(|e| same6(&e.vip, &vip))
    };
    let (backend, state, fresh) = match lb::lb_step(pkt, flags, svc, iface.tag, known, live, now_s)
    {
        LbStep::Pass => return 0,
        LbStep::Expire(b) => {
            let _ = PN_LB6_CONNS.remove(&key);
            let _ = PN_LB6_CONNS.remove(&LbConnKey::reverse_of(pkt, b));
            return 0;
        }
        LbStep::Keep(b) => (b, known.map_or(0, |c| c.state), false),
        LbStep::Renew(b) => (b, 0, true),
        LbStep::Choose(count) => {
            let slot = SlotKey {
                vip,
                slot: lb::slot_of(pkt),
            };
            // SAFETY: as above.
            let Some(b) = (unsafe { PN_LB6_SLOTS.get(&slot) }).copied() else {
                return 0;
            };
            match count {
                LbCount::New => stat(&vip, &b, 0),
                LbCount::Reset(old) => stat(&vip, &old, 1),
                LbCount::Moved(old) => stat(&vip, &old, 2),
                LbCount::Nothing => {}
            }
            (b, 0, true)
        }
    };
    let closing = if lb::may_close(flags) {
        lb::lb_closing(state, flags, true, now_s())
    } else {
        state
    };
    if fresh {
        let _ = PN_LB6_CONNS.insert(
            &key,
            &LbConn {
                addr: backend,
                state: closing,
            },
            0,
        );
        let _ = PN_LB6_CONNS.insert(
            &LbConnKey::reverse_of(pkt, backend),
            &LbConn {
                addr: vip,
                state: closing,
            },
            0,
        );
    } else if closing != state {
        if let Some(p) = entry {
            // SAFETY: as above; a u32 store.
            unsafe { (*p).state = closing };
        }
        set_state(&LbConnKey::reverse_of(pkt, backend), closing);
    }
    if rewrite(ctx, pkt.proto, l4, IP6_DST, &vip, &backend) {
        pkt.dst = backend;
        1
    } else {
        0
    }
}

/// `to_container`'s work; whether it rewrote.
#[inline(never)]
fn entering(ctx: &TcContext, pkt: &Ipv6Summary, l4: u16, flags: u8) -> u8 {
    let key = LbConnKey::reply(pkt);
    let Some(entry) = PN_LB6_CONNS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: a value of the map, valid for the program run; plain data.
    let c = unsafe { *entry };
    if c.closed() && c.expired(now_s()) {
        let _ = PN_LB6_CONNS.remove(&key);
        let _ = PN_LB6_CONNS.remove(&LbConnKey::forward_of_reply(pkt, c.addr));
        return 0;
    }
    let done = rewrite(ctx, pkt.proto, l4, IP6_SRC, &pkt.src, &c.addr);
    if lb::may_close(flags) {
        let closing = lb::lb_closing(c.state, flags, false, now_s());
        if closing != c.state {
            // SAFETY: as above; a u32 store.
            unsafe { (*entry).state = closing };
            set_state(&LbConnKey::forward_of_reply(pkt, c.addr), closing);
        }
    }
    done as u8
}

/// A connection's entry closing, in place; an entry the LRU evicted stays
/// absent.
#[inline(always)]
fn set_state(key: &LbConnKey<Ip6>, state: u32) {
    if let Some(p) = PN_LB6_CONNS.get_ptr_mut(key) {
        // SAFETY: a value of the map, valid for the program run; a u32 store.
        unsafe { (*p).state = state };
    }
}

#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// Counts on a backend of a service: `which` 0 a new connection, 1 a
/// reset, 2 a UDP flow moved (a number rather than a closure: one body).
#[inline(always)]
fn stat(vip: &Ip6, backend: &Ip6, which: u8) {
    let key = LbStatsKey {
        vip: *vip,
        backend: *backend,
    };
    let add = |s: &mut LbStats| match which {
        0 => s.new_conns += 1,
        1 => s.resets += 1,
        _ => s.moved += 1,
    };
    match PN_LB6_STATS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value of this CPU, valid for the program run.
        Some(p) => add(unsafe { &mut *p }),
        None => {
            let mut s = LbStats::default();
            add(&mut s);
            let _ = PN_LB6_STATS.insert(&key, &s, 0);
        }
    }
}

/// Replaces one address (at `at`) and fixes the L4 checksum by the
/// addresses' difference (they are in the TCP/UDP pseudo-header). False if
/// the packet could not be changed (it then goes on unchanged, and the
/// policy judges it so).
#[inline(always)]
fn rewrite(ctx: &TcContext, proto: u8, l4: u16, at: usize, from: &Ip6, to: &Ip6) -> bool {
    // Masked: the verifier then knows the offset's bound.
    let l4 = usize::from(l4) & (2 * L4_OFFSET_MASK + 1);
    let (csum, mangled) = if proto == IPPROTO_TCP {
        (l4 + TCP_CSUM, 0)
    } else {
        (l4 + UDP_CSUM, BPF_F_MARK_MANGLED_0 as u64)
    };
    // Copies on this frame: the helper takes writable pointers.
    let (mut a, mut b) = (*from, *to);
    // SAFETY: two 16-byte buffers of this frame, sizes multiples of 4.
    let diff = unsafe {
        bpf_csum_diff(
            a.as_mut_ptr() as *mut u32,
            16,
            b.as_mut_ptr() as *mut u32,
            16,
            0,
        )
    };
    if diff < 0 {
        return false;
    }
    // Size 0 in the flags: `to` is a difference already.
    let flags = BPF_F_PSEUDO_HDR as u64 | mangled;
    ctx.l4_csum_replace(csum, 0, diff as u64, flags).is_ok() && ctx.store(at, &b, 0).is_ok()
}
