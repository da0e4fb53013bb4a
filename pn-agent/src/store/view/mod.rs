//! The membership as one agent sees it: rebuilt from a listing, then kept
//! current by watch events. Everything the agent derives (maps, DNS answers,
//! metrics labels) reads this view, never the store directly.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, HostId, NetworkId};

use super::{Listing, WatchEvent, keys::Key};
use crate::model::{App, Container, ContainerKey, Host, Network};

mod checks;
mod host_checks;
mod leases;
mod refusals;
pub mod services;
mod state;
#[cfg(test)]
mod tests;

pub use refusals::{HostUpdate, HostUpdates, Refusals, Reject, Rejected};
pub use state::{DEFAULT_HOST_QUOTA, MembershipView, lease_quota};

/// What one watch event changed, for the consumers that act incrementally.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A network was created, changed (its egress) or deleted.
    Network(NetworkId),
    App,
    ContainerPut {
        new: Box<Container>,
        old: Option<Box<Container>>,
    },
    ContainerDeleted(Box<Container>),
    Host,
    /// The operator's admissions: which containers are allowed changed, so
    /// the whole store is read again (rare).
    Admissions,
    /// A key this view does not track (pool, address leases, claims).
    Other,
}

impl Default for MembershipView {
    /// An empty view of the default pool.
    fn default() -> Self {
        MembershipView::new(crate::ipam::DEFAULT_POOL.parse().expect("valid"))
    }
}

/// Each listed container record's address and the revision it was
/// created at (the oldest, if two claim one).
fn listed_ips(entries: &[(String, super::Entry)]) -> HashMap<IpAddr, i64> {
    #[derive(serde::Deserialize)]
    struct Addressed {
        ip: Ipv4Addr,
        #[serde(default)]
        ip6: Option<std::net::Ipv6Addr>,
    }
    let mut out = HashMap::new();
    for (key, e) in entries {
        if !super::keys::is_container(key) {
            continue;
        }
        if let Ok(a) = serde_json::from_str::<Addressed>(&e.value) {
            for ip in std::iter::once(IpAddr::V4(a.ip)).chain(a.ip6.map(IpAddr::V6)) {
                let at = out.entry(ip).or_insert(e.create_rev);
                *at = (*at).min(e.create_rev);
            }
        }
    }
    out
}

/// Order in which a listing is loaded: what a record refers to comes first
/// (a container's lease before the container), and among records of one
/// kind the older wins (an address claimed twice stays with the container
/// that had it).
fn load_order(key: &str) -> u8 {
    match Key::parse(key) {
        Some(Key::Network(_)) => 0,
        Some(Key::App(_) | Key::Admissions) => 1,
        Some(Key::Host(_)) => 2,
        Some(Key::HostIp(..) | Key::Ip(..) | Key::Ip6(..)) => 3,
        Some(Key::Container(..) | Key::LegacyContainer(_)) => 4,
        _ => 5,
    }
}

