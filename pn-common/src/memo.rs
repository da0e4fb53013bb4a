//! A per-CPU memo of the TC programs' recent `PN_IFACES` and `PN_ENDPOINTS`
//! lookups (issue 27): each hash lookup costs ≈ 40 ns warm on the bench
//! machine (four nested kernel calls, each returning through the return
//! thunk), a memo hit a few loads. A same-host stream touches four keys on
//! one CPU (interface A, interface B, endpoint A, endpoint B: from A's veth
//! and to B's, then the replies), so each table is a few slots,
//! direct-mapped by a cheap hash of the key, not one.
//!
//! **A stale memo is an isolation hole**, so every slot carries the stamp
//! of the generation it was filled in, and the programs read the
//! generation (`PN_MEMO_GEN`, one element) on every packet. The agent's
//! writes to the memoised maps are bracketed like a sequence lock: before
//! the first write of a batch it makes the generation odd ([`writing`]);
//! while it is odd the programs neither read nor fill the memo (every
//! lookup goes to the map, exactly as without a memo); after the batch it
//! makes it the next even number ([`written`]), which no slot filled before
//! carries. A writer that never ends its batch (a crash) leaves the memo
//! off, never stale. The agent also bumps once on load, before its programs
//! go on: whatever an earlier agent's programs memoised is void.
//!
//! A miss is memoised too (`present` 0): a destination in the world costs
//! no lookup either, and an endpoint added later bumps the generation.
//!
//! The programs of one CPU never interleave (TC runs with bottom halves
//! disabled, so a slot is filled whole before another program of that CPU
//! reads it).

use crate::{
    Ip4,
    maps::{Endpoint, Iface},
};

/// Slots of each table (a power of two).
pub const SLOTS: usize = 8;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();

/// One memoised `PN_IFACES` lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceSlot {
    /// [`stamp`] of the generation it was filled in; 0: empty.
    pub stamp: u64,
    pub key: u32,
    /// 1: the map held `value`; 0: it held nothing.
    pub present: u32,
    pub value: Iface,
}

/// One memoised `PN_ENDPOINTS` lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointSlot {
    pub stamp: u64,
    pub key: Ip4,
    pub present: u32,
    pub value: Endpoint,
}

/// The only element of `PN_MEMO`, a per-CPU array: this CPU's memo.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Memo {
    pub ifaces: [IfaceSlot; SLOTS],
    pub endpoints: [EndpointSlot; SLOTS],
}

/// The slot of a key: the top bits of a multiplicative (Fibonacci) hash,
/// so neighbouring interface indexes and addresses differing in any octet
/// spread over the slots.
pub const fn slot(key: u32) -> usize {
    (key.wrapping_mul(0x9e37_79b1) >> (32 - SLOT_BITS)) as usize & (SLOTS - 1)
}

/// The stamp a slot filled under generation `generation` carries, and must
/// carry to be used under it; `None` while the agent writes (odd): then
/// the memo is neither read nor filled. Odd, so never an empty slot's 0.
pub const fn stamp(generation: u64) -> Option<u64> {
    if generation & 1 == 0 {
        Some(generation.wrapping_add(1))
    } else {
        None
    }
}

/// The generation to write before a batch of writes to the memoised maps.
pub const fn writing(generation: u64) -> u64 {
    generation | 1
}

/// The generation to write after the batch: even, and past every stamp
/// given so far.
pub const fn written(generation: u64) -> u64 {
    (generation | 1).wrapping_add(1)
}

/// The generation an agent writes on load, before its programs go on.
/// With the memo on (`--tc-memo true`), the next even one: whatever the
/// running programs memoised is void. Off (the default), odd, and nothing
/// settles it: the programs never read nor fill the memo (one array read
/// per packet), and a later agent with it on bumps past every stamp.
pub const fn loaded(generation: u64, on: bool) -> u64 {
    if on {
        written(generation)
    } else {
        writing(generation)
    }
}

