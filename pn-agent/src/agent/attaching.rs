//! Attaches whose record this agent wrote and its view does not show yet.
//!
//! An attach makes the interface and writes the record under `local_ops`,
//! then lets go of it and waits for the view. A full converge that runs in
//! that window sees an interface and leases no record of the view claims,
//! which is exactly what a crashed attach leaves: without this set it
//! deletes the new interface and releases the new addresses.

use std::{collections::BTreeSet, sync::Mutex};

use crate::model::ContainerKey;

#[derive(Default)]
pub(super) struct Attaching(Mutex<BTreeSet<(String, ContainerKey)>>);

/// Holds one attach in the set until dropped, whatever way the attach ends.
pub(super) struct InFlight<'a> {
    set: &'a Attaching,
    entry: (String, ContainerKey),
}

impl Attaching {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, ContainerKey)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the attach of `key` on interface `host_if` as in flight.
    pub(super) fn start(&self, host_if: &str, key: &ContainerKey) -> InFlight<'_> {
        let entry = (host_if.to_string(), key.clone());
        self.lock().insert(entry.clone());
        InFlight { set: self, entry }
    }

    pub(super) fn has_interface(&self, name: &str) -> bool {
        self.lock().iter().any(|(n, _)| n == name)
    }

    pub(super) fn has_container(&self, key: &ContainerKey) -> bool {
        self.lock().iter().any(|(_, k)| k == key)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attach_counts_until_its_guard_goes() {
        let set = Attaching::default();
        let key = crate::testing::model::key(1, "web", 1);
        {
            let _g = set.start("pnh0001", &key);
            assert!(set.has_interface("pnh0001") && set.has_container(&key));
            assert!(!set.has_interface("pnh0002"));
        }
        assert!(!set.has_interface("pnh0001") && !set.has_container(&key));
    }
}
