//! The balancer's packet rewriting over IPv6, `lb`'s twin: a client's
//! packets toward an IPv6 service address get the chosen backend's IPv6
//! address as destination (before the member policy judges them), the
//! backend's replies get the service address back as source (after). The
//! decisions are `pn_common::lb`'s, the same code as IPv4's over [`Ip6`];
//! the maps are IPv6's own (`PN_LB6_*`).
//!
//! Subprograms (`inline(never)`) around `tc6::handle` ([`around`]): each
//! has its own frame, as `tc6`'s steps (a key here is 40 bytes, an address
//! 16).
//! IPv6 has no header checksum; the TCP/UDP checksum covers the addresses
//! in its pseudo-header, fixed by their difference (`bpf_csum_diff`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_ktime_get_ns},
    programs::TcContext,
};
use pn_common::{
    Ip6, Reason,
    event::{Direction, EventKind},
    lb::{self, LbConn, LbConnKey, LbCount, LbStats, LbStatsKey, LbStep, Service, SlotKey},
    maps::Iface,
    policy::{
        self, ETH_HLEN, EXT_PEEK, IPPROTO_TCP, IPV6_HLEN, Ipv6Summary, L4_OFFSET_MASK, same6,
    },
};

use crate::{
    maps::{
        PN_CONFIG, PN_IFACES, PN_LB6_BACKENDS, PN_LB6_CONNS, PN_LB6_SERVICES, PN_LB6_SLOTS,
        PN_LB6_STATS,
    },
    packet::load,
    report::{PacketCtx, count, report},
    share::Table,
};

/// Offsets of the addresses in the IPv6 header, and of the checksums.
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// What [`from_container`] returns for a new connection over its client's
/// share (`Config::conn_share`), counted and reported as `conn_quota`: the
/// packet is dropped before the rules see it (as `lb`'s in `tc::decide`).
const OVER_SHARE: u8 = 2;

/// The balancer around `tc6::handle` (`tc::by_family` calls it so): a
/// packet leaving a container is balanced before the rules judge it (they
/// then see the backend), one entering a container that they passed gets
/// its service address back after. Subprograms of their own that read the
/// headers again, rather than steps inside `tc6`: `tc6::handle`'s frame
/// and its steps' already fill most of the 512 bytes all calls share.
#[inline(always)]
pub fn around(ctx: &TcContext, dir: Direction, handle: impl FnOnce() -> i32) -> i32 {
    if matches!(dir, Direction::FromContainer) {
        let r = from_container(ctx);
        // Read, volatile: see `tc6::handle` (a subprogram's unused result).
        // SAFETY: a read of a local.
        if unsafe { core::ptr::read_volatile(&r) } == OVER_SHARE {
            return TC_ACT_SHOT;
        }
    }
    let verdict = handle();
    if matches!(dir, Direction::ToContainer) && verdict == TC_ACT_PIPE {
        let r = to_container(ctx);
        // SAFETY: a read of a local.
        unsafe { core::ptr::read_volatile(&r) };
    }
    verdict
}

/// What [`read`] found of a TCP or UDP packet.
struct Headers {
    pkt: Ipv6Summary,
    /// Where L4 starts.
    l4: u16,
    /// TCP's flags; 0 for UDP.
    flags: u8,
}

