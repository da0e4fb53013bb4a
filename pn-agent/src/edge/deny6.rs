//! What is never "the IPv6 world" for a container: the IPv4 list's classes
//! (`deny`) in IPv6, and the whole world while the host has no global
//! IPv6 address to translate to.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::{Ip6, maps::DenyRange};

/// Ranges that are nobody's world: the unspecified address, loopback,
/// IPv4-mapped addresses (IPv4's list holds for IPv4), link-local,
/// unique local (other sites' private ranges; the fleet's pool is one,
/// and member traffic is judged before this list is read) and multicast.
pub const SPECIAL6: [&str; 6] = [
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fe80::/10",
    "fc00::/7",
    "ff00::/8",
];

/// The well-known NAT64 prefix (RFC 6052): an IPv4 address embedded in it
/// reaches that IPv4 address through a translator, so IPv4's deny list
/// holds there too.
const NAT64: &str = "64:ff9b::/96";

/// What the agent knows of its host's IPv6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts6 {
    /// Every IPv6 address of the host with its prefix.
    pub addrs: Vec<Ipv6Net>,
    /// The host's IPv6 `local` routes (table local: `ip -6 route add local
    /// 2001:db8:53::/64 dev lo`, AnyIP), denied whole; never a global
    /// address to translate to.
    pub local_routes: Vec<Ipv6Net>,
    /// The underlay's IPv6 subnets (its interface's addresses but
    /// link-local).
    pub underlay: Vec<Ipv6Net>,
    /// The store's endpoints that are IPv6 addresses.
    pub store: Vec<Ipv6Addr>,
    /// The other hosts' IPv6 tunnel endpoints.
    pub peers: Vec<Ipv6Addr>,
    /// `--egress-deny`'s IPv6 ranges.
    pub operator: Vec<Ipv6Net>,
}

/// An address the host can translate containers' IPv6 to: neither
/// unspecified, loopback, link-local, unique local nor multicast.
pub fn is_global(ip: &Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.is_unique_local()
        || ip.to_ipv4_mapped().is_some())
}

/// Every denied IPv6 range with why ([`DenyRange`] kinds); `v4`: IPv4's
/// list, embedded in the NAT64 prefix. With no global address on the
/// host, `::/0` ([`DenyRange::NO_ADDRESS`]): nothing to masquerade to, so
/// the IPv6 world is `egress_denied`, counted, rather than sent out with a
/// source nobody answers.
pub fn deny_list6(facts: &HostFacts6, v4: &BTreeMap<Ipv4Net, u32>) -> BTreeMap<Ipv6Net, u32> {
    let mut out = BTreeMap::new();
    for s in SPECIAL6 {
        out.insert(s.parse().expect("valid range"), DenyRange::SPECIAL);
    }
    let nat64: Ipv6Net = NAT64.parse().expect("valid range");
    for (net, kind) in v4 {
        out.insert(embed(&nat64, net), *kind);
    }
    for net in &facts.addrs {
        out.insert(Ipv6Net::from(net.addr()), DenyRange::HOST);
    }
    // Loopback's and the link-local ranges' are special already.
    for net in &facts.local_routes {
        out.entry(net.trunc()).or_insert(DenyRange::HOST);
    }
    for net in &facts.underlay {
        out.insert(net.trunc(), DenyRange::UNDERLAY);
    }
    for ip in &facts.peers {
        out.insert(Ipv6Net::from(*ip), DenyRange::UNDERLAY);
    }
    for ip in &facts.store {
        out.insert(Ipv6Net::from(*ip), DenyRange::STORE);
    }
    for net in &facts.operator {
        out.insert(net.trunc(), DenyRange::OPERATOR);
    }
    if !facts.addrs.iter().any(|n| is_global(&n.addr())) {
        out.insert(Ipv6Net::default(), DenyRange::NO_ADDRESS);
    }
    out
}

/// `net` inside a /96 prefix.
fn embed(prefix: &Ipv6Net, net: &Ipv4Net) -> Ipv6Net {
    let bits = u128::from(prefix.network()) | u128::from(u32::from(net.network()));
    Ipv6Net::new(Ipv6Addr::from(bits), 96 + net.prefix_len()).expect("at most 128")
}

/// The same ranges merged, for an nftables interval set.
pub fn merged6(list: &BTreeMap<Ipv6Net, u32>) -> Vec<Ipv6Net> {
    Ipv6Net::aggregate(&list.keys().copied().collect::<Vec<_>>())
}

/// The whole list for `datapath::State::egress_deny6`.
pub fn lpm_entries6(list: &BTreeMap<Ipv6Net, u32>) -> HashMap<(Ip6, u8), u32> {
    list.iter()
        .map(|(n, k)| ((n.network().octets(), n.prefix_len()), *k))
        .collect()
}

