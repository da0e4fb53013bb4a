//! The datapath as the agent drives it: a desired [`State`] of the kernel's
//! maps and links goes in, the datapath computes its own difference with what
//! the kernel holds (one [`diff`] for every map and link set) and makes the
//! fewest changes, entries before the programs that read them, adding
//! before removing; a failed write does not stop the
//! others, and all failures come back together ([`ApplyError`]).
//! `apply` may be called again and again with the same state (it then does
//! nothing), for the whole state (start, resync) or for a [`Scope`] (one
//! changed container).
//!
//! The kernel sits behind [`Maps`]: [`kernel::Kernel`] is aya (load, pin,
//! attach), [`fake::FakeMaps`] a plain in-memory copy for tests, so the diff
//! is tested without a kernel.

pub mod conn;
mod diff;
mod edge;
mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
mod lb;
mod maps;
pub mod metrics;
pub mod pins;
mod rows;
pub mod share;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use pn_common::{
    Ip4, Ip6,
    maps::{Endpoint, Iface, Peer},
};

use diff::{Diff, Part, diff};
pub use error::{DatapathError, Result};
pub use kernel::{Kernel, ensure_bpffs};
pub use maps::Maps;
pub use state::{ServiceState, State};

/// An `apply` that did not reach its state; the next one retries.
#[derive(Debug)]
pub enum ApplyError {
    /// A full apply could not read the kernel's maps: nothing was written.
    Read(DatapathError),
    /// These writes failed, every one; all the others were made.
    Writes {
        done: Changes,
        failed: Vec<DatapathError>,
    },
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Read(e) => write!(f, "reading the kernel's maps: {e}"),
            ApplyError::Writes { done, failed } => {
                // The count of the others is for the log: what did change.
                let made = done.set + done.removed + done.attached + done.detached;
                write!(f, "{} writes failed ({made} made)", failed.len())?;
                failed.iter().try_for_each(|e| write!(f, "; {e}"))
            }
        }
    }
}

impl std::error::Error for ApplyError {}

impl crate::error::Kind for ApplyError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

