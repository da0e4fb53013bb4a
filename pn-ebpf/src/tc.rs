//! TC programs on the host side of each container's veth: ingress there is
//! "from the container", egress is "to the container".

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use pn_common::{
    Reason,
    event::{Direction, EventKind},
    maps::{Config, FlowKey, FlowState, Iface},
    policy::{self, ETH_HLEN, FlowCheck, FlowUpdate, IPV4_MIN_HLEN, Ipv4Summary, L3},
};

use crate::{
    maps::{PN_CONFIG, PN_ENDPOINTS, PN_FLOWS, PN_IFACES},
    report::{count, emit, report_drop},
};

#[classifier]
pub fn pn_from_container(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::FromContainer)
}

#[classifier]
pub fn pn_to_container(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::ToContainer)
}

#[inline(always)]
fn handle(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: values are plain data; a concurrent update can at worst give a
    // torn read of a just-replaced entry, which the agent never does in place.
    let iface = unsafe { PN_IFACES.get(ifindex) }.copied();
    let cfg = PN_CONFIG.get(0).copied().unwrap_or_default();
    let (reason, pkt) = decide(ctx, dir, iface.as_ref(), &cfg);
    let len = ctx.len();
    count(iface.map_or(0, |i| i.addr), reason, len);
    if reason.is_drop() {
        report_drop(
            &cfg,
            dir,
            ifindex,
            reason,
            pkt.as_ref().map(|(p, _)| p),
            len,
        );
        TC_ACT_SHOT
    } else {
        if reason == Reason::Forwarded
            && let Some((pkt, flags)) = pkt
        {
            match policy::flow_check(pkt.proto, flags) {
                FlowCheck::Established => {}
                FlowCheck::Opening => {
                    // SAFETY: bpf_ktime_get_ns has no preconditions.
                    new_flow(unsafe { bpf_ktime_get_ns() }, dir, ifindex, &pkt, len);
                }
                FlowCheck::Table => track_flow(dir, ifindex, &pkt, len),
            }
        }
        // Not a final verdict: other TCX programs on the hook still run.
        TC_ACT_PIPE
    }
}

/// Reads a `T` at `off`: straight from the packet when the headers are in
/// its linear part (the usual case), through the helper otherwise.
#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() <= ctx.data_end() {
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).ok()
    }
}

/// The verdict, and for IPv4 the packet summary and its TCP flags.
type Decision = (Reason, Option<(Ipv4Summary, u8)>);

#[inline(always)]
fn decide(ctx: &TcContext, dir: Direction, iface: Option<&Iface>, cfg: &Config) -> Decision {
    if iface.is_none() {
        return (Reason::UnknownInterface, None);
    }
    let Some(ethertype) = load::<u16>(ctx, 12) else {
        return (Reason::Malformed, None);
    };
    match policy::classify_ethertype(u16::from_be(ethertype)) {
        L3::Arp => return (Reason::Arp, None),
        L3::Other => return (Reason::UnsupportedL3, None),
        L3::Ipv4 => {}
    }
    let Some(raw) = load::<[u8; IPV4_MIN_HLEN]>(ctx, ETH_HLEN) else {
        return (Reason::Malformed, None);
    };
    let Some(ip) = policy::parse_ipv4(&raw) else {
        return (Reason::Malformed, None);
    };
    let (mut sport, mut dport, mut flags) = (0, 0, 0);
    if policy::has_ports(ip.proto) && !ip.later_fragment {
        let l4 = ETH_HLEN + (ip.header_len & 0x3c);
        if ip.proto == policy::IPPROTO_TCP {
            // Ports, then sequence and ack numbers, offset, flags.
            let Some(h) = load::<[u8; 14]>(ctx, l4) else {
                return (Reason::Malformed, None);
            };
            sport = u16::from_be_bytes([h[0], h[1]]);
            dport = u16::from_be_bytes([h[2], h[3]]);
            flags = h[13];
        } else {
            let Some(h) = load::<[u8; 4]>(ctx, l4) else {
                return (Reason::Malformed, None);
            };
            sport = u16::from_be_bytes([h[0], h[1]]);
            dport = u16::from_be_bytes([h[2], h[3]]);
        }
    }
    let pkt = Ipv4Summary {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport,
        dport,
    };
    let reason = match dir {
        Direction::FromContainer => {
            // SAFETY: see `handle`.
            let dst = unsafe { PN_ENDPOINTS.get(pkt.dst) };
            policy::from_container(&pkt, iface, dst, cfg)
        }
        _ => {
            // SAFETY: see `handle`.
            let src = unsafe { PN_ENDPOINTS.get(pkt.src) };
            policy::to_container(&pkt, iface, src, cfg)
        }
    };
    (reason, Some((pkt, flags)))
}

#[inline(always)]
fn track_flow(dir: Direction, ifindex: u32, pkt: &Ipv4Summary, len: u32) {
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
        new_flow(now, dir, ifindex, pkt, len);
    }
}

#[inline(always)]
fn new_flow(now: u64, dir: Direction, ifindex: u32, pkt: &Ipv4Summary, len: u32) {
    emit(
        now,
        EventKind::NewFlow,
        Reason::Forwarded,
        dir,
        ifindex,
        Some(pkt),
        len,
    );
}
