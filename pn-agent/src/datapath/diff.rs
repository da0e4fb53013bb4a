//! The one diff behind every map and link set of the datapath (as
//! tailscale's `cidrDiff`): from what the kernel holds and what is wanted,
//! the entries to set (new or changed) and to remove, then written one by
//! one, each success recorded in the current copy and each failure collected
//! rather than ending the apply. Pure: no kernel, no error type of its own.

use std::collections::{BTreeMap, BTreeSet};

/// A map, or a set (its values `()`), as the diff reads and updates it.
pub trait Table {
    type Key: Ord + Clone;
    type Value: PartialEq + Clone;
    fn value(&self, key: &Self::Key) -> Option<&Self::Value>;
    fn entries(&self) -> impl Iterator<Item = (&Self::Key, &Self::Value)>;
    fn put(&mut self, key: Self::Key, value: Self::Value);
    fn take(&mut self, key: &Self::Key);
}

impl<K: Ord + Clone, V: PartialEq + Clone> Table for BTreeMap<K, V> {
    type Key = K;
    type Value = V;
    fn value(&self, key: &K) -> Option<&V> {
        self.get(key)
    }
    fn entries(&self) -> impl Iterator<Item = (&K, &V)> {
        self.iter()
    }
    fn put(&mut self, key: K, value: V) {
        self.insert(key, value);
    }
    fn take(&mut self, key: &K) {
        self.remove(key);
    }
}

impl<K: Ord + Clone> Table for BTreeSet<K> {
    type Key = K;
    type Value = ();
    fn value(&self, key: &K) -> Option<&()> {
        self.contains(key).then_some(&())
    }
    fn entries(&self) -> impl Iterator<Item = (&K, &())> {
        self.iter().map(|k| (k, &()))
    }
    fn put(&mut self, key: K, (): ()) {
        self.insert(key);
    }
    fn take(&mut self, key: &K) {
        self.remove(key);
    }
}

/// Which entries of a table a diff covers; the others are left alone.
pub enum Part<'a, K, V> {
    /// Every entry (a full apply, or a table always applied whole).
    All,
    /// These keys alone, looked up rather than walked: a scoped apply for
    /// one container must not walk 100 000 endpoints.
    Keys(&'a BTreeSet<K>),
    /// The entries, wanted or held, that pass (a small table, walked).
    Where(&'a dyn Fn(&K, &V) -> bool),
}

/// One entry to write: new (`old` is `None`) or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<K, V> {
    pub key: K,
    pub old: Option<V>,
    pub new: V,
}

/// What brings a table from what it holds to what is wanted, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Entries added or changed.
    pub set: Vec<Entry<K, V>>,
    /// Entries to remove, with the value they hold.
    pub remove: Vec<(K, V)>,
}

impl<K, V> Default for Diff<K, V> {
    fn default() -> Self {
        Diff {
            set: Vec::new(),
            remove: Vec::new(),
        }
    }
}

/// The difference between `current` and `want` within `part`.
pub fn diff<T: Table>(
    current: &T,
    want: &T,
    part: &Part<'_, T::Key, T::Value>,
) -> Diff<T::Key, T::Value> {
    let mut out = Diff::default();
    let mut one = |key: &T::Key, old: Option<&T::Value>, new: Option<&T::Value>| match (old, new) {
        (old, Some(new)) if old != Some(new) => out.set.push(Entry {
            key: key.clone(),
            old: old.cloned(),
            new: new.clone(),
        }),
        (Some(old), None) => out.remove.push((key.clone(), old.clone())),
        _ => {}
    };
    match part {
        Part::Keys(keys) => {
            for k in *keys {
                one(k, current.value(k), want.value(k));
            }
        }
        Part::All | Part::Where(_) => {
            let within = |k: &T::Key, v: &T::Value| match part {
                Part::Where(f) => f(k, v),
                _ => true,
            };
            for (k, v) in want.entries().filter(|(k, v)| within(k, v)) {
                one(k, current.value(k), Some(v));
            }
            // Set first, removed after: `one` records into `out` in that
            // order, and a wanted key is never removed.
            let gone: Vec<(&T::Key, &T::Value)> = current
                .entries()
                .filter(|(k, v)| within(k, v) && want.value(k).is_none())
                .collect();
            for (k, v) in gone {
                one(k, Some(v), None);
            }
        }
    }
    out
}

impl<K: Clone, V: Clone> Diff<K, V> {
    /// Writes the entries to set with `write`; each success goes into
    /// `current`, each failure into `failed` and the next entry is tried.
    /// Returns how many were written.
    pub fn write_sets<T, E>(
        &self,
        current: &mut T,
        failed: &mut Vec<E>,
        mut write: impl FnMut(&Entry<K, V>) -> Result<(), E>,
    ) -> usize
    where
        T: Table<Key = K, Value = V>,
    {
        let mut done = 0;
        for e in &self.set {
            match write(e) {
                Ok(()) => {
                    current.put(e.key.clone(), e.new.clone());
                    done += 1;
                }
                Err(err) => failed.push(err),
            }
        }
        done
    }

    /// Removes the entries to remove with `remove`, as `write_sets` does.
    pub fn write_removes<T, E>(
        &self,
        current: &mut T,
        failed: &mut Vec<E>,
        mut remove: impl FnMut(&K, &V) -> Result<(), E>,
    ) -> usize
    where
        T: Table<Key = K, Value = V>,
    {
        let mut done = 0;
        for (k, v) in &self.remove {
            match remove(k, v) {
                Ok(()) => {
                    current.take(k);
                    done += 1;
                }
                Err(err) => failed.push(err),
            }
        }
        done
    }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
