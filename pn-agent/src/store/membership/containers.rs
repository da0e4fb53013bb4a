//! Addresses and containers: an address is reserved (with a claim on the
//! container key) before the container's interface is made, and recorded
//! with the container once it is.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
};

use pn_common::ids::{AppId, HostId, NetworkId};

use super::{Membership, MembershipError, Result, Step, as_read, decode, encode};
use crate::{
    ipam,
    model::{AddressLease, App, Container, ContainerKey},
    store::{
        backend::Op,
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

impl Membership {
    /// The lowest address of `cidr` no lease of `network` holds (read in
    /// the caller's compare-and-swap step, which conditions on it).
    pub(super) async fn free_address(
        &self,
        network: &NetworkId,
        cidr: &ipnet::Ipv4Net,
    ) -> Result<Ipv4Addr> {
        let used: BTreeSet<Ipv4Addr> = self
            .kv
            .list(&keys::ips_of(network))
            .await?
            .entries
            .iter()
            .filter_map(|(k, _)| match Key::parse(k)? {
                Key::Ip(_, ip) => Some(ip),
                _ => None,
            })
            .collect();
        ipam::next_address(cidr, &used).ok_or_else(|| {
            MembershipError::Exhausted(format!(
                "no free address left in network {network} ({cidr}: {} in use)",
                used.len()
            ))
        })
    }

    pub async fn containers(&self) -> Result<Vec<Container>> {
        self.list_decoded(keys::CONTAINERS).await
    }

    pub async fn containers_of(&self, app: &AppId) -> Result<Vec<Container>> {
        self.list_decoded(&keys::containers_of(app)).await
    }

    pub async fn container(&self, key: &ContainerKey) -> Result<Option<Container>> {
        Ok(self
            .get_decoded(&Key::Container(key.clone()))
            .await?
            .map(|(c, _)| c))
    }

    /// Reserves the lowest free address of `network` for `owner` (and with
    /// `ipv6` the lowest free one of its IPv6 range, if it has one), and
    /// claims the container key itself. Safe against any number of
    /// concurrent callers on any number of hosts: every key is created only
    /// if absent, and the container must not exist yet.
    /// [`MembershipError::Taken`] when the key is attached or claimed
    /// already (an automatic index then tries the next).
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
        let (claim_key, container_key) =
            (&Key::Claim(owner.clone()), &Key::Container(owner.clone()));
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
                    let ip = self.free_address(network, &net.cidr).await?;
                    let ip6 = match net.cidr6.filter(|_| ipv6) {
                        Some(cidr6) => Some(self.free_address6(network, &cidr6).await?),
                        None => None,
                    };
                    let reserved = Reserved { ip, ip6 };
                    let mut conds = vec![as_read(claim_key, None), as_read(container_key, None)];
                    let mut ops = vec![Op::Put(claim_key.to_string(), encode(lease))];
                    for ip in reserved.all() {
                        let ip_key = Key::lease(*network, ip);
                        conds.push(as_read(&ip_key, None));
                        ops.push(Op::Put(ip_key.into(), encode(lease)));
                    }
                    Ok(Step::write(conds, ops, move |_| reserved))
                })
            },
            || format!("too much contention on the addresses of network {network}; try again"),
        )
        .await
    }

    /// The host attaching (claim) or holding (record) a container key.
    async fn holder(&self, key: &ContainerKey) -> Result<Option<HostId>> {
        if let Some((claim, _)) = self
            .get_decoded::<AddressLease>(&Key::Claim(key.clone()))
            .await?
        {
            return Ok(Some(claim.host));
        }
        Ok(self.container(key).await?.map(|c| c.host))
    }

    /// Releases an address (of either family) if `owner` still holds it.
    pub async fn release_address(
        &self,
        network: &NetworkId,
        ip: IpAddr,
        owner: &ContainerKey,
    ) -> Result<()> {
        let ip_key = &Key::lease(*network, ip);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    match self.get_decoded::<AddressLease>(ip_key).await? {
                        Some((lease, rev)) if lease.owner == *owner => Ok(Step::write(
                            vec![as_read(ip_key, Some(rev))],
                            vec![
                                Op::Delete(ip_key.to_string()),
                                Op::Delete(Key::Claim(owner.clone()).into()),
                            ],
                            |_| (),
                        )),
                        _ => Ok(Step::Done(())),
                    }
                })
            },
            || format!("address {ip} of network {network} keeps changing; try again"),
        )
        .await
    }

    /// Address leases of both families held by `host` (to collect the ones
    /// a crash left behind).
    pub async fn leases_of_host(
        &self,
        host: &HostId,
    ) -> Result<Vec<(NetworkId, IpAddr, AddressLease)>> {
        let listing = self.kv.list(keys::IPS).await?;
        let mut out = Vec::new();
        for (k, e) in &listing.entries {
            let (net, ip) = match Key::parse(k) {
                Some(Key::Ip(net, ip)) => (net, IpAddr::V4(ip)),
                Some(Key::Ip6(net, ip)) => (net, IpAddr::V6(ip)),
                _ => continue,
            };
            let lease: AddressLease = decode(k, e)?;
            if lease.host == *host && !lease.service {
                out.push((net, ip, lease));
            }
        }
        Ok(out)
    }

    /// Records an attached container whose address is already reserved.
    pub async fn put_container(&self, c: &Container) -> Result<i64> {
        let app_key = &Key::App(c.key.app);
        let container_key = &Key::Container(c.key.clone());
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut app, app_rev) =
                        self.get_decoded::<App>(app_key).await?.ok_or_else(|| {
                            MembershipError::NotFound(format!("application {}", c.key.app))
                        })?;
                    if let Some(existing) = self.container(&c.key).await? {
                        return Err(MembershipError::Conflict(format!(
                            "container {} is already attached on host {}",
                            c.key, existing.host
                        )));
                    }
                    if app.network != c.network {
                        // Moved while this container was being attached.
                        return Err(MembershipError::Conflict(format!(
                            "application {} moved to network {} during the attach; try again",
                            c.key.app, app.network
                        )));
                    }
                    // The first container of a type of a `vip` app gives the
                    // type its service address.
                    let leases = self
                        .lease_services(&mut app, [c.key.ctype.clone()], &c.host)
                        .await?;
                    let mut conds = vec![
                        as_read(app_key, Some(app_rev)),
                        as_read(container_key, None),
                    ];
                    conds.extend(leases.conds);
                    let mut ops = leases.ops;
                    // Rewriting the app bumps its revision: see `delete_app`.
                    ops.extend([
                        Op::Put(app_key.to_string(), encode(&app)),
                        Op::Put(container_key.to_string(), encode(c)),
                        Op::Delete(Key::Claim(c.key.clone()).into()),
                    ]);
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
        let container_key = &Key::Container(expected.key.clone());
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((mut c, rev)) = self.get_decoded::<Container>(container_key).await?
                    else {
                        return Ok(Step::Done(None));
                    };
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

    /// Removes a container record and frees its addresses, atomically.
    pub async fn delete_container(&self, key: &ContainerKey) -> Result<Option<(Container, i64)>> {
        let container_key = &Key::Container(key.clone());
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((c, rev)) = self.get_decoded::<Container>(container_key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let mut ops = vec![
                        Op::Delete(container_key.to_string()),
                        Op::Delete(Key::Ip(c.network, c.ip).into()),
                    ];
                    if let Some(ip6) = c.ip6 {
                        ops.push(Op::Delete(Key::Ip6(c.network, ip6).into()));
                    }
                    Ok(Step::write(
                        vec![as_read(container_key, Some(rev))],
                        ops,
                        move |rev| Some((c, rev)),
                    ))
                })
            },
            || format!("container {key} keeps changing; try again"),
        )
        .await
    }
}
