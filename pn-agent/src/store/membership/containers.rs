//! Addresses and containers: an address is reserved (with a claim on the
//! container key) before the container's interface is made, and recorded
//! with the container once it is.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
};

use pn_common::ids::{AppId, HostId, NetworkId};

use futures::future::try_join_all;

use super::{
    Membership, MembershipError, Result, Step, as_read, decode, encode,
    leases::{address_unheld, unheld},
    v6,
};
use crate::{
    ipam,
    model::{AddressLease, App, Container, ContainerKey},
    store::{
        backend::{Op, StoreError},
        keys::{self, Key},
    },
};

/// The addresses an attach reserved: its IPv4 one, and its IPv6 one when
/// asked for and the network has an IPv6 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

impl Reserved {
    /// Both addresses, for releasing them.
    pub fn all(&self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(IpAddr::V4(self.ip)).chain(self.ip6.map(IpAddr::V6))
    }
}

/// The lowest address of `cidr` not in `used`.
pub(super) fn free_address(
    network: &NetworkId,
    cidr: &ipnet::Ipv4Net,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    ipam::next_address(cidr, used).ok_or_else(|| {
        MembershipError::Exhausted(format!(
            "no free address left in network {network} ({cidr}: {} in use)",
            used.len()
        ))
    })
}

impl Membership {
    /// Every container record, of both layouts (a key recorded under its
    /// host wins over its legacy copy).
    pub async fn containers(&self) -> Result<Vec<Container>> {
        let mut out: std::collections::BTreeMap<ContainerKey, Container> = self
            .list_decoded::<Container>(keys::CONTAINERS)
            .await?
            .into_iter()
            .map(|c| (c.key.clone(), c))
            .collect();
        // Hosts' ranges hold their leases and claims too.
        for (k, e) in self.kv.list(keys::ON).await?.entries {
            if let Some(Key::Container(..)) = Key::parse(&k) {
                let c: Container = decode(&k, &e)?;
                out.insert(c.key.clone(), c);
            }
        }
        Ok(out.into_values().collect())
    }

    /// The containers of one app (a scan of the fleet's: records are
    /// grouped by host, for the hosts' key ranges, not by app).
    pub async fn containers_of(&self, app: &AppId) -> Result<Vec<Container>> {
        let mut all = self.containers().await?;
        all.retain(|c| c.key.app == *app);
        Ok(all)
    }

    /// The containers of one app on one host, of both layouts (a listing
    /// of that host's range, and of the app's legacy records).
    pub async fn containers_on(&self, host: &HostId, app: &AppId) -> Result<Vec<Container>> {
        let mut out = self
            .list_decoded::<Container>(&keys::containers_on(host, app))
            .await?;
        let legacy = self
            .list_decoded::<Container>(&keys::legacy_containers_of(app))
            .await?;
        let new: BTreeSet<ContainerKey> = out.iter().map(|c| c.key.clone()).collect();
        out.extend(
            legacy
                .into_iter()
                .filter(|c| c.host == *host && !new.contains(&c.key)),
        );
        Ok(out)
    }

    /// Container `key`'s record: the oldest under any registered host, or
    /// at its legacy key (one read per host).
    pub async fn container(&self, key: &ContainerKey) -> Result<Option<Container>> {
        Ok(self.locate_with(key, false).await?.map(|(_, c, _)| c))
    }

    /// Where container `key`'s record is, to change it: as [`Self::container`],
    /// then, if no registered host has it, in every host's range (the
    /// record of a host removed meanwhile), the oldest record of the key,
    /// the one every agent believes.
    pub(super) async fn locate(&self, key: &ContainerKey) -> Result<Option<(Key, Container, i64)>> {
        self.locate_with(key, true).await
    }

