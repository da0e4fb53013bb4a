//! IPv6 on top of the IPv4 rules: the fleet's unique local /48 in the pool
//! document, a /64 of it per network (reserved in the pool document like an
//! IPv4 range, so two networks never share one), an address per container
//! (leased in its host's range beside the IPv4 ones, [`Key::HostIp`]). Records written
//! before IPv6 gain theirs here, on their hosts' next full converge.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use ipnet::Ipv6Net;
use pn_common::ids::NetworkId;

use super::{
    Membership, MembershipError, PoolDoc, Result, Step, as_read, encode, leases::address_unheld,
};
use crate::{
    ipam,
    model::{AddressLease, Container, ContainerKey, Network},
    store::{backend::Op, keys::Key},
};

/// The fleet's IPv6 pool: the document's, else `given` (`--pool6`), else a
/// random one. A `--pool6` other than the document's is an error: the
/// fleet has one pool, and the operator asked for another.
pub(super) fn fleet_pool6(doc: &PoolDoc, given: Option<Ipv6Net>) -> Result<Ipv6Net> {
    match (doc.pool6, given) {
        (Some(p), Some(g)) if p != g => Err(MembershipError::Conflict(format!(
            "the fleet's IPv6 pool is {p} (in the store), not --pool6 {g}"
        ))),
        (Some(p), _) => Ok(p),
        (None, Some(g)) => Ok(g),
        (None, None) => Ok(ipam::random_ula_pool()),
    }
}

/// A network's /64: `wanted` if it is a /64 of `pool6` nobody holds, else
/// the first free one. Held: what the pool document reserves, and what
/// network records carry (an agent that predates IPv6 rewrites the document
/// without the reservations).
pub(super) fn pick_cidr6(
    doc: &PoolDoc,
    nets: &[Network],
    pool6: &Ipv6Net,
    wanted: Option<Ipv6Net>,
) -> Result<Ipv6Net> {
    let held = doc
        .networks
        .iter()
        .filter_map(|p| Some((p.network, p.cidr6?)))
        .chain(nets.iter().filter_map(|n| Some((n.id, n.cidr6?))));
    if let Some(c) = wanted {
        ipam::check_network_range6(&c, pool6)
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        if let Some((other, _)) = held.into_iter().find(|(_, h)| *h == c) {
            return Err(MembershipError::Conflict(format!(
                "IPv6 range {c} is network {other}'s"
            )));
        }
        return Ok(c);
    }
    let taken: BTreeSet<Ipv6Net> = held.map(|(_, c)| c).collect();
    ipam::next_subnet6(pool6, &taken).ok_or_else(|| {
        MembershipError::Exhausted(format!(
            "IPv6 pool {pool6} exhausted: no free /64 left ({} networks)",
            taken.len()
        ))
    })
}

/// The lowest IPv6 address of `cidr6` not in `used`.
pub(super) fn free_address6(
    network: &NetworkId,
    cidr6: &Ipv6Net,
    used: &BTreeSet<Ipv6Addr>,
) -> Result<Ipv6Addr> {
    ipam::next_address6(cidr6, used).ok_or_else(|| {
        MembershipError::Exhausted(format!(
            "no free IPv6 address left in network {network} ({cidr6})"
        ))
    })
}

impl Membership {
    /// The fleet's IPv6 pool, once it has one (the first network given an
    /// IPv6 range gives it).
    pub async fn pool6(&self) -> Result<Option<Ipv6Net>> {
        Ok(self.pool().await?.0.pool6)
    }

