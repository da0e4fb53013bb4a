//! What a record read from the store must be before the view takes it in,
//! and so before anything derived from it reaches the kernel. The store is
//! shared by the fleet: whoever can write to it must not be able to make an
//! agent touch interfaces it did not make, take an address someone else
//! holds, or put a network where the kernel treats addresses specially.

use std::net::{IpAddr, SocketAddrV4};

use pn_common::ids::{AppId, HostId, NetworkId};
use serde::de::DeserializeOwned;

use super::{
    refusals::{Reject, Rejected},
    state::MembershipView,
};
use crate::{
    ipam,
    model::{self, App, Container, ContainerKey, Network},
    store::keys,
};

type Result<T = ()> = std::result::Result<T, Rejected>;

pub(super) fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| Rejected::new(key, Reject::Undecodable, e))
}

/// The record prefix `key` is under, if any (a key there must parse).
pub(super) fn record_prefix(key: &str) -> Option<&'static str> {
    [
        keys::NETWORKS,
        keys::APPS,
        keys::CONTAINERS,
        keys::ON,
        keys::HOSTS,
    ]
    .into_iter()
    .find(|p| key.starts_with(p))
}

pub(super) fn same_id<T: PartialEq + std::fmt::Display>(
    key: &str,
    of_key: &T,
    of_record: &T,
) -> Result {
    if of_key == of_record {
        Ok(())
    } else {
        Err(Rejected::new(
            key,
            Reject::Key,
            format!("the record is {of_record}'s"),
        ))
    }
}

impl MembershipView {
    pub(super) fn check_network(&self, key: &str, id: &NetworkId, n: &Network) -> Result {
        same_id(key, id, &n.id)?;
        if let Some(known) = self.networks.get(id) {
            if let (Some(was), Some(now)) = (known.cidr6, n.cidr6)
                && was != now
            {
                return Err(Rejected::new(
                    key,
                    Reject::Immutable,
                    format!("network {id}'s IPv6 range is {was}; it cannot become {now}"),
                ));
            }
            if known.cidr6.is_none() {
                self.check_network6(key, n)?;
            }
            if known.cidr != n.cidr || known.tag != n.tag {
                return Err(Rejected::new(
                    key,
                    Reject::Immutable,
                    format!(
                        "network {id} is {} with tag {}; it cannot become {} with tag {}",
                        known.cidr, known.tag, n.cidr, n.tag
                    ),
                ));
            }
            return Ok(());
        }
        ipam::check_network_range(&n.cidr, &self.pool)
            .map_err(|e| Rejected::new(key, Reject::Range, e))?;
        if n.tag == 0 {
            return Err(Rejected::new(key, Reject::Tag, "tag 0 means no network"));
        }
        self.check_network6(key, n)?;
        for other in self.networks.values() {
            if ipam::overlaps(&n.cidr, &other.cidr) {
                return Err(Rejected::new(
                    key,
                    Reject::Overlap,
                    format!(
                        "range {} overlaps {} of network {}",
                        n.cidr, other.cidr, other.id
                    ),
                ));
            }
            if n.tag == other.tag {
                return Err(Rejected::new(
                    key,
                    Reject::Tag,
                    format!("tag {} is network {}'s", n.tag, other.id),
                ));
            }
        }
        Ok(())
    }

    /// A network's IPv6 range, when it gains one: a unique local /64
    /// (never where the kernel treats addresses specially), no other
    /// network's.
    fn check_network6(&self, key: &str, n: &Network) -> Result {
        let Some(cidr6) = n.cidr6 else {
            return Ok(());
        };
        ipam::check_network_range6(&cidr6, &ipam::ULA)
            .map_err(|e| Rejected::new(key, Reject::Range, e))?;
        if let Some(other) = self
            .networks
            .values()
            .find(|o| o.id != n.id && o.cidr6 == Some(cidr6))
        {
            return Err(Rejected::new(
                key,
                Reject::Overlap,
                format!("IPv6 range {cidr6} is network {}'s", other.id),
            ));
        }
        Ok(())
    }

