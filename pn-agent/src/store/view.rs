//! The membership as one agent sees it: rebuilt from a listing, then kept
//! current by watch events. Everything the agent derives (maps, DNS answers,
//! metrics labels) reads this view, never the store directly.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use pn_common::ids::{AppId, HostId, NetworkId};

use super::{Listing, WatchEvent, keys};
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
        if key.starts_with(keys::NETWORKS) {
            let n: Network = parse(key, value)?;
            self.networks.insert(n.id, n);
            Ok(Change::Network)
        } else if key.starts_with(keys::APPS) {
            let a: App = parse(key, value)?;
            self.apps.insert(a.id, a);
            Ok(Change::App)
        } else if key.starts_with(keys::CONTAINERS) {
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
        } else if key.starts_with(keys::HOSTS) {
            let h: Host = parse(key, value)?;
            self.hosts.insert(h.id.clone(), h);
            Ok(Change::Host)
        } else {
            Ok(Change::Other)
        }
    }

    fn delete(&mut self, key: &str) -> Change {
        let tail = |prefix: &str| key[prefix.len()..].to_string();
        if key.starts_with(keys::NETWORKS) {
            if let Ok(id) = tail(keys::NETWORKS).parse() {
                self.networks.remove(&id);
            }
            Change::Network
        } else if key.starts_with(keys::APPS) {
            if let Ok(id) = tail(keys::APPS).parse() {
                self.apps.remove(&id);
            }
            Change::App
        } else if key.starts_with(keys::CONTAINERS) {
            match keys::parse_container(key).and_then(|k| self.containers.remove(&k)) {
                Some(c) => {
                    if self.by_ip.get(&c.ip) == Some(&c.key) {
                        self.by_ip.remove(&c.ip);
                    }
                    Change::ContainerDeleted(Box::new(c))
                }
                None => Change::Other,
            }
        } else if key.starts_with(keys::HOSTS) {
            if let Ok(id) = tail(keys::HOSTS).parse() {
                self.hosts.remove(&id);
            }
            Change::Host
        } else {
            Change::Other
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
        use pn_common::names::Selector;
        self.containers_of_app(app).filter(move |c| match selector {
            Selector::Web => c.key.ctype.as_str() == pn_common::ids::ContainerType::WEB,
            Selector::Type(t) => c.key.ctype == *t,
            Selector::Container(t, i) => c.key.ctype == *t && c.key.index == *i,
        })
    }

    pub fn local_containers<'a>(
        &'a self,
        host: &'a HostId,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.values().filter(move |c| c.host == *host)
    }
}