/// The part of the state an `apply` covers; entries outside it are left
/// alone, so one container's change costs a few map writes, not a walk of
/// 100 000 endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Member addresses (endpoints, and interfaces carrying them); `None`: all.
    pub addrs: Option<BTreeSet<Ip4>>,
    /// Member IPv6 addresses (`PN_ENDPOINTS6`); `None`: all.
    pub addrs6: Option<BTreeSet<Ip6>>,
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
            addrs6: None,
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
            addrs6: Some(BTreeSet::new()),
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

    /// The same scope, covering these IPv6 addresses too (a changed
    /// container's old and new ones).
    pub fn with_addrs6(mut self, addrs6: impl IntoIterator<Item = Ip6>) -> Scope {
        if let Some(s) = &mut self.addrs6 {
            s.extend(addrs6);
        }
        self
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

    /// Brings the kernel to `want` within `scope`. Order: entries set, then
    /// links attached — new ones, then the links an earlier agent left,
    /// switched to this agent's programs once every set worked — then entries
    /// removed, then links detached. Programs go on only over full tables: a
    /// link this apply attaches is an interface that already carries traffic
    /// (a new container's is attached before it does, `attach_now`), such as
    /// every interface after a start from empty maps (pins gone with the last
    /// agent, or maps of another layout not carried); programs put on first
    /// would drop its packets as `unknown_interface` (and the counterpart's
    /// as `spoofed_source`) until its entries came. A failed write does not
    /// stop the others: every failure comes back in one error, and the next
    /// apply retries them (the copy keeps what the kernel held).
    pub fn apply(&mut self, want: &State, scope: &Scope) -> Result<Changes, ApplyError> {
        if scope.is_all() {
            self.current = self.maps.read().map_err(ApplyError::Read)?;
        }
        let Plan {
            links,
            pinned,
            ifaces,
            endpoints,
            endpoints6,
            services,
            services6,
            peers,
            peers6,
            tags,
            deny,
            deny6,
        } = self.plan(want, scope);
        let (maps, cur, refreshed) = (&mut self.maps, &mut self.current, &mut self.refreshed);
        let mut ch = Changes::default();
        let mut failed = Vec::new();
        ch.set += ifaces.write_sets(&mut cur.ifaces, &mut failed, |e| {
            if zeroes(e.old.as_ref(), &e.new) {
                maps.reset_counters(e.new.slot)?;
            }
            maps.set_iface(e.key, e.new)
        });
        ch.set += endpoints.write_sets(&mut cur.endpoints, &mut failed, |e| {
            maps.set_endpoint(e.key, e.new)
        });
        ch.set += endpoints6.write_sets(&mut cur.endpoints6, &mut failed, |e| {
            maps.set_endpoint6(e.key, e.new)
        });
        ch.set += services.write_sets(&mut cur.services, &mut failed, |e| {
            maps.set_service(e.key, e.old.as_ref(), &e.new)
        });
        ch.set += services6.write_sets(&mut cur.services6, &mut failed, |e| {
            maps.set_service6(e.key, e.old.as_ref(), &e.new)
        });
        ch.set += peers.write_sets(&mut cur.peers, &mut failed, |e| maps.set_peer(e.key, e.new));
        ch.set += peers6.write_sets(&mut cur.peers6, &mut failed, |e| {
            maps.set_peer6(e.key, e.new)
        });
        ch.set += tags.write_sets(&mut cur.tags, &mut failed, |e| maps.set_tag(e.key));
        ch.set += deny.write_sets(&mut cur.egress_deny, &mut failed, |e| {
            maps.set_deny(e.key, e.new)
        });
        ch.set += deny6.write_sets(&mut cur.egress_deny6, &mut failed, |e| {
            maps.set_deny6(e.key, e.new)
        });
        let sets_worked = failed.is_empty();
        // A new link goes on even if a set failed: its interface then fails
        // closed rather than running unfiltered until the next apply.
        ch.attached += links.write_sets(&mut cur.attached, &mut failed, |e| {
            maps.attach(&e.key)?;
            refreshed.insert(e.key.clone());
            Ok(())
        });
        if sets_worked {
            for name in pinned {
                match maps.attach(&name) {
                    Ok(()) => {
                        refreshed.insert(name);
                        ch.attached += 1;
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        ch.removed += endpoints.write_removes(&mut cur.endpoints, &mut failed, |ip, old| {
            maps.remove_endpoint(*ip)?;
            if !old.is_remote() {
                maps.forget_conns(*ip)?;
            }
            Ok(())
        });
        ch.removed += endpoints6.write_removes(&mut cur.endpoints6, &mut failed, |ip, old| {
            maps.remove_endpoint6(*ip)?;
            if !old.is_remote() {
                maps.forget_conns6(*ip)?;
            }
            Ok(())
        });
        ch.removed += ifaces.write_removes(&mut cur.ifaces, &mut failed, |idx, _| {
            maps.remove_iface(*idx)
        });
        ch.removed += services.write_removes(&mut cur.services, &mut failed, |vip, old| {
            maps.remove_service(*vip, old)
        });
        ch.removed += services6.write_removes(&mut cur.services6, &mut failed, |vip, old| {
            maps.remove_service6(*vip, old)
        });
        ch.removed +=
            peers.write_removes(&mut cur.peers, &mut failed, |ip, _| maps.remove_peer(*ip));
        ch.removed +=
            peers6.write_removes(&mut cur.peers6, &mut failed, |ip, _| maps.remove_peer6(*ip));
        ch.removed += tags.write_removes(&mut cur.tags, &mut failed, |t, ()| maps.remove_tag(*t));
        ch.removed += deny.write_removes(&mut cur.egress_deny, &mut failed, |r, _| {
            maps.remove_deny(*r)
        });
        ch.removed += deny6.write_removes(&mut cur.egress_deny6, &mut failed, |r, _| {
            maps.remove_deny6(*r)
        });
        ch.detached += links.write_removes(&mut cur.attached, &mut failed, |name, ()| {
            maps.detach(name)?;
            refreshed.remove(name);
            Ok(())
        });
        // The programs' memo back on, past every slot filled before the
        // first write (`Maps::settle`), whatever failed.
        if let Err(e) = maps.settle() {
            failed.push(e);
        }
        if failed.is_empty() {
            Ok(ch)
        } else {
            Err(ApplyError::Writes { done: ch, failed })
        }
    }

    /// Every table's diff within `scope`, before any write. A scoped apply
    /// looks its addresses up (a watch event touching one container must not
    /// walk 100 000 endpoints); a full one walks them all.
    fn plan(&self, want: &State, scope: &Scope) -> Plan {
        let cur = &self.current;
        let mut links = diff(&cur.attached, &want.attached, &keys_or_all(&scope.links));
        // Attached by this process already (`attach_now`): not again.
        links.set.retain(|e| !self.refreshed.contains(&e.key));
        let pinned = want
            .attached
            .iter()
            .filter(|n| scope.has_link(n) && cur.attached.contains(*n))
            .filter(|n| !self.refreshed.contains(*n))
            .cloned()
            .collect();
        let by_addr = |_: &u32, i: &Iface| scope.has_addr(i.addr);
        let slotted = self.slotted(want, scope);
        // Each interface's row: as slotted within the scope, as held outside.
        let row = |idx: u32, i: &Iface| {
            if scope.has_addr(i.addr) {
                i.slot
            } else {
                cur.ifaces.get(&idx).map_or(0, |c| c.slot)
            }
        };
        let stamped4 = rows::stamped(&want.endpoints, &slotted, row, |i| Some(i.addr));
        let stamped6 = rows::stamped(&want.endpoints6, &slotted, row, |i| {
            (i.addr6 != [0; 16]).then_some(i.addr6)
        });
        let (part4, part6) = (keys_or_all(&scope.addrs), keys_or_all(&scope.addrs6));
        let mut plan = Plan {
            links,
            pinned,
            ifaces: diff(&cur.ifaces, &slotted, &Part::Where(&by_addr)),
            endpoints: rows::with_rows(
                diff(&cur.endpoints, &want.endpoints, &part4),
                &cur.endpoints,
                &stamped4,
                &part4,
            ),
            endpoints6: rows::with_rows(
                diff(&cur.endpoints6, &want.endpoints6, &part6),
                &cur.endpoints6,
                &stamped6,
                &part6,
            ),
            services: diff(&cur.services, &want.services, &Part::All),
            services6: diff(&cur.services6, &want.services6, &Part::All),
            ..Plan::default()
        };
        if scope.underlay {
            plan.peers = diff(&cur.peers, &want.peers, &Part::All);
            plan.peers6 = diff(&cur.peers6, &want.peers6, &Part::All);
            plan.tags = diff(&cur.tags, &want.tags, &Part::All);
        }
        if scope.edge {
            plan.deny = diff(&cur.egress_deny, &want.egress_deny, &Part::All);
            plan.deny6 = diff(&cur.egress_deny6, &want.egress_deny6, &Part::All);
        }
        plan
    }

    /// `want`'s interfaces, those within `scope` with their counter slots:
    /// the one the interface holds for the same address (counts go on
    /// across applies and restarts), else the lowest free one (a new
    /// container, or a new address, starts from 0; see [`zeroes`]). Slot 0
    /// (the host's row) when all are taken. Those out of scope are left as
    /// they are: the diff skips them, but keeps their interfaces.
    fn slotted(&self, want: &State, scope: &Scope) -> BTreeMap<u32, Iface> {
        let mut slots: BTreeMap<u32, u16> = self
            .current
            .ifaces
            .iter()
            .map(|(i, f)| (*i, f.slot))
            .collect();
        let mut out = want.ifaces.clone();
        for (idx, iface) in out.iter_mut().filter(|(_, i)| scope.has_addr(i.addr)) {
            iface.slot = match self.current.ifaces.get(idx) {
                Some(cur) if keeps_slot(cur, iface) => cur.slot,
                _ => {
                    let used: BTreeSet<u16> = slots
                        .iter()
                        .filter(|(i, _)| *i != idx)
                        .map(|(_, s)| *s)
                        .collect();
                    (1..pn_common::maps::MAX_COUNTER_SLOTS)
                        .filter_map(|s| u16::try_from(s).ok())
                        .find(|s| !used.contains(s))
                        .unwrap_or(0)
                }
            };
            slots.insert(*idx, iface.slot);
        }
        out
    }
}

/// Every table's diff for one apply.
#[derive(Default)]
struct Plan {
    links: Diff<String, ()>,
    /// Links an earlier agent pinned, to switch to this agent's programs.
    pinned: Vec<String>,
    ifaces: Diff<u32, Iface>,
    endpoints: Diff<Ip4, Endpoint>,
    endpoints6: Diff<Ip6, Endpoint>,
    services: Diff<Ip4, ServiceState>,
    services6: Diff<Ip6, ServiceState<Ip6>>,
    peers: Diff<Ip4, Peer>,
    peers6: Diff<Ip6, Peer>,
    tags: Diff<u32, ()>,
    deny: Diff<(Ip4, u8), u32>,
    deny6: Diff<(Ip6, u8), u32>,
}

/// The keys of a scope, or every entry when it has none.
fn keys_or_all<K, V>(keys: &Option<BTreeSet<K>>) -> Part<'_, K, V> {
    keys.as_ref().map_or(Part::All, Part::Keys)
}

/// Whether an interface keeps the counter slot it holds for `want`.
fn keeps_slot(cur: &Iface, want: &Iface) -> bool {
    cur.slot != 0 && cur.addr == want.addr
}

/// Whether writing `new` over `old` gives it a fresh counter slot, zeroed
/// first (the slot's counts belonged to another container or address).
fn zeroes(old: Option<&Iface>, new: &Iface) -> bool {
    new.slot != 0 && !old.is_some_and(|o| keeps_slot(o, new))
}

#[cfg(test)]
mod tests;
