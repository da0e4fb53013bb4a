//! TC programs on the host side of each container's veth: ingress there is
//! "from the container", egress is "to the container".

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use pn_common::{
    Ip4, Reason,
    event::{Direction, EventKind, FlowEvent},
    maps::{Config, Counter, CounterKey, FlowKey, FlowState, Iface},
    policy::{self, ETH_HLEN, FlowUpdate, IPV4_MIN_HLEN, Ipv4Summary, L3},
};

use crate::maps::{
    PN_CONFIG, PN_COUNTERS, PN_ENDPOINTS, PN_EVBUDGET, PN_EVENTS, PN_FLOWS, PN_IFACES,
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
    let iface = unsafe { PN_IFACES.get(&ifindex) }.copied();
    let cfg = PN_CONFIG.get(0).copied().unwrap_or_default();
    let (reason, pkt) = decide(ctx, dir, iface.as_ref(), &cfg);
    let len = ctx.len();
    count(iface.map_or(0, |i| i.addr), reason, len);
    if reason.is_drop() {
        report_drop(&cfg, dir, ifindex, reason, pkt.as_ref(), len);
        TC_ACT_SHOT
    } else {
        if reason == Reason::Forwarded
            && let Some(pkt) = pkt
        {
            track_flow(dir, ifindex, &pkt, len);
        }
        // Not a final verdict: other TCX programs on the hook still run.
        TC_ACT_PIPE
    }
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    dir: Direction,
    iface: Option<&Iface>,
    cfg: &Config,
) -> (Reason, Option<Ipv4Summary>) {
    if iface.is_none() {
        return (Reason::UnknownInterface, None);
    }
    let Ok(ethertype) = ctx.load::<u16>(12) else {
        return (Reason::Malformed, None);
    };
    match policy::classify_ethertype(u16::from_be(ethertype)) {
        L3::Arp => return (Reason::Arp, None),
        L3::Other => return (Reason::UnsupportedL3, None),
        L3::Ipv4 => {}
    }
    let Ok(raw) = ctx.load::<[u8; IPV4_MIN_HLEN]>(ETH_HLEN) else {
        return (Reason::Malformed, None);
    };
    let Some(ip) = policy::parse_ipv4(&raw) else {
        return (Reason::Malformed, None);
    };
    let (mut sport, mut dport) = (0, 0);
    if policy::has_ports(ip.proto) && !ip.later_fragment {
        let Ok(ports) = ctx.load::<[u8; 4]>(ETH_HLEN + ip.header_len) else {
            return (Reason::Malformed, None);
        };
        sport = u16::from_be_bytes([ports[0], ports[1]]);
        dport = u16::from_be_bytes([ports[2], ports[3]]);
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
            let dst = unsafe { PN_ENDPOINTS.get(&pkt.dst) };
            policy::from_container(&pkt, iface, dst, cfg)
        }
        _ => {
            // SAFETY: see `handle`.
            let src = unsafe { PN_ENDPOINTS.get(&pkt.src) };
            policy::to_container(&pkt, iface, src, cfg)
        }
    };
    (reason, Some(pkt))
}

#[inline(always)]
fn count(endpoint: Ip4, reason: Reason, bytes: u32) {
    let key = CounterKey {
        endpoint,
        reason: reason as u32,
    };
    for _ in 0..2 {
        if let Some(c) = PN_COUNTERS.get_ptr_mut(&key) {
            // SAFETY: per-CPU value, only this CPU writes it while we run.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += u64::from(bytes);
            }
            return;
        }
        let first = Counter {
            packets: 1,
            bytes: u64::from(bytes),
        };
        // Another CPU may create the row between our lookup and insert: then
        // the insert fails and the second lookup finds it.
        if PN_COUNTERS
            .insert(&key, &first, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return;
        }
    }
}

#[inline(always)]
fn report_drop(
    cfg: &Config,
    dir: Direction,
    ifindex: u32,
    reason: Reason,
    pkt: Option<&Ipv4Summary>,
    len: u32,
) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(budget) = PN_EVBUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while we run.
    if !unsafe { (*budget).admit(now, cfg.drop_events_per_sec) } {
        return;
    }
    emit(now, EventKind::Drop, reason, dir, ifindex, pkt, len);
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
    let last = unsafe { PN_FLOWS.get(&key) }.map(|f| f.last_seen_ns);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let update = policy::flow_update(last, now);
    if update == FlowUpdate::Keep {
        return;
    }
    let _ = PN_FLOWS.insert(&key, &FlowState { last_seen_ns: now }, 0);
    if update == FlowUpdate::New {
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
}

#[inline(always)]
fn emit(
    now: u64,
    kind: EventKind,
    reason: Reason,
    dir: Direction,
    ifindex: u32,
    pkt: Option<&Ipv4Summary>,
    len: u32,
) {
    let mut ev = FlowEvent {
        ts_ns: now,
        ifindex,
        bytes: len,
        kind: kind as u8,
        reason: reason as u8,
        direction: dir as u8,
        ..FlowEvent::default()
    };
    if let Some(p) = pkt {
        ev.src = p.src;
        ev.dst = p.dst;
        ev.sport = p.sport;
        ev.dport = p.dport;
        ev.proto = p.proto;
    }
    // A full ring buffer loses the event, never the packet's verdict.
    let _ = PN_EVENTS.output::<FlowEvent>(&ev, 0);
}