impl MembershipView {
    /// An empty view of a fleet whose networks lie in `pool`.
    pub fn new(pool: Ipv4Net) -> Self {
        MembershipView {
            networks: BTreeMap::new(),
            apps: BTreeMap::new(),
            containers: BTreeMap::new(),
            hosts: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_ip6: HashMap::new(),
            published_at: HashMap::new(),
            rev: 0,
            rejected: Refusals::default(),
            host_updates: HostUpdates::default(),
            services_at: HashMap::new(),
            host_revs: HashMap::new(),
            listed_ips: HashMap::new(),
            pool,
            refused: HashMap::new(),
            admissions: Default::default(),
            legacy_at: HashSet::new(),
            per_host: HashMap::new(),
            host_quota: DEFAULT_HOST_QUOTA,
            leases: HashMap::new(),
            leased: HashMap::new(),
            leases_per: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// The view of a full listing, with this view's pool and its count of
    /// refused records. Every record is checked as a watch event would be;
    /// the refused ones are skipped (one bad record must not stop
    /// enforcement of the rest), counted and logged once.
    pub fn reloaded(&self, listing: &Listing) -> MembershipView {
        let mut view = MembershipView::new(self.pool).with_host_quota(self.host_quota);
        view.rejected = self.rejected.clone();
        view.host_updates = self.host_updates.clone();
        view.refused = self.refused.clone();
        let mut entries: Vec<_> = listing.entries.iter().collect();
        // Hosts and containers by creation: a host's re-registration or a
        // container's health must not make it the younger of two claims.
        entries.sort_by_cached_key(|(key, e)| match load_order(key) {
            o @ (2..=4) => (o, e.create_rev),
            o => (o, e.mod_rev),
        });
        view.listed_ips = listed_ips(&listing.entries);
        let mut seen = std::collections::HashSet::new();
        for (key, entry) in entries {
            seen.insert(key.as_str());
            let _ = view.put(key, &entry.value, entry.mod_rev, Some(entry.create_rev));
        }
        view.listed_ips = HashMap::new();
        // Refused keys gone from the store are forgotten.
        view.refused.retain(|k, _| seen.contains(k.as_str()));
        view.rev = listing.rev;
        view.compact();
        view
    }

    /// Applies one watch event (not `Resync`, which the caller handles by
    /// listing again). A refused record leaves the view as it was (and is
    /// counted and logged here).
    pub fn apply(&mut self, ev: &WatchEvent) -> Result<Change, Rejected> {
        match ev {
            WatchEvent::Put { key, value, rev } => {
                self.rev = self.rev.max(*rev);
                self.put(key, value, *rev, None)
            }
            WatchEvent::Delete { key, rev } => {
                self.rev = self.rev.max(*rev);
                self.refused.remove(key);
                Ok(self.delete(key))
            }
            WatchEvent::Resync => Ok(Change::Other),
        }
    }

    /// Checks a record, then takes it in; or counts and logs its refusal
    /// (once per version). `created`: the revision the record was created
    /// at, if the store said (a listing); a watch's put of a key the view
    /// does not know is a creation.
    fn put(
        &mut self,
        key: &str,
        value: &str,
        rev: i64,
        created: Option<i64>,
    ) -> Result<Change, Rejected> {
        if let Some(Key::Host(id)) = Key::parse(key) {
            let known = self.host_revs.get(&id).map(|r| r.0);
            let created = created.or(known).unwrap_or(rev);
            self.host_revs.insert(id, (created, rev));
        }
        match self.check_and_put(key, value, rev) {
            Ok(change) => {
                self.refused.remove(key);
                Ok(change)
            }
            Err(r) => {
                self.refuse(&r, rev);
                Err(r)
            }
        }
    }

    fn refuse(&mut self, r: &Rejected, rev: i64) {
        if self.refused.insert(r.key.clone(), rev) != Some(rev) {
            self.rejected.count(&r.key, r.reject);
            log::warn!("{r}; keeping the last good state");
        }
    }

    fn check_and_put(&mut self, key: &str, value: &str, rev: i64) -> Result<Change, Rejected> {
        let Some(parsed) = Key::parse(key) else {
            return match checks::record_prefix(key) {
                Some(_) => Err(Rejected::new(key, Reject::Key, "not a key of the layout")),
                None => Ok(Change::Other),
            };
        };
        match parsed {
            Key::Network(id) => {
                let mut n: Network = checks::decode(key, value)?;
                self.carry_over_network(&mut n);
                self.check_network(key, &id, &n)?;
                self.networks.insert(n.id, n);
                Ok(Change::Network(id))
            }
            Key::App(id) => {
                let mut a: App = checks::decode(key, value)?;
                self.carry_over_services6(&mut a);
                self.check_app(key, &id, &a, rev)?;
                self.unindex_services(&id);
                for ip in services::addresses(&a) {
                    self.services_at.insert(ip, id);
                }
                self.apps.insert(a.id, a);
                Ok(Change::App)
            }
            Key::Admissions => {
                self.admissions = checks::decode(key, value)?;
                Ok(Change::Admissions)
            }
            Key::Container(ref writer, ref k) => self.put_container(key, Some(writer), k, value),
            Key::LegacyContainer(ref k) => self.put_container(key, None, k, value),
            Key::Host(id) => {
                let h: Host = checks::decode(key, value)?;
                let created = self.host_revs.get(&id).map_or(rev, |r| r.0);
                let displaced = self.check_host(key, &id, &h, created)?;
                if let Some(younger) = &displaced {
                    self.displace(younger);
                }
                let same = displaced.is_none()
                    && self.hosts.get(&id).is_some_and(|old| {
                        // What agents use of a host: its peer id, tunnel
                        // key and endpoint (`started_at` only says when).
                        (old.peer_id, &old.public_key, old.advertise)
                            == (h.peer_id, &h.public_key, h.advertise)
                    });
                self.hosts.insert(h.id.clone(), h);
                if same {
                    self.host_updates.count(HostUpdate::Unchanged);
                    return Ok(Change::Other);
                }
                Ok(Change::Host)
            }
            Key::HostIp(host, net, ip) => {
                if !self.leases.contains_key(key) {
                    let slot = (host.clone(), net, ip.is_ipv6());
                    if let Err(r) = self.check_lease(key, &host, &net, ip) {
                        if r.reject == Reject::Quota {
                            let w = self.waiting.entry(slot).or_default();
                            if !w.iter().any(|k| k == key) {
                                w.push(key.to_string());
                            }
                        }
                        return Err(r);
                    }
                    *self.leases_per.entry(slot).or_default() += 1;
                }
                self.put_lease(key, (host, net, ip));
                Ok(Change::Other)
            }
            Key::Ip(net, ip) => Ok(self.put_shared_lease(key, value, net, ip.into())),
            Key::Ip6(net, ip) => Ok(self.put_shared_lease(key, value, net, ip.into())),
            _ => Ok(Change::Other),
        }
    }

    fn put_container(
        &mut self,
        key: &str,
        writer: Option<&HostId>,
        k: &ContainerKey,
        value: &str,
    ) -> Result<Change, Rejected> {
        let mut c: Container = checks::decode(key, value)?;
        // Its host's one copy of the name, not a copy per container.
        if let Some((host, _)) = self.hosts.get_key_value(&c.host) {
            c.host = host.clone();
        }
        self.check_container(key, writer, k, &c)?;
        let old = self.containers.insert(c.key.clone(), c.clone());
        if writer.is_some() {
            self.legacy_at.remove(&c.key);
        } else {
            self.legacy_at.insert(c.key.clone());
        }
        if let Some(o) = &old {
            self.uncount(&o.host);
        }
        *self.per_host.entry(c.host.clone()).or_default() += 1;
        if let Some(o) = &old {
            if o.ip != c.ip {
                self.by_ip.remove(&o.ip);
            }
            if let Some(ip6) = o.ip6.filter(|ip6| c.ip6 != Some(*ip6)) {
                self.by_ip6.remove(&ip6);
            }
            self.unindex_published(o);
        }
        self.by_ip.insert(c.ip, c.key.clone());
        if let Some(ip6) = c.ip6 {
            self.by_ip6.insert(ip6, c.key.clone());
        }
        if let Some(at) = c.published {
            self.published_at
                .insert((c.host.clone(), at.port()), c.key.clone());
        }
        Ok(Change::ContainerPut {
            new: Box::new(c),
            old: old.map(Box::new),
        })
    }

    fn delete(&mut self, key: &str) -> Change {
        let parsed = Key::parse(key);
        if let Some(p @ (Key::Container(_, k) | Key::LegacyContainer(k))) = &parsed {
            let writer = match p {
                Key::Container(h, _) => Some(h),
                _ => None,
            };
            // Another record of the key (the same container moved under its
            // host, or another host's) is not this one's to remove.
            if self.held_at(k, writer) != Some(true) {
                return Change::Other;
            }
            self.legacy_at.remove(k);
        }
        if let Some(Key::HostIp(..) | Key::Ip(..) | Key::Ip6(..)) = parsed {
            return self.unlease(key);
        }
        if let Some(Key::Admissions) = parsed {
            self.admissions = Default::default();
            return Change::Admissions;
        }
        match parsed {
            Some(Key::Network(id)) => {
                self.networks.remove(&id);
                Change::Network(id)
            }
            Some(Key::App(id)) => {
                self.unindex_services(&id);
                self.apps.remove(&id);
                Change::App
            }
            Some(Key::Container(_, k) | Key::LegacyContainer(k)) => {
                match self.containers.remove(&k) {
                    Some(c) => {
                        self.uncount(&c.host);
                        if self.by_ip.get(&c.ip) == Some(&c.key) {
                            self.by_ip.remove(&c.ip);
                        }
                        if let Some(ip6) = c.ip6
                            && self.by_ip6.get(&ip6) == Some(&c.key)
                        {
                            self.by_ip6.remove(&ip6);
                        }
                        self.unindex_published(&c);
                        Change::ContainerDeleted(Box::new(c))
                    }
                    None => Change::Other,
                }
            }
            Some(Key::Host(id)) => {
                self.hosts.remove(&id);
                self.host_revs.remove(&id);
                Change::Host
            }
            _ => Change::Other,
        }
    }

    fn uncount(&mut self, host: &HostId) {
        if let Some(n) = self.per_host.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(host);
            }
        }
    }

