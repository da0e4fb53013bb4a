//! Networks: their ranges and tags out of the pool document (and their
//! IPv6 /64s, [`super::v6`]), their egress, their deletion.

use std::collections::BTreeSet;

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::ids::NetworkId;

use super::{
    Membership, MembershipError, PoolDoc, PoolEntry, Result, Step, StoreError, as_read, encode, v6,
};
use crate::{
    ipam::{self, Ipv6Mode},
    model::{App, Egress, Network, now_secs},
    store::{
        backend::Op,
        keys::{self, Key},
    },
};

/// What `network create` asks for; `None`: the next free range.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewNetwork {
    pub cidr: Option<Ipv4Net>,
    pub cidr6: Option<Ipv6Net>,
    pub egress: Egress,
}

impl Membership {
    pub async fn network(&self, id: &NetworkId) -> Result<Network> {
        self.get_decoded(&Key::Network(*id))
            .await?
            .map(|(n, _)| n)
            .ok_or_else(|| MembershipError::NotFound(format!("network {id}")))
    }

    pub async fn networks(&self) -> Result<Vec<Network>> {
        self.list_decoded(keys::NETWORKS).await
    }

    /// Creates an IPv4-only network with `cidr`, or with the next free
    /// `/prefix` of `pool`.
    pub async fn create_network(
        &self,
        id: NetworkId,
        cidr: Option<Ipv4Net>,
        pool: &Ipv4Net,
        prefix: u8,
        egress: Egress,
    ) -> Result<(Network, i64)> {
        let spec = NewNetwork {
            cidr,
            cidr6: None,
            egress,
        };
        self.create_network_in(id, spec, pool, prefix, Ipv6Mode::Off)
            .await
    }

    /// Creates a network with the ranges `spec` asks for, or the next free
    /// ones: a `/prefix` of `pool`, and with IPv6 on a /64 of the fleet's
    /// IPv6 pool (which this write gives the fleet if it has none yet).
    pub async fn create_network_in(
        &self,
        id: NetworkId,
        spec: NewNetwork,
        pool: &Ipv4Net,
        prefix: u8,
        ipv6: Ipv6Mode,
    ) -> Result<(Network, i64)> {
        if let Some(c) = spec.cidr {
            ipam::check_network_range(&c, pool)
                .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        }
        if spec.cidr6.is_some() && !ipv6.is_on() {
            return Err(MembershipError::Invalid(
                "--cidr6 needs IPv6 on this host's agent (it runs with --ipv6 off)".into(),
            ));
        }
        let net_key = &Key::Network(id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut doc, pool_rev) = self.pool().await?;
                    if doc.networks.iter().any(|p| p.network == id) {
                        return Err(MembershipError::Conflict(format!(
                            "network {id} already exists"
                        )));
                    }
                    let cidr = pick_cidr(&doc, spec.cidr, pool, prefix)?;
                    let cidr6 = match ipv6 {
                        Ipv6Mode::Off => None,
                        Ipv6Mode::On { pool6 } => {
                            let nets = self.networks().await?;
                            let pool6 = v6::fleet_pool6(&doc, pool6)?;
                            doc.pool6 = Some(pool6);
                            Some(v6::pick_cidr6(&doc, &nets, &pool6, spec.cidr6)?)
                        }
                    };
                    let tags: BTreeSet<u32> = doc.networks.iter().map(|p| p.tag).collect();
                    let network = Network {
                        id,
                        cidr,
                        tag: ipam::next_tag(&tags),
                        created_at: now_secs(),
                        egress: spec.egress,
                        cidr6,
                    };
                    doc.networks.push(PoolEntry {
                        network: id,
                        cidr,
                        tag: network.tag,
                        cidr6,
                    });
                    Ok(Step::write(
                        vec![as_read(&Key::Pool, pool_rev), as_read(net_key, None)],
                        vec![
                            Op::Put(Key::Pool.into(), encode(&doc)),
                            Op::Put(net_key.to_string(), encode(&network)),
                        ],
                        move |rev| (network, rev),
                    ))
                })
            },
            || "too much contention on the address pool; try again".into(),
        )
        .await
    }

    /// Changes a network's access to the world; its hosts apply it to the
    /// running containers.
    pub async fn set_network_egress(
        &self,
        id: &NetworkId,
        egress: Egress,
    ) -> Result<(Network, i64)> {
        let net_key = &Key::Network(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut net, rev) = self
                        .get_decoded::<Network>(net_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("network {id}")))?;
                    if net.egress == egress {
                        return Ok(Step::Done((net, rev)));
                    }
                    net.egress = egress;
                    Ok(Step::write(
                        vec![as_read(net_key, Some(rev))],
                        vec![Op::Put(net_key.to_string(), encode(&net))],
                        move |rev| (net, rev),
                    ))
                })
            },
            || format!("network {id} keeps changing; try again"),
        )
        .await
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
        let net_key = &Key::Network(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (_, net_rev) = self
                        .get_decoded::<Network>(net_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("network {id}")))?;
                    let (mut doc, pool_rev) = self.pool().await?;
                    if pool_rev.is_none() {
                        return Err(StoreError::Corrupt("pool document missing".into()).into());
                    }
                    doc.networks.retain(|p| p.network != *id);
                    Ok(Step::write(
                        vec![
                            as_read(&Key::Pool, pool_rev),
                            as_read(net_key, Some(net_rev)),
                        ],
                        vec![
                            Op::Put(Key::Pool.into(), encode(&doc)),
                            Op::Delete(net_key.to_string()),
                        ],
                        |rev| rev,
                    ))
                })
            },
            || format!("network {id} keeps changing; try again"),
        )
        .await
    }
}

/// A network's IPv4 range: `wanted` if it overlaps no other, else the
/// next free `/prefix` of `pool`.
fn pick_cidr(
    doc: &PoolDoc,
    wanted: Option<Ipv4Net>,
    pool: &Ipv4Net,
    prefix: u8,
) -> Result<Ipv4Net> {
    if let Some(c) = wanted {
        if let Some(other) = doc.networks.iter().find(|p| ipam::overlaps(&c, &p.cidr)) {
            return Err(MembershipError::Conflict(format!(
                "range {c} overlaps {} of network {}",
                other.cidr, other.network
            )));
        }
        return Ok(c);
    }
    let taken: Vec<Ipv4Net> = doc.networks.iter().map(|p| p.cidr).collect();
    ipam::next_subnet(pool, prefix, &taken).ok_or_else(|| {
        MembershipError::Exhausted(format!(
            "address pool {pool} exhausted: no free /{prefix} left ({} networks)",
            doc.networks.len()
        ))
    })
}
