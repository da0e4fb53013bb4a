//! Consecutive container changes of the watch, converged together: a far
//! host registering 100 000 containers costs a few hundred converges, not
//! 100 000 (each takes the agent's locks, computes a desired state and
//! diffs it with the kernel's). A batch holds each container at most once,
//! so its converge sees every container as the kernel has it (before the
//! batch) and as the view has it now — what converging event by event
//! would have done, minus the intermediate states. Networks, apps and
//! hosts are converged alone, in their order among the events, after the
//! batch before them.

use std::collections::HashSet;

use super::super::reconcile::Touched;
use crate::{
    model::{Container, ContainerKey},
    store::{keys::Key, view::Change},
};

/// Most containers in one batch: bounds how long the kernel lags the view
/// (and a command waits for its revision) while a big registration streams.
pub(super) const MAX_CONTAINERS: usize = 4096;

/// What one watch event means for the batch in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A container record: it joins the batch.
    Join,
    /// A container already in the batch: the batch is converged first, so
    /// no converge sees a container change twice.
    FlushThenJoin,
    /// A network, app or host record: the batch is converged first, then
    /// this change alone.
    Alone,
    /// Nothing the kernel depends on (the pool, leases, claims, peer ids).
    Skip,
}

#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Each container's record before its change and after it.
    touched: Vec<Container>,
    keys: HashSet<ContainerKey>,
}

impl Batch {
    /// What the event on `key` does to this batch (before the view takes it).
    pub(super) fn step(&self, key: &str) -> Step {
        match Key::parse(key) {
            Some(Key::Container(_, k) | Key::LegacyContainer(k)) if self.keys.contains(&k) => {
                Step::FlushThenJoin
            }
            Some(Key::Container(..) | Key::LegacyContainer(_)) => Step::Join,
            Some(Key::Network(_) | Key::App(_) | Key::Host(_) | Key::Admissions) => Step::Alone,
            _ => Step::Skip,
        }
    }

    /// What a change of container `k` does to this batch.
    pub(super) fn step_of(&self, k: &ContainerKey) -> Step {
        if self.keys.contains(k) {
            Step::FlushThenJoin
        } else {
            Step::Join
        }
    }

    /// Adds a container change the view took in (other changes: nothing).
    pub(super) fn add(&mut self, change: Change) {
        match change {
            Change::ContainerPut { new, old } => {
                self.keys.insert(new.key.clone());
                self.touched.push(*new);
                self.touched.extend(old.map(|o| *o));
            }
            Change::ContainerDeleted(c) => {
                self.keys.insert(c.key.clone());
                self.touched.push(*c);
            }
            _ => {}
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.keys.len() >= MAX_CONTAINERS
    }

    /// What the batch touched, for one converge; the batch is empty after.
    pub(super) fn take(&mut self) -> Option<Touched> {
        self.keys.clear();
        let touched = std::mem::take(&mut self.touched);
        (!touched.is_empty()).then_some(Touched::Containers(touched))
    }
}

/// The revision to publish as applied after an event of revision `rev`,
/// given the revision of the event that follows it (`None`: none waiting).
/// A transaction's events share its revision and arrive together: it is
/// applied once its last event is, not at its first key (a command waiting
/// for it must find all of it in the kernel).
pub(super) fn settled(rev: i64, next: Option<i64>) -> Option<i64> {
    match next {
        Some(n) if n == rev => None,
        _ => Some(rev),
    }
}

#[cfg(test)]
mod tests;