    async fn locate_with(
        &self,
        key: &ContainerKey,
        scan: bool,
    ) -> Result<Option<(Key, Container, i64)>> {
        let hosts = self.lease_holders(None).await?;
        let at: Vec<Key> = hosts
            .into_iter()
            .map(|h| Key::Container(h, key.clone()))
            .collect();
        let names: Vec<String> = at.iter().map(Key::to_string).collect();
        let found = try_join_all(names.iter().map(|k| self.kv.get(k))).await?;
        let oldest = at
            .into_iter()
            .zip(found)
            .filter_map(|(k, e)| Some((k, e?)))
            .min_by_key(|(_, e)| e.create_rev);
        if let Some((at, e)) = oldest {
            let c = decode(&at.to_string(), &e)?;
            return Ok(Some((at, c, e.mod_rev)));
        }
        let at = Key::LegacyContainer(key.clone());
        if let Some((c, rev)) = self.get_decoded::<Container>(&at).await? {
            return Ok(Some((at, c, rev)));
        }
        if !scan {
            return Ok(None);
        }
        let listing = self.kv.list(keys::ON).await?;
        let oldest = listing
            .entries
            .iter()
            .filter(|(k, _)| matches!(Key::parse(k), Some(Key::Container(_, ck)) if ck == *key))
            .min_by_key(|(_, e)| e.create_rev);
        match oldest {
            Some((k, e)) => {
                let at = Key::parse(k).expect("parsed above");
                Ok(Some((at, decode(k, e)?, e.mod_rev)))
            }
            None => Ok(None),
        }
    }

    /// Reserves the lowest free address of `network` for `owner` (and with
    /// `ipv6` the lowest free one of its IPv6 range, if it has one), and
    /// claims the container key itself. Safe against any number of
    /// concurrent callers on any number of hosts: every key is created only
    /// if absent, and the container must not exist yet.
    /// [`MembershipError::Taken`] when the key is attached or claimed
    /// already (an automatic index then tries the next). The claim and the
    /// leases are `host`'s (in its range): they stay as long as the
    /// container; no registered host holds them (the transaction's
    /// conditions).
    pub async fn reserve_address(
        &self,
        network: &NetworkId,
        owner: &ContainerKey,
        host: &HostId,
        ipv6: bool,
    ) -> Result<Reserved> {
        let net = self.network(network).await?;
        let lease = AddressLease {
            owner: owner.clone(),
            host: host.clone(),
            service: false,
        };
        let (legacy_claim, container_key, claim_key) = (
            &Key::Claim(owner.clone()),
            &Key::LegacyContainer(owner.clone()),
            &Key::HostClaim(host.clone(), owner.clone()),
        );
        let lease = &lease;
        self.read_modify_write(
            move |lost| {
                Box::pin(async move {
                    // Only after a lost race is it worth asking who holds the key.
                    if lost > 0
                        && let Some(h) = self.holder(owner).await?
                    {
                        return Err(MembershipError::Taken(format!(
                            "container {owner} is already attached (or being attached) on host {h}"
                        )));
                    }
                    let hosts = self.lease_holders_in(network, Some(host)).await?;
                    let used = self.used_addresses(network, &hosts).await?;
                    let ip = free_address(network, &net.cidr, &used.v4)?;
                    let ip6 = match net.cidr6.filter(|_| ipv6) {
                        Some(cidr6) => Some(v6::free_address6(network, &cidr6, &used.v6)?),
                        None => None,
                    };
                    let reserved = Reserved { ip, ip6 };
                    let mut conds = vec![as_read(legacy_claim, None), as_read(container_key, None)];
                    let claimers = self.claim_holders(&owner.app, Some(host)).await?;
                    conds.extend(unheld(&claimers, |h| {
                        Key::HostClaim(h.clone(), owner.clone())
                    }));
                    let mut ops = vec![Op::Put(claim_key.to_string(), encode(lease))];
                    for ip in reserved.all() {
                        conds.extend(address_unheld(&hosts, *network, ip, &used.ignored));
                        ops.push(Op::Put(
                            Key::HostIp(host.clone(), *network, ip).into(),
                            encode(lease),
                        ));
                    }
                    Ok(Step::write(conds, ops, move |_| reserved))
                })
            },
            || format!("too much contention on the addresses of network {network}; try again"),
        )
        .await
    }

