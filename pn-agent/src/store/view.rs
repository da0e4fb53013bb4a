//! The membership as one agent sees it: rebuilt from a listing, then kept
//! current by watch events. Everything the agent derives (maps, DNS answers,
//! metrics labels) reads this view, never the store directly.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use pn_common::ids::{AppId, HostId, NetworkId};

use super::{Listing, WatchEvent, keys::Key};
use crate::model::{App, Container, ContainerKey, Host, Network};

#[derive(Clone, Debug, Default)]
pub struct MembershipView {
    pub networks: BTreeMap<NetworkId, Network>,
    pub apps: BTreeMap<AppId, App>,
    pub containers: BTreeMap<ContainerKey, Container>,
    pub hosts: BTreeMap<HostId, Host>,
    pub by_ip: HashMap<Ipv4Addr, ContainerKey>,
    /// Revision of the last change applied.
    pub rev: i64,
}

/// What one watch event changed, for the consumers that act incrementally.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Network,
    App,
    ContainerPut {
        new: Box<Container>,
        old: Option<Box<Container>>,
    },
    ContainerDeleted(Box<Container>),
    Host,
    /// A key this view does not track (pool, address leases).
    Other,
}

impl MembershipView {
    /// Builds the view of a full listing. Records that do not decode are
    /// skipped and reported (one bad record must not stop enforcement of the
    /// rest).
    pub fn from_listing(listing: &Listing) -> (MembershipView, Vec<String>) {
        let mut view = MembershipView::default();
        let mut errors = Vec::new();
        for (key, entry) in &listing.entries {
            if let Err(e) = view.put(key, &entry.value) {
                errors.push(e);
            }
        }
        view.rev = listing.rev;
        (view, errors)
    }

    /// Applies one watch event (not `Resync`, which the caller handles by
    /// listing again).
    pub fn apply(&mut self, ev: &WatchEvent) -> Result<Change, String> {
        match ev {
            WatchEvent::Put { key, value, rev } => {
                self.rev = self.rev.max(*rev);
                self.put(key, value)
            }
            WatchEvent::Delete { key, rev } => {
                self.rev = self.rev.max(*rev);
                Ok(self.delete(key))
            }
            WatchEvent::Resync => Ok(Change::Other),
        }
    }

    fn put(&mut self, key: &str, value: &str) -> Result<Change, String> {
        fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, String> {
            serde_json::from_str(value).map_err(|e| format!("{key}: {e}"))
        }
        match Key::parse(key) {
            Some(Key::Network(_)) => {
                let n: Network = parse(key, value)?;
                self.networks.insert(n.id, n);
                Ok(Change::Network)
            }
            Some(Key::App(_)) => {
                let a: App = parse(key, value)?;
                self.apps.insert(a.id, a);
                Ok(Change::App)
            }
            Some(Key::Container(_)) => {
                let c: Container = parse(key, value)?;
                let old = self.containers.insert(c.key.clone(), c.clone());
                if let Some(o) = &old
                    && o.ip != c.ip
                {
                    self.by_ip.remove(&o.ip);
                }
                self.by_ip.insert(c.ip, c.key.clone());
                Ok(Change::ContainerPut {
                    new: Box::new(c),
                    old: old.map(Box::new),
                })
            }
            Some(Key::Host(_)) => {
                let h: Host = parse(key, value)?;
                self.hosts.insert(h.id.clone(), h);
                Ok(Change::Host)
            }
            _ => Ok(Change::Other),
        }
    }

    fn delete(&mut self, key: &str) -> Change {
        match Key::parse(key) {
            Some(Key::Network(id)) => {
                self.networks.remove(&id);
                Change::Network
            }
            Some(Key::App(id)) => {
                self.apps.remove(&id);
                Change::App
            }
            Some(Key::Container(k)) => match self.containers.remove(&k) {
                Some(c) => {
                    if self.by_ip.get(&c.ip) == Some(&c.key) {
                        self.by_ip.remove(&c.ip);
                    }
                    Change::ContainerDeleted(Box::new(c))
                }
                None => Change::Other,
            },
            Some(Key::Host(id)) => {
                self.hosts.remove(&id);
                Change::Host
            }
            _ => Change::Other,
        }
    }

    pub fn container_by_ip(&self, ip: Ipv4Addr) -> Option<&Container> {
        self.containers.get(self.by_ip.get(&ip)?)
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

    /// Containers a DNS selector designates (the bare app name means `web`).
    pub fn select<'a>(
        &'a self,
        app: &AppId,
        selector: &'a pn_common::names::Selector,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers_of_app(app)
            .filter(move |c| selector.matches(&c.key.ctype, c.key.index))
    }

    pub fn local_containers<'a>(
        &'a self,
        host: &'a HostId,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.values().filter(move |c| c.host == *host)
    }
}
