//! What differs between IPv4 and IPv6 in the member rules: the address
//! type and where each family keeps the few addresses the rules compare
//! with. Everything else — the order of the checks, the reasons — is one
//! code path, so a rule cannot hold for one family and not the other.

use crate::{
    GATEWAY, GATEWAY6, IP6_UNSPECIFIED, Ip4, Ip6,
    maps::{Config, Iface, halves},
};

/// An address family, named by its address type ([`Ip4`], [`Ip6`]).
pub trait Family: Copy {
    /// The gateway on every container's link.
    const GATEWAY: Self;
    /// ICMP's protocol number in this family.
    const ICMP: u8;
    /// Equality the programs can run: on words, never a byte comparison
    /// that could compile to a call BPF lacks.
    fn same(&self, other: &Self) -> bool;
    /// The container's address of this family, if it has one.
    fn own(iface: &Iface) -> Option<Self>;
    /// Where the agent's DNS answers.
    fn dns(cfg: &Config) -> Self;
    /// Inside the fleet's pool: a member's address or none, never the world.
    fn in_pool(&self, cfg: &Config) -> bool;
}

impl Family for Ip4 {
    const GATEWAY: Ip4 = GATEWAY;
    const ICMP: u8 = super::header::IPPROTO_ICMP;

    fn same(&self, other: &Ip4) -> bool {
        self == other
    }

    // IPv4 is every container's: the entry's address is its.
    fn own(iface: &Iface) -> Option<Ip4> {
        Some(iface.addr)
    }

    fn dns(cfg: &Config) -> Ip4 {
        cfg.dns_addr
    }

    fn in_pool(&self, cfg: &Config) -> bool {
        cfg.in_pool(*self)
    }
}

impl Family for Ip6 {
    const GATEWAY: Ip6 = GATEWAY6;
    const ICMP: u8 = super::ipv6::IPPROTO_ICMPV6;

    fn same(&self, other: &Ip6) -> bool {
        same6(self, other)
    }

    fn own(iface: &Iface) -> Option<Ip6> {
        (!same6(&iface.addr6, &IP6_UNSPECIFIED)).then_some(iface.addr6)
    }

    // The DNS listens on the gateway for both families; IPv4's address is
    // configurable for hosts that run their own resolver there, IPv6 has
    // no such past.
    fn dns(_: &Config) -> Ip6 {
        GATEWAY6
    }

    fn in_pool(&self, cfg: &Config) -> bool {
        cfg.in_pool6(self)
    }
}

/// `a == b` on two words.
pub const fn same6(a: &Ip6, b: &Ip6) -> bool {
    let (x, y) = (halves(a), halves(b));
    x[0] == y[0] && x[1] == y[1]
}
