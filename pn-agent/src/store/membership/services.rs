//! Service addresses of the apps that balance by `vip`: one per container
//! type, leased under `ips/` (the operator's; checked against every host's
//! container leases, so the two never collide), written in the same transaction as the app record that names
//! it, and freed with it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use pn_common::ids::{AppId, ContainerType, HostId};

use super::{
    Membership, MembershipError, Result, Step, as_read, encode, leases::address_unheld,
    v6::free_address6,
};
use crate::{
    ipam,
    model::{AddressLease, App, Balance, ContainerKey, Network},
    store::{
        backend::{Cond, Op},
        keys::Key,
    },
};

/// What giving an app new service addresses adds to a transaction.
#[derive(Default)]
pub(super) struct Leases {
    pub conds: Vec<Cond>,
    pub ops: Vec<Op>,
}

impl Membership {
    /// Gives `app` (which balances by `vip`) a service address for each of
    /// `types` it has none for: the lowest free addresses of its network;
    /// and, if the network has an IPv6 range, an IPv6 one to each type
    /// that has none (a lease its type already holds, when an older agent's
    /// rewrite dropped it from the record, else the lowest free one).
    pub(super) async fn lease_services(
        &self,
        app: &mut App,
        types: impl IntoIterator<Item = ContainerType>,
        host: &HostId,
    ) -> Result<Leases> {
        let mut out = Leases::default();
        if app.balance != Balance::Vip {
            return Ok(out);
        }
        let missing: BTreeSet<ContainerType> = types
            .into_iter()
            .filter(|t| !app.services.contains_key(t))
            .collect();
        let net: Network = self.network(&app.network).await?;
        let bare6 = net.cidr6.is_some()
            && app
                .services
                .keys()
                .chain(&missing)
                .any(|t| !app.services6.contains_key(t));
        if missing.is_empty() && !bare6 {
            return Ok(out);
        }
        let hosts = self.lease_holders_in(&app.network, Some(host)).await?;
        let (leases, ignored) = self.leases_in(&app.network, &hosts).await?;
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut used6: BTreeSet<Ipv6Addr> = BTreeSet::new();
        for (ip, _) in &leases {
            match ip {
                IpAddr::V4(ip) => used.insert(*ip),
                IpAddr::V6(ip) => used6.insert(*ip),
            };
        }
        let lease = |out: &mut Leases, ctype: &ContainerType, ip: IpAddr| {
            let lease = AddressLease {
                owner: service_owner(app.id, ctype.clone()),
                host: host.clone(),
                service: true,
            };
            out.conds
                .extend(address_unheld(&hosts, app.network, ip, &ignored));
            out.ops.push(Op::Put(
                Key::lease(app.network, ip).to_string(),
                encode(&lease),
            ));
        };
        for ctype in missing {
            let ip = ipam::next_address(&net.cidr, &used).ok_or_else(|| {
                MembershipError::Exhausted(format!(
                    "no free address left in network {} for the service address of {}/{ctype}",
                    app.network, app.id
                ))
            })?;
            used.insert(ip);
            lease(&mut out, &ctype, IpAddr::V4(ip));
            app.services.insert(ctype, ip);
        }
        let Some(cidr6) = net.cidr6 else {
            return Ok(out);
        };
        let bare: Vec<ContainerType> = app
            .services
            .keys()
            .filter(|t| !app.services6.contains_key(*t))
            .cloned()
            .collect();
        for ctype in bare {
            let owner = service_owner(app.id, ctype.clone());
            let held = leases.iter().find_map(|(ip, l)| match (ip, l) {
                (IpAddr::V6(ip), Some(l))
                    if l.service && l.owner == owner && cidr6.contains(ip) =>
                {
                    Some(*ip)
                }
                _ => None,
            });
            let ip = match held {
                Some(ip) => ip,
                None => {
                    let ip = free_address6(&app.network, &cidr6, &used6)?;
                    used6.insert(ip);
                    lease(&mut out, &ctype, IpAddr::V6(ip));
                    ip
                }
            };
            app.services6.insert(ctype, ip);
        }
        Ok(out)
    }

