//! Address leases and claims on container keys, each in the range of the
//! host whose container holds it (`on/<host>/ips/…`, `on/<host>/claims/…`):
//! no other host can delete or rewrite them. They stay unique across hosts
//! because whoever writes one compares it, in the same transaction, under
//! every registered host (and at the shared key of an older release); a
//! race with a host that registers meanwhile is settled by the agents'
//! views: the older record of an address or a key keeps it.
//!
//! Leases and claims of an older release (`ips/…`, `claims/…`) are read as
//! held, and removed with their container, until `pn-agent fleet migrate`
//! moves them ([`Membership::migrate_leases`]).

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::future::try_join_all;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};

use super::{Membership, Result, Step, as_read, decode};
use crate::{
    model::{AddressLease, Admissions, App, Container, ContainerKey},
    store::{
        backend::{Cond, Op},
        keys::{self, Key},
    },
};

/// A lease of an address as read: `None` when it does not decode (written
/// by someone else: the address stays held all the same).
pub(super) type Held = (IpAddr, Option<AddressLease>);

/// The conditions "no host holds `key_of(host)`", for every host of `hosts`.
pub(super) fn unheld(hosts: &[HostId], key_of: impl Fn(&HostId) -> Key) -> Vec<Cond> {
    hosts.iter().map(|h| as_read(&key_of(h), None)).collect()
}

/// The conditions that no one holds address `ip` of `network`: no host's
/// lease but the ones nobody counts (`ignored`, see [`Used`]), no shared
/// one.
pub(super) fn address_unheld(
    hosts: &[HostId],
    network: NetworkId,
    ip: IpAddr,
    ignored: &Ignored,
) -> Vec<Cond> {
    let counted: Vec<HostId> = hosts
        .iter()
        .filter(|h| !ignored.contains(&((*h).clone(), ip)))
        .cloned()
        .collect();
    let mut conds = unheld(&counted, |h| Key::HostIp(h.clone(), network, ip));
    conds.push(as_read(&Key::lease(network, ip), None));
    conds
}

/// Leases of a network the allocation does not count: a host's beyond its
/// quota (its newest).
pub(super) type Ignored = HashSet<(HostId, IpAddr)>;

/// The addresses of a network an allocation must not give.
#[derive(Debug, Default)]
pub(super) struct Used {
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
    pub ignored: Ignored,
}

/// Which hosts' leases and claims the others count: with admissions
/// enforced, a host's leases of a network only if it was admitted to an
/// app of that network, its claims of an app only if admitted to that app
/// (a host could otherwise fill any tenant's range, or take any app's
/// container keys, with `etcdctl put`s in its own range). The agents'
/// views count the same (`store/view`).
pub(super) struct Admitted {
    admissions: Admissions,
    /// Each app's network (read only when admissions are enforced).
    networks: Vec<(AppId, NetworkId)>,
}

impl Admitted {
    pub(super) fn to_network(&self, host: &HostId, network: &NetworkId) -> bool {
        !self.admissions.enforced
            || self
                .networks
                .iter()
                .any(|(app, n)| n == network && self.admissions.admits(app, host))
    }

    pub(super) fn to_app(&self, host: &HostId, app: &AppId) -> bool {
        self.admissions.admits(app, host)
    }
}

impl Membership {
    /// The hosts whose ranges may hold leases and claims: every registered
    /// host, and `own` (which may not be registered yet).
    pub(super) async fn lease_holders(&self, own: Option<&HostId>) -> Result<Vec<HostId>> {
        let mut ids: BTreeSet<HostId> = self
            .kv
            .list(keys::HOSTS)
            .await?
            .entries
            .iter()
            .filter_map(|(k, _)| match Key::parse(k) {
                Some(Key::Host(h)) => Some(h),
                _ => None,
            })
            .collect();
        ids.extend(own.cloned());
        Ok(ids.into_iter().collect())
    }

