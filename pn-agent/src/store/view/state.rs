//! The view's own state: what [`super`]'s loading and checks keep current.

use std::{
    collections::BTreeMap,
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, HostId, NetworkId};

use super::refusals::Refusals;
use crate::model::{Admissions, App, Container, ContainerKey, Host, Network};
use crate::store::keys::Key;

#[derive(Clone, Debug)]
pub struct MembershipView {
    pub networks: BTreeMap<NetworkId, Network>,
    pub apps: BTreeMap<AppId, App>,
    pub containers: BTreeMap<ContainerKey, Container>,
    pub hosts: BTreeMap<HostId, Host>,
    pub by_ip: HashMap<Ipv4Addr, ContainerKey>,
    pub by_ip6: HashMap<Ipv6Addr, ContainerKey>,
    /// Published ports, by host: who holds each.
    pub published_at: HashMap<(HostId, u16), ContainerKey>,
    /// Revision of the last change applied.
    pub rev: i64,
    /// Records refused since the agent started, by kind and reason.
    pub rejected: Refusals,
    /// Service addresses of the apps that balance by `vip`.
    pub(super) services_at: HashMap<Ipv4Addr, AppId>,
    /// Revisions of every host record's creation and last version, refused
    /// ones included: of two holding one key, the older keeps it.
    pub(super) host_revs: HashMap<HostId, (i64, i64)>,
    /// While a listing loads: each container record's address and the
    /// revision it was created at (apps load before the containers).
    pub(super) listed_ips: HashMap<Ipv4Addr, i64>,
    /// The fleet's address pool: every network's range lies inside it.
    pub(super) pool: Ipv4Net,
    /// Refused keys and the revision of the version refused, so that a
    /// record is counted and logged once, not at every listing.
    pub(super) refused: HashMap<String, i64>,
    /// The operator's record of which hosts may run which app.
    pub(super) admissions: Admissions,
    /// The containers whose record was taken from the legacy layout; every
    /// other one's is its host's range. Only the key a record was taken
    /// from removes it ([`MembershipView::held_at`]). The rare legacy ones
    /// in a set rather than every container's key string: that map cost
    /// about 200 bytes per endpoint.
    pub(super) legacy_at: HashSet<ContainerKey>,
    /// How many containers of the view each host runs.
    pub(super) per_host: HashMap<HostId, usize>,
    /// How many containers one host may run (`--host-quota`).
    pub(super) host_quota: usize,
}

/// Containers one host may run unless `--host-quota` says otherwise: far
/// more than a host runs, few enough that one host cannot fill the
/// datapath's maps of every agent.
pub const DEFAULT_HOST_QUOTA: usize = 4096;

impl MembershipView {
    /// The same view with another quota of containers per host (for the
    /// records it takes in from now on, and at the next listing).
    pub fn with_host_quota(mut self, quota: usize) -> Self {
        self.host_quota = quota;
        self
    }

    pub fn host_quota(&self) -> usize {
        self.host_quota
    }

    /// Whether the view's container `k` was taken from the key `writer`
    /// names (its host's range, `None` the legacy layout); `None` when
    /// the view has no such container.
    pub(super) fn held_at(&self, k: &ContainerKey, writer: Option<&HostId>) -> Option<bool> {
        let c = self.containers.get(k)?;
        let legacy = self.legacy_at.contains(k);
        Some(match writer {
            None => legacy,
            Some(h) => !legacy && *h == c.host,
        })
    }

    /// The store key the view's container `k` was taken from.
    pub(super) fn container_at(&self, k: &ContainerKey) -> Option<Key> {
        let c = self.containers.get(k)?;
        Some(if self.legacy_at.contains(k) {
            Key::LegacyContainer(k.clone())
        } else {
            Key::Container(c.host.clone(), k.clone())
        })
    }

    /// Packs the containers' tree after a burst of records. Records come
    /// mostly in key order (a host registers its containers by index), and
    /// a B-tree filled in order leaves its nodes split half empty (about
    /// 450 bytes per container at 100 k); built from an ordered list its
    /// nodes are full. The list is transient (freed here); linear, and
    /// only once a burst is over.
    pub fn compact(&mut self) {
        self.containers = std::mem::take(&mut self.containers).into_iter().collect();
        self.by_ip.shrink_to_fit();
        self.by_ip6.shrink_to_fit();
        self.legacy_at.shrink_to_fit();
    }

    /// How many containers of the view `host` runs.
    pub fn containers_on(&self, host: &HostId) -> usize {
        self.per_host.get(host).copied().unwrap_or(0)
    }
}
