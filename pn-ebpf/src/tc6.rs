//! IPv6 on a container's veth, beside `tc`'s IPv4: the same rules and
//! reasons (`policy::from_container` / `to_container` over `Ip6`), the
//! extension headers walked by `policy::parse_ipv6`, neighbour discovery
//! judged by `policy::nd_*`.
//!
//! Remote members go through the tunnel as IPv4's do (`policy` decides:
//! toward one only while the tunnel is up, from one only off its device).
//!
//! The world as IPv4's: `PN_EGRESS_DENY6` (`::/0` while the host has no
//! global IPv6 address) and `PN_CONNS6` (written by the side that opened
//! the connection, so answers and ICMPv6 errors about it come back).
//!
//! Connection and request events (`flows --http`) as IPv4's, from
//! `conn6`.
//!
//! The service balancer is `lb6`'s, around `handle` (`tc::by_family`).

use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use pn_common::{
    Ip6, Reason,
    event::{Direction, EventKind},
    maps::{Config, ConnKey, ConnKind, ConnState, FlowKey, FlowState, Iface},
    policy::{
        self, ETH_HLEN, EXT_PEEK, EdgeLookup, FlowCheck, FlowUpdate, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPV6_HLEN, Ipv6Summary, L4_OFFSET_MASK, ND_PEEK,
    },
};

use crate::{
    maps::{PN_CONFIG, PN_CONNS6, PN_EGRESS_DENY6, PN_ENDPOINTS6, PN_FLOWS6, PN_IFACES},
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
    let decided = match decide(ctx, dir, iface, &mut v) {
        // Called from here rather than from `decide`: the three frames
        // stacked would pass the 512 bytes all calls share.
        NEIGHBOUR_DISCOVERY => nd(ctx, dir, iface),
        JUDGE => judge(ctx, dir, iface, cfg, &mut v),
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
    if matches!(reason, Reason::Forwarded | Reason::Delivered) && v.read {
        crate::conn6::observe(ctx, dir, &v.pkt, v.tcp_flags, v.l4);
    }
    if reason == Reason::Forwarded && v.read {
        match policy::flow_check(v.pkt.proto, v.tcp_flags) {
            FlowCheck::Established => {}
            FlowCheck::Opening => event(&at, EventKind::NewFlow, reason, &v),
            FlowCheck::Table => track_flow(&at, &v),
        }
    }
    // The side that opened a connection with the outside keeps its entry,
    // so the other side's packets are admitted (as `tc`'s).
    let wrote = match (reason, dir) {
        (Reason::Egress, Direction::FromContainer) => track_conn(&at, &v, ConnKind::Egress),
        (Reason::Published, Direction::ToContainer) => track_conn(&at, &v, ConnKind::Published),
        _ => 0,
    };
    // Read, volatile: a result left unused lets the compiler drop it, and
    // the subprogram would return whatever its last register held (a stack
    // pointer, which the verifier refuses).
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&wrote) };
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
    /// Where the L4 header starts; 0 for a later fragment (none).
    l4: u16,
    /// What the decision found in `PN_CONNS6`, if it looked: the entry's
    /// kind (0: none) and what tracking it would do ([`update_code`]; 0:
    /// not looked). Two bytes rather than the entry: `handle`'s frame,
    /// stacked on `nd`'s, has none to spare.
    conn_kind: u8,
    conn_update: u8,
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
            l4: 0,
            conn_kind: 0,
            conn_update: 0,
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

/// The edge's maps, looked up only when `policy` asks (never for traffic
/// between members).
struct Edge<'a> {
    ctx: &'a TcContext,
    dir: Direction,
    pkt: &'a Ipv6Summary,
    /// Where the L4 header starts; 0 for a later fragment (no L4 header).
    l4: usize,
    conn_kind: u8,
    conn_update: u8,
}

