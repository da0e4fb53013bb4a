//! IPv6 address management, pure like IPv4's: the fleet's unique local
//! /48 (RFC 4193), a /64 of it per network, an address of its network's
//! /64 per container. The store makes the choices atomic, as for IPv4.

use std::{collections::BTreeSet, net::Ipv6Addr};

use ipnet::Ipv6Net;

/// The pool's prefix when pn draws it (RFC 4193 §3.2: a /48 per site).
pub const POOL6_PREFIX: u8 = 48;
/// Every network's prefix: a /64, the length IPv6 hosts and tools expect
/// of a link.
pub const NETWORK6_PREFIX: u8 = 64;

/// Unique local addresses, `fc00::/7`; pn draws from its `fd00::/8` half
/// (locally assigned, the L bit set).
pub const ULA: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7);

/// Interface identifiers never handed out: 0 is the subnet-router anycast
/// address (RFC 4291 §2.6.1); 1 would give the container the link-local
/// `fe80::1` of its gateway (pn derives a container's link-local address
/// from its identifier); the top 128 are reserved anycast (RFC 2526).
const FIRST_IID: u64 = 2;
const LAST_IID: u64 = u64::MAX - 128;

/// What an agent does about IPv6 (`--ipv6`, `--pool6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// This host's containers get no IPv6 address (records of other
    /// hosts' containers may still carry theirs).
    Off,
    /// Each container an address; `pool6`: the /48 to give the fleet when
    /// the pool has none yet (none: a random one).
    On { pool6: Option<Ipv6Net> },
}

impl Ipv6Mode {
    pub fn is_on(&self) -> bool {
        matches!(self, Ipv6Mode::On { .. })
    }
}

/// Why a range cannot be the IPv6 pool or a network's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Range6Error {
    #[error("range {0} is not a network address (did you mean {trunc}?)", trunc = .0.trunc())]
    NotNetworkAddress(Ipv6Net),
    #[error("range {0} is not unique local (fc00::/7, RFC 4193)")]
    NotUniqueLocal(Ipv6Net),
    #[error("range {0} is too small for an IPv6 pool: it needs at least a /64")]
    PoolTooSmall(Ipv6Net),
    #[error("range {0} is not a /64: every network's IPv6 range is one")]
    NotA64(Ipv6Net),
    #[error("range {0} is outside the IPv6 address pool {1} (--pool6)")]
    OutsidePool(Ipv6Net, Ipv6Net),
}

/// Why an address cannot be a container's in its network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Address6Error {
    #[error("address {0} is outside the network's range {1}")]
    Outside(Ipv6Addr, Ipv6Net),
    #[error("address {0} is reserved in {1} (anycast, or the gateway's identifier)")]
    Reserved(Ipv6Addr, Ipv6Net),
}

/// The /48 of a 40-bit global ID: `fd` and the ID (RFC 4193 §3.1).
pub fn ula_pool(global_id: [u8; 5]) -> Ipv6Net {
    let mut o = [0u8; 16];
    o[0] = 0xfd;
    o[1..6].copy_from_slice(&global_id);
    Ipv6Net::new_assert(Ipv6Addr::from(o), POOL6_PREFIX)
}

/// A pool with a random global ID, as RFC 4193 §3.2 asks, so that two
/// fleets (or two companies) that ever connect do not collide. The only
/// function here that is not pure: the OS's random source, through uuid's
/// v4 generator (already a dependency).
pub fn random_ula_pool() -> Ipv6Net {
    let b = uuid::Uuid::new_v4().into_bytes();
    ula_pool([b[0], b[1], b[2], b[3], b[4]])
}

/// The rule for the IPv6 pool (`--pool6`, or a record read from the
/// store): a unique local network address with room for a /64.
pub fn check_pool6(pool: &Ipv6Net) -> Result<(), Range6Error> {
    if pool.trunc() != *pool {
        return Err(Range6Error::NotNetworkAddress(*pool));
    }
    if !ULA.contains(pool) {
        return Err(Range6Error::NotUniqueLocal(*pool));
    }
    if pool.prefix_len() > NETWORK6_PREFIX {
        return Err(Range6Error::PoolTooSmall(*pool));
    }
    Ok(())
}

