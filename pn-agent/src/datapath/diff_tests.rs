use std::collections::{BTreeMap, BTreeSet};

use super::{Diff, Entry, Part, diff};

fn map(entries: &[(u32, &'static str)]) -> BTreeMap<u32, &'static str> {
    entries.iter().copied().collect()
}

fn set(key: u32, old: Option<&'static str>, new: &'static str) -> Entry<u32, &'static str> {
    Entry { key, old, new }
}

#[test]
fn adds_changes_and_removes_in_key_order() {
    let current = map(&[(1, "a"), (2, "b"), (3, "c")]);
    let want = map(&[(0, "z"), (2, "b"), (3, "C")]);
    let d = diff(&current, &want, &Part::All);
    assert_eq!(d.set, [set(0, None, "z"), set(3, Some("c"), "C")]);
    assert_eq!(d.remove, [(1, "a")]);
    assert_eq!(diff(&want, &want, &Part::All), Diff::default());
}

#[test]
fn keys_are_looked_up_and_nothing_else_is_touched() {
    let current = map(&[(1, "a"), (2, "b"), (3, "c")]);
    let want = map(&[(4, "d")]);
    let keys: BTreeSet<u32> = [2, 4, 9].into();
    let d = diff(&current, &want, &Part::Keys(&keys));
    assert_eq!(d.set, [set(4, None, "d")]);
    // 1 and 3 are held and not wanted, but out of the part.
    assert_eq!(d.remove, [(2, "b")]);
}

#[test]
fn a_filter_applies_to_wanted_and_held_entries() {
    let current = map(&[(1, "keep"), (2, "x"), (3, "keep")]);
    let want = map(&[(2, "keep"), (4, "x"), (5, "keep")]);
    let keep = |_: &u32, v: &&str| *v == "keep";
    let d = diff(&current, &want, &Part::Where(&keep));
    assert_eq!(d.set, [set(2, Some("x"), "keep"), set(5, None, "keep")]);
    // 4 is out of the filter: neither set nor (being new) removed.
    assert_eq!(d.remove, [(1, "keep"), (3, "keep")]);
    // A held entry in the filter whose wanted value is out of it: left
    // alone, not removed (its key is still wanted).
    let held = map(&[(6, "keep")]);
    let wanted = map(&[(6, "x")]);
    assert_eq!(diff(&held, &wanted, &Part::Where(&keep)), Diff::default());
}

#[test]
fn sets_are_tables_of_keys() {
    let current: BTreeSet<&str> = ["a", "b"].into();
    let want: BTreeSet<&str> = ["b", "c"].into();
    let d = diff(&current, &want, &Part::All);
    assert_eq!(
        d.set,
        [Entry {
            key: "c",
            old: None,
            new: ()
        }]
    );
    assert_eq!(d.remove, [("a", ())]);
}

#[test]
fn a_failed_write_is_collected_the_others_are_made_and_recorded() {
    let mut current = map(&[(1, "a"), (2, "b"), (3, "c")]);
    let want = map(&[(2, "B"), (3, "C"), (4, "D")]);
    let d = diff(&current, &want, &Part::All);
    let mut failed = Vec::new();
    let made = d.write_sets(&mut current, &mut failed, |e| match e.key {
        3 => Err(format!("set {}", e.key)),
        _ => Ok(()),
    });
    assert_eq!(made, 2);
    let made = d.write_removes(&mut current, &mut failed, |k, _| Err(format!("remove {k}")));
    assert_eq!(made, 0);
    assert_eq!(failed, ["set 3", "remove 1"]);
    // The copy holds what was written, and what failed as it was: the next
    // diff is exactly what is left.
    assert_eq!(current, map(&[(1, "a"), (2, "B"), (3, "c"), (4, "D")]));
    let left = diff(&current, &want, &Part::All);
    assert_eq!(left.set, [set(3, Some("c"), "C")]);
    assert_eq!(left.remove, [(1, "a")]);
}
