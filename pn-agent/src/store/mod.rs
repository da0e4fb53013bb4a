//! The membership store. Two layers:
//!
//! - [`Backend`]: a small transactional key-value interface with revisions and
//!   watches, the semantics of etcd's v3 API. Two implementations: the
//!   [`embedded`] file-backed store (default, one machine) and etcd (a fleet).
//! - [`Membership`]: networks, applications, containers, hosts and address
//!   allocation, written once on top of any backend, so both behave the same
//!   and one conformance suite covers them.
//!
//! Every agent keeps a [`view::MembershipView`] fed by `list` + `watch`.

pub mod embedded;
pub mod etcd;
pub mod health;
pub mod view;

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use pn_common::ids::{AppId, HostId, NetworkId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;

use crate::{
    ipam,
    model::{AddressLease, App, Container, ContainerKey, Host, Network, now_secs},
};

/// A stored value and the revision of its last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub mod_rev: i64,
}

/// The whole content under a prefix at one revision.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub entries: Vec<(String, Entry)>,
    /// Store revision the listing reflects; watch from `rev + 1`.
    pub rev: i64,
}

/// Condition of a transaction.
#[derive(Clone, Debug)]
pub enum Cond {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at this revision.
    ModRev(String, i64),
}

#[derive(Clone, Debug)]
pub enum Op {
    Put(String, String),
    Delete(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: String,
        value: String,
        rev: i64,
    },
    Delete {
        key: String,
        rev: i64,
    },
    /// The watcher fell behind or the history it needs is gone: list again.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Transactional key-value store with revisions (etcd v3 semantics). Keys are
/// relative to the backend's own prefix.
pub trait Backend: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>>;
    /// Applies `ops` atomically if every condition holds. `Some(rev)` is the
    /// revision of the commit; `None` means a condition failed (nothing written).
    fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>)
    -> BoxFuture<'_, Result<Option<i64>, StoreError>>;
    /// Changes under `prefix` from revision `from_rev` on, in order.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_rev: i64,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<WatchEvent>, StoreError>>;
    /// Human description for `status` (e.g. "embedded /var/lib/pn-agent/store.log").
    fn describe(&self) -> String;
}

/// Key layout, relative to the backend prefix.
pub mod keys {
    use super::*;

    pub const POOL: &str = "pool";
    pub const NETWORKS: &str = "networks/";
    pub const APPS: &str = "apps/";
    pub const CONTAINERS: &str = "containers/";
    pub const IPS: &str = "ips/";
    pub const CLAIMS: &str = "claims/";
    pub const HOSTS: &str = "hosts/";

    pub fn network(id: &NetworkId) -> String {
        format!("{NETWORKS}{id}")
    }
    pub fn app(id: &AppId) -> String {
        format!("{APPS}{id}")
    }
    pub fn container(k: &ContainerKey) -> String {
        format!("{CONTAINERS}{}/{}/{}", k.app, k.ctype, k.index)
    }
    /// Claim on a container key while its attach is in progress.
    pub fn claim(k: &ContainerKey) -> String {
        format!("{CLAIMS}{}/{}/{}", k.app, k.ctype, k.index)
    }
    /// Inverse of [`container`].
    pub fn parse_container(key: &str) -> Option<ContainerKey> {
        let mut parts = key.strip_prefix(CONTAINERS)?.split('/');
        let k = ContainerKey {
            app: parts.next()?.parse().ok()?,
            ctype: parts.next()?.parse().ok()?,
            index: pn_common::ids::parse_index(parts.next()?).ok()?,
        };
        parts.next().is_none().then_some(k)
    }
    pub fn containers_of(app: &AppId) -> String {
        format!("{CONTAINERS}{app}/")
    }
    pub fn ips_of(net: &NetworkId) -> String {
        format!("{IPS}{net}/")
    }
    pub fn ip(net: &NetworkId, ip: Ipv4Addr) -> String {
        format!("{IPS}{net}/{ip}")
    }
    pub fn host(id: &HostId) -> String {
        format!("{HOSTS}{id}")
    }
}