    /// `rev`: the revision of this version of the record.
    pub(super) fn check_app(&self, key: &str, id: &AppId, a: &App, rev: i64) -> Result {
        same_id(key, id, &a.id)?;
        let Some(net) = self.networks.get(&a.network) else {
            return Err(Rejected::new(
                key,
                Reject::UnknownNetwork,
                format!("network {} is unknown", a.network),
            ));
        };
        self.check_services(key, a, net, rev)?;
        if let Some(name) = &a.name {
            model::check_app_name(name).map_err(|e| Rejected::new(key, Reject::AppName, e))?;
        }
        if a.web_port == 0 {
            return Err(Rejected::new(key, Reject::WebPort, "web port 0"));
        }
        Ok(())
    }

    /// Service addresses: each one an address a container of the network
    /// could have (inside its range, not its network or broadcast address),
    /// one per type, and nobody else's: not another app's, not a
    /// container's. In a listing the view has no order of events: a
    /// container whose record is older than this version of the app keeps
    /// its address (a service address written over a member's loses), a
    /// younger one loses it (`check_container`).
    fn check_services(&self, key: &str, a: &App, net: &Network, rev: i64) -> Result {
        let mut seen = std::collections::HashSet::new();
        for (ctype, ip) in &a.services {
            ipam::check_address(&net.cidr, *ip)
                .map_err(|e| Rejected::new(key, Reject::Service, format!("{ctype}: {e}")))?;
            self.check_service_unique(key, a, IpAddr::V4(*ip), &mut seen, rev)?;
        }
        // IPv6's the same way, in the network's /64; only beside an IPv4
        // one of the same type (the IPv4 address is the service's name).
        for (ctype, ip) in &a.services6 {
            let Some(cidr6) = net.cidr6 else {
                return Err(Rejected::new(
                    key,
                    Reject::Service,
                    format!("{ctype}: {ip}: network {} has no IPv6 range", net.id),
                ));
            };
            ipam::check_address6(&cidr6, *ip)
                .map_err(|e| Rejected::new(key, Reject::Service, format!("{ctype}: {e}")))?;
            if !a.services.contains_key(ctype) {
                return Err(Rejected::new(
                    key,
                    Reject::Service,
                    format!("{ctype}: IPv6 service address {ip} without an IPv4 one"),
                ));
            }
            self.check_service_unique(key, a, IpAddr::V6(*ip), &mut seen, rev)?;
        }
        Ok(())
    }

    /// One service address of `a` is nobody else's (see `check_services`).
    fn check_service_unique(
        &self,
        key: &str,
        a: &App,
        ip: IpAddr,
        seen: &mut std::collections::HashSet<IpAddr>,
        rev: i64,
    ) -> Result {
        if !seen.insert(ip) {
            return Err(Rejected::new(
                key,
                Reject::Service,
                format!("service address {ip} is given to two types"),
            ));
        }
        let taken = |why: String| Err(Rejected::new(key, Reject::AddressTaken, why));
        if let Some(holder) = self.services_at.get(&ip)
            && *holder != a.id
        {
            return taken(format!("{ip} is a service address of app {holder}"));
        }
        let container = match ip {
            IpAddr::V4(ip) => self.by_ip.get(&ip),
            IpAddr::V6(ip) => self.by_ip6.get(&ip),
        };
        if let Some(holder) = container {
            return taken(format!("{ip} is container {holder}'s"));
        }
        if self
            .listed_ips
            .get(&ip)
            .is_some_and(|&created| created < rev)
        {
            return taken(format!("{ip} is a container's (an older record)"));
        }
        Ok(())
    }

