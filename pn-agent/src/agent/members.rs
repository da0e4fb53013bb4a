//! Address → member, for the tunnel's per-packet checks (kept apart from
//! the view so the data path takes one small lock and one hash lookup),
//! one map per family: the tunnel reads the family off the inner packet.
//! FxHash: the keys are our own allocations, never chosen by a sender, and
//! SipHash was a visible share of the receive path.
//!
//! A successor agent is handed both tables (`handover::state`); from a
//! predecessor of the release before (envelope 1) only the IPv4 one: until
//! its first converge its tunnel then drops IPv6 members' packets
//! (`wrong_host`, `no_route`), never passes them unchecked.

use std::{
    collections::BTreeMap,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, RwLock},
};

use pn_tunnel::{self as tun, Member};
use rustc_hash::FxHashMap;

#[derive(Clone, Default)]
pub struct MemberTable(Arc<RwLock<Maps>>);

#[derive(Default)]
struct Maps {
    v4: FxHashMap<Ipv4Addr, Member>,
    v6: FxHashMap<Ipv6Addr, Member>,
}

impl tun::Members for MemberTable {
    fn member(&self, ip: Ipv4Addr) -> Option<Member> {
        self.read().v4.get(&ip).copied()
    }

    fn member6(&self, ip: Ipv6Addr) -> Option<Member> {
        self.read().v6.get(&ip).copied()
    }
}

impl MemberTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every IPv4 member, for a successor agent.
    pub fn entries(&self) -> Vec<(Ipv4Addr, Member)> {
        self.read().v4.iter().map(|(a, m)| (*a, *m)).collect()
    }

    /// Every IPv6 member, for a successor agent.
    pub fn entries6(&self) -> Vec<(Ipv6Addr, Member)> {
        self.read().v6.iter().map(|(a, m)| (*a, *m)).collect()
    }

    /// Replaces both tables (a predecessor's), in one write: the tunnel
    /// never sees one family's new table beside the other's old one.
    pub fn set_all(&self, v4: &[(Ipv4Addr, Member)], v6: &[(Ipv6Addr, Member)]) {
        let mut t = self.write();
        t.v4 = v4.iter().copied().collect();
        t.v6 = v6.iter().copied().collect();
    }

    /// Sets the members of `addrs` (absent from `members`: removed), or
    /// replaces the whole table when `addrs` is `None`.
    pub(super) fn apply<'a>(
        &self,
        members: &BTreeMap<Ipv4Addr, Member>,
        addrs: Option<impl Iterator<Item = &'a Ipv4Addr>>,
    ) {
        apply_to(&mut self.write().v4, members, addrs);
    }

    /// [`MemberTable::apply`] for IPv6 members.
    pub(super) fn apply6<'a>(
        &self,
        members: &BTreeMap<Ipv6Addr, Member>,
        addrs: Option<impl Iterator<Item = &'a Ipv6Addr>>,
    ) {
        apply_to(&mut self.write().v6, members, addrs);
    }
}

fn apply_to<'a, A: Copy + Eq + Hash + Ord + 'a>(
    t: &mut FxHashMap<A, Member>,
    members: &BTreeMap<A, Member>,
    addrs: Option<impl Iterator<Item = &'a A>>,
) {
    match addrs {
        None => *t = members.iter().map(|(a, m)| (*a, *m)).collect(),
        Some(addrs) => {
            for a in addrs {
                match members.get(a) {
                    Some(m) => t.insert(*a, *m),
                    None => t.remove(a),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pn_tunnel::Members;

    #[test]
    fn each_family_is_looked_up_in_its_own_map() {
        let t = MemberTable::default();
        let v4 = Ipv4Addr::new(10, 240, 0, 2);
        let v6: Ipv6Addr = "fd12:3456:789a:1::2".parse().unwrap();
        let m = Member {
            tag: 3,
            peer: Some(2),
        };
        t.apply(
            &BTreeMap::from([(v4, m)]),
            None::<std::iter::Empty<&Ipv4Addr>>,
        );
        t.apply6(
            &BTreeMap::from([(v6, m)]),
            None::<std::iter::Empty<&Ipv6Addr>>,
        );
        assert_eq!(t.member(v4), Some(m));
        assert_eq!(t.member6(v6), Some(m));
        // A scoped update of one IPv6 address leaves the rest alone.
        t.apply6(&BTreeMap::new(), Some([v6].iter()));
        assert_eq!(t.member6(v6), None);
        assert_eq!(t.member(v4), Some(m));
        assert_eq!(t.entries(), vec![(v4, m)]);
        assert!(t.entries6().is_empty());
        // A predecessor's tables replace both.
        t.set_all(&[], &[(v6, m)]);
        assert_eq!(t.member(v4), None);
        assert_eq!(t.entries6(), vec![(v6, m)]);
    }
}
