//! What is never "the world" for a container, whatever its network allows:
//! the contract's list, built from what the agent knows about its host.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use pn_common::{Ip4, maps::DenyRange};

/// Ranges that are nobody's world on any host: "this network", loopback,
/// link-local (cloud metadata at 169.254.169.254; the agent's gateway, whose
/// DNS and ICMP are let through before this list is read), multicast,
/// reserved and the limited broadcast.
pub const SPECIAL: [&str; 5] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// What the agent knows of its host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Every address of the host with its subnet (`ip -4 addr`): the
    /// address itself and the subnet's broadcast address are denied.
    pub addrs: Vec<Ipv4Net>,
    /// The host's `local` routes (table local, `ip route show table local
    /// type local`): prefixes the host takes as its own without an
    /// interface holding them (`ip route add local 198.51.100.0/24 dev
    /// lo`, AnyIP), denied whole.
    pub local_routes: Vec<Ipv4Net>,
    /// The underlay's subnet.
    pub underlay: Option<Ipv4Net>,
    /// Addresses of the store's endpoints (etcd), resolved.
    pub store: Vec<Ipv4Addr>,
    /// The other hosts' tunnel endpoints, wherever their subnets are
    /// (denied as the underlay is).
    pub peers: Vec<Ipv4Addr>,
    /// `--egress-deny`.
    pub operator: Vec<Ipv4Net>,
}

/// Every denied range with why ([`DenyRange`] kinds). Overlaps are kept:
/// the datapath's LPM trie takes them as they are.
pub fn deny_list(facts: &HostFacts) -> BTreeMap<Ipv4Net, u32> {
    let mut out = BTreeMap::new();
    for s in SPECIAL {
        out.insert(s.parse().expect("valid range"), DenyRange::SPECIAL);
    }
    for net in &facts.addrs {
        out.insert(Ipv4Net::from(net.addr()), DenyRange::HOST);
        // /31 and /32 have no broadcast address.
        if net.prefix_len() < 31 {
            out.insert(Ipv4Net::from(net.broadcast()), DenyRange::HOST);
        }
    }
    // Loopback's local route is the special range already, and keeps
    // its kind.
    for net in &facts.local_routes {
        out.entry(net.trunc()).or_insert(DenyRange::HOST);
    }
    if let Some(u) = facts.underlay {
        out.insert(u.trunc(), DenyRange::UNDERLAY);
    }
    for ip in &facts.peers {
        out.insert(Ipv4Net::from(*ip), DenyRange::UNDERLAY);
    }
    for ip in &facts.store {
        out.insert(Ipv4Net::from(*ip), DenyRange::STORE);
    }
    for net in &facts.operator {
        out.insert(net.trunc(), DenyRange::OPERATOR);
    }
    out
}

/// The same ranges merged, as an nftables interval set needs them (it
/// refuses overlapping elements).
pub fn merged(list: &BTreeMap<Ipv4Net, u32>) -> Vec<Ipv4Net> {
    Ipv4Net::aggregate(&list.keys().copied().collect::<Vec<_>>())
}

/// The key of a range in `PN_EGRESS_DENY`, as `datapath::State::egress_deny` holds it.
pub fn lpm_key(net: &Ipv4Net) -> (Ip4, u8) {
    (u32::from_ne_bytes(net.network().octets()), net.prefix_len())
}

/// The whole list for `datapath::State::egress_deny`.
pub fn lpm_entries(list: &BTreeMap<Ipv4Net, u32>) -> HashMap<(Ip4, u8), u32> {
    list.iter().map(|(n, k)| (lpm_key(n), *k)).collect()
}

