//! TC programs on the host side of each container's veth: ingress there is
//! "from the container", egress is "to the container".

use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use pn_common::{
    Ip4, Reason,
    event::{Direction, EventKind},
    maps::{Config, ConnKey, ConnKind, ConnState, FlowKey, FlowState, Iface},
    policy::{
        self, ARP_LEN, ETH_HLEN, EdgeLookup, FlowCheck, FlowUpdate, ICMP_HLEN, IPV4_MIN_HLEN,
        Ipv4Summary, L3,
    },
};

use crate::{
    conn::Seg,
    lb::Balanced,
    maps::{PN_CONFIG, PN_CONNS, PN_EGRESS_DENY, PN_FLOWS},
    memo::{self, Open},
    packet::load,
    report::{PacketCtx, count, report, report_drop},
    share::Table,
};

#[classifier]
pub fn pn_from_container(ctx: TcContext) -> i32 {
    by_family(&ctx, Direction::FromContainer)
}

#[classifier]
pub fn pn_to_container(ctx: TcContext) -> i32 {
    by_family(&ctx, Direction::ToContainer)
}

/// IPv6 to `tc6`, the rest here. Each in a function of its own (a BPF
/// subprogram): inlined together, their locals did not fit one 512-byte
/// stack frame; called, each has its own.
#[inline(always)]
fn by_family(ctx: &TcContext, dir: Direction) -> i32 {
    // Read once, handed on: `decide` classifies it.
    let ethertype = load::<u16>(ctx, 12);
    if ethertype == Some(policy::ETH_P_IPV6.to_be()) {
        // The IPv6 service balancer around the rules (`lb6`), as `lb`'s in `decide`.
        crate::lb6::around(ctx, dir, || crate::tc6::handle(ctx, dir))
    } else {
        handle(ctx, dir, ethertype.map_or(NO_ETHERTYPE, u32::from))
    }
}

/// `handle`'s ethertype when the frame has none (a scalar argument: an
/// `Option` would pass through the stack).
const NO_ETHERTYPE: u32 = u32::MAX;

#[inline(never)]
fn handle(ctx: &TcContext, dir: Direction, ethertype: u32) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The interface and the endpoints through this CPU's memo (`memo`):
    // no hash lookup for a flow it has just seen.
    let memo = memo::open();
    // (SAFETY of every lookup: values are plain data; a concurrent update
    // can at worst give a torn read of a just-replaced entry, which the
    // agent never does in place.)
    let iface = memo::iface(memo, ifindex);
    // Read in place, not copied (64 bytes a packet). The array always has
    // its element; without it, fail closed.
    let Some(cfg) = PN_CONFIG.get(0) else {
        count(
            iface.map_or(0, |i| i.slot),
            Reason::UnknownInterface,
            ctx.len(),
        );
        return TC_ACT_SHOT;
    };
    let (mut reason, pkt, conn, both_local) =
        decide(ctx, dir, iface.as_ref(), cfg, ethertype, memo);
    // The side that opened a connection with the outside keeps its entry,
    // so the other side's packets are admitted: the entry to write, the
    // entry there now (zeroed if none).
    let mut track = match (&pkt, reason, dir) {
        (Some((p, _)), Reason::Egress, Direction::FromContainer) => {
            Some((ConnKey::leaving(p), conn.entry, ConnKind::Egress))
        }
        (Some((p, _)), Reason::Published, Direction::ToContainer) if !conn.done => {
            let key = ConnKey::entering(p);
            // SAFETY: see `handle`.
            let known = unsafe { PN_CONNS.get(key) }.copied().unwrap_or_default();
            Some((key, known, ConnKind::Published))
        }
        _ => None,
    };
    // A new entry only within the container's share (`policy::share`).
    if let (Some((_, known, _)), Some(i)) = (&track, &iface)
        && known.kind == 0
        && !crate::share::take(i.slot, cfg.conn_share, Table::Conns)
    {
        reason = Reason::ConnQuota;
        track = None;
    }
    let at = PacketCtx {
        cfg,
        dir,
        ifindex,
        len: ctx.len(),
    };
    count(iface.map_or(0, |i| i.slot), reason, at.len);
    if reason.is_drop() {
        report_drop(&at, reason, pkt.as_ref().map(|(p, _)| p));
        TC_ACT_SHOT
    } else {
        if let Some((pkt, seg)) = pkt {
            if matches!(reason, Reason::Forwarded | Reason::Delivered) {
                crate::conn::observe(ctx, dir, ifindex, &pkt, &seg, both_local);
            }
            let flags = seg.flags;
            if reason == Reason::Forwarded {
                match policy::flow_check(pkt.proto, flags) {
                    FlowCheck::Established => {}
                    FlowCheck::Opening => {
                        // SAFETY: bpf_ktime_get_ns has no preconditions.
                        let now = unsafe { bpf_ktime_get_ns() };
                        new_flow(&at, now, Reason::Forwarded, &pkt);
                    }
                    FlowCheck::Table => track_flow(&at, &pkt),
                }
            }
            if let Some((key, known, kind)) = track {
                track_conn(&at, &pkt, flags, key, known, kind);
            }
        }
        // Not a final verdict: other TCX programs on the hook still run.
        TC_ACT_PIPE
    }
}