    /// Gives app `id`'s service addresses their IPv6 twins if its network
    /// has an IPv6 range and they have none (an app made before IPv6, or
    /// whose record an older agent rewrote). The revision of the change
    /// (`None`: nothing to give, or the app is gone).
    pub async fn ensure_services6(&self, id: &AppId, host: &HostId) -> Result<Option<(App, i64)>> {
        let app_key = &Key::App(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((mut app, rev)) = self.get_decoded::<App>(app_key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let before = app.services6.clone();
                    let leases = self.lease_services(&mut app, [], host).await?;
                    if app.services6 == before {
                        return Ok(Step::Done(None));
                    }
                    let mut conds = vec![as_read(app_key, Some(rev))];
                    conds.extend(leases.conds);
                    let mut ops = leases.ops;
                    ops.push(Op::Put(app_key.to_string(), encode(&app)));
                    Ok(Step::write(conds, ops, move |rev| Some((app, rev))))
                })
            },
            || format!("application {id} keeps changing; try again"),
        )
        .await
    }

    /// Changes how an app balances (and its health port): with `vip`, every
    /// type with containers gets its service address now, the others at
    /// their first attach; back to `dns`, the addresses are freed.
    pub async fn update_app(
        &self,
        id: &AppId,
        balance: Option<Balance>,
        health_port: Option<u16>,
        host: &HostId,
    ) -> Result<(App, i64)> {
        let app_key = &Key::App(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut app, rev) = self
                        .get_decoded::<App>(app_key)
                        .await?
                        .ok_or_else(|| MembershipError::NotFound(format!("application {id}")))?;
                    if let Some(b) = balance {
                        app.balance = b;
                    }
                    if health_port.is_some() {
                        app.health_port = health_port;
                    }
                    let mut conds = vec![as_read(app_key, Some(rev))];
                    let mut ops = Vec::new();
                    if app.balance == Balance::Dns {
                        for (_, ip) in std::mem::take(&mut app.services) {
                            ops.push(Op::Delete(Key::Ip(app.network, ip).into()));
                        }
                        for (_, ip) in std::mem::take(&mut app.services6) {
                            ops.push(Op::Delete(Key::Ip6(app.network, ip).into()));
                        }
                    } else {
                        let types: BTreeSet<ContainerType> = self
                            .containers_of(id)
                            .await?
                            .into_iter()
                            .map(|c| c.key.ctype)
                            .collect();
                        let leases = self.lease_services(&mut app, types, host).await?;
                        conds.extend(leases.conds);
                        ops.extend(leases.ops);
                    }
                    ops.push(Op::Put(app_key.to_string(), encode(&app)));
                    Ok(Step::write(conds, ops, move |rev| (app, rev)))
                })
            },
            || format!("application {id} keeps changing; try again"),
        )
        .await
    }
}

impl Membership {
    /// Marks a container as failing (or passing again) its app's health
    /// check, if its record says otherwise: `None` when there was nothing
    /// to write (already so, or the container is gone), else the revision.
    /// Conditional on the record read, so a detach or re-attach racing the
    /// prober is never overwritten by a stale copy.
    pub async fn set_unhealthy(&self, key: &ContainerKey, unhealthy: bool) -> Result<Option<i64>> {
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, mut c, rev)) = self.locate(key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let container_key = &container_key;
                    if c.unhealthy == unhealthy {
                        return Ok(Step::Done(None));
                    }
                    c.unhealthy = unhealthy;
                    Ok(Step::write(
                        vec![as_read(container_key, Some(rev))],
                        vec![Op::Put(container_key.to_string(), encode(&c))],
                        Some,
                    ))
                })
            },
            || format!("container {key} keeps changing; try again"),
        )
        .await
    }
}

/// The owner written in a service address's lease.
pub fn service_owner(app: AppId, ctype: ContainerType) -> ContainerKey {
    ContainerKey {
        app,
        ctype,
        index: 0,
    }
}