    fn unindex_services(&mut self, app: &AppId) {
        if let Some(old) = self.apps.get(app) {
            for ip in services::addresses(old) {
                if self.services_at.get(&ip) == Some(app) {
                    self.services_at.remove(&ip);
                }
            }
        }
    }

    /// Takes a younger host's record out of the view: an older record
    /// claims its key. It comes back when its host registers again or at
    /// the next listing, if the key is then its alone.
    fn displace(&mut self, younger: &HostId) {
        if self.hosts.remove(younger).is_none() {
            return;
        }
        let rev = self.host_revs.get(younger).map_or(0, |r| r.1);
        let r = Rejected::new(
            &Key::Host(younger.clone()).to_string(),
            Reject::KeyTaken,
            "its public key is claimed by an older host record",
        );
        self.refuse(&r, rev);
    }

    fn unindex_published(&mut self, c: &Container) {
        if let Some(at) = c.published {
            let slot = (c.host.clone(), at.port());
            if self.published_at.get(&slot) == Some(&c.key) {
                self.published_at.remove(&slot);
            }
        }
    }

    pub fn container_by_ip(&self, ip: Ipv4Addr) -> Option<&Container> {
        self.containers.get(self.by_ip.get(&ip)?)
    }

    pub fn container_by_ip6(&self, ip: Ipv6Addr) -> Option<&Container> {
        self.containers.get(self.by_ip6.get(&ip)?)
    }

