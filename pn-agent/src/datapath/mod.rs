//! The datapath as the agent drives it: a desired [`State`] of the kernel's
//! maps and links goes in, the datapath computes its own difference with what
//! the kernel holds and makes the fewest changes, adding before removing.
//! `apply` may be called again and again with the same state (it then does
//! nothing), for the whole state (start, resync) or for a [`Scope`] (one
//! changed container).
//!
//! The kernel sits behind [`Maps`]: [`kernel::Kernel`] is aya (load, pin,
//! attach), [`fake::FakeMaps`] a plain in-memory copy for tests, so the diff
//! is tested without a kernel.

pub mod conn;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
mod lb;
pub mod pins;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use pn_common::{
    Ip4,
    maps::{Endpoint, Iface, Peer},
};

pub use kernel::{Kernel, ensure_bpffs};

#[derive(Debug)]
pub struct DatapathError {
    context: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for DatapathError {
    // The whole chain on one line: aya's errors put the errno in a source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.context)?;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self.source.as_ref());
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() {
                write!(f, ": {text}")?;
            }
            next = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for DatapathError {}

impl crate::error::Kind for DatapathError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, DatapathError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, DatapathError> {
        self.map_err(|e| DatapathError {
            context: context(),
            source: Box::new(e),
        })
    }
}

pub(crate) fn plain(context: String) -> DatapathError {
    DatapathError {
        context,
        source: "".into(),
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// What the kernel's maps and links hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `PN_ENDPOINTS`: every member address, local or remote.
    pub endpoints: BTreeMap<Ip4, Endpoint>,
    /// `PN_IFACES`, by host-side ifindex: local containers.
    pub ifaces: BTreeMap<u32, Iface>,
    /// Host-side interfaces with both TC programs attached (pinned links).
    pub attached: BTreeSet<String>,
    /// `PN_PEERS`: underlay address → peer host (XDP guard).
    pub peers: BTreeMap<Ip4, Peer>,
    /// `PN_TAGS`: networks with a local member (XDP guard).
    pub tags: BTreeSet<u32>,
    /// `PN_EGRESS_DENY`: ranges that are never the world (network address
    /// and prefix length → [`pn_common::maps::DenyRange`] kind).
    pub egress_deny: BTreeMap<(Ip4, u8), u32>,
    /// Service addresses balanced from this host (`PN_LB_*`). Always whole,
    /// whatever the [`Scope`]: a handful per network, rebuilt from the view.
    pub services: BTreeMap<Ip4, ServiceState>,
}

/// A service address as the balancer holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Its network.
    pub tag: u32,
    /// The backends in rotation (live, healthy containers of its type).
    pub backends: BTreeSet<Ip4>,
}

/// The part of the state an `apply` covers; entries outside it are left
/// alone, so one container's change costs a few map writes, not a walk of
/// 100 000 endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Member addresses (endpoints, and interfaces carrying them); `None`: all.
    pub addrs: Option<BTreeSet<Ip4>>,
    /// Host-side interface names (attached links); `None`: all.
    pub links: Option<BTreeSet<String>>,
    /// Peers and tags of the underlay guard.
    pub underlay: bool,
    /// The edge's deny list.
    pub edge: bool,
}

impl Scope {
    pub fn all() -> Scope {
        Scope {
            addrs: None,
            links: None,
            underlay: true,
            edge: true,
        }
    }

    /// Some addresses and links (a changed container: its old and new
    /// address, its interface), and the underlay if a local member changed.
    pub fn entries(
        addrs: impl IntoIterator<Item = Ip4>,
        links: impl IntoIterator<Item = String>,
        underlay: bool,
    ) -> Scope {
        Scope {
            addrs: Some(addrs.into_iter().collect()),
            links: Some(links.into_iter().collect()),
            underlay,
            edge: false,
        }
    }

    /// Only the underlay guard's peers and tags.
    pub fn underlay() -> Scope {
        Scope::entries([], [], true)
    }

    /// Only the edge's deny list.
    pub fn edge() -> Scope {
        Scope::entries([], [], false).with_edge(true)
    }

    /// The same scope, with or without the edge's deny list.
    pub fn with_edge(mut self, edge: bool) -> Scope {
        self.edge = edge;
        self
    }

    pub fn is_all(&self) -> bool {
        self.addrs.is_none() && self.links.is_none()
    }

    fn has_addr(&self, a: Ip4) -> bool {
        self.addrs.as_ref().is_none_or(|s| s.contains(&a))
    }

    fn has_link(&self, l: &str) -> bool {
        self.links.as_ref().is_none_or(|s| s.contains(l))
    }
}

/// How many entries an `apply` changed (for logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub set: usize,
    pub removed: usize,
    pub attached: usize,
    pub detached: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// One path to the kernel: every write the datapath makes goes through