    /// Who may hold leases and claims, as the others count them.
    pub(super) async fn admitted(&self) -> Result<Admitted> {
        let admissions: Admissions = self
            .get_decoded(&Key::Admissions)
            .await?
            .map(|(a, _)| a)
            .unwrap_or_default();
        let networks = if admissions.enforced {
            self.list_decoded::<App>(keys::APPS)
                .await?
                .into_iter()
                .map(|a| (a.id, a.network))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Admitted {
            admissions,
            networks,
        })
    }

    /// The hosts whose leases of `network` count: as [`Self::lease_holders`],
    /// those admitted to an app of it (and `own`).
    pub(super) async fn lease_holders_in(
        &self,
        network: &NetworkId,
        own: Option<&HostId>,
    ) -> Result<Vec<HostId>> {
        let admitted = self.admitted().await?;
        let mut hosts = self.lease_holders(own).await?;
        hosts.retain(|h| Some(h) == own || admitted.to_network(h, network));
        Ok(hosts)
    }

    /// The hosts whose claims on `app`'s keys count: as
    /// [`Self::lease_holders`], those admitted to it (and `own`).
    pub(super) async fn claim_holders(
        &self,
        app: &AppId,
        own: Option<&HostId>,
    ) -> Result<Vec<HostId>> {
        let admitted = self.admitted().await?;
        let mut hosts = self.lease_holders(own).await?;
        hosts.retain(|h| Some(h) == own || admitted.to_app(h, app));
        Ok(hosts)
    }

    /// Every lease of `network`'s addresses, of both families: each host's
    /// of `hosts` up to its quota of each family (`lease_quota`, its
    /// oldest; the rest ignored), and the shared ones (service addresses, and containers'
    /// of an older release).
    pub(super) async fn leases_in(
        &self,
        network: &NetworkId,
        hosts: &[HostId],
    ) -> Result<(Vec<Held>, Ignored)> {
        let mut prefixes = vec![keys::ips_of(network)];
        prefixes.extend(hosts.iter().map(|h| keys::ips_on(h, network)));
        let listings = try_join_all(prefixes.iter().map(|p| self.kv.list(p))).await?;
        let (mut out, mut ignored) = (Vec::new(), Ignored::new());
        for listing in &listings {
            let mut entries: Vec<_> = listing.entries.iter().collect();
            entries.sort_by_key(|(_, e)| e.create_rev);
            let mut held = [0usize; 2];
            for (k, e) in entries {
                let ip = match Key::parse(k) {
                    Some(Key::Ip(_, ip)) => IpAddr::V4(ip),
                    Some(Key::Ip6(_, ip)) => IpAddr::V6(ip),
                    Some(Key::HostIp(h, _, ip)) => {
                        let n = &mut held[usize::from(ip.is_ipv6())];
                        if *n >= crate::store::view::lease_quota(self.host_quota) {
                            ignored.insert((h, ip));
                            continue;
                        }
                        *n += 1;
                        ip
                    }
                    _ => continue,
                };
                out.push((ip, serde_json::from_str(&e.value).ok()));
            }
        }
        Ok((out, ignored))
    }

    /// The addresses of `network` anyone holds (as the agents count them).
    pub(super) async fn used_addresses(
        &self,
        network: &NetworkId,
        hosts: &[HostId],
    ) -> Result<Used> {
        let (held, ignored) = self.leases_in(network, hosts).await?;
        let mut used = Used {
            ignored,
            ..Used::default()
        };
        for (ip, _) in held {
            match ip {
                IpAddr::V4(ip) => used.v4.insert(ip),
                IpAddr::V6(ip) => used.v6.insert(ip),
            };
        }
        Ok(used)
    }

    /// The indexes of one type of an app that are taken anywhere in the
    /// fleet: claimed by any host (attaching or attached), or held by a
    /// claim or a record of an older release.
    pub async fn used_indexes(&self, app: &AppId, ctype: &ContainerType) -> Result<BTreeSet<u32>> {
        let mut prefixes = vec![keys::claims_of(app), keys::legacy_containers_of(app)];
        let hosts = self.claim_holders(app, None).await?;
        prefixes.extend(hosts.iter().map(|h| keys::claims_on(h, app)));
        let listings = try_join_all(prefixes.iter().map(|p| self.kv.list(p))).await?;
        let mut used = BTreeSet::new();
        for (k, _) in listings.iter().flat_map(|l| &l.entries) {
            if let Some(Key::Claim(c) | Key::LegacyContainer(c) | Key::HostClaim(_, c)) =
                Key::parse(k)
                && c.ctype == *ctype
            {
                used.insert(c.index);
            }
        }
        Ok(used)
    }

