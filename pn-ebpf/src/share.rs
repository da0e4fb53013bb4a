//! Each container's share of the connection tables (see
//! `pn_common::policy::share`): one array read, a comparison and an atomic
//! add, only when a packet would create an entry.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use pn_common::policy;

use crate::maps::PN_CONN_COUNT;

/// Which count of `PN_CONN_COUNT`.
#[derive(Clone, Copy)]
pub enum Table {
    /// `PN_CONNS` and `PN_CONNS6`.
    Conns,
    /// `PN_LB_CONNS` and `PN_LB6_CONNS`.
    Lb,
}

/// Takes one entry of `table` for the container of counter row `slot`;
/// false when it holds `share` already (the caller drops the packet as
/// `conn_quota`). Two CPUs may both pass at `share - 1`: one over, which
/// the agent's next recount sees.
#[inline(always)]
pub fn take(slot: u16, share: u32, table: Table) -> bool {
    let Some(row) = PN_CONN_COUNT.get_ptr_mut(u32::from(slot)) else {
        return true;
    };
    // SAFETY: a value of the array, valid for the program run; plain u64s.
    let held = unsafe {
        match table {
            Table::Conns => &raw mut (*row).conns,
            Table::Lb => &raw mut (*row).lb,
        }
    };
    // SAFETY: as above; other CPUs add to it atomically, a plain read of an
    // aligned u32 is never torn.
    if !policy::within_share(unsafe { core::ptr::read_volatile(held) }, share) {
        return false;
    }
    // SAFETY: as above; aligned (the value is 8-aligned, the fields at 0
    // and 8). The old value is unused: a plain atomic add, no fetch.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(held, 1) };
    true
}