/// Whether `ip` is denied, as the datapath decides it.
pub fn covers6(list: &BTreeMap<Ipv6Net, u32>, ip: Ipv6Addr) -> Option<u32> {
    list.iter()
        .filter(|(n, _)| n.contains(&ip))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// An IPv4 address in the NAT64 prefix.
    fn nat64(ip: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(ip6("64:ff9b::")) | u128::from(u32::from(ip)))
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn facts() -> HostFacts6 {
        HostFacts6 {
            addrs: vec![
                "2001:db8:1::5/64".parse().unwrap(),
                "fe80::5/64".parse().unwrap(),
            ],
            local_routes: Vec::new(),
            underlay: vec!["2001:db8:100::/64".parse().unwrap()],
            store: vec![ip("2001:db8:60::10")],
            peers: vec![ip("2001:db8:77::1")],
            operator: vec!["2001:db8:bad::/48".parse().unwrap()],
        }
    }

    fn v4() -> BTreeMap<Ipv4Net, u32> {
        BTreeMap::from([("169.254.0.0/16".parse().unwrap(), DenyRange::SPECIAL)])
    }

    #[test]
    fn the_ipv4_classes_in_ipv6() {
        let l = deny_list6(&facts(), &v4());
        for (addr, kind) in [
            ("::1", DenyRange::SPECIAL),
            ("::", DenyRange::SPECIAL),
            ("fe80::1", DenyRange::SPECIAL),
            ("fd12:3456:789a:1::2", DenyRange::SPECIAL),
            ("ff02::1", DenyRange::SPECIAL),
            ("::ffff:8.8.8.8", DenyRange::SPECIAL),
            ("2001:db8:1::5", DenyRange::HOST),
            ("2001:db8:100::9", DenyRange::UNDERLAY),
            ("2001:db8:77::1", DenyRange::UNDERLAY),
            ("2001:db8:60::10", DenyRange::STORE),
            ("2001:db8:bad:7::1", DenyRange::OPERATOR),
        ] {
            assert_eq!(covers6(&l, ip(addr)), Some(kind), "{addr}");
        }
        assert_eq!(
            covers6(&l, nat64("169.254.169.254".parse().unwrap())),
            Some(DenyRange::SPECIAL),
            "cloud metadata through NAT64"
        );
        for world in [
            "2001:db8:1::6",
            "2606:4700::1111",
            "2001:db8:60::11",
            "2001:db8:bae::1",
        ] {
            assert_eq!(covers6(&l, ip(world)), None, "{world}");
        }
        assert_eq!(covers6(&l, nat64("8.8.8.8".parse().unwrap())), None);
    }

    #[test]
    fn the_hosts_local_routes_are_the_host_whole() {
        let mut f = facts();
        f.local_routes = vec![
            "2001:db8:53::/64".parse().unwrap(),
            "::1/128".parse().unwrap(),
            "fe80::5/128".parse().unwrap(),
        ];
        let l = deny_list6(&f, &v4());
        for addr in ["2001:db8:53::", "2001:db8:53::53", "2001:db8:53:0:ffff::1"] {
            assert_eq!(covers6(&l, ip(addr)), Some(DenyRange::HOST), "{addr}");
        }
        assert_eq!(covers6(&l, ip("2001:db8:54::1")), None);
        assert_eq!(covers6(&l, ip("::1")), Some(DenyRange::SPECIAL));
        let mut want = deny_list6(&facts(), &v4());
        want.insert("2001:db8:53::/64".parse().unwrap(), DenyRange::HOST);
        want.insert("fe80::5/128".parse().unwrap(), DenyRange::HOST);
        assert_eq!(l, want, "nothing else changed");
        // A local route is no address to translate to.
        let mut f = facts();
        f.addrs = vec!["fe80::5/64".parse().unwrap()];
        f.local_routes = vec!["2001:db8:53::/64".parse().unwrap()];
        assert_eq!(
            covers6(&deny_list6(&f, &v4()), ip("2606:4700::1111")),
            Some(DenyRange::NO_ADDRESS)
        );
    }

    #[test]
    fn without_a_global_address_the_whole_world_is_denied() {
        let mut f = facts();
        f.addrs = vec![
            "fe80::5/64".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ];
        let l = deny_list6(&f, &BTreeMap::new());
        assert_eq!(
            covers6(&l, ip("2606:4700::1111")),
            Some(DenyRange::NO_ADDRESS)
        );
        assert!(
            !deny_list6(&facts(), &BTreeMap::new())
                .values()
                .any(|k| *k == DenyRange::NO_ADDRESS)
        );
    }

    #[test]
    fn merged_has_no_overlap_and_keys_are_network_order() {
        let l = deny_list6(&facts(), &v4());
        let m = merged6(&l);
        for (i, a) in m.iter().enumerate() {
            for b in &m[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
        let e = lpm_entries6(&l);
        assert_eq!(
            e.get(&(ip("fe80::").octets(), 10)),
            Some(&DenyRange::SPECIAL)
        );
        assert_eq!(e.len(), l.len());
    }
}
