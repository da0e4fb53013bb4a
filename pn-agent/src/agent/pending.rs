//! Publications this agent wrote and its view does not show yet.

use std::{collections::BTreeMap, sync::Mutex, time::Duration, time::Instant};

use crate::model::{Container, ContainerKey};

/// How long a publication this agent wrote may take to show in its view
/// before the allocator stops counting it.
const PENDING_FOR: Duration = Duration::from_secs(30);

/// Publications this agent wrote that its view may not show yet: the
/// allocator counts them, so two attaches in a row never get one port.
#[derive(Default)]
pub struct Pending(Mutex<BTreeMap<ContainerKey, (Container, Instant)>>);

impl Pending {
    pub fn insert(&self, c: Container) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.key.clone(), (c, Instant::now()));
    }

    pub fn remove(&self, key: &ContainerKey) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// This host's containers of `view`, with the records written since in
    /// their place; records the view shows already are forgotten.
    pub(super) fn overlay(
        &self,
        view: &crate::store::view::MembershipView,
        host: &pn_common::ids::HostId,
    ) -> Vec<Container> {
        let mut p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        p.retain(|k, (c, at)| view.containers.get(k) != Some(c) && at.elapsed() < PENDING_FOR);
        let mut out: BTreeMap<ContainerKey, Container> = view
            .local_containers(host)
            .map(|c| (c.key.clone(), c.clone()))
            .collect();
        for (k, (c, _)) in p.iter() {
            out.insert(k.clone(), c.clone());
        }
        out.into_values().collect()
    }
}