    /// `writer`: the host whose range the record is in (`None`: a legacy
    /// record, which only the operator can write once roles are set up).
    pub(super) fn check_container(
        &self,
        key: &str,
        writer: Option<&HostId>,
        k: &ContainerKey,
        c: &Container,
    ) -> Result {
        same_id(key, k, &c.key)?;
        self.check_placement(key, writer, c)?;
        let derived = k.host_ifname();
        if c.host_ifname != derived {
            return Err(Rejected::new(
                key,
                Reject::HostInterface,
                format!(
                    "host interface {:?} is not the one the agent names it ({derived})",
                    c.host_ifname
                ),
            ));
        }
        model::check_ifname(&c.ifname).map_err(|e| Rejected::new(key, Reject::Interface, e))?;
        model::check_netns(&c.netns).map_err(|e| Rejected::new(key, Reject::Netns, e))?;
        let Some(net) = self.networks.get(&c.network) else {
            return Err(Rejected::new(
                key,
                Reject::UnknownNetwork,
                format!("network {} is unknown", c.network),
            ));
        };
        if !self.apps.contains_key(&k.app) {
            return Err(Rejected::new(
                key,
                Reject::UnknownApp,
                format!("application {} is unknown", k.app),
            ));
        }
        ipam::check_address(&net.cidr, c.ip).map_err(|e| Rejected::new(key, Reject::Address, e))?;
        self.check_leased(key, c, c.ip.into())?;
        if let Some(holder) = self.by_ip.get(&c.ip)
            && holder != k
        {
            return Err(Rejected::new(
                key,
                Reject::AddressTaken,
                format!("address {} is container {holder}'s", c.ip),
            ));
        }
        if let Some(app) = self.services_at.get(&IpAddr::V4(c.ip)) {
            return Err(Rejected::new(
                key,
                Reject::AddressTaken,
                format!("address {} is a service address of app {app}", c.ip),
            ));
        }
        self.check_ip6(key, k, c, net)?;
        if let Some(old) = self.containers.get(k) {
            self.check_unchanged(key, old, c)?;
        }
        if let Some(at) = c.published {
            self.check_published(key, c, at)?;
        }
        Ok(())
    }

    /// Who may place this container: the host whose range holds the
    /// record must be the one it names, admitted to its app, and the key
    /// must not be another host's (the older record keeps it: a host cannot
    /// make another's record younger, only its own).
    fn check_placement(&self, key: &str, writer: Option<&HostId>, c: &Container) -> Result {
        if let Some(w) = writer
            && *w != c.host
        {
            return Err(Rejected::new(
                key,
                Reject::WrongHost,
                format!("host {w}'s record names host {}", c.host),
            ));
        }
        if !self.admissions.admits(&c.key.app, &c.host) {
            return Err(Rejected::new(
                key,
                Reject::NotAdmitted,
                format!("host {} is not admitted to app {}", c.host, c.key.app),
            ));
        }
        if self.held_at(&c.key, writer) == Some(false)
            && let Some(at) = self.container_at(&c.key)
            && self
                .containers
                .get(&c.key)
                .is_some_and(|o| o.host != c.host)
        {
            return Err(Rejected::new(
                key,
                Reject::ContainerTaken,
                format!("container {} is already {at}", c.key),
            ));
        }
        self.check_quota(key, c)
    }

    /// A container new to its host (not a change of one it has) only
    /// within the host's quota: a host's records beyond it, its newest
    /// (listings load the oldest first), are refused, so a host cannot
    /// fill every agent's maps and memory with containers.
    fn check_quota(&self, key: &str, c: &Container) -> Result {
        let known = self
            .containers
            .get(&c.key)
            .is_some_and(|o| o.host == c.host);
        let held = self.per_host.get(&c.host).copied().unwrap_or(0);
        if !known && held >= self.host_quota {
            return Err(Rejected::new(
                key,
                Reject::Quota,
                format!(
                    "host {} runs {held} containers already, its quota (--host-quota)",
                    c.host
                ),
            ));
        }
        Ok(())
    }

    /// A lease in a host's range counts (for the records it lets in, as for
    /// the allocator, `membership/leases.rs`) only in a network of an app
    /// its host was admitted to, and up to twice the host's quota per
    /// network and family (`lease_quota`, its oldest): a host could otherwise fill any tenant's
    /// range with `etcdctl put`s in its own. The rest are ignored (and
    /// counted); a record of such an address is then `not_leased`.
    pub(super) fn check_lease(
        &self,
        key: &str,
        host: &HostId,
        net: &NetworkId,
        ip: IpAddr,
    ) -> Result {
        let admitted = !self.admissions.enforced
            || self
                .apps
                .values()
                .any(|a| a.network == *net && self.admissions.admits(&a.id, host));
        if !admitted {
            return Err(Rejected::new(
                key,
                Reject::NotAdmitted,
                format!("host {host} is not admitted to any app of network {net}"),
            ));
        }
        let held = self
            .leases_per
            .get(&(host.clone(), *net, ip.is_ipv6()))
            .copied()
            .unwrap_or(0);
        if held >= super::lease_quota(self.host_quota) {
            return Err(Rejected::new(
                key,
                Reject::Quota,
                format!(
                    "host {host} holds {held} leases in network {net} already, \
                     twice its quota (--host-quota)"
                ),
            ));
        }
        Ok(())
    }

