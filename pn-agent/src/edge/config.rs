//! The edge's desired state, as the agent hands it to [`super::Edge::set`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use ipnet::{Ipv4Net, Ipv6Net};

/// One published `web` container: `HOST:host_port` → `container:web_port`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Publication {
    pub host_port: u16,
    pub container: Ipv4Addr,
    pub web_port: u16,
    /// The container's IPv6 address, if it has one: the same port answers
    /// on the host's IPv6 addresses too.
    #[serde(default)]
    pub container6: Option<Ipv6Addr>,
}

/// The whole desired state of the edge: [`super::Edge::set`] makes the kernel
/// match it, whatever was there before.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeConfig {
    /// The fleet's address pool: translated on the way out, never between
    /// members.
    pub pool: Ipv4Net,
    /// This host's addresses on which published ports answer.
    pub host_addrs: Vec<Ipv4Addr>,
    /// Sources that may use published ports (`--router-cidr`).
    pub router_cidrs: Vec<Ipv4Net>,
    pub publications: Vec<Publication>,
    /// Destinations that are never the world. The eBPF programs enforce
    /// them (and count); the forward hook drops new connections to them as
    /// a second line, so a datapath out of step cannot leak.
    pub egress_deny: Vec<Ipv4Net>,
    /// pn's interfaces, by name; a trailing `*` matches a prefix (`pnh*`).
    /// Never masqueraded toward; forwarded into freely (the eBPF programs
    /// on them judge every packet, and count per container).
    pub interfaces: Vec<String>,
    /// Drop forwarded traffic that is not pn's (neither in nor out of its
    /// interfaces, nor part of a connection already open): the host routes
    /// nothing else.
    pub forward_guard: bool,
    /// The same for IPv6, whose forwarding pn may own when IPv4's is shared
    /// (or the reverse).
    #[serde(default)]
    pub forward_guard6: bool,
    /// The agent's DNS, answering only its containers' interfaces.
    pub dns: Option<GatewayDns>,
    /// IPv6's twins of the rules above, once the fleet's IPv6 pool is
    /// known (none: no IPv6 rule, and the programs keep every IPv6
    /// destination outside the members out of reach).
    #[serde(default)]
    pub v6: Option<EdgeConfig6>,
    /// `--tunnel-notrack`: the tunnel's datagrams with the other hosts
    /// skip conntrack (none: they are tracked like any other).
    #[serde(default)]
    pub tunnel_notrack: Option<TunnelNotrack>,
}

/// The tunnel's datagrams that skip conntrack: from the other hosts'
/// endpoints to this host's tunnel port, and back. Only the known
/// endpoints: anything else to that port (a container's masqueraded
/// flow the kernel happened to give that port, a stranger) is tracked as
/// before, so NAT and the operator's rules see it as they always did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelNotrack {
    /// The tunnel's UDP port (`--advertise`'s).
    pub port: u16,
    /// The other hosts' IPv4 tunnel endpoints.
    pub peers: Vec<Ipv4Addr>,
    /// The other hosts' IPv6 tunnel endpoints.
    #[serde(default)]
    pub peers6: Vec<Ipv6Addr>,
}

/// The IPv6 side of [`EdgeConfig`]: the same rules in `ip6`, in the same
/// table (`inet`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeConfig6 {
    /// The fleet's IPv6 pool (the unique local /48).
    pub pool: Ipv6Net,
    /// This host's IPv6 addresses on which published ports answer.
    pub host_addrs: Vec<Ipv6Addr>,
    /// IPv6 sources that may use published ports (`--router-cidr`'s IPv6
    /// ranges).
    pub router_cidrs: Vec<Ipv6Net>,
    /// IPv6 destinations that are never the world.
    pub egress_deny: Vec<Ipv6Net>,
}

/// Where the agent's DNS listens, and the interfaces its clients (the
/// containers) come through: queries from anywhere else never reach it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayDns {
    /// `--dns-listen` (an unspecified address: every local address).
    pub listen: SocketAddrV4,
    /// Container interfaces, by name; a trailing `*` matches a prefix.
    pub clients: Vec<String>,
    /// The server also listens on `[::]` at the same port (IPv6 only, for
    /// the gateway `fe80::1`): any IPv6 address of the host reaches those
    /// sockets, so the same guard holds there.
    #[serde(default)]
    pub ipv6: bool,
}