/// Errors of membership operations; each message is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Invalid(String),
    /// The container key is attached, or being attached, already.
    #[error("{0}")]
    Taken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = MembershipError> = std::result::Result<T, E>;

/// Allocations of the fleet pool: one document, changed by compare-and-swap,
/// so two networks never get overlapping ranges or the same tag.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolDoc {
    pub networks: Vec<PoolEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolEntry {
    pub network: NetworkId,
    pub cidr: Ipv4Net,
    pub tag: u32,
}

/// How many times an operation retries after losing a compare-and-swap race.
const CAS_RETRIES: usize = 64;

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records always serialize")
}

fn decode<T: DeserializeOwned>(key: &str, e: &Entry) -> Result<T> {
    serde_json::from_str(&e.value)
        .map_err(|err| StoreError::Corrupt(format!("{key}: {err}")).into())
}

/// Network membership on top of a [`Backend`].
#[derive(Clone)]
pub struct Membership {
    kv: Arc<dyn Backend>,
}

impl Membership {
    pub fn new(kv: Arc<dyn Backend>) -> Self {
        Membership { kv }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.kv
    }

    async fn get_decoded<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>> {
        match self.kv.get(key).await? {
            Some(e) => Ok(Some((decode(key, &e)?, e.mod_rev))),
            None => Ok(None),
        }
    }

    async fn list_decoded<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(T, i64)>> {
        let listing = self.kv.list(prefix).await?;
        listing
            .entries
            .iter()
            .map(|(k, e)| Ok((decode(k, e)?, e.mod_rev)))
            .collect()
    }

    pub async fn network(&self, id: &NetworkId) -> Result<Network> {
        self.get_decoded(&keys::network(id))
            .await?
            .map(|(n, _)| n)
            .ok_or_else(|| MembershipError::NotFound(format!("network {id}")))
    }