/// The verdict; for IPv4 the packet summary and its TCP segment (flags 0
/// when not TCP); what the decision found in the connection table, if it
/// looked; whether the packet's other end is a member on this host (the
/// endpoint lookup's answer, for tracking).
type Decision = (Reason, Option<(Ipv4Summary, Seg)>, Looked, bool);

/// A connection-table lookup made by the decision. Plain fields, no
/// `Option` around the entry: an absent `Option`'s payload is undefined, and
/// the verifier refuses a register the compiler left undefined.
#[derive(Clone, Copy)]
struct Looked {
    done: bool,
    /// Zeroed (kind 0) when the entry is absent.
    entry: ConnState,
}

impl Looked {
    const NOT: Looked = Looked {
        done: false,
        entry: ConnState {
            last_seen_ns: 0,
            kind: 0,
            closing: 0,
            _pad: [0; 6],
        },
    };
}

/// The edge's maps, looked up only when `policy` asks (never for traffic
/// between members), remembering the connection entry for the tracking
/// that follows the verdict.
struct Edge<'a> {
    ctx: &'a TcContext,
    dir: Direction,
    pkt: Ipv4Summary,
    /// Where the L4 header starts.
    l4: usize,
    later_fragment: bool,
    conn: Looked,
}

impl Edge<'_> {
    /// The connection an ICMP error toward a container is about: the packet
    /// it quotes left the container (the kernel's NAT has already restored
    /// its addresses).
    #[inline(always)]
    fn quoted_conn(&self) -> Option<ConnKey> {
        if self.later_fragment {
            return None;
        }
        let l4 = self.l4;
        // The whole ICMP header, not its first byte: a one-byte bound check
        // compiles to a comparison the verifier draws no range from.
        let icmp = load::<[u8; ICMP_HLEN]>(self.ctx, l4)?;
        if !policy::icmp_is_error(icmp[0]) {
            return None;
        }
        let inner_at = l4 + ICMP_HLEN;
        let inner = policy::parse_ipv4(&load::<[u8; IPV4_MIN_HLEN]>(self.ctx, inner_at)?)?;
        let (mut sport, mut dport) = (0, 0);
        if policy::has_ports(inner.proto) && !inner.later_fragment {
            let ports = load::<[u8; 4]>(self.ctx, inner_at + (inner.header_len & 0x3c))?;
            sport = u16::from_be_bytes([ports[0], ports[1]]);
            dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        Some(ConnKey::leaving(&Ipv4Summary {
            src: inner.src,
            dst: inner.dst,
            proto: inner.proto,
            sport,
            dport,
        }))
    }
}

