//! This host as the reconciler sees it, and what of the view is local to it.

use std::collections::BTreeSet;

use pn_common::ids::HostId;

use super::edge::EdgeLocal;
use crate::store::view::MembershipView;

/// This host, as the reconciler needs it.
#[derive(Clone, Debug)]
pub struct Local<'a> {
    pub host: &'a HostId,
    /// The edge's settings and host facts; `None`: no edge (tests of the
    /// rest, an agent that could not read its host).
    pub edge: Option<&'a EdgeLocal>,
}

pub(super) fn local_tags(view: &MembershipView, local: &Local<'_>) -> BTreeSet<u32> {
    view.local_containers(local.host)
        .filter_map(|c| view.networks.get(&c.network).map(|n| n.tag))
        .collect()
}
