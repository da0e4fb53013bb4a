//! The edge's part of the desired state, as pure functions of the view and
//! of what the agent knows of its host: the flags and web port of each local
//! container's interface, the deny list for the datapath, the nftables
//! table ([`EdgeConfig`]), and which port each local `web` container is
//! published on.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
};

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::{Ip4, Ip6, ids::HostId, maps::Iface};

use crate::{
    config::PortRange,
    edge::{
        EdgeConfig, EdgeConfig6, GatewayDns, Publication, TunnelNotrack,
        deny::{self, HostFacts},
        deny6::{self, HostFacts6},
        ports::{self, PortsExhausted},
    },
    model::{Container, ContainerKey, Egress, Network},
    store::view::MembershipView,
};

/// What this host's edge is made of besides the view: the agent's settings
/// and what it found on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeLocal {
    pub pool: Ipv4Net,
    /// `--router-cidr`: with none, nothing is published.
    pub router_cidrs: Vec<Ipv4Net>,
    /// `--publish-ports`.
    pub ports: PortRange,
    /// The host's addresses, underlay, store endpoints and `--egress-deny`.
    pub facts: HostFacts,
    /// Addresses of this host on which published ports answer.
    pub host_addrs: Vec<Ipv4Addr>,
    /// The address a publication is shown with (`HOST_IP:PORT`); `None`
    /// while the host has none, and then nothing is published.
    pub public_ip: Option<Ipv4Addr>,
    /// pn's interfaces (a trailing `*` for a prefix).
    pub interfaces: Vec<String>,
    /// Whether the table drops forwarded traffic that is not pn's
    /// (`--forward-guard`, and who turned forwarding on).
    pub forward_guard: bool,
    pub forward_guard6: bool,
    /// The agent's DNS and its clients' interfaces.
    pub dns: Option<GatewayDns>,
    /// What the IPv6 side is made of.
    pub v6: EdgeLocal6,
    /// `--tunnel-notrack`: the tunnel's port, whose datagrams with the
    /// other hosts skip conntrack (none: switch off, or no tunnel).
    pub tunnel_notrack: Option<u16>,
}

/// The IPv6 side of [`EdgeLocal`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeLocal6 {
    /// The fleet's IPv6 pool, once known (`--pool6`, or the store's):
    /// until then no IPv6 rule is made.
    pub pool: Option<Ipv6Net>,
    /// The host's IPv6 addresses, underlay and store endpoints.
    pub facts: HostFacts6,
    /// Addresses of this host on which published ports answer over IPv6.
    pub host_addrs: Vec<Ipv6Addr>,
    /// `--router-cidr`'s IPv6 ranges.
    pub router_cidrs: Vec<Ipv6Net>,
}

impl EdgeLocal {
    /// Whether this host publishes `web` containers at all.
    pub fn publishes(&self) -> bool {
        !self.router_cidrs.is_empty() && self.public_ip.is_some()
    }
}

/// The publication of a container of this host, if it has one that holds:
/// a `web` container, with a port of this host's range, on a host with
/// routers.
pub fn publication(
    view: &MembershipView,
    edge: Option<&EdgeLocal>,
    c: &Container,
) -> Option<Publication> {
    let edge = edge?;
    if edge.router_cidrs.is_empty() || !c.is_web() {
        return None;
    }
    let at = c.published?;
    if !edge.ports.contains(at.port()) {
        return None;
    }
    Some(Publication {
        host_port: at.port(),
        container: c.ip,
        web_port: view.apps.get(&c.key.app)?.web_port,
        container6: c.ip6,
    })
}

/// The interface entry of a local container: its address and network, the
/// network's egress, its publication.
pub fn iface(addr: Ip4, net: &Network, publication: Option<&Publication>) -> Iface {
    let mut i = Iface {
        addr,
        tag: net.tag,
        ..Default::default()
    };
    if net.egress == Egress::Deny {
        i.flags |= Iface::FLAG_EGRESS_DENY;
    }
    if let Some(p) = publication {
        i.flags |= Iface::FLAG_PUBLISHED;
        i.web_port = p.web_port;
    }
    i
}

/// `PN_EGRESS_DENY` for this host.
pub fn deny_entries(
    view: &MembershipView,
    host: &HostId,
    edge: &EdgeLocal,
) -> BTreeMap<(Ip4, u8), u32> {
    deny::lpm_entries(&deny::deny_list(&facts(view, host, edge)))
        .into_iter()
        .collect()
}

