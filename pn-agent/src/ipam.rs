//! Address management, pure: carving network ranges out of the fleet pool,
//! picking addresses and tags. The store makes the choices atomic.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

/// Default fleet-wide pool and per-network prefix (contract).
pub const DEFAULT_POOL: &str = "10.240.0.0/12";
pub const DEFAULT_NETWORK_PREFIX: u8 = 22;

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why a range cannot be a network's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range {0} is too small: a network needs at least a /30")]
    TooSmall(Ipv4Net),
    #[error("range {0} is not a network address (did you mean {trunc}?)", trunc = .0.trunc())]
    NotNetworkAddress(Ipv4Net),
    #[error("range {0} overlaps the link-local range the gateway uses")]
    LinkLocal(Ipv4Net),
}

/// The rule for a network's range, wherever one comes from.
pub fn check_network_range(cidr: &Ipv4Net) -> Result<(), RangeError> {
    if cidr.prefix_len() > 30 {
        return Err(RangeError::TooSmall(*cidr));
    }
    if cidr.trunc() != *cidr {
        return Err(RangeError::NotNetworkAddress(*cidr));
    }
    let link_local: Ipv4Net = "169.254.0.0/16".parse().expect("valid");
    if overlaps(cidr, &link_local) {
        return Err(RangeError::LinkLocal(*cidr));
    }
    Ok(())
}

/// First `/prefix` of `pool` that overlaps none of `taken`.
pub fn next_subnet(pool: &Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(prefix)
        .ok()?
        .find(|s| !taken.iter().any(|t| overlaps(s, t)))
}

/// Lowest free address of `cidr`. The network and broadcast addresses are
/// skipped (some stacks treat them specially even on /32 routes), except on
/// /31 and /32 where every address is a host.
pub fn next_address(cidr: &Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, last) = usable_range(cidr);
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

/// Number of addresses `next_address` can hand out in `cidr`.
pub fn capacity(cidr: &Ipv4Net) -> u64 {
    let (first, last) = usable_range(cidr);
    u64::from(last - first) + 1
}

fn usable_range(cidr: &Ipv4Net) -> (u32, u32) {
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    if cidr.prefix_len() >= 31 {
        (net, bcast)
    } else {
        (net + 1, bcast - 1)
    }
}

/// Lowest tag ≥ 1 not in `used` (0 means "no network" in the maps).
pub fn next_tag(used: &BTreeSet<u32>) -> u32 {
    (1..).find(|t| !used.contains(t)).unwrap_or(u32::MAX)
}

/// Lowest container index ≥ 1 not in `used`.
pub fn next_index(used: &BTreeSet<u32>) -> u32 {
    (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_carved_in_order_around_taken_ones() {
        let pool = net(DEFAULT_POOL);
        assert_eq!(next_subnet(&pool, 22, &[]), Some(net("10.240.0.0/22")));
        let taken = [net("10.240.0.0/22"), net("10.240.8.0/21")];
        assert_eq!(next_subnet(&pool, 22, &taken), Some(net("10.240.4.0/22")));
        // A small explicit range inside a candidate blocks that candidate.
        let taken = [net("10.240.1.0/24")];
        assert_eq!(next_subnet(&pool, 22, &taken), Some(net("10.240.4.0/22")));
        // A /12 holds 1024 /22s, then it is full.
        let all: Vec<_> = pool.subnets(22).unwrap().collect();
        assert_eq!(all.len(), 1024);
        assert_eq!(next_subnet(&pool, 22, &all), None);
        // A prefix shorter than the pool's cannot be carved.
        assert_eq!(next_subnet(&pool, 8, &[]), None);
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
    }

    #[test]
    fn addresses_skip_network_and_broadcast_and_fill_holes() {
        let cidr = net("10.240.0.0/30");
        let mut used = BTreeSet::new();
        assert_eq!(capacity(&cidr), 2);
        assert_eq!(
            next_address(&cidr, &used),
            Some("10.240.0.1".parse().unwrap())
        );
        used.insert("10.240.0.1".parse().unwrap());
        assert_eq!(
            next_address(&cidr, &used),
            Some("10.240.0.2".parse().unwrap())
        );
        used.insert("10.240.0.2".parse().unwrap());
        assert_eq!(next_address(&cidr, &used), None);
        used.remove(&"10.240.0.1".parse().unwrap());
        assert_eq!(
            next_address(&cidr, &used),
            Some("10.240.0.1".parse().unwrap())
        );
        assert_eq!(capacity(&net("10.0.0.7/32")), 1);
        assert_eq!(
            next_address(&net("10.0.0.7/32"), &BTreeSet::new()),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(capacity(&net("10.240.0.0/22")), 1022);
    }

    #[test]
    fn tags_and_indexes_start_at_one() {
        assert_eq!(next_tag(&BTreeSet::new()), 1);
        assert_eq!(next_tag(&[1, 2, 4].into()), 3);
        assert_eq!(next_index(&BTreeSet::new()), 1);
        assert_eq!(next_index(&[1, 2].into()), 3);
    }
}
