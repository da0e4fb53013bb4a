//! The single source of truth for everything pn's kernel programs and its agent
//! share: map keys and values (`#[repr(C)]`, sizes checked at compile time), the
//! list of verdict reasons used by the datapath, the metrics and the CLI, and the
//! decision logic that can be pure (so it is unit-tested on the host and the
//! programs stay thin: parse, look up, decide, count).
#![cfg_attr(not(any(feature = "ids", test)), no_std)]

pub mod conn;
pub mod edge;
pub mod event;
#[cfg(feature = "ids")]
pub mod ids;
pub mod lb;
pub mod maps;
pub mod memo;
#[cfg(feature = "ids")]
pub mod names;
pub mod policy;
pub mod reason;
pub mod tunnel;

pub use reason::Reason;

/// An IPv4 address as it sits in a packet: the four octets in network order,
/// read into a `u32` without byte swapping. The programs never swap; user space
/// converts with [`ip4`] / [`ip4_octets`].
pub type Ip4 = u32;

/// `Ip4` from dotted octets.
pub const fn ip4(a: u8, b: u8, c: u8, d: u8) -> Ip4 {
    u32::from_ne_bytes([a, b, c, d])
}

/// Octets of an `Ip4`, in network order.
pub const fn ip4_octets(ip: Ip4) -> [u8; 4] {
    ip.to_ne_bytes()
}

/// The link-local gateway every container routes through (and the default DNS
/// address): the host side answers for it, so containers never learn a host
/// address.
pub const GATEWAY: Ip4 = ip4(169, 254, 1, 1);

/// An IPv6 address as it sits in a packet: the sixteen octets in network
/// order. An array, not a `u128`: the programs compare and copy it, never
/// compute with it, and an array has no alignment to trip the verifier on.
pub type Ip6 = [u8; 16];

/// `::`, the source of a host that has no address yet.
pub const IP6_UNSPECIFIED: Ip6 = [0; 16];

/// IPv6's twin of [`GATEWAY`]: `fe80::1` on every container's link.
pub const GATEWAY6: Ip6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Names of the maps and programs, as pinned under the agent's bpffs directory.
pub mod objects {
    pub const MAP_ENDPOINTS: &str = "PN_ENDPOINTS";
    pub const MAP_ENDPOINTS6: &str = "PN_ENDPOINTS6";
    pub const MAP_IFACES: &str = "PN_IFACES";
    pub const MAP_MEMO: &str = "PN_MEMO";
    pub const MAP_MEMO_GEN: &str = "PN_MEMO_GEN";
    pub const MAP_COUNTERS: &str = "PN_COUNTERS";
    pub const MAP_FLOWS: &str = "PN_FLOWS";
    pub const MAP_FLOWS6: &str = "PN_FLOWS6";
    pub const MAP_EVENTS: &str = "PN_EVENTS";
    pub const MAP_CONFIG: &str = "PN_CONFIG";
    pub const MAP_EVENT_BUDGET: &str = "PN_EVBUDGET";
    pub const MAP_PEERS: &str = "PN_PEERS";
    pub const MAP_PEERS6: &str = "PN_PEERS6";
    pub const MAP_TAGS: &str = "PN_TAGS";
    pub const MAP_CONNS: &str = "PN_CONNS";
    pub const MAP_EGRESS_DENY: &str = "PN_EGRESS_DENY";
    pub const MAP_CONNS6: &str = "PN_CONNS6";
    pub const MAP_EGRESS_DENY6: &str = "PN_EGRESS_DENY6";
    pub const MAP_CONN_EVENTS: &str = "PN_CONN_EVENTS";
    pub const MAP_CONN_CFG: &str = "PN_CONN_CFG";
    pub const MAP_LOST: &str = "PN_LOST";
    pub const MAP_LB_SERVICES: &str = "PN_LB_SERVICES";
    pub const MAP_LB_SLOTS: &str = "PN_LB_SLOTS";
    pub const MAP_LB_BACKENDS: &str = "PN_LB_BACKENDS";
    pub const MAP_LB_CONNS: &str = "PN_LB_CONNS";
    pub const MAP_LB_CLIENTS: &str = "PN_LB_CLIENTS";
    pub const MAP_LB_STATS: &str = "PN_LB_STATS";
    pub const MAP_CONN_COUNT: &str = "PN_CONN_COUNT";
    pub const MAP_LB6_SERVICES: &str = "PN_LB6_SERVICES";
    pub const MAP_LB6_SLOTS: &str = "PN_LB6_SLOTS";
    pub const MAP_LB6_BACKENDS: &str = "PN_LB6_BACKENDS";
    pub const MAP_LB6_CONNS: &str = "PN_LB6_CONNS";
    pub const MAP_LB6_STATS: &str = "PN_LB6_STATS";
    pub const PROG_FROM_CONTAINER: &str = "pn_from_container";
    pub const PROG_TO_CONTAINER: &str = "pn_to_container";
    pub const PROG_UNDERLAY: &str = "pn_underlay";
    pub const PROG_INTO_TUNNEL: &str = "pn_into_tunnel";
}