    /// Gives network `id` its IPv6 range if it has none (a network created
    /// before IPv6, or by an agent with it off), and the fleet its IPv6
    /// pool if it has none. The record as it is now and the revision of the
    /// change (`None`: it had a range, or is gone).
    pub async fn ensure_network6(
        &self,
        id: &NetworkId,
        given: Option<Ipv6Net>,
    ) -> Result<Option<(Network, i64)>> {
        let net_key = &Key::Network(*id);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((net, net_rev)) = self.get_decoded::<Network>(net_key).await? else {
                        return Ok(Step::Done(None));
                    };
                    if net.cidr6.is_some() {
                        return Ok(Step::Done(None));
                    }
                    let (mut doc, pool_rev) = self.pool().await?;
                    let nets = self.networks().await?;
                    let pool6 = fleet_pool6(&doc, given)?;
                    doc.pool6 = Some(pool6);
                    // Reserved already: the record lost it to an older
                    // agent's rewrite.
                    let kept = doc
                        .networks
                        .iter()
                        .find(|p| p.network == *id)
                        .and_then(|p| p.cidr6);
                    let cidr6 = match kept {
                        Some(c) => c,
                        None => pick_cidr6(&doc, &nets, &pool6, None)?,
                    };
                    if let Some(entry) = doc.networks.iter_mut().find(|p| p.network == *id) {
                        entry.cidr6 = Some(cidr6);
                    }
                    let net = Network {
                        cidr6: Some(cidr6),
                        ..net
                    };
                    Ok(Step::write(
                        vec![
                            as_read(&Key::Pool, pool_rev),
                            as_read(net_key, Some(net_rev)),
                        ],
                        vec![
                            Op::Put(Key::Pool.into(), encode(&doc)),
                            Op::Put(net_key.to_string(), encode(&net)),
                        ],
                        move |rev| Some((net, rev)),
                    ))
                })
            },
            || "too much contention on the address pool; try again".into(),
        )
        .await
    }

    /// Takes container `key`'s IPv6 address away and frees it (its host
    /// now runs with `--ipv6 off`: no container of it has IPv6, so no name
    /// may answer one). The record as it is now and the revision of the
    /// change (`None`: it had none, or is gone).
    pub async fn take_ip6(&self, key: &ContainerKey) -> Result<Option<(Container, i64)>> {
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, c, rev)) = self.locate(key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let container_key = &container_key;
                    let Some(ip6) = c.ip6 else {
                        return Ok(Step::Done(None));
                    };
                    let c = Container { ip6: None, ..c };
                    let (mut conds, mut ops) = self
                        .legacy_leftovers(&c.key, c.network, [IpAddr::V6(ip6)], false)
                        .await?;
                    conds.push(as_read(container_key, Some(rev)));
                    ops.push(Op::Put(container_key.to_string(), encode(&c)));
                    ops.push(Op::Delete(
                        Key::HostIp(c.host.clone(), c.network, IpAddr::V6(ip6)).into(),
                    ));
                    Ok(Step::write(conds, ops, move |rev| Some((c, rev))))
                })
            },
            || format!("container {key} keeps changing; try again"),
        )
        .await
    }

    /// Gives container `key` an IPv6 address of its network's range if it
    /// has none (attached before IPv6, or its network had no range yet): a
    /// lease it holds already (a write that stopped half-way), else the
    /// lowest free one. The record as it is now and the revision of the
    /// change (`None`: nothing to give, or the container is gone).
    pub async fn give_ip6(&self, key: &ContainerKey) -> Result<Option<(Container, i64)>> {
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let Some((container_key, c, rev)) = self.locate(key).await? else {
                        return Ok(Step::Done(None));
                    };
                    let container_key = &container_key;
                    if c.ip6.is_some() {
                        return Ok(Step::Done(None));
                    }
                    let Some(cidr6) = self.network(&c.network).await?.cidr6 else {
                        return Ok(Step::Done(None));
                    };
                    let hosts = self.lease_holders_in(&c.network, Some(&c.host)).await?;
                    let (leases, ignored) = self.leases_in(&c.network, &hosts).await?;
                    let v6 = |ip: &IpAddr| match ip {
                        IpAddr::V6(ip) if cidr6.contains(ip) => Some(*ip),
                        _ => None,
                    };
                    let held = leases.iter().find_map(|(ip, l)| {
                        l.as_ref()
                            .filter(|l| l.owner == *key && !l.service)
                            .and(v6(ip))
                    });
                    let mut conds = vec![as_read(container_key, Some(rev))];
                    let mut ops = Vec::new();
                    let ip6 = match held {
                        Some(ip) => ip,
                        None => {
                            let used: BTreeSet<Ipv6Addr> =
                                leases.iter().filter_map(|(ip, _)| v6(ip)).collect();
                            let ip = free_address6(&c.network, &cidr6, &used)?;
                            let lease = AddressLease {
                                owner: key.clone(),
                                host: c.host.clone(),
                                service: false,
                            };
                            conds.extend(address_unheld(
                                &hosts,
                                c.network,
                                IpAddr::V6(ip),
                                &ignored,
                            ));
                            ops.push(Op::Put(
                                Key::HostIp(c.host.clone(), c.network, IpAddr::V6(ip)).into(),
                                encode(&lease),
                            ));
                            ip
                        }
                    };
                    let c = Container {
                        ip6: Some(ip6),
                        ..c
                    };
                    ops.push(Op::Put(container_key.to_string(), encode(&c)));
                    Ok(Step::write(conds, ops, move |rev| Some((c, rev))))
                })
            },
            || format!("too much contention on the IPv6 addresses of {key}'s network; try again"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::{ErrorKind, Kind},
        model::Egress,
        store::membership::PoolEntry,
        testing::model::net_id,
    };

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn doc(pool6: Option<&str>, held: &[(u8, &str)]) -> PoolDoc {
        PoolDoc {
            pool6: pool6.map(net6),
            networks: held
                .iter()
                .map(|&(n, c)| PoolEntry {
                    network: net_id(n),
                    cidr: format!("10.240.{n}.0/24").parse().unwrap(),
                    tag: n.into(),
                    cidr6: Some(net6(c)),
                })
                .collect(),
        }
    }

    #[test]
    fn the_fleet_has_one_pool() {
        let p = net6("fd12:3456:789a::/48");
        let other = net6("fd00:1:2::/48");
        let d = doc(Some("fd12:3456:789a::/48"), &[]);
        assert_eq!(fleet_pool6(&d, None).unwrap(), p);
        assert_eq!(fleet_pool6(&d, Some(p)).unwrap(), p);
        let err = fleet_pool6(&d, Some(other)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(err.to_string().contains("fd12:3456:789a::/48"), "{err}");
        let empty = doc(None, &[]);
        assert_eq!(fleet_pool6(&empty, Some(other)).unwrap(), other);
        let drawn = fleet_pool6(&empty, None).unwrap();
        assert_eq!(ipam::check_pool6(&drawn), Ok(()));
    }

    #[test]
    fn ranges_held_by_the_document_or_a_record_are_not_given_again() {
        let pool6 = net6("fd12:3456:789a::/48");
        let d = doc(Some("fd12:3456:789a::/48"), &[(1, "fd12:3456:789a::/64")]);
        // A record's range the document lost (an older agent's rewrite).
        let nets = [Network {
            id: net_id(2),
            cidr: "10.240.2.0/24".parse().unwrap(),
            tag: 2,
            created_at: 0,
            egress: Egress::Allow,
            cidr6: Some(net6("fd12:3456:789a:1::/64")),
        }];
        assert_eq!(
            pick_cidr6(&d, &nets, &pool6, None).unwrap(),
            net6("fd12:3456:789a:2::/64")
        );
        let wanted = net6("fd12:3456:789a:ff::/64");
        assert_eq!(pick_cidr6(&d, &nets, &pool6, Some(wanted)).unwrap(), wanted);
        for (taken, holder) in [("fd12:3456:789a::/64", 1), ("fd12:3456:789a:1::/64", 2)] {
            let err = pick_cidr6(&d, &nets, &pool6, Some(net6(taken))).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            assert!(
                err.to_string().contains(&net_id(holder).to_string()),
                "{err}"
            );
        }
        for bad in [
            "fd00:1:2:3::/64",
            "fd12:3456:789a:100::/56",
            "fd12:3456:789a:3::1/64",
        ] {
            let err = pick_cidr6(&d, &nets, &pool6, Some(net6(bad))).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{bad}: {err}");
        }
        let tiny = net6("fd12:3456:789a::/63");
        let err = pick_cidr6(&d, &nets, &tiny, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Exhausted, "{err}");
    }
}
