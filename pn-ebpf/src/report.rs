//! Counting and reporting, shared by every program: one counter row per
//! interface slot and reason, events under a per-CPU budget per kind.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use pn_common::{
    Reason,
    event::{Direction, EventKind, FlowEvent},
    maps::{Config, EventBudget},
    policy::PacketSummary,
};

use crate::maps::{PN_COUNTERS, PN_EVBUDGET, PN_EVENTS};

/// Counts a packet in row `slot` (an `Iface::slot`; 0: the host's row).
#[inline(always)]
pub fn count(slot: u16, reason: Reason, bytes: u32) {
    count_at(slot, reason as u8, bytes);
}

/// `count` by the reason's number: for a reason read back from memory,
/// whose range the compiler takes for granted (and drops the index's
/// check the verifier needs) when it has the type `Reason`.
#[inline(always)]
pub fn count_at(slot: u16, reason: u8, bytes: u32) {
    // An array: the lookup is an inlined bounds check and index.
    let Some(row) = PN_COUNTERS.get_ptr_mut(u32::from(slot)) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    if let Some(c) = unsafe { (*row).by_reason.get_mut(usize::from(reason)) } {
        c.packets += 1;
        c.bytes += u64::from(bytes);
    }
}

/// One packet as a hook saw it: what each of its events says besides its
/// headers. On the stack, and every user is inlined: it costs no more than
/// the fields passed one by one.
#[derive(Clone, Copy)]
pub struct PacketCtx<'a> {
    pub cfg: &'a Config,
    pub dir: Direction,
    pub ifindex: u32,
    /// Its length in bytes.
    pub len: u32,
}

#[inline(always)]
pub fn report_drop<A: Copy + Default>(
    at: &PacketCtx,
    reason: Reason,
    pkt: Option<&PacketSummary<A>>,
) {
    if let Some(now) = admit_drop(at.cfg.drop_events_per_sec) {
        send(at, now, EventKind::Drop, reason, pkt);
    }
}

/// The drop budget of this CPU on one more drop event: its timestamp if
/// it is to be sent. Over budget (a flood) the clock, a helper call, is
/// read once a tick rather than once a drop (`EventBudget::spent_this_tick`);
/// jiffies are a load the verifier inlines.
#[inline(always)]
pub fn admit_drop(per_sec: u32) -> Option<u64> {
    let budget = PN_EVBUDGET.get_ptr_mut(EventBudget::index(EventKind::Drop))?;
    // SAFETY: bpf_jiffies64 has no preconditions.
    let tick = unsafe { bpf_jiffies64() } as u32;
    // SAFETY: per-CPU value, only this CPU touches it while we run.
    let budget = unsafe { &mut *budget };
    if budget.spent_this_tick(tick, per_sec) {
        return None;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    budget.admit_at_tick(now, tick, per_sec).then_some(now)
}

/// Sends an event if its kind's budget on this CPU allows it; counts it as
/// suppressed otherwise. Every event of `PN_EVENTS` goes through here or
/// [`admit_drop`]: a flood of drops or of new flows costs the agent a
/// bounded rate. `A`, the family, picks the event's layout (its addresses).
#[inline(always)]
pub fn report<A: Copy + Default>(
    at: &PacketCtx,
    now: u64,
    kind: EventKind,
    reason: Reason,
    pkt: Option<&PacketSummary<A>>,
) {
    let Some(budget) = PN_EVBUDGET.get_ptr_mut(EventBudget::index(kind)) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while we run.
    if !unsafe { (*budget).admit(now, at.cfg.drop_events_per_sec) } {
        return;
    }
    send(at, now, kind, reason, pkt);
}

/// An event its budget admitted, into the ring buffer.
#[inline(always)]
pub fn send<A: Copy + Default>(
    at: &PacketCtx,
    now: u64,
    kind: EventKind,
    reason: Reason,
    pkt: Option<&PacketSummary<A>>,
) {
    let mut ev = FlowEvent::<A> {
        ts_ns: now,
        ifindex: at.ifindex,
        bytes: at.len,
        kind: kind as u8,
        reason: reason as u8,
        direction: at.dir as u8,
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
    if PN_EVENTS.output::<FlowEvent<A>>(&ev, 0).is_err() {
        crate::conn::lost(pn_common::conn::LostKind::Flow);
    }
}