    /// The host attaching (claim) or holding (record) a container key: the
    /// oldest claim of any host, else the record.
    pub(super) async fn holder(&self, key: &ContainerKey) -> Result<Option<HostId>> {
        let hosts = self.claim_holders(&key.app, None).await?;
        let at: Vec<String> = hosts
            .iter()
            .map(|h| Key::HostClaim(h.clone(), key.clone()).to_string())
            .collect();
        let claims = try_join_all(at.iter().map(|k| self.kv.get(k))).await?;
        let oldest = hosts
            .iter()
            .zip(claims)
            .filter_map(|(h, e)| Some((e?.create_rev, h)))
            .min();
        if let Some((_, h)) = oldest {
            return Ok(Some(h.clone()));
        }
        if let Some((claim, _)) = self
            .get_decoded::<AddressLease>(&Key::Claim(key.clone()))
            .await?
        {
            return Ok(Some(claim.host));
        }
        Ok(self.container(key).await?.map(|c| c.host))
    }

    /// Address leases of both families held by `host`'s containers (to
    /// collect the ones a crash left behind): in its range, and shared ones
    /// of an older release.
    pub async fn leases_of_host(
        &self,
        host: &HostId,
    ) -> Result<Vec<(NetworkId, IpAddr, AddressLease)>> {
        let mut out = Vec::new();
        for (k, e) in self.kv.list(&keys::all_ips_on(host)).await?.entries {
            if let Some(Key::HostIp(_, net, ip)) = Key::parse(&k) {
                out.push((net, ip, decode(&k, &e)?));
            }
        }
        for (k, e) in self.kv.list(keys::IPS).await?.entries {
            let (net, ip) = match Key::parse(&k) {
                Some(Key::Ip(net, ip)) => (net, IpAddr::V4(ip)),
                Some(Key::Ip6(net, ip)) => (net, IpAddr::V6(ip)),
                _ => continue,
            };
            let lease: AddressLease = decode(&k, &e)?;
            if lease.host == *host && !lease.service {
                out.push((net, ip, lease));
            }
        }
        Ok(out)
    }

    /// The conditions and deletes that remove the shared keys of an older
    /// release `owner` still holds (of `addresses`, and with `claim` its
    /// claim). Only
    /// those present: once `fleet grant-host` took `ips/` and `claims/`
    /// back, a host may not even delete there.
    pub(super) async fn legacy_leftovers(
        &self,
        owner: &ContainerKey,
        network: NetworkId,
        addresses: impl IntoIterator<Item = IpAddr>,
        claim: bool,
    ) -> Result<(Vec<Cond>, Vec<Op>)> {
        let (mut conds, mut ops) = (Vec::new(), Vec::new());
        let keys = addresses
            .into_iter()
            .map(|ip| Key::lease(network, ip))
            .chain(claim.then(|| Key::Claim(owner.clone())));
        for key in keys {
            let Some(e) = self.kv.get(&key.to_string()).await? else {
                continue;
            };
            let lease: Option<AddressLease> = serde_json::from_str(&e.value).ok();
            if lease.is_some_and(|l| l.owner == *owner && !l.service) {
                conds.push(as_read(&key, Some(e.mod_rev)));
                ops.push(Op::Delete(key.to_string()));
            }
        }
        Ok((conds, ops))
    }

