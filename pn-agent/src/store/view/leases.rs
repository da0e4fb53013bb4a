//! The view's books of address leases: which host holds which address of
//! which network, counted against the host's quota, so that a container
//! record stands only while its host holds its address (`checks`).

use std::net::IpAddr;

use pn_common::ids::{HostId, NetworkId};

use super::{Change, MembershipView, state::Leased};
use crate::{
    model::{AddressLease, ContainerKey},
    store::keys::Key,
};

impl MembershipView {
    /// Counts a lease (once per key: a rewrite changes nothing).
    pub(super) fn put_lease(&mut self, key: &str, leased: Leased) {
        if self.leases.contains_key(key) {
            return;
        }
        *self.leased.entry(leased.clone()).or_default() += 1;
        self.leases.insert(key.to_string(), leased);
    }

    /// A shared lease of an older release (`ips/…`): a container's gives
    /// its address to the host it names; a service address's to nobody.
    pub(super) fn put_shared_lease(
        &mut self,
        key: &str,
        value: &str,
        net: NetworkId,
        ip: IpAddr,
    ) -> Change {
        match serde_json::from_str::<AddressLease>(value) {
            Ok(l) if !l.service => self.put_lease(key, (l.host, net, ip)),
            _ => {}
        }
        Change::Other
    }

    /// Forgets the lease at `key`. A container whose host no longer holds
    /// its address leaves the view: the allocator may now give the address
    /// to another host's container. (Every transaction of this release
    /// writes a container's new record, or deletes it, before it frees the
    /// leases the record used: a watch never sees an honest record lose
    /// its lease.)
    pub(super) fn unlease(&mut self, key: &str) -> Change {
        let Some(l) = self.leases.remove(key) else {
            if let Some(Key::HostIp(h, net, ip)) = Key::parse(key)
                && let Some(w) = self.waiting.get_mut(&(h, net, ip.is_ipv6()))
            {
                w.retain(|k| k != key);
            }
            return Change::Other;
        };
        if let Some(Key::HostIp(..)) = Key::parse(key) {
            self.uncount_lease(&l);
        }
        match self.leased.get_mut(&l) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Change::Other;
            }
            _ => {
                self.leased.remove(&l);
            }
        }
        match self.unleased_holder(&l).and_then(|k| self.container_at(&k)) {
            Some(at) => self.delete(&at.to_string()),
            None => Change::Other,
        }
    }

    /// One lease of a host's range fewer: the oldest waiting beyond its
    /// quota, if any, is counted in its place.
    pub(super) fn uncount_lease(&mut self, (host, net, ip): &Leased) {
        let slot = (host.clone(), *net, ip.is_ipv6());
        if let Some(n) = self.leases_per.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.leases_per.remove(&slot);
            }
        }
        let Some(w) = self.waiting.get_mut(&slot) else {
            return;
        };
        let next = (!w.is_empty()).then(|| w.remove(0));
        if w.is_empty() {
            self.waiting.remove(&slot);
        }
        if let Some(k) = next
            && let Some(Key::HostIp(h, n, a)) = Key::parse(&k)
        {
            *self.leases_per.entry(slot).or_default() += 1;
            self.refused.remove(&k);
            self.put_lease(&k, (h, n, a));
        }
    }

    /// The container of the view that holds the address of lease `l`.
    pub(super) fn unleased_holder(&self, (host, net, ip): &Leased) -> Option<ContainerKey> {
        let holder = match ip {
            IpAddr::V4(ip) => self.by_ip.get(ip),
            IpAddr::V6(ip) => self.by_ip6.get(ip),
        }?;
        let c = self.containers.get(holder)?;
        (c.host == *host && c.network == *net).then(|| holder.clone())
    }

    /// The container a delete of `key` would take out of the view (its
    /// lease, the last that gives its address to its host), if any: the
    /// watch batches its change as a container's.
    pub fn unleased_by(&self, key: &str) -> Option<ContainerKey> {
        let l = self.leases.get(key)?;
        if self.leased.get(l).copied().unwrap_or(0) > 1 {
            return None;
        }
        self.unleased_holder(l)
    }

    /// Whether the view counts a lease giving `ip` of `net` to `host`.
    pub(super) fn holds_lease(&self, host: &HostId, net: NetworkId, ip: IpAddr) -> bool {
        self.leased.contains_key(&(host.clone(), net, ip))
    }
}
