//! The programs' memo (`pn_common::memo`) as the agent keeps it: the
//! generation around every write to a memoised map, with `--tc-memo` on
//! and off.

use pn_common::{ip4, maps::Peer};

use super::{Datapath, FakeMaps, Scope, State, two};

/// The programs' memo (`pn_common::memo`): every apply that writes a
/// memoised map makes the generation odd before its first such write and
/// even, past it, once done, failed writes or not; an apply that writes
/// none of them leaves it alone.
#[test]
fn every_write_to_a_memoised_map_is_settled_by_a_new_generation() {
    use pn_common::memo::stamp;
    let mut dp = Datapath::new(FakeMaps::loaded(0, true));
    dp.apply(&two(), &Scope::all()).unwrap();
    let g = dp.maps().generation;
    assert!(stamp(g).is_some(), "settled: {g}");
    let writes = dp.maps().memo_writes.clone();
    assert!(!writes.is_empty());
    // Made while off (odd), and every one before the settled generation.
    assert!(
        writes.iter().all(|w| stamp(*w).is_none() && *w < g),
        "{writes:?} then {g}"
    );
    // Nothing to write: the memo keeps its generation (stays warm).
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().generation, g);
    // Only the underlay guard's peers: not memoised, no bump.
    let mut want = two();
    want.peers.insert(
        ip4(192, 0, 2, 9),
        Peer {
            index: 10,
            flags: 0,
        },
    );
    dp.apply(&want, &Scope::underlay()).unwrap();
    assert_eq!(dp.maps().generation, g);
    // A member leaves (scoped): its endpoint and interface go, then a new
    // generation.
    let mut gone = want.clone();
    gone.endpoints.remove(&ip4(10, 240, 0, 2));
    gone.ifaces.remove(&7);
    dp.apply(&gone, &Scope::entries([ip4(10, 240, 0, 2)], [], true))
        .unwrap();
    let g2 = dp.maps().generation;
    assert!(stamp(g2).is_some() && g2 > g, "{g} then {g2}");
    assert!(dp.maps().memo_writes.iter().all(|w| *w < g2));
    // A failed write settles all the same: the other writes were made.
    dp.maps_mut().fail_on = Some("set_endpoint");
    assert!(dp.apply(&two(), &Scope::all()).is_err());
    let g3 = dp.maps().generation;
    assert!(stamp(g3).is_some() && g3 > g2, "{g2} then {g3}");
}

/// `--tc-memo` off (the default): the generation is odd from load on,
/// whatever an earlier agent left, and no apply settles it, whatever it
/// writes or fails to; so the programs never use their memo. On after off
/// (a hand-over): a fresh even generation at load, past the odd one.
#[test]
fn with_the_memo_off_the_generation_stays_odd_through_every_apply() {
    use pn_common::memo::stamp;
    for before in [0, 1, 6, 41] {
        let mut dp = Datapath::new(FakeMaps::loaded(before, false));
        let g = dp.maps().generation;
        assert!(stamp(g).is_none(), "odd after load over {before}: {g}");
        dp.apply(&two(), &Scope::all()).unwrap();
        assert!(!dp.maps().calls.is_empty(), "the apply wrote");
        assert_eq!(dp.maps().generation, g);
        let mut gone = two();
        gone.endpoints.remove(&ip4(10, 240, 0, 2));
        gone.ifaces.remove(&7);
        dp.apply(&gone, &Scope::entries([ip4(10, 240, 0, 2)], [], true))
            .unwrap();
        assert_eq!(dp.maps().generation, g);
        dp.apply(&two(), &Scope::all()).unwrap();
        assert_eq!(dp.maps().generation, g);
        dp.maps_mut().fail_on = Some("set_endpoint");
        dp.apply(&State::default(), &Scope::all()).unwrap();
        assert!(dp.apply(&two(), &Scope::all()).is_err());
        assert_eq!(dp.maps().generation, g);
        // A predecessor with it on settled it during a hand-over: this
        // agent's next writes are made under an odd generation all the same.
        dp.maps_mut().fail_on = None;
        dp.maps_mut().generation = pn_common::memo::written(g);
        let done = dp.maps().memo_writes.len();
        dp.apply(&gone, &Scope::all()).unwrap();
        let writes = &dp.maps().memo_writes[done..];
        assert!(!writes.is_empty());
        assert!(writes.iter().all(|w| stamp(*w).is_none()), "{writes:?}");
        let g = dp.maps().generation;
        assert!(stamp(g).is_none(), "{g}");
        // The successor turns it on: even, past it.
        let on = FakeMaps::loaded(g, true).generation;
        assert!(stamp(on).is_some() && on > g, "{g} then {on}");
        // And off again.
        assert!(stamp(FakeMaps::loaded(on, false).generation).is_none());
    }
}
