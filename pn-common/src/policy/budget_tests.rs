//! The event budget read the way the programs read it: the clock only
//! when the tick changed or the budget may admit.

use super::*;

/// One event offered at `now_ns`, as `report::admit_drop` does it: jiffies
/// first, the clock only past that gate. (sent, clock read).
fn offer(b: &mut EventBudget, now_ns: u64, tick_ns: u64, per_sec: u32) -> (bool, bool) {
    let jiffies = (now_ns / tick_ns) as u32;
    if b.spent_this_tick(jiffies, per_sec) {
        return (false, false);
    }
    (b.admit_at_tick(now_ns, jiffies, per_sec), true)
}

#[test]
fn a_flood_reads_the_clock_once_a_tick_and_keeps_the_budget() {
    // 10 000 events a second for 5 s against 20 a second, ticks of 4 ms
    // (HZ 250): the same events sent as with the clock read every time.
    let (tick, t0) = (4_000_000, 7_000_000_000);
    let mut b = EventBudget::default();
    let (mut sent, mut reads) = (0u64, 0u64);
    for i in 0..50_000u64 {
        let (s, r) = offer(&mut b, t0 + i * 100_000, tick, 20);
        sent += u64::from(s);
        reads += u64::from(r);
    }
    assert_eq!(sent, 5 * 20);
    assert_eq!(b.suppressed, 50_000 - sent);
    // Once a tick over budget (5 s / 4 ms), plus the events sent.
    assert!(reads <= 5 * 250 + sent + 5, "{reads} clock reads");
}

#[test]
fn a_window_opens_at_most_one_tick_late() {
    let (tick, t0) = (4_000_000, 40_000_000_000);
    let mut b = EventBudget::default();
    assert_eq!(offer(&mut b, t0, tick, 1), (true, true));
    // Spent, found so 1 ns before the window ends: the rest of that tick
    // is refused without the clock, the next tick reads it and opens.
    let last = t0 + 999_999_999;
    assert_eq!(offer(&mut b, last, tick, 1), (false, true));
    let same_tick = (last / tick + 1) * tick - 1;
    assert_eq!(offer(&mut b, same_tick, tick, 1), (false, false));
    assert_eq!(offer(&mut b, same_tick + 1, tick, 1), (true, true));
    assert_eq!(b.suppressed, 2);
}

#[test]
fn under_budget_the_clock_is_always_read() {
    // The tick gate only holds back what the budget would: an entry
    // written by earlier programs (`spent_tick` 0) or a fresh window
    // admits as before.
    let t = 40_000_000_000;
    let mut b = EventBudget {
        spent_tick: 0,
        ..EventBudget::default()
    };
    assert_eq!(offer(&mut b, t, 4_000_000, 2), (true, true));
    assert_eq!(offer(&mut b, t + 1, 4_000_000, 2), (true, true));
    assert_eq!(offer(&mut b, t + 2, 4_000_000, 2), (false, true));
    assert_eq!(offer(&mut b, t + 3, 4_000_000, 2), (false, false));
    // Events off: counted, the clock read once a tick.
    let mut off = EventBudget::default();
    assert_eq!(offer(&mut off, 8_000_000, 4_000_000, 0), (false, true));
    assert_eq!(offer(&mut off, 8_000_001, 4_000_000, 0), (false, false));
    assert_eq!(off.suppressed, 2);
}