    /// Records an attached container whose address is already reserved,
    /// under its host. The app is read, not written (it is the operator's):
    /// but for the first container of a type of a `vip` app, which gives
    /// the type its service address, and so needs the operator's rights. A
    /// host's role is refused that write: its container is then recorded
    /// without, and the type has no service address until the operator's
    /// `app update ID --balance vip` gives one to every type with containers.
    pub async fn put_container(&self, c: &Container) -> Result<i64> {
        match self.put_container_with(c, true).await {
            Err(MembershipError::Store(StoreError::Refused(why))) => {
                log::warn!(
                    "container {}: giving its type a service address was refused ({why}); \
                     recorded without (the operator's `app update --balance vip` gives it)",
                    c.key
                );
                self.put_container_with(c, false).await
            }
            r => r,
        }
    }

    async fn put_container_with(&self, c: &Container, lease: bool) -> Result<i64> {
        let app_key = &Key::App(c.key.app);
        let container_key = &Key::Container(c.host.clone(), c.key.clone());
        let legacy_key = &Key::LegacyContainer(c.key.clone());
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut app, app_rev) =
                        self.get_decoded::<App>(app_key).await?.ok_or_else(|| {
                            MembershipError::NotFound(format!("application {}", c.key.app))
                        })?;
                    // The claim is this attach's: only a record of its own
                    // or a legacy one can be in the way (no scan of the fleet).
                    for at in [container_key, legacy_key] {
                        if let Some((existing, _)) = self.get_decoded::<Container>(at).await? {
                            return Err(MembershipError::Conflict(format!(
                                "container {} is already attached on host {}",
                                c.key, existing.host
                            )));
                        }
                    }
                    if app.network != c.network {
                        // Moved while this container was being attached.
                        return Err(MembershipError::Conflict(format!(
                            "application {} moved to network {} during the attach; try again",
                            c.key.app, app.network
                        )));
                    }
                    let types = lease.then(|| c.key.ctype.clone());
                    let leases = self.lease_services(&mut app, types, &c.host).await?;
                    let mut conds = vec![
                        as_read(app_key, Some(app_rev)),
                        as_read(container_key, None),
                        as_read(legacy_key, None),
                    ];
                    conds.extend(leases.conds);
                    let mut ops = leases.ops;
                    if !ops.is_empty() {
                        ops.push(Op::Put(app_key.to_string(), encode(&app)));
                    }
                    ops.push(Op::Put(container_key.to_string(), encode(c)));
                    Ok(Step::write(conds, ops, |rev| rev))
                })
            },
            || format!("application {} keeps changing; try again", c.key.app),
        )
        .await
    }

    /// Sets (or clears) where a container is published, if the record is
    /// still the one `expected` describes (same host, same address): a
    /// container detached or moved meanwhile is left alone. `None` when
    /// nothing was written.
    pub async fn set_published(
        &self,
        expected: &Container,
        published: Option<SocketAddrV4>,
    ) -> Result<Option<i64>> {
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, mut c, rev)) = self.locate(&expected.key).await?
                    else {
                        return Ok(Step::Done(None));
                    };
                    let container_key = &container_key;
                    if c.host != expected.host || c.ip != expected.ip || c.published == published {
                        return Ok(Step::Done(None));
                    }
                    c.published = published;
                    Ok(Step::write(
                        vec![as_read(container_key, Some(rev))],
                        vec![Op::Put(container_key.to_string(), encode(&c))],
                        Some,
                    ))
                })
            },
            || format!("container {} keeps changing; try again", expected.key),
        )
        .await
    }

    /// Removes a container record and frees its addresses and its claim,
    /// atomically.
    pub async fn delete_container(&self, key: &ContainerKey) -> Result<Option<(Container, i64)>> {
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, c, rev)) = self.locate(key).await? else {
                        return Ok(Step::Done(None));
                    };
                    // The record's delete first: a watcher that reads one
                    // event of the transaction reads that one.
                    let (mut conds, leases) = self.lease_deletes(&c, true).await?;
                    conds.push(as_read(&container_key, Some(rev)));
                    let mut ops = vec![Op::Delete(container_key.to_string())];
                    ops.extend(leases);
                    Ok(Step::write(conds, ops, move |rev| Some((c, rev))))
                })
            },
            || format!("container {key} keeps changing; try again"),
        )
        .await
    }
}