/// `PN_EGRESS_DENY6` for this host.
pub fn deny_entries6(
    view: &MembershipView,
    host: &HostId,
    edge: &EdgeLocal,
) -> BTreeMap<(Ip6, u8), u32> {
    deny6::lpm_entries6(&deny_list6(view, host, edge))
        .into_iter()
        .collect()
}

fn deny_list6(view: &MembershipView, host: &HostId, edge: &EdgeLocal) -> BTreeMap<Ipv6Net, u32> {
    let f6 = HostFacts6 {
        peers: peer_addrs6(view, host),
        ..edge.v6.facts.clone()
    };
    deny6::deny_list6(&f6, &deny::deny_list(&facts(view, host, edge)))
}

/// The IPv6 tunnel endpoints of the hosts other than `host`.
fn peer_addrs6(view: &MembershipView, host: &HostId) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = view
        .hosts
        .values()
        .filter(|h| h.id != *host)
        .filter_map(|h| match h.advertise?.ip().to_canonical() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the deny list is made of: the host's facts and the other hosts'
/// tunnel endpoints (the view's: checked, so never in the pool).
fn facts(view: &MembershipView, host: &HostId, edge: &EdgeLocal) -> HostFacts {
    HostFacts {
        peers: peer_addrs(view, host),
        ..edge.facts.clone()
    }
}

/// The IPv4 tunnel endpoints of the hosts other than `host`.
pub fn peer_addrs(view: &MembershipView, host: &HostId) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = view
        .hosts
        .values()
        .filter(|h| h.id != *host)
        .filter_map(|h| match h.advertise?.ip().to_canonical() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The other hosts' endpoints that `--router-cidr` covers: whoever holds
/// such a host may act as a router toward this host's published ports.
pub fn hosts_under_routers(
    view: &MembershipView,
    host: &HostId,
    edge: &EdgeLocal,
) -> Vec<Ipv4Addr> {
    peer_addrs(view, host)
        .into_iter()
        .filter(|ip| edge.router_cidrs.iter().any(|r| r.contains(ip)))
        .collect()
}

/// The whole nftables table of this host.
pub fn edge_config(view: &MembershipView, host: &HostId, edge: &EdgeLocal) -> EdgeConfig {
    let mut publications: Vec<Publication> = view
        .local_containers(host)
        .filter_map(|c| publication(view, Some(edge), c))
        .collect();
    publications.sort();
    EdgeConfig {
        pool: edge.pool,
        host_addrs: edge.host_addrs.clone(),
        router_cidrs: edge.router_cidrs.clone(),
        publications,
        egress_deny: deny::merged(&deny::deny_list(&facts(view, host, edge))),
        interfaces: edge.interfaces.clone(),
        forward_guard: edge.forward_guard,
        forward_guard6: edge.forward_guard6,
        dns: edge.dns.clone(),
        v6: edge.v6.pool.map(|pool| EdgeConfig6 {
            pool,
            host_addrs: edge.v6.host_addrs.clone(),
            router_cidrs: edge.v6.router_cidrs.clone(),
            egress_deny: deny6::merged6(&deny_list6(view, host, edge)),
        }),
        tunnel_notrack: edge.tunnel_notrack.map(|port| TunnelNotrack {
            port,
            peers: peer_addrs(view, host),
            peers6: peer_addrs6(view, host),
        }),
    }
}

/// Where each of `containers` (this host's) should be published: `web`
/// containers on a port of the range (the one they have if it still holds,
/// the lowest free one otherwise) at the host's public address; the others,
/// and all of them on a host without routers, nowhere.
pub fn assign_published<'a>(
    containers: impl IntoIterator<Item = &'a Container>,
    edge: &EdgeLocal,
) -> Result<BTreeMap<ContainerKey, Option<SocketAddrV4>>, PortsExhausted> {
    let all: Vec<&Container> = containers.into_iter().collect();
    let mut out: BTreeMap<ContainerKey, Option<SocketAddrV4>> =
        all.iter().map(|c| (c.key.clone(), None)).collect();
    let Some(ip) = edge.public_ip.filter(|_| edge.publishes()) else {
        return Ok(out);
    };
    let wanted: BTreeSet<ContainerKey> = all
        .iter()
        .filter(|c| c.is_web())
        .map(|c| c.key.clone())
        .collect();
    let current: BTreeMap<ContainerKey, u16> = all
        .iter()
        .filter_map(|c| Some((c.key.clone(), c.published?.port())))
        .collect();
    for (k, port) in ports::assign(edge.ports, &wanted, &current)? {
        out.insert(k, Some(SocketAddrV4::new(ip, port)));
    }
    Ok(out)
}