/// The rule for a network's IPv6 range (`network create --cidr6`, a
/// record): a /64 network address inside the pool.
pub fn check_network_range6(cidr: &Ipv6Net, pool: &Ipv6Net) -> Result<(), Range6Error> {
    if cidr.trunc() != *cidr {
        return Err(Range6Error::NotNetworkAddress(*cidr));
    }
    if cidr.prefix_len() != NETWORK6_PREFIX {
        return Err(Range6Error::NotA64(*cidr));
    }
    if !pool.contains(cidr) {
        return Err(Range6Error::OutsidePool(*cidr, *pool));
    }
    Ok(())
}

/// First /64 of `pool` not in `taken`. Checks one candidate more than
/// there are taken ranges, whatever the pool's size.
pub fn next_subnet6(pool: &Ipv6Net, taken: &BTreeSet<Ipv6Net>) -> Option<Ipv6Net> {
    pool.subnets(NETWORK6_PREFIX)
        .ok()?
        .find(|s| !taken.contains(s))
}

/// The rule for a container's IPv6 address: one [`next_address6`] could
/// have handed out.
pub fn check_address6(cidr: &Ipv6Net, ip: Ipv6Addr) -> Result<(), Address6Error> {
    if !cidr.contains(&ip) {
        return Err(Address6Error::Outside(ip, *cidr));
    }
    if !(FIRST_IID..=LAST_IID).contains(&iid(ip)) {
        return Err(Address6Error::Reserved(ip, *cidr));
    }
    Ok(())
}

/// Lowest free address of a network's /64, as IPv4's [`super::next_address`]:
/// a freed address is the next one handed out, so addresses stay small and
/// readable (`fdxx:xxxx:xxxx:n::2`). `None` only if `cidr` is not a /64 (a
/// /64 does not fill up).
pub fn next_address6(cidr: &Ipv6Net, used: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    if cidr.prefix_len() != NETWORK6_PREFIX {
        return None;
    }
    let prefix = u128::from(cidr.network());
    (FIRST_IID..=LAST_IID)
        .map(|i| Ipv6Addr::from(prefix | u128::from(i)))
        .find(|a| !used.contains(a))
}

