//! The view's own state: what [`super`]'s loading and checks keep current.

use std::{
    collections::BTreeMap,
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, HostId, NetworkId};

use super::refusals::{HostUpdates, Refusals};
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
    /// Host record changes since the agent started, by outcome.
    pub host_updates: HostUpdates,
    /// Service addresses (both families) of the apps that balance by `vip`.
    pub(super) services_at: HashMap<IpAddr, AppId>,
    /// Revisions of every host record's creation and last version, refused
    /// ones included: of two holding one key, the older keeps it.
    pub(super) host_revs: HashMap<HostId, (i64, i64)>,
    /// While a listing loads: each container record's address and the
    /// revision it was created at, of both families (apps load before the
    /// containers).
    pub(super) listed_ips: HashMap<IpAddr, i64>,
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
    /// The address leases the view counts, by store key: the host they
    /// give an address of a network to (a host's own range, or a shared
    /// lease of an older release).
    pub(super) leases: HashMap<String, Leased>,
    /// How many of those leases give each host each address (its own and
    /// a shared one of an older release may both, while a fleet migrates).
    pub(super) leased: HashMap<Leased, usize>,
    /// How many leases of its own range the view counts for each host, in
    /// each network, per family (`true`: IPv6): at most its quota.
    pub(super) leases_per: HashMap<(HostId, NetworkId, bool), usize>,
    /// Leases beyond their host's quota, oldest first: when one it counts
    /// goes, the oldest waiting is counted, so the view counts a host's
    /// oldest leases as the allocator does.
    pub(super) waiting: HashMap<(HostId, NetworkId, bool), Vec<String>>,
}

/// An address of a network leased to a host's container.
pub(super) type Leased = (HostId, NetworkId, IpAddr);

/// Containers one host may run unless `--host-quota` says otherwise: far
/// more than a host runs, few enough that one host cannot fill the
/// datapath's maps of every agent.
pub const DEFAULT_HOST_QUOTA: usize = 4096;

/// How many leases of one network, per family, the others count for a host
/// of `host_quota`: one per container it may run, and as many again for
/// attaches under way and the leftovers of interrupted ones (released at
/// its agent's next converge).
pub fn lease_quota(host_quota: usize) -> usize {
    host_quota.saturating_mul(2)
}

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
