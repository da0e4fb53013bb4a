//! The edge's maps, taken from the loaded object by `kernel`: the deny
//! lists and the connections with the outside, of both families.

use std::collections::BTreeMap;

use aya::maps::{
    HashMap, MapData,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use pn_common::{
    Ip4, Ip6,
    maps::{ConnKey, ConnState, DenyRange},
};

use super::error::{Context as _, Result};

pub struct EdgeMaps {
    // LRU hashes in the kernel; aya reads them as hash maps.
    pub conns: HashMap<MapData, ConnKey, ConnState>,
    pub conns6: HashMap<MapData, ConnKey<Ip6>, ConnState>,
    pub deny: LpmTrie<MapData, Ip4, DenyRange>,
    pub deny6: LpmTrie<MapData, Ip6, DenyRange>,
}

/// A missing key is what the caller wanted: not an error.
fn removed(
    r: std::result::Result<(), aya::maps::MapError>,
    entry: impl FnOnce() -> String,
) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", entry())),
    }
}

/// The ranges of a deny list (network address and prefix length →
/// [`DenyRange`] kind).
fn ranges<A: aya::Pod + Ord>(
    map: &LpmTrie<MapData, A, DenyRange>,
    name: &str,
) -> Result<BTreeMap<(A, u8), u32>> {
    let mut out = BTreeMap::new();
    for item in map.iter() {
        let (key, range) = item.ctx(|| format!("reading {name}"))?;
        if let Ok(len) = u8::try_from(key.prefix_len()) {
            out.insert((key.data(), len), range.kind);
        }
    }
    Ok(out)
}

/// Removes the keys `mine` picks from a connection table.
fn forget<K: aya::Pod>(
    map: &mut HashMap<MapData, K, ConnState>,
    name: &str,
    mine: impl Fn(&K) -> bool,
) -> Result<()> {
    let keys: Vec<K> = map.keys().filter_map(|k| k.ok()).filter(mine).collect();
    for k in keys {
        match map.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).ctx(|| format!("removing from {name}")),
        }
    }
    Ok(())
}

impl EdgeMaps {
    pub fn deny(&self) -> Result<BTreeMap<(Ip4, u8), u32>> {
        ranges(&self.deny, "PN_EGRESS_DENY")
    }

    pub fn deny6(&self) -> Result<BTreeMap<(Ip6, u8), u32>> {
        ranges(&self.deny6, "PN_EGRESS_DENY6")
    }

    pub fn set_deny(&mut self, (addr, len): (Ip4, u8), kind: u32) -> Result<()> {
        let name = std::net::Ipv4Addr::from(pn_common::ip4_octets(addr));
        (self
            .deny
            .insert(&LpmKey::new(u32::from(len), addr), DenyRange { kind }, 0))
        .ctx(|| format!("writing PN_EGRESS_DENY[{name}/{len}]"))
    }

    pub fn remove_deny(&mut self, (addr, len): (Ip4, u8)) -> Result<()> {
        let name = std::net::Ipv4Addr::from(pn_common::ip4_octets(addr));
        removed(self.deny.remove(&LpmKey::new(u32::from(len), addr)), || {
            format!("PN_EGRESS_DENY[{name}/{len}]")
        })
    }

    pub fn set_deny6(&mut self, (addr, len): (Ip6, u8), kind: u32) -> Result<()> {
        let name = std::net::Ipv6Addr::from(addr);
        (self
            .deny6
            .insert(&LpmKey::new(u32::from(len), addr), DenyRange { kind }, 0))
        .ctx(|| format!("writing PN_EGRESS_DENY6[{name}/{len}]"))
    }

    pub fn remove_deny6(&mut self, (addr, len): (Ip6, u8)) -> Result<()> {
        let name = std::net::Ipv6Addr::from(addr);
        removed(
            self.deny6.remove(&LpmKey::new(u32::from(len), addr)),
            || format!("PN_EGRESS_DENY6[{name}/{len}]"),
        )
    }

    /// Forgets a container's connections with the outside (it is detached;
    /// its address may go to another container, which must not inherit them).
    pub fn forget_conns(&mut self, container: Ip4) -> Result<()> {
        forget(&mut self.conns, "PN_CONNS", |k| k.container == container)
    }

    /// The same for its IPv6 address.
    pub fn forget_conns6(&mut self, container: Ip6) -> Result<()> {
        forget(&mut self.conns6, "PN_CONNS6", |k| k.container == container)
    }
}