/// these calls (aya in production, a fake in tests).
pub trait Maps {
    /// The kernel's current contents, read whole.
    fn read(&mut self) -> Result<State>;
    fn set_endpoint(&mut self, ip: Ip4, ep: Endpoint) -> Result<()>;
    fn remove_endpoint(&mut self, ip: Ip4) -> Result<()>;
    fn set_iface(&mut self, ifindex: u32, iface: Iface) -> Result<()>;
    fn remove_iface(&mut self, ifindex: u32) -> Result<()>;
    fn set_peer(&mut self, ip: Ip4, peer: Peer) -> Result<()>;
    fn remove_peer(&mut self, ip: Ip4) -> Result<()>;
    fn set_tag(&mut self, tag: u32) -> Result<()>;
    fn remove_tag(&mut self, tag: u32) -> Result<()>;
    /// Attaches both programs to an interface, or replaces in place the
    /// programs of links an earlier agent pinned.
    fn attach(&mut self, ifname: &str) -> Result<()>;
    fn detach(&mut self, ifname: &str) -> Result<()>;
    /// Zeroes a row of `PN_COUNTERS` (before an interface gets the slot).
    fn reset_counters(&mut self, slot: u16) -> Result<()>;
    /// Writes a service (its table from its backends); `old`: what the
    /// kernel holds now, so only the difference is written.
    fn set_service(
        &mut self,
        vip: Ip4,
        old: Option<&ServiceState>,
        new: &ServiceState,
    ) -> Result<()>;
    fn remove_service(&mut self, vip: Ip4, old: &ServiceState) -> Result<()>;
    /// Forgets a removed local endpoint's connections with the outside
    /// (its address may go to another container, which must not inherit
    /// them).
    fn forget_conns(&mut self, ip: Ip4) -> Result<()>;
    fn set_deny(&mut self, range: (Ip4, u8), kind: u32) -> Result<()>;
    fn remove_deny(&mut self, range: (Ip4, u8)) -> Result<()>;
}

/// The kernel state as this agent drives it, with a copy of what it last
/// wrote: scoped applies compare against the copy, full applies read the
/// kernel again (to repair whatever changed behind the agent's back).
pub struct Datapath<M: Maps = Kernel> {
    maps: M,
    current: State,
    /// Links this process attached or updated: after a restart each pinned
    /// link is updated once, so it runs this binary's programs.
    refreshed: HashSet<String>,
}

