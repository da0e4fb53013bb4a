//! The TC programs' lookups of `PN_IFACES` and `PN_ENDPOINTS` through this
//! CPU's memo (`pn_common::memo`): a hit costs a few loads, a miss the
//! lookup it replaces and a slot written.

use core::ptr::NonNull;

use pn_common::{
    Ip4,
    maps::{Endpoint, Iface},
    memo::{self, Memo},
};

use crate::maps::{PN_ENDPOINTS, PN_IFACES, PN_MEMO, PN_MEMO_GEN};

/// This CPU's memo, open under the current generation.
#[derive(Clone, Copy)]
pub struct Open {
    memo: NonNull<Memo>,
    stamp: u64,
}

/// The memo, unless the agent is writing the memoised maps (the generation
/// is odd) or a map is missing: then every lookup goes to the map. Read once
/// per packet, before any lookup it serves.
#[inline(always)]
pub fn open() -> Option<Open> {
    // SAFETY: a plain u64 in an array map; a volatile read so that the
    // compiler neither caches nor moves it past the lookups it guards.
    let generation = unsafe { core::ptr::read_volatile(PN_MEMO_GEN.get_ptr(0)?) };
    let stamp = memo::stamp(generation)?;
    let memo = NonNull::new(PN_MEMO.get_ptr_mut(0)?)?;
    Some(Open { memo, stamp })
}

/// `PN_IFACES[ifindex]`.
#[inline(always)]
pub fn iface(open: Option<Open>, ifindex: u32) -> Option<Iface> {
    let Some(o) = open else {
        // SAFETY: values are plain data (see `tc::handle`).
        return unsafe { PN_IFACES.get(ifindex) }.copied();
    };
    // SAFETY: this CPU's element, used by one program at a time (see
    // `pn_common::memo`); the slot index is below `SLOTS`.
    let s = unsafe { &mut (*o.memo.as_ptr()).ifaces[memo::slot(ifindex)] };
    if let Some(v) = memo::hit(s.stamp, s.key, s.present, &s.value, o.stamp, ifindex) {
        return v;
    }
    // SAFETY: as above.
    let v = unsafe { PN_IFACES.get(ifindex) }.copied();
    s.key = ifindex;
    s.present = u32::from(v.is_some());
    s.value = v.unwrap_or_default();
    s.stamp = o.stamp;
    v
}

/// `PN_ENDPOINTS[ip]`.
#[inline(always)]
pub fn endpoint(open: Option<Open>, ip: Ip4) -> Option<Endpoint> {
    let Some(o) = open else {
        // SAFETY: as in `iface`.
        return unsafe { PN_ENDPOINTS.get(ip) }.copied();
    };
    // SAFETY: as in `iface`.
    let s = unsafe { &mut (*o.memo.as_ptr()).endpoints[memo::slot(ip)] };
    if let Some(v) = memo::hit(s.stamp, s.key, s.present, &s.value, o.stamp, ip) {
        return v;
    }
    // SAFETY: as in `iface`.
    let v = unsafe { PN_ENDPOINTS.get(ip) }.copied();
    s.key = ip;
    s.present = u32::from(v.is_some());
    s.value = v.unwrap_or_default();
    s.stamp = o.stamp;
    v
}