    /// A container's address only if its host holds its lease: the
    /// allocator gives out what no host leases, so a record of an address
    /// its host never leased would take an honest host's next container's
    /// address from it (the older record keeps an address). The lease is
    /// written before the record (`reserve_address`, then `put_container`;
    /// a move or a new IPv6 address in the record's own transaction, before
    /// it), so a watch sees it first.
    fn check_leased(&self, key: &str, c: &Container, ip: IpAddr) -> Result {
        if self.holds_lease(&c.host, c.network, ip) {
            return Ok(());
        }
        Err(Rejected::new(
            key,
            Reject::NotLeased,
            format!(
                "host {} holds no lease of address {ip} in network {}",
                c.host, c.network
            ),
        ))
    }

    /// A container's IPv6 address: one of its network's IPv6 range that
    /// the allocator could have handed out, and nobody else's.
    fn check_ip6(&self, key: &str, k: &ContainerKey, c: &Container, net: &Network) -> Result {
        let Some(ip6) = c.ip6 else {
            return Ok(());
        };
        let Some(cidr6) = net.cidr6 else {
            return Err(Rejected::new(
                key,
                Reject::Address,
                format!("address {ip6}: network {} has no IPv6 range", net.id),
            ));
        };
        ipam::check_address6(&cidr6, ip6).map_err(|e| Rejected::new(key, Reject::Address, e))?;
        self.check_leased(key, c, ip6.into())?;
        if let Some(holder) = self.by_ip6.get(&ip6)
            && holder != k
        {
            return Err(Rejected::new(
                key,
                Reject::AddressTaken,
                format!("address {ip6} is container {holder}'s"),
            ));
        }
        if let Some(app) = self.services_at.get(&IpAddr::V6(ip6)) {
            return Err(Rejected::new(
                key,
                Reject::AddressTaken,
                format!("address {ip6} is a service address of app {app}"),
            ));
        }
        Ok(())
    }

    /// What a container record never changes once its host's agent wrote
    /// it: the host, namespace and interface (a record rewritten to name
    /// another namespace would make that host's agent re-address it), the
    /// network but to its app's (`app move`), the address but with the
    /// network. A runtime that makes its sandbox again detaches first.
    fn check_unchanged(&self, key: &str, old: &Container, c: &Container) -> Result {
        let moved = c.network != old.network;
        let changed = if c.host != old.host {
            format!("its host from {} to {}", old.host, c.host)
        } else if c.netns != old.netns {
            format!("its namespace from {:?} to {:?}", old.netns, c.netns)
        } else if c.ifname != old.ifname {
            format!("its interface from {:?} to {:?}", old.ifname, c.ifname)
        } else if moved && self.apps.get(&c.key.app).map(|a| a.network) != Some(c.network) {
            format!(
                "its network from {} to {}, which is not its app's",
                old.network, c.network
            )
        } else if !moved && c.ip != old.ip {
            format!("its address from {} to {} in its network", old.ip, c.ip)
        } else if let (false, Some(was), Some(now)) = (moved, old.ip6, c.ip6)
            && was != now
        {
            format!("its IPv6 address from {was} to {now} in its network")
        } else {
            return Ok(());
        };
        Err(Rejected::new(
            key,
            Reject::Immutable,
            format!("the record changes {changed}"),
        ))
    }

    /// Where a container is published: only `web` containers, on a port
    /// of their host no other container holds. Whether the port is in the
    /// host's `--publish-ports` is for that host's agent to judge (it gives
    /// another one rather than lose the container).
    fn check_published(&self, key: &str, c: &Container, at: SocketAddrV4) -> Result {
        let bad = |why: String| Err(Rejected::new(key, Reject::Published, why));
        if !c.is_web() {
            return bad(format!("a {} container is never published", c.key.ctype));
        }
        let ip = at.ip();
        if at.port() == 0
            || ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
        {
            return bad(format!("{at} cannot be a published address"));
        }
        if let Some(holder) = self.published_at.get(&(c.host.clone(), at.port()))
            && *holder != c.key
        {
            return bad(format!(
                "port {} of host {} is container {holder}'s",
                at.port(),
                c.host
            ));
        }
        Ok(())
    }
}