impl<M: Maps> Datapath<M> {
    pub fn new(maps: M) -> Datapath<M> {
        Datapath {
            maps,
            current: State::default(),
            refreshed: HashSet::new(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// What this agent believes the kernel holds.
    pub fn current(&self) -> &State {
        &self.current
    }

    /// Attaches the programs to one interface right away (an attach in
    /// progress: programs go on before the interface carries any traffic,
    /// so nothing flows unfiltered). The next `apply` finds it done.
    pub fn attach_now(&mut self, ifname: &str) -> Result<()> {
        self.maps.attach(ifname)?;
        self.refreshed.insert(ifname.to_string());
        self.current.attached.insert(ifname.to_string());
        Ok(())
    }

    /// Undoes `attach_now` for an attach that failed half-way.
    pub fn detach_now(&mut self, ifname: &str) -> Result<()> {
        self.refreshed.remove(ifname);
        self.current.attached.remove(ifname);
        self.maps.detach(ifname)
    }

    /// Brings the kernel to `want` within `scope`. Order: new links first (a
    /// new interface is filtered before it is known), then entries set, then
    /// the links an earlier agent left switched to this agent's programs
    /// (which read these entries: after a change of map layout, the new maps
    /// are full before any program uses them), then entries removed, then
    /// links detached; an error stops the apply and the next one retries
    /// what is left.
    pub fn apply(&mut self, want: &State, scope: &Scope) -> Result<Changes> {
        if scope.is_all() {
            self.current = self.maps.read()?;
        }
        let mut ch = Changes::default();
        for name in want.attached.iter().filter(|n| scope.has_link(n)) {
            if !self.refreshed.contains(name) && !self.current.attached.contains(name) {
                self.maps.attach(name)?;
                self.refreshed.insert(name.clone());
                self.current.attached.insert(name.clone());
                ch.attached += 1;
            }
        }
        for (idx, iface) in want.ifaces.iter().filter(|(_, i)| scope.has_addr(i.addr)) {
            let iface = self.with_slot(*idx, *iface)?;
            if self.current.ifaces.get(idx) != Some(&iface) {
                self.maps.set_iface(*idx, iface)?;
                self.current.ifaces.insert(*idx, iface);
                ch.set += 1;
            }
        }
        for (ip, ep) in want.endpoints.iter().filter(|(ip, _)| scope.has_addr(**ip)) {
            if self.current.endpoints.get(ip) != Some(ep) {
                self.maps.set_endpoint(*ip, *ep)?;
                self.current.endpoints.insert(*ip, *ep);
                ch.set += 1;
            }
        }
        for (vip, svc) in &want.services {
            let old = self.current.services.get(vip);
            if old != Some(svc) {
                self.maps.set_service(*vip, old, svc)?;
                self.current.services.insert(*vip, svc.clone());
                ch.set += 1;
            }
        }
        let gone: Vec<Ip4> = self
            .current
            .services
            .keys()
            .filter(|v| !want.services.contains_key(v))
            .copied()
            .collect();
        for vip in gone {
            if let Some(old) = self.current.services.remove(&vip) {
                self.maps.remove_service(vip, &old)?;
                ch.removed += 1;
            }
        }
        if scope.underlay {
            for (ip, p) in &want.peers {
                if self.current.peers.get(ip) != Some(p) {
                    self.maps.set_peer(*ip, *p)?;
                    self.current.peers.insert(*ip, *p);
                    ch.set += 1;
                }
            }
            for t in &want.tags {
                if self.current.tags.insert(*t) {
                    self.maps.set_tag(*t)?;
                    ch.set += 1;
                }
            }
        }
        if scope.edge {
            for (range, kind) in &want.egress_deny {
                if self.current.egress_deny.get(range) != Some(kind) {
                    self.maps.set_deny(*range, *kind)?;
                    self.current.egress_deny.insert(*range, *kind);
                    ch.set += 1;
                }
            }
        }
        for name in want.attached.iter().filter(|n| scope.has_link(n)) {
            if !self.refreshed.contains(name) {
                self.maps.attach(name)?;
                self.refreshed.insert(name.clone());
                self.current.attached.insert(name.clone());
                ch.attached += 1;
            }
        }
        for ip in self.gone_endpoints(want, scope) {
            let was_local = self
                .current
                .endpoints
                .remove(&ip)
                .is_some_and(|e| !e.is_remote());
            self.maps.remove_endpoint(ip)?;
            if was_local {
                self.maps.forget_conns(ip)?;
            }
            ch.removed += 1;
        }
        let gone: Vec<u32> = self
            .current
            .ifaces
            .iter()
            .filter(|(idx, i)| scope.has_addr(i.addr) && !want.ifaces.contains_key(idx))
            .map(|(idx, _)| *idx)
            .collect();
        for idx in gone {
            self.maps.remove_iface(idx)?;
            self.current.ifaces.remove(&idx);
            ch.removed += 1;
        }
        if scope.underlay {
            let gone: Vec<Ip4> = self
                .current
                .peers
                .keys()
                .filter(|ip| !want.peers.contains_key(ip))
                .copied()
                .collect();
            for ip in gone {
                self.maps.remove_peer(ip)?;
                self.current.peers.remove(&ip);
                ch.removed += 1;
            }
            let gone: Vec<u32> = self.current.tags.difference(&want.tags).copied().collect();
            for t in gone {
                self.maps.remove_tag(t)?;
                self.current.tags.remove(&t);
                ch.removed += 1;
            }
        }
        if scope.edge {
            let gone: Vec<(Ip4, u8)> = self
                .current
                .egress_deny
                .keys()
                .filter(|r| !want.egress_deny.contains_key(r))
                .copied()
                .collect();
            for r in gone {
                self.maps.remove_deny(r)?;
                self.current.egress_deny.remove(&r);
                ch.removed += 1;
            }
        }
        let gone: Vec<String> = self
            .current
            .attached
            .iter()
            .filter(|n| scope.has_link(n) && !want.attached.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.maps.detach(&name)?;
            self.current.attached.remove(&name);
            self.refreshed.remove(&name);
            ch.detached += 1;
        }
        Ok(ch)
    }

    /// Endpoints the kernel holds within `scope` that `want` does not: a
    /// scoped apply looks up its own addresses (a watch event touching one
    /// container must not walk 100 000 endpoints), a full one walks them all.
    fn gone_endpoints(&self, want: &State, scope: &Scope) -> Vec<Ip4> {
        let gone = |ip: &Ip4| !want.endpoints.contains_key(ip);
        match &scope.addrs {
            Some(addrs) => addrs
                .iter()
                .filter(|ip| self.current.endpoints.contains_key(*ip) && gone(ip))
                .copied()
                .collect(),
            None => self
                .current
                .endpoints
                .keys()
                .filter(|ip| gone(ip))
                .copied()
                .collect(),
        }
    }
}

impl<M: Maps> Datapath<M> {
    /// `iface` with its counter slot: the one its interface holds for the
    /// same address (counts go on across applies and restarts), else the
    /// lowest free one, zeroed first (a new container, or a new address,
    /// starts from 0). Slot 0 (the host's row) when all are taken.
    fn with_slot(&mut self, ifindex: u32, mut iface: Iface) -> Result<Iface> {
        if let Some(cur) = self.current.ifaces.get(&ifindex)
            && cur.slot != 0
            && cur.addr == iface.addr
        {
            iface.slot = cur.slot;
            return Ok(iface);
        }
        let used: BTreeSet<u16> = self
            .current
            .ifaces
            .iter()
            .filter(|(i, _)| **i != ifindex)
            .map(|(_, i)| i.slot)
            .collect();
        let Some(slot) = (1..pn_common::maps::MAX_COUNTER_SLOTS)
            .filter_map(|s| u16::try_from(s).ok())
            .find(|s| !used.contains(s))
        else {
            return Ok(iface);
        };
        self.maps.reset_counters(slot)?;
        iface.slot = slot;
        Ok(iface)
    }
}

#[cfg(test)]
mod tests;