    pub async fn networks(&self) -> Result<Vec<Network>> {
        Ok(self
            .list_decoded(keys::NETWORKS)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Creates a network with `cidr`, or with the next free `/prefix` of `pool`.
    pub async fn create_network(
        &self,
        id: NetworkId,
        cidr: Option<Ipv4Net>,
        pool: &Ipv4Net,
        prefix: u8,
    ) -> Result<(Network, i64)> {
        if let Some(c) = cidr {
            if c.prefix_len() > 30 {
                return Err(MembershipError::Invalid(format!(
                    "range {c} is too small: a network needs at least a /30"
                )));
            }
            if c.trunc() != c {
                return Err(MembershipError::Invalid(format!(
                    "range {c} is not a network address (did you mean {}?)",
                    c.trunc()
                )));
            }
            let link_local: Ipv4Net = "169.254.0.0/16".parse().expect("valid");
            if ipam::overlaps(&c, &link_local) {
                return Err(MembershipError::Invalid(format!(
                    "range {c} overlaps the link-local range the gateway uses"
                )));
            }
        }
        for _ in 0..CAS_RETRIES {
            let pool_entry = self.kv.get(keys::POOL).await?;
            let doc: PoolDoc = match &pool_entry {
                Some(e) => decode(keys::POOL, e)?,
                None => PoolDoc::default(),
            };
            if doc.networks.iter().any(|p| p.network == id) {
                return Err(MembershipError::Conflict(format!(
                    "network {id} already exists"
                )));
            }
            let taken: Vec<Ipv4Net> = doc.networks.iter().map(|p| p.cidr).collect();
            let cidr = match cidr {
                Some(c) => {
                    if let Some(other) = doc.networks.iter().find(|p| ipam::overlaps(&c, &p.cidr)) {
                        return Err(MembershipError::Conflict(format!(
                            "range {c} overlaps {} of network {}",
                            other.cidr, other.network
                        )));
                    }
                    c
                }
                None => ipam::next_subnet(pool, prefix, &taken).ok_or_else(|| {
                    MembershipError::Exhausted(format!(
                        "address pool {pool} exhausted: no free /{prefix} left ({} networks)",
                        doc.networks.len()
                    ))
                })?,
            };
            let tags: BTreeSet<u32> = doc.networks.iter().map(|p| p.tag).collect();
            let tag = ipam::next_tag(&tags);
            let network = Network {
                id,
                cidr,
                tag,
                created_at: now_secs(),
            };
            let mut new_doc = doc.clone();
            new_doc.networks.push(PoolEntry {
                network: id,
                cidr,
                tag,
            });
            let pool_cond = match &pool_entry {
                Some(e) => Cond::ModRev(keys::POOL.into(), e.mod_rev),
                None => Cond::Absent(keys::POOL.into()),
            };
            let committed = self
                .kv
                .txn(
                    vec![pool_cond, Cond::Absent(keys::network(&id))],
                    vec![
                        Op::Put(keys::POOL.into(), encode(&new_doc)),
                        Op::Put(keys::network(&id), encode(&network)),
                    ],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok((network, rev));
            }
        }
        Err(MembershipError::Conflict(
            "too much contention on the address pool; try again".into(),
        ))
    }

    /// Deletes a network. With `force`, its applications and containers go
    /// first (their hosts tear the containers down); without, it must be empty.
    pub async fn delete_network(&self, id: &NetworkId, force: bool) -> Result<i64> {
        self.network(id).await?;
        let apps: Vec<App> = self
            .apps()
            .await?
            .into_iter()
            .filter(|a| a.network == *id)
            .collect();
        if !apps.is_empty() && !force {
            return Err(MembershipError::Conflict(format!(
                "network {id} has {} application(s); delete them first or use --force",
                apps.len()
            )));
        }
        for app in &apps {
            for c in self.containers_of(&app.id).await? {
                self.delete_container(&c.key).await?;
            }
            self.delete_app(&app.id).await?;
        }
        for _ in 0..CAS_RETRIES {
            let (network, net_rev) = self
                .get_decoded::<Network>(&keys::network(id))
                .await?
                .ok_or_else(|| MembershipError::NotFound(format!("network {id}")))?;
            let pool_entry = self
                .kv
                .get(keys::POOL)
                .await?
                .ok_or_else(|| StoreError::Corrupt("pool document missing".into()))?;
            let mut doc: PoolDoc = decode(keys::POOL, &pool_entry)?;
            doc.networks.retain(|p| p.network != network.id);
            let committed = self
                .kv
                .txn(
                    vec![
                        Cond::ModRev(keys::POOL.into(), pool_entry.mod_rev),
                        Cond::ModRev(keys::network(id), net_rev),
                    ],
                    vec![
                        Op::Put(keys::POOL.into(), encode(&doc)),
                        Op::Delete(keys::network(id)),
                    ],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok(rev);
            }
        }
        Err(MembershipError::Conflict(format!(
            "network {id} keeps changing; try again"
        )))
    }

    pub async fn app(&self, id: &AppId) -> Result<App> {
        self.get_decoded(&keys::app(id))
            .await?
            .map(|(a, _)| a)
            .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))
    }

    pub async fn apps(&self) -> Result<Vec<App>> {
        Ok(self
            .list_decoded(keys::APPS)
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    pub async fn create_app(
        &self,
        id: AppId,
        network: &NetworkId,
        name: Option<String>,
    ) -> Result<(App, i64)> {
        for _ in 0..CAS_RETRIES {
            let (net, net_rev) = self
                .get_decoded::<Network>(&keys::network(network))
                .await?
                .ok_or_else(|| MembershipError::NotFound(format!("network {network}")))?;
            let app = App {
                id,
                network: *network,
                name: name.clone(),
                created_at: now_secs(),
            };
            // Rewriting the network bumps its revision, so a concurrent
            // `network delete` (which checks it) cannot orphan this app.
            let committed = self
                .kv
                .txn(
                    vec![
                        Cond::ModRev(keys::network(network), net_rev),
                        Cond::Absent(keys::app(&id)),
                    ],
                    vec![
                        Op::Put(keys::network(network), encode(&net)),
                        Op::Put(keys::app(&id), encode(&app)),
                    ],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok((app, rev));
            }
            if self.kv.get(&keys::app(&id)).await?.is_some() {
                return Err(MembershipError::Conflict(format!(
                    "application {id} already exists"
                )));
            }
        }
        Err(MembershipError::Conflict(format!(
            "network {network} keeps changing; try again"
        )))
    }

    /// Deletes an application that has no container left.
    pub async fn delete_app(&self, id: &AppId) -> Result<i64> {
        for _ in 0..CAS_RETRIES {
            let (_, rev) = self
                .get_decoded::<App>(&keys::app(id))
                .await?
                .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))?;
            let containers = self.containers_of(id).await?;
            if !containers.is_empty() {
                return Err(MembershipError::Conflict(format!(
                    "application {id} has {} container(s) attached; detach them first",
                    containers.len()
                )));
            }
            // Attaching rewrites the app record, so this condition also fails
            // if a container was attached after the check above.
            let committed = self
                .kv
                .txn(
                    vec![Cond::ModRev(keys::app(id), rev)],
                    vec![Op::Delete(keys::app(id))],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok(rev);
            }
        }
        Err(MembershipError::Conflict(format!(
            "application {id} keeps changing; try again"
        )))
    }

