//! Address management, pure: carving network ranges out of the fleet pool,
//! picking addresses and tags. The store makes the choices atomic.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

mod v6;
pub use v6::{
    Address6Error, Ipv6Mode, NETWORK6_PREFIX, POOL6_PREFIX, Range6Error, ULA, check_address6,
    check_network_range6, check_pool6, next_address6, next_subnet6, random_ula_pool, ula_pool,
};

/// Default fleet-wide pool and per-network prefix (contract).
pub const DEFAULT_POOL: &str = "10.240.0.0/12";
pub const DEFAULT_NETWORK_PREFIX: u8 = 22;

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Ranges no network may touch: the kernel or the gateway treat their
/// addresses specially, so a container there would be unreachable or, worse,
/// would answer for something else.
const SPECIAL: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\" range"),
    ("127.0.0.0/8", "loopback range"),
    ("169.254.0.0/16", "link-local range the gateway uses"),
    ("224.0.0.0/4", "multicast range"),
    ("240.0.0.0/4", "reserved range (and the broadcast address)"),
];

/// Why a range cannot be a network's (or the pool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range {0} is too small: a network needs at least a /30")]
    TooSmall(Ipv4Net),
    #[error("range {0} is not a network address (did you mean {trunc}?)", trunc = .0.trunc())]
    NotNetworkAddress(Ipv4Net),
    #[error("range {0} overlaps the {1} {2}")]
    Special(Ipv4Net, &'static str, Ipv4Net),
    #[error("range {0} is outside the address pool {1} (--pool)")]
    OutsidePool(Ipv4Net, Ipv4Net),
}

/// The rule for the pool itself: a network address, clear of the special
/// ranges.
pub fn check_pool(pool: &Ipv4Net) -> Result<(), RangeError> {
    if pool.trunc() != *pool {
        return Err(RangeError::NotNetworkAddress(*pool));
    }
    for (range, what) in SPECIAL {
        let range: Ipv4Net = range.parse().expect("valid");
        if overlaps(pool, &range) {
            return Err(RangeError::Special(*pool, what, range));
        }
    }
    Ok(())
}

/// The rule for a network's range, wherever one comes from (`network create
/// --cidr`, a record read from the store): at least a /30, a network
/// address, inside the pool, clear of the special ranges.
pub fn check_network_range(cidr: &Ipv4Net, pool: &Ipv4Net) -> Result<(), RangeError> {
    if cidr.prefix_len() > 30 {
        return Err(RangeError::TooSmall(*cidr));
    }
    check_pool(cidr)?;
    if !pool.contains(cidr) {
        return Err(RangeError::OutsidePool(*cidr, *pool));
    }
    Ok(())
}

/// Why an address cannot be a container's in its network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {0} is outside the network's range {1}")]
    Outside(Ipv4Addr, Ipv4Net),
    #[error("address {0} is the network or broadcast address of {1}")]
    Reserved(Ipv4Addr, Ipv4Net),
}

/// The rule for a container's address: one that [`next_address`] could
/// have handed out.
pub fn check_address(cidr: &Ipv4Net, ip: Ipv4Addr) -> Result<(), AddressError> {
    if !cidr.contains(&ip) {
        return Err(AddressError::Outside(ip, *cidr));
    }
    let (first, last) = usable_range(cidr);
    if !(first..=last).contains(&u32::from(ip)) {
        return Err(AddressError::Reserved(ip, *cidr));
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

    #[test]
    fn network_ranges_stay_in_the_pool_and_clear_of_special_ranges() {
        let pool = net(DEFAULT_POOL);
        assert_eq!(check_network_range(&net("10.241.0.0/24"), &pool), Ok(()));
        assert_eq!(check_network_range(&net("10.240.0.0/12"), &pool), Ok(()));
        assert_eq!(
            check_network_range(&net("10.241.0.0/31"), &pool),
            Err(RangeError::TooSmall(net("10.241.0.0/31")))
        );
        assert_eq!(
            check_network_range(&net("10.241.0.1/24"), &pool),
            Err(RangeError::NotNetworkAddress(net("10.241.0.1/24")))
        );
        assert!(matches!(
            check_network_range(&net("10.0.0.0/24"), &pool),
            Err(RangeError::OutsidePool(..))
        ));
        assert!(matches!(
            check_network_range(&net("10.0.0.0/8"), &pool),
            Err(RangeError::OutsidePool(..))
        ));
        // Refused whatever the pool: a pool there is refused itself.
        let everything = net("0.0.0.0/0");
        for (bad, what) in [
            ("0.0.0.0/24", "\"this network\""),
            ("127.0.0.0/24", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("224.0.0.0/24", "multicast"),
            ("239.255.255.0/24", "multicast"),
            ("255.255.255.0/30", "broadcast"),
            ("192.0.0.0/2", "multicast"),
        ] {
            let err = check_network_range(&net(bad), &everything).unwrap_err();
            assert!(matches!(err, RangeError::Special(..)), "{bad}: {err}");
            assert!(err.to_string().contains(what), "{bad}: {err}");
            assert!(check_pool(&net(bad)).is_err(), "{bad}");
        }
        assert_eq!(check_pool(&pool), Ok(()));
        assert!(check_pool(&net("10.240.0.1/12")).is_err());
    }

    #[test]
    fn container_addresses_are_inside_and_not_reserved() {
        let cidr = net("10.240.4.0/22");
        assert_eq!(check_address(&cidr, "10.240.4.1".parse().unwrap()), Ok(()));
        assert_eq!(
            check_address(&cidr, "10.240.7.254".parse().unwrap()),
            Ok(())
        );
        for reserved in ["10.240.4.0", "10.240.7.255"] {
            assert!(matches!(
                check_address(&cidr, reserved.parse().unwrap()),
                Err(AddressError::Reserved(..))
            ));
        }
        for outside in ["10.240.8.1", "10.240.3.255", "192.0.2.1"] {
            assert!(matches!(
                check_address(&cidr, outside.parse().unwrap()),
                Err(AddressError::Outside(..))
            ));
        }
        // Whatever next_address hands out passes.
        let small = net("10.240.0.0/29");
        let mut used = BTreeSet::new();
        while let Some(ip) = next_address(&small, &used) {
            assert_eq!(check_address(&small, ip), Ok(()));
            used.insert(ip);
        }
        assert_eq!(used.len() as u64, capacity(&small));
    }
}