/// The interface identifier: the low 64 bits.
fn iid(ip: Ipv6Addr) -> u64 {
    u128::from(ip) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_pool_is_fd_and_forty_random_bits() {
        assert_eq!(
            ula_pool([0x12, 0x34, 0x56, 0x78, 0x9a]),
            net("fd12:3456:789a::/48")
        );
        let (a, b) = (random_ula_pool(), random_ula_pool());
        for p in [a, b] {
            assert_eq!(p.prefix_len(), 48);
            assert_eq!(p.network().octets()[0], 0xfd);
            assert_eq!(check_pool6(&p), Ok(()));
        }
        // 2^-40 of a false failure.
        assert_ne!(a, b);
    }

    #[test]
    fn pools_are_unique_local_network_addresses() {
        assert_eq!(check_pool6(&net("fd00:1:2::/48")), Ok(()));
        assert_eq!(check_pool6(&net("fc00::/7")), Ok(()));
        assert_eq!(check_pool6(&net("fd00:1:2:3::/64")), Ok(()));
        assert!(matches!(
            check_pool6(&net("fd00:1:2::1/48")),
            Err(Range6Error::NotNetworkAddress(_))
        ));
        for outside in ["2001:db8::/48", "fe80::/64", "::/0", "ff02::/16", "::1/128"] {
            assert!(
                matches!(
                    check_pool6(&net(outside)),
                    Err(Range6Error::NotUniqueLocal(_))
                ),
                "{outside}"
            );
        }
        assert!(matches!(
            check_pool6(&net("fd00:1:2:3::/80")),
            Err(Range6Error::PoolTooSmall(_))
        ));
    }

    #[test]
    fn networks_are_64s_of_the_pool_in_order_around_taken_ones() {
        let pool = net("fd12:3456:789a::/48");
        let mut taken = BTreeSet::new();
        let first = next_subnet6(&pool, &taken).unwrap();
        assert_eq!(first, net("fd12:3456:789a::/64"));
        taken.insert(first);
        taken.insert(net("fd12:3456:789a:2::/64"));
        assert_eq!(
            next_subnet6(&pool, &taken),
            Some(net("fd12:3456:789a:1::/64"))
        );
        taken.insert(net("fd12:3456:789a:1::/64"));
        assert_eq!(
            next_subnet6(&pool, &taken),
            Some(net("fd12:3456:789a:3::/64"))
        );
        // Freed, handed out again.
        taken.remove(&first);
        assert_eq!(next_subnet6(&pool, &taken), Some(first));
        // A full pool.
        let tiny = net("fd00:1:2:3::/63");
        let all: BTreeSet<_> = tiny.subnets(64).unwrap().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(next_subnet6(&tiny, &all), None);
        for s in &all {
            assert_eq!(check_network_range6(s, &tiny), Ok(()));
        }
    }

    #[test]
    fn network_ranges_are_64s_inside_the_pool() {
        let pool = net("fd12:3456:789a::/48");
        assert_eq!(
            check_network_range6(&net("fd12:3456:789a:ff::/64"), &pool),
            Ok(())
        );
        assert!(matches!(
            check_network_range6(&net("fd12:3456:789a:100::/56"), &pool),
            Err(Range6Error::NotA64(_))
        ));
        assert!(matches!(
            check_network_range6(&net("fd12:3456:789a:ff::1/64"), &pool),
            Err(Range6Error::NotNetworkAddress(_))
        ));
        assert!(matches!(
            check_network_range6(&net("fd12:3456:789b::/64"), &pool),
            Err(Range6Error::OutsidePool(..))
        ));
    }

    #[test]
    fn addresses_are_unique_skip_the_reserved_and_are_freed() {
        let cidr = net("fd12:3456:789a:1::/64");
        let mut used = BTreeSet::new();
        let mut handed = Vec::new();
        for _ in 0..5 {
            let a = next_address6(&cidr, &used).unwrap();
            assert_eq!(check_address6(&cidr, a), Ok(()));
            assert!(used.insert(a), "{a} handed out twice");
            handed.push(a);
        }
        assert_eq!(handed[0], ip("fd12:3456:789a:1::2"));
        assert_eq!(handed[4], ip("fd12:3456:789a:1::6"));
        // Released: the hole is filled first, nothing else moves.
        used.remove(&handed[1]);
        assert_eq!(next_address6(&cidr, &used), Some(handed[1]));
        // Not a network's /64: nothing.
        assert_eq!(next_address6(&net("fd12:3456:789a::/48"), &used), None);
    }

    #[test]
    fn container_addresses_are_inside_and_not_reserved() {
        let cidr = net("fd12:3456:789a:1::/64");
        for reserved in [
            "fd12:3456:789a:1::",
            "fd12:3456:789a:1::1",
            "fd12:3456:789a:1:ffff:ffff:ffff:ff80",
            "fd12:3456:789a:1:ffff:ffff:ffff:ffff",
        ] {
            assert!(
                matches!(
                    check_address6(&cidr, ip(reserved)),
                    Err(Address6Error::Reserved(..))
                ),
                "{reserved}"
            );
        }
        assert_eq!(
            check_address6(&cidr, ip("fd12:3456:789a:1:ffff:ffff:ffff:ff7f")),
            Ok(())
        );
        for outside in ["fd12:3456:789a:2::2", "fe80::2", "2001:db8::2"] {
            assert!(matches!(
                check_address6(&cidr, ip(outside)),
                Err(Address6Error::Outside(..))
            ));
        }
    }
}