    pub async fn containers(&self) -> Result<Vec<Container>> {
        Ok(self
            .list_decoded(keys::CONTAINERS)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    pub async fn containers_of(&self, app: &AppId) -> Result<Vec<Container>> {
        Ok(self
            .list_decoded(&keys::containers_of(app))
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    pub async fn container(&self, key: &ContainerKey) -> Result<Option<Container>> {
        Ok(self
            .get_decoded(&keys::container(key))
            .await?
            .map(|(c, _)| c))
    }

    /// Reserves the lowest free address of `network` for `owner`, and claims
    /// the container key itself. Safe against any number of concurrent callers
    /// on any number of hosts: both keys are created only if absent, and the
    /// container must not exist yet. [`MembershipError::Taken`] when the key
    /// is attached or claimed already (an automatic index then tries the next).
    pub async fn reserve_address(
        &self,
        network: &NetworkId,
        owner: &ContainerKey,
        host: &HostId,
    ) -> Result<Ipv4Addr> {
        let net = self.network(network).await?;
        let lease = AddressLease {
            owner: owner.clone(),
            host: host.clone(),
        };
        for _ in 0..CAS_RETRIES {
            let used: BTreeSet<Ipv4Addr> = self
                .kv
                .list(&keys::ips_of(network))
                .await?
                .entries
                .iter()
                .filter_map(|(k, _)| k.rsplit('/').next()?.parse().ok())
                .collect();
            let ip = ipam::next_address(&net.cidr, &used).ok_or_else(|| {
                MembershipError::Exhausted(format!(
                    "no free address left in network {network} ({}: {} in use)",
                    net.cidr,
                    used.len()
                ))
            })?;
            let committed = self
                .kv
                .txn(
                    vec![
                        Cond::Absent(keys::ip(network, ip)),
                        Cond::Absent(keys::claim(owner)),
                        Cond::Absent(keys::container(owner)),
                    ],
                    vec![
                        Op::Put(keys::ip(network, ip), encode(&lease)),
                        Op::Put(keys::claim(owner), encode(&lease)),
                    ],
                )
                .await?;
            if committed.is_some() {
                return Ok(ip);
            }
            let holder = match self
                .get_decoded::<AddressLease>(&keys::claim(owner))
                .await?
            {
                Some((claim, _)) => Some(claim.host),
                None => self.container(owner).await?.map(|c| c.host),
            };
            if let Some(h) = holder {
                return Err(MembershipError::Taken(format!(
                    "container {owner} is already attached (or being attached) on host {h}"
                )));
            }
        }
        Err(MembershipError::Conflict(format!(
            "too much contention on the addresses of network {network}; try again"
        )))
    }

    /// Releases an address if `owner` still holds it.
    pub async fn release_address(
        &self,
        network: &NetworkId,
        ip: Ipv4Addr,
        owner: &ContainerKey,
    ) -> Result<()> {
        let key = keys::ip(network, ip);
        if let Some((lease, rev)) = self.get_decoded::<AddressLease>(&key).await?
            && lease.owner == *owner
        {
            self.kv
                .txn(
                    vec![Cond::ModRev(key.clone(), rev)],
                    vec![Op::Delete(key), Op::Delete(keys::claim(owner))],
                )
                .await?;
        }
        Ok(())
    }

    /// Address leases held by `host` (to collect the ones a crash left behind).
    pub async fn leases_of_host(
        &self,
        host: &HostId,
    ) -> Result<Vec<(NetworkId, Ipv4Addr, AddressLease)>> {
        let listing = self.kv.list(keys::IPS).await?;
        let mut out = Vec::new();
        for (k, e) in &listing.entries {
            let lease: AddressLease = decode(k, e)?;
            if lease.host != *host {
                continue;
            }
            let mut parts = k[keys::IPS.len()..].split('/');
            let (Some(net), Some(ip)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let (Ok(net), Ok(ip)) = (net.parse(), ip.parse()) {
                out.push((net, ip, lease));
            }
        }
        Ok(out)
    }

    /// Records an attached container whose address is already reserved.
    pub async fn put_container(&self, c: &Container) -> Result<i64> {
        for _ in 0..CAS_RETRIES {
            let (app, app_rev) = self
                .get_decoded::<App>(&keys::app(&c.key.app))
                .await?
                .ok_or_else(|| MembershipError::NotFound(format!("application {}", c.key.app)))?;
            // Rewriting the app bumps its revision: see `delete_app`.
            let committed = self
                .kv
                .txn(
                    vec![
                        Cond::ModRev(keys::app(&app.id), app_rev),
                        Cond::Absent(keys::container(&c.key)),
                    ],
                    vec![
                        Op::Put(keys::app(&app.id), encode(&app)),
                        Op::Put(keys::container(&c.key), encode(c)),
                        Op::Delete(keys::claim(&c.key)),
                    ],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok(rev);
            }
            if let Some(existing) = self.container(&c.key).await? {
                return Err(MembershipError::Conflict(format!(
                    "container {} is already attached on host {}",
                    c.key, existing.host
                )));
            }
        }
        Err(MembershipError::Conflict(format!(
            "application {} keeps changing; try again",
            c.key.app
        )))
    }

    /// Removes a container record and frees its address, atomically.
    pub async fn delete_container(&self, key: &ContainerKey) -> Result<Option<(Container, i64)>> {
        for _ in 0..CAS_RETRIES {
            let Some((c, rev)) = self.get_decoded::<Container>(&keys::container(key)).await? else {
                return Ok(None);
            };
            let committed = self
                .kv
                .txn(
                    vec![Cond::ModRev(keys::container(key), rev)],
                    vec![
                        Op::Delete(keys::container(key)),
                        Op::Delete(keys::ip(&c.network, c.ip)),
                    ],
                )
                .await?;
            if let Some(rev) = committed {
                return Ok(Some((c, rev)));
            }
        }
        Err(MembershipError::Conflict(format!(
            "container {key} keeps changing; try again"
        )))
    }

    pub async fn hosts(&self) -> Result<Vec<Host>> {
        Ok(self
            .list_decoded(keys::HOSTS)
            .await?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    pub async fn put_host(&self, h: &Host) -> Result<i64> {
        self.kv
            .txn(vec![], vec![Op::Put(keys::host(&h.id), encode(h))])
            .await?
            .ok_or_else(|| MembershipError::Conflict("host registration failed".into()))
    }

    /// Removes a host from the fleet: its containers (and their addresses),
    /// any address it still holds, then its record. The other agents drop its
    /// endpoints and its tunnel as the deletions reach them.
    pub async fn remove_host(&self, id: &HostId) -> Result<i64> {
        if self.kv.get(&keys::host(id)).await?.is_none() {
            return Err(MembershipError::NotFound(format!("host {id}")));
        }
        for c in self
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.host == *id)
        {
            self.delete_container(&c.key).await?;
        }
        for (net, ip, lease) in self.leases_of_host(id).await? {
            self.release_address(&net, ip, &lease.owner).await?;
        }
        self.kv
            .txn(vec![], vec![Op::Delete(keys::host(id))])
            .await?
            .ok_or_else(|| MembershipError::Conflict("host removal failed".into()))
    }
}

#[cfg(test)]
pub(crate) mod conformance;