impl EdgeLookup for Edge<'_> {
    #[inline(always)]
    fn conn(&mut self) -> Option<ConnKind> {
        let key = match self.dir {
            Direction::FromContainer => ConnKey::leaving(&self.pkt),
            _ if self.pkt.proto == policy::IPPROTO_ICMP => match self.quoted_conn() {
                Some(k) => k,
                None => ConnKey::entering(&self.pkt),
            },
            _ => ConnKey::entering(&self.pkt),
        };
        // SAFETY: see `handle`.
        let entry = unsafe { PN_CONNS.get(key) }.copied().unwrap_or_default();
        self.conn = Looked { done: true, entry };
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        policy::conn_live(&entry, key.proto, now)
    }

    #[inline(always)]
    fn quoted_src(&mut self) -> Option<Ip4> {
        self.quoted_conn().map(|k| k.container)
    }

    #[inline(always)]
    fn egress_denied(&mut self, dst: Ip4) -> bool {
        PN_EGRESS_DENY.get(LpmKey::new(32, dst)).is_some()
    }

    #[inline(always)]
    fn mark(&mut self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx.skb.skb).mark }
    }
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    dir: Direction,
    iface: Option<&Iface>,
    cfg: &Config,
    ethertype: u32,
    memo: Option<Open>,
) -> Decision {
    if iface.is_none() {
        return (Reason::UnknownInterface, None, Looked::NOT, false);
    }
    if ethertype == NO_ETHERTYPE {
        return (Reason::Malformed, None, Looked::NOT, false);
    }
    match policy::classify_ethertype(u16::from_be(ethertype as u16)) {
        L3::Arp => return (arp(ctx, dir, iface), None, Looked::NOT, false),
        // IPv6 went to `tc6` before this.
        L3::Ipv6 | L3::Other => return (Reason::UnsupportedL3, None, Looked::NOT, false),
        L3::Ipv4 => {}
    }
    let Some(raw) = load::<[u8; IPV4_MIN_HLEN]>(ctx, ETH_HLEN) else {
        return (Reason::Malformed, None, Looked::NOT, false);
    };
    let Some(ip) = policy::parse_ipv4(&raw) else {
        return (Reason::Malformed, None, Looked::NOT, false);
    };
    let (mut sport, mut dport, mut seg) = (0, 0, Seg::NONE);
    let l4 = ETH_HLEN + (ip.header_len & 0x3c);
    if policy::has_ports(ip.proto) && !ip.later_fragment {
        if ip.proto == policy::IPPROTO_TCP {
            // Ports, then sequence and ack numbers, offset, flags.
            let Some(h) = load::<[u8; 14]>(ctx, l4) else {
                return (Reason::Malformed, None, Looked::NOT, false);
            };
            sport = u16::from_be_bytes([h[0], h[1]]);
            dport = u16::from_be_bytes([h[2], h[3]]);
            // Parsed here once so that tracking reads nothing again.
            let doff = usize::from(h[12] >> 4) << 2;
            let total = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
            seg = Seg {
                flags: h[13],
                seq_ack: [h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]],
                at: (l4 + doff) as u16,
                len: total.saturating_sub((ip.header_len & 0x3c) + doff) as u16,
            };
        } else {
            let Some(h) = load::<[u8; 4]>(ctx, l4) else {
                return (Reason::Malformed, None, Looked::NOT, false);
            };
            sport = u16::from_be_bytes([h[0], h[1]]);
            dport = u16::from_be_bytes([h[2], h[3]]);
        }
    }
    let mut pkt = Ipv4Summary {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport,
        dport,
    };
    // Leaving: the destination's endpoint first. Service addresses are
    // never a container's (the agent's `check_services`), so a member
    // destination costs no service lookup; only a miss asks the balancer
    // (`lb`), then the endpoint of the backend it chose.
    let mut dst = None;
    if let Direction::FromContainer = dir {
        dst = memo::endpoint(memo, pkt.dst);
        if let (Some(i), false) = (iface, ip.later_fragment) {
            let member = dst.is_some();
            match crate::lb::from_container(ctx, i, &mut pkt, l4, seg.flags, cfg.conn_share, member)
            {
                Balanced::Over => {
                    return (Reason::ConnQuota, Some((pkt, seg)), Looked::NOT, false);
                }
                Balanced::To => dst = memo::endpoint(memo, pkt.dst),
                Balanced::Not => {}
            }
        }
    }
    let mut edge = Edge {
        ctx,
        dir,
        pkt,
        l4,
        later_fragment: ip.later_fragment,
        conn: Looked::NOT,
    };
    let (reason, other) = match dir {
        Direction::FromContainer => (
            policy::from_container(&pkt, iface, dst.as_ref(), cfg, &mut edge),
            dst,
        ),
        _ => {
            let src = memo::endpoint(memo, pkt.src);
            // SAFETY: the context pointer is valid for the whole program run.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            let r = policy::to_container(&pkt, ingress, iface, src.as_ref(), cfg, &mut edge);
            if r == Reason::Delivered && !ip.later_fragment {
                crate::lb::to_container(ctx, &pkt, l4, seg.flags);
            }
            (r, src)
        }
    };
    let both_local = other.is_some_and(|e| e.ifindex != 0);
    (reason, Some((pkt, seg)), edge.conn, both_local)
}