/// A memo slot's answer for `key` under `stamp`: `Some(answer)` on a hit.
#[inline(always)]
pub fn hit<V: Copy>(
    slot_stamp: u64,
    slot_key: u32,
    present: u32,
    value: &V,
    stamp: u64,
    key: u32,
) -> Option<Option<V>> {
    if slot_stamp == stamp && slot_key == key {
        Some((present != 0).then_some(*value))
    } else {
        None
    }
}

const _: () = assert!(SLOTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<IfaceSlot>() == 48);
const _: () = assert!(core::mem::size_of::<EndpointSlot>() == 32);
const _: () = assert!(core::mem::size_of::<Memo>() == SLOTS * (48 + 32));

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, integer-only, padding-free (sizes checked above).
    unsafe impl aya::Pod for Memo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip4;

    #[test]
    fn slots_stay_in_range() {
        for k in [
            0,
            1,
            7,
            4096,
            u32::MAX,
            ip4(10, 240, 0, 2),
            ip4(255, 255, 255, 255),
        ] {
            assert!(slot(k) < SLOTS);
        }
    }

    #[test]
    fn neighbouring_keys_of_a_stream_take_different_slots() {
        // Host-side veths are created in pairs (every other index); a
        // stream between two containers uses two of them and two addresses.
        for a in 2..200u32 {
            for b in [a + 1, a + 2] {
                assert_ne!(slot(a), slot(b), "ifindexes {a} and {b}");
            }
        }
        for last in 2..250u8 {
            let (a, b) = (ip4(10, 240, 0, last), ip4(10, 240, 0, last + 1));
            assert_ne!(slot(a), slot(b), "10.240.0.{last} and the next");
        }
    }

    #[test]
    fn an_empty_slot_never_hits() {
        for g in [0, 2, 4, u64::MAX - 1] {
            let s = stamp(g).unwrap();
            assert_ne!(s, 0);
            assert_eq!(hit(0, 0, 0, &Endpoint::default(), s, 0), None);
        }
    }

    #[test]
    fn the_memo_is_off_while_the_agent_writes() {
        for g in [0, 1, 2, 7, 1000] {
            let w = writing(g);
            assert_eq!(stamp(w), None, "generation {w} while writing");
            let done = written(w);
            assert!(stamp(done).is_some());
            assert!(done > g && done > w);
        }
        // A writer that crashed half-way (odd left) and the next one.
        assert_eq!(writing(writing(4)), 5);
        assert_eq!(written(5), 6);
        assert_eq!(written(4), 6);
    }

    /// `--tc-memo`: off, a load leaves the memo off whatever it found; on,
    /// a fresh even generation past every stamp given before (a hand-over
    /// between agents of either setting).
    #[test]
    fn a_load_turns_the_memo_off_or_past_every_stamp() {
        for g in [0, 1, 2, 7, 1000] {
            let off = loaded(g, false);
            assert_eq!(stamp(off), None, "off after {g}: {off}");
            assert_eq!(stamp(loaded(off, false)), None, "off again");
            let on = loaded(off, true);
            assert!(stamp(on).is_some() && on > g && on > off, "{g} {off} {on}");
            // On after on: slots filled under the first are void.
            let again = loaded(on, true);
            assert!(stamp(again).is_some() && again > on);
            assert_ne!(stamp(again), stamp(on));
        }
    }

    #[test]
    fn a_slot_filled_before_a_batch_is_void_after_it() {
        let ep = Endpoint {
            tag: 7,
            ..Endpoint::default()
        };
        let g = 10;
        let s = stamp(g).unwrap();
        assert_eq!(hit(s, 3, 1, &ep, s, 3), Some(Some(ep)));
        assert_eq!(hit(s, 3, 0, &ep, s, 3), Some(None));
        assert_eq!(hit(s, 4, 1, &ep, s, 3), None, "another key");
        let after = stamp(written(writing(g))).unwrap();
        assert_eq!(hit(s, 3, 1, &ep, after, 3), None);
        // Filled while the agent wrote under the generation read before it
        // began: void too.
        assert_eq!(hit(s, 3, 1, &ep, stamp(written(g)).unwrap(), 3), None);
    }
}
