//! IPv6 on a container's veth, beside `tc`'s IPv4: the same rules and
//! reasons (`policy::from_container` / `to_container` over `Ip6`), the
//! extension headers walked by `policy::parse_ipv6`, neighbour discovery
//! judged by `policy::nd_*`.
//!
//! Remote members go through the tunnel as IPv4's do (`policy` decides:
//! toward one only while the tunnel is up, from one only off its device).
//!
//! Not carried for IPv6 yet, and failing closed rather than open: the
//! world (no `PN_CONNS6` nor masquerade: out is `egress_denied`, unsolicited
//! in is `not_member`), the service balancer, and connection and request
//! events (`flows --http`).

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use pn_common::{
    Ip6, Reason,
    event::{Direction, EventKind},
    maps::{Config, ConnKind, FlowKey, FlowState, Iface},
    policy::{
        self, ETH_HLEN, EXT_PEEK, EdgeLookup, FlowCheck, FlowUpdate, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPV6_HLEN, Ipv6Summary, L4_OFFSET_MASK, ND_PEEK,
    },
};

use crate::{
    maps::{PN_CONFIG, PN_ENDPOINTS6, PN_FLOWS6, PN_IFACES},
    packet::load,
    report::{PacketCtx, count, count_at, report},
};

/// The program's verdict on an IPv6 frame (counted and reported here).
/// This and the steps below are subprograms (`inline(never)`), each with
/// its own stack frame: inlined into one, IPv6's 16-byte addresses in
/// every summary, key and event overflowed the 512 bytes of a frame.
#[inline(never)]
pub fn handle(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain data, see tc.rs.
    let iface = unsafe { PN_IFACES.get(ifindex) };
    let slot = iface.map_or(0, |i| i.slot);
    // Read in place: a copy of its IPv6 pool would cost a frame of bytes
    // (an `Ip6` has no alignment, every copy goes byte by byte). The array
    // always has its element; without it, fail closed.
    let Some(cfg) = PN_CONFIG.get(0) else {
        count(slot, Reason::UnknownInterface, ctx.len());
        return TC_ACT_SHOT;
    };
    let mut v = Verdict::default();
    let decided = match decide(ctx, dir, iface, cfg, &mut v) {
        // Called from here rather than from `decide`: the three frames
        // stacked would pass the 512 bytes all calls share.
        NEIGHBOUR_DISCOVERY => nd(ctx, dir, iface),
        r => r,
    };
    let at = PacketCtx {
        cfg,
        dir,
        ifindex,
        len: ctx.len(),
    };
    // Read back as a byte, volatile: the compiler trusts a reason it wrote
    // to be in range and would drop the counter index's check, which the
    // verifier needs.
    // SAFETY: a read of a local.
    let raw = unsafe { core::ptr::read_volatile(&decided) };
    let reason = Reason::from_u8(raw).unwrap_or(Reason::Malformed);
    count_at(slot, raw, at.len);
    if reason.is_drop() {
        event(&at, EventKind::Drop, reason, &v);
        return TC_ACT_SHOT;
    }
    if reason == Reason::Forwarded && v.read {
        match policy::flow_check(v.pkt.proto, v.tcp_flags) {
            FlowCheck::Established => {}
            FlowCheck::Opening => event(&at, EventKind::NewFlow, reason, &v),
            FlowCheck::Table => track_flow(&at, &v),
        }
    }
    TC_ACT_PIPE
}

/// What `decide` found. Plain fields, no `Option` around the summary (see
/// `tc::Looked`).
struct Verdict {
    /// The headers were read: `pkt` holds them.
    read: bool,
    pkt: Ipv6Summary,
    /// TCP's flags; 0 when not TCP.
    tcp_flags: u8,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            read: false,
            pkt: Ipv6Summary {
                src: [0; 16],
                dst: [0; 16],
                proto: 0,
                sport: 0,
                dport: 0,
            },
            tcp_flags: 0,
        }
    }
}

/// An event about `v`'s packet (see `report`).
#[inline(never)]
fn event(at: &PacketCtx, kind: EventKind, reason: Reason, v: &Verdict) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    report(at, now, kind, reason, v.read.then_some(&v.pkt));
}

/// The world's side of the rules, for IPv6 today: no connection is known
/// and every destination outside the pool is denied.
struct Closed<'a> {
    ctx: &'a TcContext,
}

impl EdgeLookup<Ip6> for Closed<'_> {
    #[inline(always)]
    fn conn(&mut self) -> Option<ConnKind> {
        None
    }

    #[inline(always)]
    fn egress_denied(&mut self, _: Ip6) -> bool {
        true
    }

    #[inline(always)]
    fn mark(&mut self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx.skb.skb).mark }
    }
}