    /// Deletes of container `c`'s leases (and with `claim` its claim),
    /// wherever they are.
    pub(super) async fn lease_deletes(
        &self,
        c: &Container,
        claim: bool,
    ) -> Result<(Vec<Cond>, Vec<Op>)> {
        let addresses: Vec<IpAddr> = std::iter::once(IpAddr::V4(c.ip))
            .chain(c.ip6.map(IpAddr::V6))
            .collect();
        let (conds, mut ops) = self
            .legacy_leftovers(&c.key, c.network, addresses.iter().copied(), claim)
            .await?;
        for ip in addresses {
            ops.push(Op::Delete(
                Key::HostIp(c.host.clone(), c.network, ip).into(),
            ));
        }
        if claim {
            ops.push(Op::Delete(
                Key::HostClaim(c.host.clone(), c.key.clone()).into(),
            ));
        }
        Ok((conds, ops))
    }

    /// Releases an address (of either family) leased to `host` for `owner`
    /// if `owner` still holds it, and `owner`'s claim.
    pub async fn release_address(
        &self,
        host: &HostId,
        network: &NetworkId,
        ip: IpAddr,
        owner: &ContainerKey,
    ) -> Result<()> {
        let own_key = &Key::HostIp(host.clone(), *network, ip);
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut conds, mut ops) =
                        self.legacy_leftovers(owner, *network, [ip], true).await?;
                    match self.get_decoded::<AddressLease>(own_key).await? {
                        Some((lease, rev)) if lease.owner == *owner => {
                            conds.push(as_read(own_key, Some(rev)));
                            ops.push(Op::Delete(own_key.to_string()));
                        }
                        _ => {}
                    }
                    if ops.is_empty() {
                        return Ok(Step::Done(()));
                    }
                    ops.push(Op::Delete(
                        Key::HostClaim(host.clone(), owner.clone()).into(),
                    ));
                    Ok(Step::write(conds, ops, |_| ()))
                })
            },
            || format!("address {ip} of network {network} keeps changing; try again"),
        )
        .await
    }

    /// Moves the leases and claims of an older release into their hosts'
    /// ranges, each in one transaction (the new key written only if no
    /// host holds it there yet). Service leases stay: they are the
    /// operator's. How many moved.
    pub async fn migrate_leases(&self) -> Result<usize> {
        let mut moved = 0;
        for prefix in [keys::IPS, keys::CLAIMS] {
            for (k, e) in self.kv.list(prefix).await?.entries {
                let Ok(lease) = serde_json::from_str::<AddressLease>(&e.value) else {
                    continue;
                };
                let new = match Key::parse(&k) {
                    Some(Key::Ip(net, ip)) if !lease.service => {
                        Key::HostIp(lease.host.clone(), net, ip.into())
                    }
                    Some(Key::Ip6(net, ip)) if !lease.service => {
                        Key::HostIp(lease.host.clone(), net, ip.into())
                    }
                    Some(Key::Claim(c)) => Key::HostClaim(lease.host.clone(), c),
                    _ => continue,
                };
                let (old, new) = (k.clone(), new.to_string());
                // Written under the host already (a container record's
                // migration gave it its claim): the shared copy just goes.
                let (conds, ops) = match self.kv.get(&new).await? {
                    Some(_) => (
                        vec![Cond::ModRev(old.clone(), e.mod_rev)],
                        vec![Op::Delete(old)],
                    ),
                    None => (
                        vec![
                            Cond::ModRev(old.clone(), e.mod_rev),
                            Cond::Absent(new.clone()),
                        ],
                        vec![Op::Put(new, e.value.clone()), Op::Delete(old)],
                    ),
                };
                let done = self.kv.txn(conds, ops).await?;
                moved += usize::from(done.is_some());
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_unheld_under_every_host_and_the_shared_key() {
        let hosts: Vec<HostId> = vec!["a".parse().unwrap(), "b".parse().unwrap()];
        let net: NetworkId = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c".parse().unwrap();
        let ip: IpAddr = "10.240.0.2".parse().unwrap();
        let keys: Vec<String> = address_unheld(&hosts, net, ip, &Ignored::new())
            .into_iter()
            .map(|c| match c {
                Cond::Absent(k) => k,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                format!("on/a/ips/{net}/10.240.0.2"),
                format!("on/b/ips/{net}/10.240.0.2"),
                format!("ips/{net}/10.240.0.2"),
            ]
        );
    }
}