impl EdgeLookup<Ip6> for Edge<'_> {
    #[inline(always)]
    fn conn(&mut self) -> Option<ConnKind> {
        let mut update = 0;
        let kind = lookup_conn(self.ctx, self.dir, self.pkt, self.l4, &mut update);
        (self.conn_kind, self.conn_update) = (kind, update);
        ConnKind::from_u8(kind)
    }

    #[inline(always)]
    fn quoted_src(&mut self) -> Option<Ip6> {
        let mut src = [0; 16];
        (self.l4 != 0 && quoted_source(self.ctx, self.l4, &mut src) != 0).then_some(src)
    }

    #[inline(always)]
    fn egress_denied(&mut self, dst: Ip6) -> bool {
        PN_EGRESS_DENY6.get(LpmKey::new(128, dst)).is_some()
    }

    #[inline(always)]
    fn mark(&mut self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx.skb.skb).mark }
    }
}

/// The `PN_CONNS6` entry of `pkt`'s connection, keyed from the container's
/// side (toward a container, an ICMPv6 error belongs to the connection of
/// the packet it quotes): its kind (0: none), and into `update` what
/// tracking it would do now ([`update_code`]).
#[inline(never)]
fn lookup_conn(
    ctx: &TcContext,
    dir: Direction,
    pkt: &Ipv6Summary,
    l4: usize,
    update: &mut u8,
) -> u8 {
    let key = match dir {
        Direction::FromContainer => ConnKey::leaving(pkt),
        _ if pkt.proto == IPPROTO_ICMPV6 && l4 != 0 => match quoted_conn(ctx, l4) {
            Some(k) => k,
            None => ConnKey::entering(pkt),
        },
        _ => ConnKey::entering(pkt),
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // An entry idled out is no connection (see `policy::conn_live`).
    // SAFETY: plain data, see tc.rs.
    let (kind, last) = match unsafe { PN_CONNS6.get(key) } {
        Some(c) => (
            policy::conn_live(c, key.proto, now).map_or(0, |k| k as u8),
            Some(c.last_seen_ns),
        ),
        None => (0, None),
    };
    *update = update_code(policy::flow_update(last, now));
    kind
}

/// A [`FlowUpdate`] as a byte of [`Verdict`] (0 is "not looked").
#[inline(always)]
fn update_code(u: FlowUpdate) -> u8 {
    match u {
        FlowUpdate::New => 1,
        FlowUpdate::Refresh => 2,
        FlowUpdate::Keep => 3,
    }
}

/// The source of the packet an ICMPv6 error quotes, into `src`; whether
/// there is one (a subprogram returns a scalar: the address goes through
/// the caller's frame).
#[inline(never)]
fn quoted_source(ctx: &TcContext, l4: usize, src: &mut Ip6) -> u8 {
    let l4 = l4 & (2 * L4_OFFSET_MASK + 1);
    let Some(icmp) = load::<[u8; 4]>(ctx, l4) else {
        return 0;
    };
    if !policy::icmp6_is_error(icmp[0]) {
        return 0;
    }
    match load::<Ip6>(ctx, l4 + 8 + 8) {
        Some(a) => {
            *src = a;
            1
        }
        None => 0,
    }
}

/// The connection an ICMPv6 error toward a container is about: the packet
/// it quotes left the container (the kernel's NAT has restored its
/// addresses). Only a quoted packet whose first header is its transport's
/// (no extension headers walked twice): anything else matches no entry and
/// fails closed (`not_member`).
#[inline(always)]
fn quoted_conn(ctx: &TcContext, l4: usize) -> Option<ConnKey<Ip6>> {
    // Masked again (it came through `Verdict` as a u16): the verifier
    // then knows every read below stays within a packet's offsets.
    let l4 = l4 & (2 * L4_OFFSET_MASK + 1);
    let icmp = load::<[u8; 4]>(ctx, l4)?;
    if !policy::icmp6_is_error(icmp[0]) {
        return None;
    }
    // The quoted header's fields read one by one, each straight into the
    // key: a copy of the whole header (and of its addresses) cost this
    // frame over 300 bytes, past what the calls above it leave.
    let inner = l4 + 8;
    let proto = load::<[u8; 8]>(ctx, inner)?[6];
    let (mut sport, mut dport) = (0, 0);
    if policy::has_ports(proto) {
        let ports = load::<[u8; 4]>(ctx, inner + IPV6_HLEN)?;
        sport = u16::from_be_bytes([ports[0], ports[1]]);
        dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    Some(ConnKey {
        container: load::<Ip6>(ctx, inner + 8)?,
        remote: load::<Ip6>(ctx, inner + 24)?,
        container_port: sport,
        remote_port: dport,
        proto,
        _pad: [0; 3],
    })
}

/// Reads the headers into `v`; the verdict, as a [`Reason`]'s number (a
/// subprogram returns a scalar: with nothing to return, the compiler may
/// leave a stack pointer in the return register, which the verifier refuses).
#[inline(never)]
fn decide(ctx: &TcContext, dir: Direction, iface: Option<&Iface>, v: &mut Verdict) -> u8 {
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
    v.l4 = if ip.later_fragment { 0 } else { l4 as u16 };
    JUDGE
}

/// The rules (`policy::from_container` / `to_container`) on the headers
/// `decide` read into `v`; the verdict as `decide`'s. A subprogram of its
/// own, called from `handle` after `decide` returned: the connection
/// lookup's frame stacked on `decide`'s would pass the 512 bytes.
#[inline(never)]
fn judge(
    ctx: &TcContext,
    dir: Direction,
    iface: Option<&Iface>,
    cfg: &Config,
    v: &mut Verdict,
) -> u8 {
    let pkt = &v.pkt;
    let mut edge = Edge {
        ctx,
        dir,
        pkt,
        l4: usize::from(v.l4),
        conn_kind: 0,
        conn_update: 0,
    };
    let reason = match dir {
        Direction::FromContainer => {
            // SAFETY: plain data, see tc.rs.
            let dst = unsafe { PN_ENDPOINTS6.get(pkt.dst) };
            policy::from_container(pkt, iface, dst, cfg, &mut edge)
        }
        _ => {
            // SAFETY: plain data, see tc.rs.
            let src = unsafe { PN_ENDPOINTS6.get(pkt.src) };
            // SAFETY: the context pointer is valid for the whole program run.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            policy::to_container(pkt, ingress, iface, src, cfg, &mut edge)
        }
    };
    (v.conn_kind, v.conn_update) = (edge.conn_kind, edge.conn_update);
    reason as u8
}

/// What `decide` returns when the headers are read and the rules are to
/// judge them (`judge`): no reason's number.
const JUDGE: u8 = u8::MAX - 1;

/// What `decide` returns for neighbour discovery, which `nd` judges: no
/// reason's number.
const NEIGHBOUR_DISCOVERY: u8 = u8::MAX;
const _: () = assert!(Reason::COUNT < JUDGE as usize);

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

/// `tc::track_conn` over `PN_CONNS6`: records (at most once a second) a
/// connection with the outside from the side that opened it. Whether it
/// wrote, as a number: a subprogram returns a scalar (see `decide`).
#[inline(never)]
fn track_conn(at: &PacketCtx, v: &Verdict, kind: ConnKind) -> u8 {
    let key = match at.dir {
        Direction::FromContainer => ConnKey::leaving(&v.pkt),
        _ => ConnKey::entering(&v.pkt),
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (known, update) = if v.conn_update != 0 {
        (v.conn_kind, v.conn_update)
    } else {
        // SAFETY: plain data, see tc.rs.
        match unsafe { PN_CONNS6.get(key) } {
            Some(c) => (
                c.kind,
                update_code(policy::flow_update(Some(c.last_seen_ns), now)),
            ),
            None => (0, update_code(FlowUpdate::New)),
        }
    };
    if update == update_code(FlowUpdate::Keep) && known == kind as u8 {
        return 0;
    }
    let state = ConnState {
        last_seen_ns: now,
        kind: kind as u8,
        _pad: [0; 7],
    };
    let _ = PN_CONNS6.insert(key, state, 0);
    if update == update_code(FlowUpdate::New) {
        let reason = match kind {
            ConnKind::Egress => Reason::Egress,
            ConnKind::Published => Reason::Published,
        };
        event(at, EventKind::NewFlow, reason, v);
    }
    1
}