/// A packet leaving a client: toward an IPv6 service address of its
/// network, it leaves toward a backend. Whether it was rewritten (1), or
/// [`OVER_SHARE`] (then counted and reported here).
#[inline(never)]
fn from_container(ctx: &TcContext) -> u8 {
    // The addresses from the fixed header first: toward no service
    // address, from a client no balanced connection marked (see
    // `lb::may_be_client`), there is nothing to do, and the interface and
    // the headers need not be read (most packets: between members).
    let (Some(src), Some(dst)) = (load::<Ip6>(ctx, IP6_SRC), load::<Ip6>(ctx, IP6_DST)) else {
        return 0;
    };
    // SAFETY: plain-data values, see `tc::handle`.
    let svc = unsafe { PN_LB6_SERVICES.get(dst) };
    if svc.is_none() && !crate::lb::may_be_client(&src) {
        return 0;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain data, see `tc::handle`.
    let Some(iface) = (unsafe { PN_IFACES.get(ifindex) }) else {
        return 0;
    };
    let mut h = Headers {
        pkt: Ipv6Summary {
            src: [0; 16],
            dst: [0; 16],
            proto: 0,
            sport: 0,
            dport: 0,
        },
        l4: 0,
        flags: 0,
    };
    if read(ctx, &mut h) == 0 {
        return 0;
    }
    let r = leaving(ctx, iface, &mut h.pkt, pack(h.flags, h.l4), svc);
    if r == OVER_SHARE {
        refuse(ctx, iface.slot, &h.pkt);
    }
    r
}

/// A new balanced connection over its client's share: counted on the
/// client's row as `conn_quota` and reported as `tc6`'s drops are.
#[inline(never)]
fn refuse(ctx: &TcContext, slot: u16, pkt: &Ipv6Summary) -> u8 {
    let Some(cfg) = PN_CONFIG.get(0) else {
        return 0;
    };
    let at = PacketCtx {
        cfg,
        dir: Direction::FromContainer,
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        len: ctx.len(),
    };
    count(slot, Reason::ConnQuota, at.len);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    report(&at, now, EventKind::Drop, Reason::ConnQuota, Some(pkt));
    1
}

/// A packet entering a client that the rules passed: a reply from a
/// backend it reached through an IPv6 service address comes from that
/// address. Whether it was rewritten.
#[inline(never)]
fn to_container(ctx: &TcContext) -> u8 {
    // Toward an address that never used a service: no reverse entry to
    // look up, no headers to read again.
    let Some(dst) = load::<Ip6>(ctx, IP6_DST) else {
        return 0;
    };
    if !crate::lb::may_be_client(&dst) {
        return 0;
    }
    let mut h = Headers {
        pkt: Ipv6Summary {
            src: [0; 16],
            dst: [0; 16],
            proto: 0,
            sport: 0,
            dport: 0,
        },
        l4: 0,
        flags: 0,
    };
    if read(ctx, &mut h) == 0 {
        return 0;
    }
    entering(ctx, &h.pkt, h.l4, h.flags)
}

/// The headers of a TCP or UDP packet with its L4 header (not a later
/// fragment) into `h`; whether it is one. What `tc6::decide` reads, read
/// again (its frame is not this call chain's); what it judges malformed
/// is left alone here, and dropped there.
#[inline(never)]
fn read(ctx: &TcContext, h: &mut Headers) -> u8 {
    let Some(raw) = load::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN) else {
        return 0;
    };
    // Offsets masked: the verifier then knows each read's bound.
    let peek = |off: usize| load::<[u8; EXT_PEEK]>(ctx, ETH_HLEN + (off & L4_OFFSET_MASK));
    let Some(p) = policy::parse_ipv6(&raw, peek) else {
        return 0;
    };
    let ip = p.ip;
    if ip.later_fragment || !policy::has_ports(ip.proto) {
        return 0;
    }
    let l4 = ETH_HLEN + (ip.header_len & L4_OFFSET_MASK);
    // Ports, then (TCP) sequence and ack numbers, offset, flags.
    let Some(ports) = load::<[u8; 4]>(ctx, l4) else {
        return 0;
    };
    if ip.proto == IPPROTO_TCP {
        let Some(t) = load::<[u8; 14]>(ctx, l4) else {
            return 0;
        };
        h.flags = t[13];
    }
    h.pkt = ip.summary(
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    h.l4 = l4 as u16;
    1
}

/// `from_container`'s work; whether it rewrote (a subprogram returns a
/// scalar, see `tc6::decide`), or [`OVER_SHARE`]: a new connection's
/// entries count against the client's balanced share, with IPv4's
/// (`PN_CONN_COUNT`'s `lb`).
/// `svc`: the service entry of `pkt.dst` (`from_container` looked it
/// up); `flags_l4`: TCP's flags and where L4 starts ([`pack`]: five
/// arguments at most).
#[inline(never)]
fn leaving(
    ctx: &TcContext,
    iface: &Iface,
    pkt: &mut Ipv6Summary,
    flags_l4: u32,
    svc: Option<&Service>,
) -> u8 {
    let (flags, l4) = ((flags_l4 >> 16) as u8, flags_l4 as u16);
    if !same6(&pkt.src, &iface.addr6) {
        return 0;
    }
    if svc.is_none() {
        if lb::opens(pkt.proto, flags) {
            // As IPv4's: a connection straight to an address from a port
            // that earlier reached it through a service has its own replies.
            let _ = PN_LB6_CONNS.remove(LbConnKey::reverse_of(pkt, pkt.dst));
        }
        return 0;
    }
    let key = LbConnKey::forward(pkt);
    // A pointer, not a copy (see `lb::from_container`).
    let entry = PN_LB6_CONNS.get_ptr_mut(key);
    // SAFETY: a value of the map, valid for the program run; plain data.
    let known = entry.map(|p| unsafe { *p });
    let vip = pkt.dst;
    let live = |b: Ip6| {
        // SAFETY: as above.
        unsafe { PN_LB6_BACKENDS.get(b) }.is_some_and(|e| same6(&e.vip, &vip))
    };
    let (backend, state, fresh) = match lb::lb_step(pkt, flags, svc, iface.tag, known, live, now_s)
    {
        LbStep::Pass => return 0,
        LbStep::Expire(b) => {
            let _ = PN_LB6_CONNS.remove(key);
            let _ = PN_LB6_CONNS.remove(LbConnKey::reverse_of(pkt, b));
            return 0;
        }
        LbStep::Keep(b) => (b, known.map_or(0, |c| c.state), false),
        LbStep::Renew(b) => (b, 0, true),
        LbStep::Choose(count) => {
            // New entries (not a known connection's, rewritten in place)
            // only within the client's share, as `lb::from_container`.
            let share = PN_CONFIG.get(0).map_or(0, |c| c.conn_share);
            if known.is_none() && !crate::share::take(iface.slot, share, Table::Lb) {
                return OVER_SHARE;
            }
            let slot = SlotKey {
                vip,
                slot: lb::slot_of(pkt),
            };
            // SAFETY: as above.
            let Some(b) = (unsafe { PN_LB6_SLOTS.get(slot) }).copied() else {
                return 0;
            };
            let _ = match count {
                LbCount::New => stat(&vip, &b, 0),
                LbCount::Reset(old) => stat(&vip, &old, 1),
                LbCount::Moved(old) => stat(&vip, &old, 2),
                LbCount::Nothing => 0,
            };
            (b, 0, true)
        }
    };
    // UDP never closes: its forward entry carries when the client last
    // sent, which the agent's sweep ages (written once a second at most),
    // as `lb`'s.
    let udp = pkt.proto != IPPROTO_TCP;
    let closing = if udp {
        lb::udp_stamp(now_s())
    } else if lb::may_close(flags) {
        lb::lb_closing(state, flags, true, now_s())
    } else {
        state
    };
    if fresh {
        // Before any entry of its is written (see `lb::mark_client`).
        crate::lb::mark_client(&pkt.src);
        record(pkt, &backend, closing);
    } else if closing != state {
        if let Some(p) = entry {
            // SAFETY: as above; a u32 store.
            unsafe { (*p).state = closing };
        }
        if !udp {
            set_reverse(pkt, &backend, closing);
        }
    }
    if rewrite(ctx, pkt.proto, l4, IP6_DST, &vip, &backend) != 0 {
        pkt.dst = backend;
        1
    } else {
        0
    }
}

/// Both entries of the connection of `pkt` (client → service address)
/// balanced to `backend`. A subprogram, as the two below: the keys and
/// values on a frame of their own, not on `leaving`'s, which the calls
/// above it leave little room (512 bytes for all).
#[inline(never)]
fn record(pkt: &Ipv6Summary, backend: &Ip6, state: u32) -> u8 {
    let _ = PN_LB6_CONNS.insert(
        LbConnKey::forward(pkt),
        LbConn {
            addr: *backend,
            state,
        },
        0,
    );
    let _ = PN_LB6_CONNS.insert(
        LbConnKey::reverse_of(pkt, *backend),
        LbConn {
            addr: pkt.dst,
            state,
        },
        0,
    );
    1
}

/// The reverse entry of `pkt`'s connection closing, in place.
#[inline(never)]
fn set_reverse(pkt: &Ipv6Summary, backend: &Ip6, state: u32) -> u8 {
    set_state(&LbConnKey::reverse_of(pkt, *backend), state);
    1
}

/// `to_container`'s work; whether it rewrote.
#[inline(never)]
fn entering(ctx: &TcContext, pkt: &Ipv6Summary, l4: u16, flags: u8) -> u8 {
    let key = LbConnKey::reply(pkt);
    let Some(entry) = PN_LB6_CONNS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: a value of the map, valid for the program run; plain data.
    let c = unsafe { *entry };
    if c.closed() && c.expired(now_s()) {
        let _ = PN_LB6_CONNS.remove(key);
        let _ = PN_LB6_CONNS.remove(LbConnKey::forward_of_reply(pkt, c.addr));
        return 0;
    }
    let done = rewrite(ctx, pkt.proto, l4, IP6_SRC, &pkt.src, &c.addr) != 0;
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
#[inline(never)]
fn stat(vip: &Ip6, backend: &Ip6, which: u8) -> u8 {
    let key = LbStatsKey {
        vip: *vip,
        backend: *backend,
    };
    let add = |s: &mut LbStats| match which {
        0 => s.new_conns += 1,
        1 => s.resets += 1,
        _ => s.moved += 1,
    };
    match PN_LB6_STATS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value of this CPU, valid for the program run.
        Some(p) => add(unsafe { &mut *p }),
        None => {
            let mut s = LbStats::default();
            add(&mut s);
            let _ = PN_LB6_STATS.insert(key, s, 0);
        }
    }
    1
}

/// Replaces one address (at `at`) and fixes the L4 checksum by the
/// addresses' difference (they are in the TCP/UDP pseudo-header). False if
/// the packet could not be changed (it then goes on unchanged, and the
/// policy judges it so): 0. Six arguments would not pass to a subprogram
/// (five registers): the protocol and the L4 offset come packed in `l4`
/// (see [`pack`]).
#[inline(never)]
fn rewrite_at(ctx: &TcContext, l4: u32, at: usize, from: &Ip6, to: &Ip6) -> u8 {
    let proto = (l4 >> 16) as u8;
    // Masked: the verifier then knows the offset's bound.
    let l4 = (l4 as usize & 0xffff) & (2 * L4_OFFSET_MASK + 1);
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
        return 0;
    }
    // Size 0 in the flags: `to` is a difference already.
    let flags = BPF_F_PSEUDO_HDR as u64 | mangled;
    let done =
        ctx.l4_csum_replace(csum, 0, diff as u64, flags).is_ok() && ctx.store(at, &b, 0).is_ok();
    done as u8
}

#[inline(always)]
fn rewrite(ctx: &TcContext, proto: u8, l4: u16, at: usize, from: &Ip6, to: &Ip6) -> u8 {
    rewrite_at(ctx, pack(proto, l4), at, from, to)
}

/// A byte (the protocol, TCP's flags) above the L4 offset, in one argument.
#[inline(always)]
fn pack(proto: u8, l4: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(l4)
}