/// The ARP rules (`policy::arp_*`) on an ARP frame.
#[inline(always)]
fn arp(ctx: &TcContext, dir: Direction, iface: Option<&Iface>) -> Reason {
    let msg = load::<[u8; ARP_LEN]>(ctx, ETH_HLEN).and_then(|b| policy::parse_arp(&b));
    match dir {
        Direction::FromContainer => {
            let Some(eth_src) = load::<[u8; 6]>(ctx, 6) else {
                return Reason::Malformed;
            };
            policy::arp_from_container(msg.as_ref(), eth_src, iface)
        }
        _ => {
            // SAFETY: the context pointer is valid for the whole program run.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            policy::arp_to_container(msg.as_ref(), ingress, iface)
        }
    }
}

#[inline(always)]
fn track_flow(at: &PacketCtx, pkt: &Ipv4Summary) {
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    // SAFETY: see `handle`.
    let last = unsafe { PN_FLOWS.get(key) }.map(|f| f.last_seen_ns);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let update = policy::flow_update(last, now);
    if update == FlowUpdate::Keep {
        return;
    }
    let _ = PN_FLOWS.insert(key, FlowState { last_seen_ns: now }, 0);
    if update == FlowUpdate::New {
        new_flow(at, now, Reason::Forwarded, pkt);
    }
}

/// Records (at most once a second, and on its opener's SYN, FIN or reset)
/// a connection with the outside from the side that opened it; `known` is
/// its current entry (zeroed if none), `flags` the segment's TCP flags.
#[inline(always)]
fn track_conn(
    at: &PacketCtx,
    pkt: &Ipv4Summary,
    flags: u8,
    key: ConnKey,
    known: ConnState,
    kind: ConnKind,
) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let last = (known.kind != 0).then_some(known.last_seen_ns);
    let update = policy::flow_update(last, now);
    let closing = policy::conn_closing(known.closing, flags);
    if update == FlowUpdate::Keep && known.kind == kind as u8 && known.closing == closing {
        return;
    }
    let state = ConnState {
        last_seen_ns: now,
        kind: kind as u8,
        closing,
        _pad: [0; 6],
    };
    let _ = PN_CONNS.insert(key, state, 0);
    if update == FlowUpdate::New {
        let reason = match kind {
            ConnKind::Egress => Reason::Egress,
            ConnKind::Published => Reason::Published,
        };
        new_flow(at, now, reason, pkt);
    }
}

/// A new flow's event, under the same per-CPU budget as drops (its own
/// element): a container opening flows as fast as it can costs the agent a
/// bounded rate, the rest is counted as suppressed.
#[inline(always)]
fn new_flow(at: &PacketCtx, now: u64, reason: Reason, pkt: &Ipv4Summary) {
    report(at, now, EventKind::NewFlow, reason, Some(pkt));
}