/// Reads the headers into `v`; the verdict, as a [`Reason`]'s number (a
/// subprogram returns a scalar: with nothing to return, the compiler may
/// leave a stack pointer in the return register, which the verifier refuses).
#[inline(never)]
fn decide(
    ctx: &TcContext,
    dir: Direction,
    iface: Option<&Iface>,
    cfg: &Config,
    v: &mut Verdict,
) -> u8 {
    const MALFORMED: u8 = Reason::Malformed as u8;
    if iface.is_none() {
        return Reason::UnknownInterface as u8;
    }
    let Some(raw) = load::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN) else {
        return MALFORMED;
    };
    // Offsets masked: the verifier then knows each read's bound.
    let peek = |off: usize| load::<[u8; EXT_PEEK]>(ctx, ETH_HLEN + (off & L4_OFFSET_MASK));
    let Some(p) = policy::parse_ipv6(&raw, peek) else {
        return MALFORMED;
    };
    let ip = p.ip;
    let l4 = ETH_HLEN + (ip.header_len & L4_OFFSET_MASK);
    v.pkt = ip.summary(0, 0);
    if !ip.later_fragment {
        if ip.proto == IPPROTO_ICMPV6 {
            let Some(icmp) = load::<[u8; 4]>(ctx, l4) else {
                return MALFORMED;
            };
            let link = policy::is_nd(icmp[0])
                || (policy::is_mld(icmp[0]) && matches!(dir, Direction::FromContainer));
            if link {
                v.read = true;
                return NEIGHBOUR_DISCOVERY;
            }
        } else if ip.proto == IPPROTO_TCP {
            // Ports, sequence and ack numbers, offset, flags.
            let Some(h) = load::<[u8; 14]>(ctx, l4) else {
                return MALFORMED;
            };
            v.pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            v.pkt.dport = u16::from_be_bytes([h[2], h[3]]);
            v.tcp_flags = h[13];
        } else if policy::has_ports(ip.proto) {
            let Some(h) = load::<[u8; 4]>(ctx, l4) else {
                return MALFORMED;
            };
            v.pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            v.pkt.dport = u16::from_be_bytes([h[2], h[3]]);
        }
    }
    v.read = true;
    let mut edge = Closed { ctx };
    let reason = match dir {
        Direction::FromContainer => {
            // SAFETY: plain data, see tc.rs.
            let dst = unsafe { PN_ENDPOINTS6.get(v.pkt.dst) };
            policy::from_container(&v.pkt, iface, dst, cfg, &mut edge)
        }
        _ => {
            // SAFETY: plain data, see tc.rs.
            let src = unsafe { PN_ENDPOINTS6.get(v.pkt.src) };
            // SAFETY: the context pointer is valid for the whole program run.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            policy::to_container(&v.pkt, ingress, iface, src, cfg, &mut edge)
        }
    };
    reason as u8
}

/// What `decide` returns for neighbour discovery, which `nd` judges: no
/// reason's number.
const NEIGHBOUR_DISCOVERY: u8 = u8::MAX;
const _: () = assert!(Reason::COUNT < NEIGHBOUR_DISCOVERY as usize);

/// Neighbour and listener discovery (`policy::nd_*`, `mld_*`), the headers walked again (a
/// message of the link, rare: its frame is what matters); the verdict as
/// `decide`'s.
#[inline(never)]
fn nd(ctx: &TcContext, dir: Direction, iface: Option<&Iface>) -> u8 {
    const MALFORMED: u8 = Reason::Malformed as u8;
    let Some(raw) = load::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN) else {
        return MALFORMED;
    };
    let peek = |off: usize| load::<[u8; EXT_PEEK]>(ctx, ETH_HLEN + (off & L4_OFFSET_MASK));
    let Some(p) = policy::parse_ipv6(&raw, peek) else {
        return MALFORMED;
    };
    let p = &p;
    let l4 = ETH_HLEN + (p.ip.header_len & L4_OFFSET_MASK);
    let Some(icmp) = load::<[u8; 4]>(ctx, l4) else {
        return MALFORMED;
    };
    if policy::is_mld(icmp[0]) {
        // Only from a container: toward one, the host's own are the
        // gateway's ICMPv6.
        return policy::mld_from_container(p, iface) as u8;
    }
    let len = p.end.saturating_sub(p.ip.header_len);
    // No message reads past 48 bytes (a redirect's fixed part and one option).
    let msg = policy::parse_nd(len, |at| load::<[u8; ND_PEEK]>(ctx, l4 + (at & 0x3f)));
    match dir {
        Direction::FromContainer => {
            let Some(eth_src) = load::<[u8; 6]>(ctx, 6) else {
                return MALFORMED;
            };
            policy::nd_from_container(p, msg.as_ref(), eth_src, iface) as u8
        }
        _ => {
            // SAFETY: the context pointer is valid for the whole program run.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            policy::nd_to_container(p, msg.as_ref(), ingress, iface) as u8
        }
    }
}

/// `tc::track_flow` over `PN_FLOWS6`.
#[inline(never)]
fn track_flow(at: &PacketCtx, v: &Verdict) {
    let pkt = &v.pkt;
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    // SAFETY: plain data, see tc.rs.
    let last = unsafe { PN_FLOWS6.get(key) }.map(|f| f.last_seen_ns);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let update = policy::flow_update(last, now);
    if update == FlowUpdate::Keep {
        return;
    }
    let _ = PN_FLOWS6.insert(key, FlowState { last_seen_ns: now }, 0);
    if update == FlowUpdate::New {
        event(at, EventKind::NewFlow, Reason::Forwarded, v);
    }
}
