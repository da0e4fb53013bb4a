//! Published ports: each `web` container of a host gets one port of the
//! host in `--publish-ports LO-HI`, and keeps it for as long as it exists
//! (agent restarts included: the caller passes the ports already given).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::PortRange;

/// More containers to publish than ports in the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free port left in --publish-ports {range} ({wanted} web containers on this host)")]
pub struct PortsExhausted {
    pub range: PortRange,
    pub wanted: usize,
}

impl crate::error::Kind for PortsExhausted {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Exhausted
    }
}

/// The published port of every container in `wanted`: the one it has in
/// `current` if that is still in the range and not claimed by another
/// (first in key order wins, so the answer never depends on map order),
/// the lowest free port otherwise. Containers not in `wanted` give theirs
/// back.
pub fn assign<K: Ord + Clone>(
    range: PortRange,
    wanted: &BTreeSet<K>,
    current: &BTreeMap<K, u16>,
) -> Result<BTreeMap<K, u16>, PortsExhausted> {
    let exhausted = PortsExhausted {
        range,
        wanted: wanted.len(),
    };
    if wanted.len() > range.len() {
        return Err(exhausted);
    }
    let mut out = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut newcomers = Vec::new();
    for k in wanted {
        match current.get(k) {
            Some(&p) if range.contains(p) && used.insert(p) => {
                out.insert(k.clone(), p);
            }
            _ => newcomers.push(k),
        }
    }
    let mut free = (range.lo..=range.hi).filter(|p| !used.contains(p));
    for k in newcomers {
        out.insert(k.clone(), free.next().ok_or(exhausted)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&'static str]) -> BTreeSet<&'static str> {
        keys.iter().copied().collect()
    }

    fn map(pairs: &[(&'static str, u16)]) -> BTreeMap<&'static str, u16> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn newcomers_get_the_lowest_free_port() {
        let r = PortRange::default();
        let got = assign(r, &set(&["a", "b"]), &BTreeMap::new()).unwrap();
        assert_eq!(got, map(&[("a", 30000), ("b", 30001)]));
        let got = assign(r, &set(&["a", "b", "c"]), &map(&[("b", 30000)])).unwrap();
        assert_eq!(got, map(&[("a", 30001), ("b", 30000), ("c", 30002)]));
    }

    #[test]
    fn existing_containers_keep_their_port() {
        let r = PortRange::default();
        let current = map(&[("a", 30007), ("b", 31000)]);
        let got = assign(r, &set(&["a", "b", "z"]), &current).unwrap();
        assert_eq!(got, map(&[("a", 30007), ("b", 31000), ("z", 30000)]));
        // Stable: assigning again with the answer gives the same answer.
        assert_eq!(assign(r, &set(&["a", "b", "z"]), &got).unwrap(), got);
    }

    #[test]
    fn a_container_gone_frees_its_port() {
        let r = PortRange::default();
        let got = assign(r, &set(&["b", "c"]), &map(&[("a", 30000), ("b", 30001)])).unwrap();
        assert_eq!(got, map(&[("b", 30001), ("c", 30000)]));
    }

    #[test]
    fn ports_outside_the_range_or_claimed_twice_are_given_again() {
        let r: PortRange = "40000-40002".parse().unwrap();
        // The range changed since: 30000 is no longer in it.
        let got = assign(r, &set(&["a"]), &map(&[("a", 30000)])).unwrap();
        assert_eq!(got, map(&[("a", 40000)]));
        // Two containers claiming one port (a store edited by hand): the
        // first keeps it.
        let got = assign(r, &set(&["a", "b"]), &map(&[("a", 40001), ("b", 40001)])).unwrap();
        assert_eq!(got, map(&[("a", 40001), ("b", 40000)]));
    }

    #[test]
    fn a_full_range_is_an_error() {
        let r: PortRange = "40000-40001".parse().unwrap();
        assert!(assign(r, &set(&["a", "b"]), &BTreeMap::new()).is_ok());
        let e = assign(r, &set(&["a", "b", "c"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.wanted, 3);
        assert!(e.to_string().contains("40000-40001"), "{e}");
        let one: PortRange = "8080-8080".parse().unwrap();
        assert_eq!(
            assign(one, &set(&["a"]), &BTreeMap::new()).unwrap(),
            map(&[("a", 8080)])
        );
    }

    #[test]
    fn range_syntax() {
        assert_eq!("30000-32767".parse::<PortRange>(), Ok(PortRange::default()));
        assert_eq!(PortRange::default().len(), 2768);
        assert_eq!(
            " 1-65535 ".parse::<PortRange>(),
            Ok(PortRange { lo: 1, hi: 65535 })
        );
        for bad in ["", "30000", "0-10", "10-9", "1-65536", "a-b", "-5", "5-"] {
            let e = bad.parse::<PortRange>().unwrap_err();
            assert!(e.contains("LO-HI"), "{bad:?}: {e}");
        }
        assert_eq!(PortRange::default().to_string(), "30000-32767");
    }
}
