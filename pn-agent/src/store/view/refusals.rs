//! How many records the view refused, by kind of record and reason: what
//! `pn_store_records_refused_total{kind,reason}` and `status` show.

use std::collections::BTreeMap;

use super::checks::Reject;
use crate::store::keys;

/// Refusals since the agent started (each version of a record counted once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals(BTreeMap<(&'static str, &'static str), u64>);

impl Refusals {
    /// Counts one refusal of the record at `key`.
    pub fn count(&mut self, key: &str, reject: Reject) {
        *self.0.entry((kind_of(key), reject.as_str())).or_default() += 1;
    }

    /// `(kind, reason, count)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.0.iter().map(|((k, r), n)| (*k, *r, *n))
    }

    /// Totals by reason, whatever the kind (`status`).
    pub fn by_reason(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (_, reason, n) in self.iter() {
            *out.entry(reason).or_default() += n;
        }
        out
    }

    /// Refusals for `reason`, all kinds together.
    pub fn reason(&self, reason: &str) -> u64 {
        self.iter()
            .filter(|(_, r, _)| *r == reason)
            .map(|(_, _, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The kind of record a key holds, as the counter's label says it.
pub fn kind_of(key: &str) -> &'static str {
    [
        (keys::NETWORKS, "network"),
        (keys::APPS, "app"),
        (keys::CONTAINERS, "container"),
        (keys::HOSTS, "host"),
    ]
    .into_iter()
    .find(|(p, _)| key.starts_with(p))
    .map_or("other", |(_, k)| k)
}