    /// A network record without the IPv6 range the view knows it has: an
    /// agent that predates IPv6 rewrote it (its egress, an app's creation)
    /// without the field it does not know. The range stays the network's.
    /// (A container's record is rewritten only by its own host's agent,
    /// or moved: one without its address has none, as its host decided.)
    fn carry_over_network(&self, n: &mut Network) {
        if n.cidr6.is_none() {
            n.cidr6 = self.networks.get(&n.id).and_then(|k| k.cidr6);
        }
    }

    /// An app record without the IPv6 service addresses the view knows it
    /// has: an older agent rewrote it (an attach) without the field. Each
    /// type that keeps its IPv4 service address keeps its IPv6 one (their
    /// leases are still held); checked as if the record had them.
    fn carry_over_services6(&self, a: &mut App) {
        if !a.services6.is_empty() {
            return;
        }
        let Some(known) = self.apps.get(&a.id).filter(|k| k.network == a.network) else {
            return;
        };
        a.services6 = known
            .services6
            .iter()
            .filter(|(t, _)| a.services.contains_key(*t))
            .map(|(t, ip)| (t.clone(), *ip))
            .collect();
    }

    /// Containers of one app, in key order: a range of the ordered map
    /// (keys sort by app first), not a scan of the fleet.
    pub fn containers_of_app<'a>(
        &'a self,
        app: &AppId,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        let app = *app;
        self.containers
            .range(ContainerKey::first_of(app)..)
            .take_while(move |(k, _)| k.app == app)
            .map(|(_, c)| c)
    }

    /// Containers a DNS selector designates (the bare app name means `web`):
    /// a range of one type of the app (keys sort by app, type, index), so a
    /// query costs the same in an app of 100 000 containers as in one of 4.
    pub fn select<'a>(
        &'a self,
        app: &AppId,
        selector: &'a pn_common::names::Selector,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        use pn_common::{ids::ContainerType, names::Selector};
        let (ctype, one) = match selector {
            Selector::Web => (ContainerType::WEB.parse().expect("a valid type"), None),
            Selector::Type(t) => (t.clone(), None),
            Selector::Container(t, i) => (t.clone(), Some(*i)),
        };
        let from = ContainerKey {
            app: *app,
            ctype,
            index: one.unwrap_or(0),
        };
        let (app, ctype) = (from.app, from.ctype.clone());
        self.containers
            .range(from..)
            .take_while(move |(k, _)| {
                k.app == app && k.ctype == ctype && one.is_none_or(|i| k.index == i)
            })
            .map(|(_, c)| c)
    }

    /// The peer id of a host (non-zero, unique in the view), if the host
    /// is known.
    pub fn peer_id(&self, host: &HostId) -> Option<u32> {
        self.hosts.get(host).map(|h| h.peer_id)
    }

    pub fn local_containers<'a>(
        &'a self,
        host: &'a HostId,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.values().filter(move |c| c.host == *host)
    }
}
