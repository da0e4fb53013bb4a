//! The membership rules: networks, applications, containers, hosts and
//! address allocation, written once on top of any [`Backend`], so both
//! backends behave the same and one conformance suite covers them.
//!
//! Every rule that changes more than one key, or depends on what it read, is
//! a read-modify-write: read, decide, then commit only if nothing it read has
//! changed since ([`Membership::read_modify_write`], the one retry loop).
//!
//! Here: the helpers and applications; [`networks`]: networks and their
//! ranges; [`containers`]: addresses and containers; [`hosts`]: the hosts of
//! the fleet; [`leases`]: address leases and key claims, in each host's
//! range; [`moving`]: an application's move to another network; [`v6`]:
//! the IPv6 prefixes and addresses; [`admissions`]: which hosts may run
//! which app; [`migrate`]: container records of an older release moved
//! under their host.

mod admissions;
mod containers;
mod hosts;
mod leases;
mod migrate;
mod moving;
mod networks;
mod services;
mod v6;

pub use containers::Reserved;
pub use networks::NewNetwork;

use std::sync::Arc;

use futures::future::BoxFuture;
use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::ids::{AppId, NetworkId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{
    backend::{Backend, Cond, Entry, Op, StoreError},
    keys::{self, Key},
};
use crate::{
    error::{ErrorKind, Kind},
    model::{App, Balance, Network, now_secs},
};

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

impl Kind for MembershipError {
    fn kind(&self) -> ErrorKind {
        match self {
            MembershipError::NotFound(_) => ErrorKind::NotFound,
            MembershipError::Conflict(_) | MembershipError::Taken(_) => ErrorKind::Conflict,
            MembershipError::Exhausted(_) => ErrorKind::Exhausted,
            MembershipError::Invalid(_) => ErrorKind::Invalid,
            MembershipError::Store(e) => e.kind(),
        }
    }
}

type Result<T, E = MembershipError> = std::result::Result<T, E>;

/// Allocations of the fleet pool: one document, changed by compare-and-swap,
/// so two networks never get overlapping ranges or the same tag.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolDoc {
    pub networks: Vec<PoolEntry>,
    /// The fleet's IPv6 pool (unique local): drawn, or taken from
    /// `--pool6`, by the first agent with IPv6 on that writes the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool6: Option<Ipv6Net>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolEntry {
    pub network: NetworkId,
    pub cidr: Ipv4Net,
    pub tag: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<Ipv6Net>,
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

/// The condition "this key is as I read it": absent, or unchanged since.
fn as_read(key: &Key, rev: Option<i64>) -> Cond {
    match rev {
        Some(rev) => Cond::ModRev(key.to_string(), rev),
        None => Cond::Absent(key.to_string()),
    }
}

/// What one attempt of a read-modify-write decided.
enum Step<T> {
    /// Commit `ops` if every condition still holds; `then` turns the
    /// revision of the commit into the result.
    Write {
        conds: Vec<Cond>,
        ops: Vec<Op>,
        then: Box<dyn FnOnce(i64) -> T + Send>,
    },
    /// Nothing to write: this is the answer.
    Done(T),
}

impl<T> Step<T> {
    fn write(conds: Vec<Cond>, ops: Vec<Op>, then: impl FnOnce(i64) -> T + Send + 'static) -> Self {
        Step::Write {
            conds,
            ops,
            then: Box::new(then),
        }
    }
}

/// Network membership on top of a [`Backend`].
#[derive(Clone)]
pub struct Membership {
    kv: Arc<dyn Backend>,
    /// How many containers one host may run (`--host-quota`): the others'
    /// allocations count at most twice as many leases of it per network
    /// and family (`view::lease_quota`).
    host_quota: usize,
}

impl Membership {
    pub fn new(kv: Arc<dyn Backend>) -> Self {
        Membership {
            kv,
            host_quota: crate::store::view::DEFAULT_HOST_QUOTA,
        }
    }

    /// The same, for hosts of quota `quota`: the agents' `--host-quota`.
    pub fn with_host_quota(mut self, quota: usize) -> Self {
        self.host_quota = quota;
        self
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.kv
    }

    /// Runs `attempt` (read, decide; given how many attempts lost a race
    /// before it) and commits what it decided, again from a fresh read
    /// whenever another writer changed what it read, up to [`CAS_RETRIES`]
    /// times; then gives up with `contention`.
    async fn read_modify_write<'a, T>(
        &self,
        mut attempt: impl FnMut(usize) -> BoxFuture<'a, Result<Step<T>>>,
        contention: impl FnOnce() -> String,
    ) -> Result<T> {
        for n in 0..CAS_RETRIES {
            match attempt(n).await? {
                Step::Done(v) => return Ok(v),
                Step::Write { conds, ops, then } => {
                    if let Some(rev) = self.kv.txn(conds, ops).await? {
                        return Ok(then(rev));
                    }
                }
            }
        }
        Err(MembershipError::Conflict(contention()))
    }

    async fn get_decoded<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<(T, i64)>> {
        let key = key.to_string();
        match self.kv.get(&key).await? {
            Some(e) => Ok(Some((decode(&key, &e)?, e.mod_rev))),
            None => Ok(None),
        }
    }

    async fn list_decoded<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let listing = self.kv.list(prefix).await?;
        listing.entries.iter().map(|(k, e)| decode(k, e)).collect()
    }

    async fn pool(&self) -> Result<(PoolDoc, Option<i64>)> {
        Ok(match self.get_decoded(&Key::Pool).await? {
            Some((doc, rev)) => (doc, Some(rev)),
            None => (PoolDoc::default(), None),
        })
    }

    pub async fn app(&self, id: &AppId) -> Result<App> {
        self.get_decoded(&Key::App(*id))
            .await?
            .map(|(a, _)| a)
            .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))
    }

    pub async fn apps(&self) -> Result<Vec<App>> {
        self.list_decoded(keys::APPS).await
    }

    pub async fn create_app(
        &self,
        id: AppId,
        network: &NetworkId,
        name: Option<String>,
        web_port: u16,
        balance: Balance,
        health_port: Option<u16>,
    ) -> Result<(App, i64)> {
        if web_port == 0 {
            return Err(MembershipError::Invalid(
                "invalid web port 0: expected a port from 1 to 65535".into(),
            ));
        }
        let (net_key, app_key, name) = (&Key::Network(*network), &Key::App(id), &name);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (net, net_rev) = self
                        .get_decoded::<Network>(net_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("network {network}")))?;
                    if self.kv.get(&app_key.to_string()).await?.is_some() {
                        return Err(MembershipError::Conflict(format!(
                            "application {id} already exists"
                        )));
                    }
                    let app = App {
                        id,
                        network: *network,
                        name: name.clone(),
                        created_at: now_secs(),
                        web_port,
                        balance,
                        services: Default::default(),
                        services6: Default::default(),
                        health_port,
                    };
                    // Rewriting the network bumps its revision, so a concurrent
                    // `network delete` (which checks it) cannot orphan this app.
                    Ok(Step::write(
                        vec![as_read(net_key, Some(net_rev)), as_read(app_key, None)],
                        vec![
                            Op::Put(net_key.to_string(), encode(&net)),
                            Op::Put(app_key.to_string(), encode(&app)),
                        ],
                        move |rev| (app, rev),
                    ))
                })
            },
            || format!("network {network} keeps changing; try again"),
        )
        .await
    }

    /// Deletes an application that has no container left.
    pub async fn delete_app(&self, id: &AppId) -> Result<i64> {
        let app_key = &Key::App(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (app, rev) = self
                        .get_decoded::<App>(app_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))?;
                    let containers = self.containers_of(id).await?;
                    if !containers.is_empty() {
                        return Err(MembershipError::Conflict(format!(
                            "application {id} has {} container(s) attached; detach them first",
                            containers.len()
                        )));
                    }
                    // Attaching rewrites the app record, so this condition also
                    // fails if a container was attached after the check above.
                    // Its service addresses go with it.
                    let mut ops = vec![Op::Delete(app_key.to_string())];
                    for ip in app.services.values() {
                        ops.push(Op::Delete(Key::Ip(app.network, *ip).into()));
                    }
                    for ip in app.services6.values() {
                        ops.push(Op::Delete(Key::Ip6(app.network, *ip).into()));
                    }
                    Ok(Step::write(vec![as_read(app_key, Some(rev))], ops, |rev| {
                        rev
                    }))
                })
            },
            || format!("application {id} keeps changing; try again"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Egress;

    #[test]
    fn every_error_has_its_kind() {
        let cases = [
            (MembershipError::NotFound("x".into()), ErrorKind::NotFound),
            (MembershipError::Conflict("x".into()), ErrorKind::Conflict),
            (MembershipError::Taken("x".into()), ErrorKind::Conflict),
            (MembershipError::Exhausted("x".into()), ErrorKind::Exhausted),
            (MembershipError::Invalid("x".into()), ErrorKind::Invalid),
            (
                StoreError::Unavailable("x".into()).into(),
                ErrorKind::Unavailable,
            ),
            (StoreError::Corrupt("x".into()).into(), ErrorKind::Internal),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    /// A store that answers every read with nothing and loses every race,
    /// or is down altogether.
    struct Fake {
        down: bool,
        txns: std::sync::atomic::AtomicUsize,
    }

    impl Fake {
        fn new(down: bool) -> Arc<Fake> {
            Arc::new(Fake {
                down,
                txns: Default::default(),
            })
        }
        fn check(&self) -> Result<(), StoreError> {
            if self.down {
                Err(StoreError::Unavailable(
                    "etcd 192.0.2.1:2379: refused".into(),
                ))
            } else {
                Ok(())
            }
        }
    }

    impl Backend for Fake {
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, std::result::Result<Option<Entry>, StoreError>> {
            Box::pin(async move { self.check().map(|()| None) })
        }
        fn list<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, std::result::Result<super::super::Listing, StoreError>> {
            Box::pin(async move { self.check().map(|()| Default::default()) })
        }
        fn txn(
            &self,
            _: Vec<Cond>,
            _: Vec<Op>,
        ) -> BoxFuture<'_, std::result::Result<Option<i64>, StoreError>> {
            self.txns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move { self.check().map(|()| None) })
        }
        fn watch<'a>(
            &'a self,
            _: &'a str,
            _: i64,
        ) -> BoxFuture<
            'a,
            std::result::Result<tokio::sync::mpsc::Receiver<super::super::WatchEvent>, StoreError>,
        > {
            Box::pin(async move { Err(StoreError::Unavailable("no watch".into())) })
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn pool() -> Ipv4Net {
        "10.240.0.0/12".parse().unwrap()
    }

    #[tokio::test]
    async fn a_race_lost_every_time_ends_in_a_conflict() {
        let kv = Fake::new(false);
        let m = Membership::new(kv.clone());
        let id = crate::testing::model::net_id(1);
        let err = m
            .create_network(id, None, &pool(), 22, Egress::Allow)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(err.to_string().contains("try again"), "{err}");
        assert_eq!(
            kv.txns.load(std::sync::atomic::Ordering::Relaxed),
            CAS_RETRIES
        );
    }

    #[tokio::test]
    async fn a_store_down_is_unavailable() {
        let m = Membership::new(Fake::new(true));
        let id = crate::testing::model::net_id(1);
        let err = m
            .create_network(id, None, &pool(), 22, Egress::Allow)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        let err = m.networks().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }

    #[tokio::test]
    async fn bad_ranges_are_invalid() {
        let m = Membership::new(Fake::new(false));
        let id = crate::testing::model::net_id(1);
        for bad in [
            "10.240.0.0/31",
            "10.240.0.1/24",
            "169.254.0.0/20",
            "10.0.0.0/24",
            "127.0.0.0/24",
            "224.0.0.0/24",
            "0.0.0.0/24",
            "255.255.255.0/30",
        ] {
            let err = m
                .create_network(id, Some(bad.parse().unwrap()), &pool(), 22, Egress::Allow)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{bad}: {err}");
        }
    }
}
