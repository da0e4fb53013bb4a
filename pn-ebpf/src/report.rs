//! Counting and reporting, shared by every program: one counter row per
//! endpoint and reason, drop events under a per-CPU budget, flow events.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use pn_common::{
    Ip4, Reason,
    event::{Direction, EventKind, FlowEvent},
    maps::{Config, Counter, CounterKey},
    policy::Ipv4Summary,
};

use crate::maps::{PN_COUNTERS, PN_EVBUDGET, PN_EVENTS};

#[inline(always)]
pub fn count(endpoint: Ip4, reason: Reason, bytes: u32) {
    let key = CounterKey {
        endpoint,
        reason: reason as u32,
    };
    for _ in 0..2 {
        if let Some(c) = PN_COUNTERS.get_ptr_mut(key) {
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
            .insert(key, first, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return;
        }
    }
}

#[inline(always)]
pub fn report_drop(
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
pub fn emit(
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
    // A full ring buffer loses the event (counted), never the packet's verdict.
    if PN_EVENTS.output::<FlowEvent>(&ev, 0).is_err() {
        crate::conn::lost(pn_common::conn::LostKind::Flow);
    }
}
