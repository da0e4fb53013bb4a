//! What the kernel's maps and links hold (or should hold).

use std::collections::{BTreeMap, BTreeSet};

use pn_common::{
    Ip4, Ip6,
    maps::{Endpoint, Iface, Peer},
};

/// What the kernel's maps and links hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `PN_ENDPOINTS`: every member address, local or remote.
    pub endpoints: BTreeMap<Ip4, Endpoint>,
    /// `PN_ENDPOINTS6`: the members that have an IPv6 address, by it.
    pub endpoints6: BTreeMap<Ip6, Endpoint>,
    /// `PN_IFACES`, by host-side ifindex: local containers.
    pub ifaces: BTreeMap<u32, Iface>,
    /// Host-side interfaces with both TC programs attached (pinned links).
    pub attached: BTreeSet<String>,
    /// `PN_PEERS`: underlay address → peer host (XDP guard).
    pub peers: BTreeMap<Ip4, Peer>,
    /// `PN_PEERS6`: the same for peers that advertise an IPv6 endpoint.
    pub peers6: BTreeMap<Ip6, Peer>,
    /// `PN_TAGS`: networks with a local member (XDP guard).
    pub tags: BTreeSet<u32>,
    /// `PN_EGRESS_DENY`: ranges that are never the world (network address
    /// and prefix length → [`pn_common::maps::DenyRange`] kind).
    pub egress_deny: BTreeMap<(Ip4, u8), u32>,
    /// `PN_EGRESS_DENY6`: the same for IPv6.
    pub egress_deny6: BTreeMap<(Ip6, u8), u32>,
    /// Service addresses balanced from this host (`PN_LB_*`). Always whole,
    /// whatever the [`super::Scope`]: a handful per network, rebuilt from the view.
    pub services: BTreeMap<Ip4, ServiceState>,
    /// IPv6 service addresses (`PN_LB6_*`), the same way.
    pub services6: BTreeMap<Ip6, ServiceState<Ip6>>,
}

/// A service address as the balancer holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState<A = Ip4> {
    /// Its network.
    pub tag: u32,
    /// The backends in rotation (live, healthy containers of its type), by
    /// their address of the service address's family.
    pub backends: BTreeSet<A>,
}