/// Whether `ip` is denied, as the datapath decides it (for tests and `status`).
pub fn covers(list: &BTreeMap<Ipv4Net, u32>, ip: Ipv4Addr) -> Option<u32> {
    list.iter()
        .filter(|(n, _)| n.contains(&ip))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            addrs: vec![
                "192.168.50.1/24".parse().unwrap(),
                "10.0.0.5/32".parse().unwrap(),
            ],
            local_routes: Vec::new(),
            underlay: Some("192.168.50.1/24".parse().unwrap()),
            store: vec!["192.168.60.10".parse().unwrap()],
            peers: vec!["203.0.113.77".parse().unwrap()],
            operator: vec!["198.51.100.0/24".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_contract_list() {
        let l = deny_list(&facts());
        for (addr, kind) in [
            ("127.0.0.1", DenyRange::SPECIAL),
            ("169.254.169.254", DenyRange::SPECIAL),
            ("224.0.0.251", DenyRange::SPECIAL),
            ("255.255.255.255", DenyRange::SPECIAL),
            ("0.0.0.0", DenyRange::SPECIAL),
            ("10.0.0.5", DenyRange::HOST),
            // The most specific range names it.
            ("192.168.50.1", DenyRange::HOST),
            ("192.168.50.255", DenyRange::HOST),
            ("192.168.50.77", DenyRange::UNDERLAY),
            ("192.168.60.10", DenyRange::STORE),
            // Another host, in a subnet of its own.
            ("203.0.113.77", DenyRange::UNDERLAY),
            ("198.51.100.200", DenyRange::OPERATOR),
        ] {
            assert_eq!(covers(&l, ip(addr)), Some(kind), "{addr}");
        }
        for world in ["203.0.113.10", "8.8.8.8", "192.168.60.11", "10.0.0.6"] {
            assert_eq!(covers(&l, ip(world)), None, "{world}");
        }
    }

    #[test]
    fn the_hosts_local_routes_are_the_host_whole() {
        let mut f = facts();
        f.local_routes = vec![
            "203.0.113.0/24".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
            // Host bits as the kernel may hold them.
            "192.0.2.77/28".parse().unwrap(),
        ];
        let l = deny_list(&f);
        for addr in ["203.0.113.0", "203.0.113.53", "203.0.113.255"] {
            assert_eq!(covers(&l, ip(addr)), Some(DenyRange::HOST), "{addr}");
        }
        assert_eq!(covers(&l, ip("192.0.2.64")), Some(DenyRange::HOST));
        assert_eq!(covers(&l, ip("192.0.2.79")), Some(DenyRange::HOST));
        assert_eq!(covers(&l, ip("192.0.2.80")), None);
        // A most specific range keeps its kind (the peer's /32 within the
        // local /24), and loopback stays special.
        assert_eq!(covers(&l, ip("203.0.113.77")), Some(DenyRange::UNDERLAY));
        assert_eq!(covers(&l, ip("127.0.0.1")), Some(DenyRange::SPECIAL));
        // Nothing else changed: the list without them, plus the two prefixes.
        let mut want = deny_list(&facts());
        want.insert("203.0.113.0/24".parse().unwrap(), DenyRange::HOST);
        want.insert("192.0.2.64/28".parse().unwrap(), DenyRange::HOST);
        assert_eq!(l, want);
        for world in ["203.0.114.1", "8.8.8.8", "10.0.0.6"] {
            assert_eq!(covers(&l, ip(world)), None, "{world}");
        }
    }

    #[test]
    fn merged_for_nftables_has_no_overlap() {
        let m = merged(&deny_list(&facts()));
        for (i, a) in m.iter().enumerate() {
            for b in &m[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
        let l = deny_list(&facts());
        for addr in ["192.168.50.1", "169.254.169.254", "198.51.100.3"] {
            assert!(m.iter().any(|n| n.contains(&ip(addr))), "{addr}");
        }
        assert!(
            l.keys().all(|k| m.iter().any(|n| n.contains(k))),
            "every range is covered"
        );
    }

    #[test]
    fn lpm_keys_are_in_network_order() {
        let (addr, len) = lpm_key(&"169.254.0.0/16".parse().unwrap());
        assert_eq!(addr.to_ne_bytes(), [169, 254, 0, 0]);
        assert_eq!(len, 16);
        // Host bits are dropped.
        assert_eq!(
            lpm_key(&"10.1.2.3/8".parse().unwrap()).0.to_ne_bytes(),
            [10, 0, 0, 0]
        );
        assert_eq!(
            lpm_entries(&deny_list(&facts())).len(),
            deny_list(&facts()).len()
        );
    }
}
