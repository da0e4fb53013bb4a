//! Moving an application to another network: first its record names the
//! new network (so every container attached from then on is in it), then
//! each container already attached takes an address of the new network and
//! frees its old one, in one transaction per container. Each step can be
//! run again: a move that stopped half-way is finished by moving again.

use std::net::IpAddr;

use pn_common::ids::{AppId, NetworkId};

use super::{
    Membership, MembershipError, Result, Step, as_read, containers::free_address, encode,
    leases::address_unheld, v6::free_address6,
};
use crate::{
    model::{AddressLease, App, Container, ContainerKey, Network},
    store::{backend::Op, keys::Key},
};

impl Membership {
    /// Makes `id`'s record name `network`; the app as it is now, the
    /// network it was in, and the revision of the change (`None`: it was
    /// in `network` already).
    pub async fn set_app_network(
        &self,
        id: &AppId,
        network: &NetworkId,
    ) -> Result<(App, NetworkId, Option<i64>)> {
        let (app_key, net_key) = (&Key::App(*id), &Key::Network(*network));
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (app, app_rev) = self
                        .get_decoded::<App>(app_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))?;
                    let (net, net_rev) = self
                        .get_decoded::<Network>(net_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("network {network}")))?;
                    let old = app.network;
                    // Service addresses are leased in the old network's
                    // range; moving them is not built yet.
                    if !app.balance.is_dns() && old != *network {
                        return Err(MembershipError::Conflict(format!(
                            "application {id} balances by service address (vip); switch it to dns (`app update {id} --balance dns`) before moving it"
                        )));
                    }
                    if old == *network {
                        return Ok(Step::Done((app, old, None)));
                    }
                    let moved = App {
                        network: *network,
                        ..app
                    };
                    // Rewriting the network bumps its revision, so a
                    // concurrent `network delete` cannot orphan the app (as
                    // in `create_app`).
                    Ok(Step::write(
                        vec![
                            as_read(app_key, Some(app_rev)),
                            as_read(net_key, Some(net_rev)),
                        ],
                        vec![
                            Op::Put(net_key.to_string(), encode(&net)),
                            Op::Put(app_key.to_string(), encode(&moved)),
                        ],
                        move |rev| (moved, old, Some(rev)),
                    ))
                })
            },
            || format!("application {id} keeps changing; try again"),
        )
        .await
    }

    /// Gives container `key` the lowest free address of `network` (and of
    /// its IPv6 range, if the container had an IPv6 address and the network
    /// has a range) and frees its old ones, in one transaction; the record
    /// as it is now and the revision of the change (`None`: gone, or in
    /// `network` already).
    pub async fn move_container(
        &self,
        key: &ContainerKey,
        network: &NetworkId,
    ) -> Result<Option<(Container, i64)>> {
        let net = self.network(network).await?;
        let net = &net;
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, c, rev)) = self.locate(key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let container_key = &container_key;
                    if c.network == *network {
                        return Ok(Step::Done(None));
                    }
                    let hosts = self.lease_holders_in(network, Some(&c.host)).await?;
                    let used = self.used_addresses(network, &hosts).await?;
                    let ip = free_address(network, &net.cidr, &used.v4)?;
                    let ip6 = match net.cidr6.filter(|_| c.ip6.is_some()) {
                        Some(cidr6) => Some(free_address6(network, &cidr6, &used.v6)?),
                        None => None,
                    };
                    let lease = encode(&AddressLease {
                        owner: key.clone(),
                        host: c.host.clone(),
                        service: false,
                    });
                    // The claim stays: the container keeps its key. The
                    // new leases, then the record, then the old leases'
                    // deletes: a watch never sees the record without a
                    // lease of its address (agents refuse it then).
                    let (mut conds, frees) = self.lease_deletes(&c, false).await?;
                    let mut ops = Vec::new();
                    conds.push(as_read(container_key, Some(rev)));
                    let new_ips = std::iter::once(IpAddr::V4(ip)).chain(ip6.map(IpAddr::V6));
                    for new_ip in new_ips {
                        conds.extend(address_unheld(&hosts, *network, new_ip, &used.ignored));
                        ops.push(Op::Put(
                            Key::HostIp(c.host.clone(), *network, new_ip).into(),
                            lease.clone(),
                        ));
                    }
                    let moved = Container {
                        network: *network,
                        ip,
                        ip6,
                        ..c
                    };
                    ops.push(Op::Put(container_key.to_string(), encode(&moved)));
                    ops.extend(frees);
                    Ok(Step::write(conds, ops, move |rev| Some((moved, rev))))
                })
            },
            || format!("too much contention on the addresses of network {network}; try again"),
        )
        .await
    }
}
