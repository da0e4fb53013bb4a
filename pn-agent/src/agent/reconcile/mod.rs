//! What the kernel should hold, as a pure function of the membership view:
//! [`desired`] takes the view, this host and the host-side links that exist,
//! and returns every map entry, attached link, tunnel member, peer and route
//! this host needs — for the whole fleet, or only for the containers one
//! store change touched. No I/O here: the agent feeds the result to
//! [`crate::datapath::Datapath::apply`] and to the tunnel and netlink.
//! The edge's part (interface flags, deny list, nftables table, published
//! ports) is in [`edge`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::Ipv6Net;

use pn_common::{
    Ip4, Ip6,
    ids::NetworkId,
    maps::{Endpoint, Peer},
};
use pn_tunnel::{Member, PeerId};

mod local;
mod services;

use crate::{
    datapath::{Scope, State},
    edge::EdgeConfig,
    model::{Container, ContainerKey},
    store::view::MembershipView,
};

pub mod edge;

pub use edge::{EdgeLocal, EdgeLocal6};
pub use local::Local;
use local::local_tags;

/// Which part of the view a reconciliation covers.
#[derive(Clone, Debug, PartialEq)]
pub enum Touched {
    /// Everything (start, resync after a watch break).
    All,
    /// These container records, as they were before the change and as they
    /// are now (an address, an interface or a host may have changed).
    Containers(Vec<Container>),
    /// Hosts changed: peers, tags and routes.
    Fleet,
    /// A network was created, changed or deleted: what `Fleet` covers, and
    /// this host's containers of that network (their egress).
    Network(NetworkId),
    /// The edge alone (the host's addresses may have changed): the deny
    /// list and the nftables table.
    Edge,
}

/// The kernel and tunnel state wanted for what a [`Touched`] covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub datapath: State,
    /// The part of the datapath `datapath` covers.
    pub scope: Option<Scope>,
    /// The member addresses covered; `None`: all.
    pub addrs: Option<BTreeSet<Ipv4Addr>>,
    /// Address → member for the tunnel's checks; addresses of `scope` absent
    /// from here are no members any more.
    pub members: BTreeMap<Ipv4Addr, Member>,
    /// The same for IPv6 addresses: the tunnel carries both families.
    pub members6: BTreeMap<Ipv6Addr, Member>,
    /// The IPv6 member addresses covered; `None`: all.
    pub addrs6: Option<BTreeSet<Ipv6Addr>>,
    /// The networks' IPv6 prefixes, routed to the tunnel's device (local
    /// members' /128s win), when the fleet is covered.
    pub tunnel_routes6: Option<BTreeSet<Ipv6Net>>,
    /// Peers of the tunnel (id, public key, endpoint), when the fleet is covered.
    pub tunnel_peers: Option<Vec<(PeerId, [u8; 32], SocketAddr)>>,
    /// Local containers whose interface is gone (their namespace was
    /// deleted while nobody watched): to be detached in the store.
    pub stale: Vec<ContainerKey>,
    /// Host-side interfaces that no container of this host claims.
    pub orphans: Vec<String>,
    /// Namespaces that held a container of this host and hold none now
    /// (their resolv.conf goes).
    pub left_netns: Vec<String>,
    /// Local containers whose address changed (their app moved to another
    /// network), as (record before, record now): their interface is
    /// re-addressed in place.
    pub readdressed: Vec<(Container, Container)>,
    /// The edge's nftables table, when what it depends on may have changed
    /// (the deny list then is in `datapath` when `scope` covers the edge).
    pub edge: Option<EdgeConfig>,
}

pub use crate::model::to_ip4;

/// `links`: host-side interfaces of the agent that exist (name → ifindex);
/// for `Touched::Containers`, at least those of the touched containers.
pub fn desired(
    view: &MembershipView,
    local: &Local<'_>,
    links: &BTreeMap<String, u32>,
    touched: &Touched,
) -> Desired {
    let mut d = Desired::default();
    let (records, fleet) = touched_records(view, local, touched);
    for c in &records {
        add_container(&mut d, view, local, links, c);
    }
    (d.datapath.services, d.datapath.services6) = services::services(view, local);
    if fleet {
        (d.datapath.peers, d.datapath.peers6) = underlay_peers(view, local);
        d.datapath.tags = local_tags(view, local);
        d.tunnel_peers = Some(tunnel_peers(view, local));
        d.tunnel_routes6 = Some(view.networks.values().filter_map(|n| n.cidr6).collect());
    }
    let mut edge = false;
    match touched {
        Touched::All => {
            d.orphans = links
                .keys()
                .filter(|l| !d.datapath.attached.contains(*l))
                .cloned()
                .collect();
            d.scope = Some(Scope::all());
            edge = true;
        }
        Touched::Fleet => {
            d.scope = Some(Scope::underlay());
            d.addrs = Some(BTreeSet::new());
            d.addrs6 = Some(BTreeSet::new());
        }
        Touched::Edge => {
            d.scope = Some(Scope::edge());
            d.addrs = Some(BTreeSet::new());
            d.addrs6 = Some(BTreeSet::new());
            edge = true;
        }
        Touched::Network(_) => {
            let addrs: BTreeSet<Ipv4Addr> = records.iter().map(|c| c.ip).collect();
            d.scope = Some(
                Scope::entries(
                    addrs.iter().map(|a| to_ip4(*a)),
                    records.iter().map(|c| c.host_ifname.clone()),
                    true,
                )
                .with_addrs6(records.iter().filter_map(|c| c.ip6).map(|a| a.octets())),
            );
            d.addrs = Some(addrs);
            d.addrs6 = Some(records.iter().filter_map(|c| c.ip6).collect());
        }
        Touched::Containers(before) => {
            containers_changed(&mut d, view, local, links, before, &records)
        }
    }
    if edge && let Some(e) = local.edge {
        d.datapath.egress_deny = edge::deny_entries(view, local.host, e);
        d.datapath.egress_deny6 = edge::deny_entries6(view, local.host, e);
        d.edge = Some(edge::edge_config(view, local.host, e));
    } else if let Some(s) = d.scope.take() {
        // No facts of the host: the deny list is left as it is.
        d.scope = Some(s.with_edge(false));
    }
    d
}

/// The container records a reconciliation covers, and whether it covers
/// the fleet (peers, tags).
fn touched_records<'v>(
    view: &'v MembershipView,
    local: &Local<'v>,
    touched: &Touched,
) -> (Vec<&'v Container>, bool) {
    match touched {
        Touched::All => (view.containers.values().collect(), true),
        Touched::Fleet => (Vec::new(), true),
        Touched::Edge => (Vec::new(), false),
        Touched::Network(id) => (
            view.local_containers(local.host)
                .filter(|c| c.network == *id)
                .collect(),
            true,
        ),
        Touched::Containers(before) => {
            // The records now holding the touched keys or addresses.
            let mut now: BTreeMap<&ContainerKey, &Container> = BTreeMap::new();
            for b in before {
                for c in [view.containers.get(&b.key), view.container_by_ip(b.ip)]
                    .into_iter()
                    .flatten()
                {
                    now.insert(&c.key, c);
                }
            }
            (now.into_values().collect(), false)
        }
    }
}

/// What changed containers need besides their own entries: the addresses
/// and interfaces their scope covers (before and after the change), the
/// interfaces left without a container, the underlay when a local member
/// came or went, re-addressed interfaces, namespaces left, and the edge.
fn containers_changed(
    d: &mut Desired,
    view: &MembershipView,
    local: &Local<'_>,
    links: &BTreeMap<String, u32>,
    before: &[Container],
    records: &[&Container],
) {
    let addrs: BTreeSet<Ipv4Addr> = before
        .iter()
        .map(|c| c.ip)
        .chain(records.iter().map(|c| c.ip))
        .collect();
    let names: BTreeSet<String> = before
        .iter()
        .chain(records.iter().copied())
        .map(|c| c.host_ifname.clone())
        .collect();
    d.orphans = names
        .iter()
        .filter(|l| links.contains_key(*l) && !d.datapath.attached.contains(*l))
        .cloned()
        .collect();
    // A local member came or went: the networks with local members
    // may have changed.
    let underlay = before
        .iter()
        .chain(records.iter().copied())
        .any(|c| c.host == *local.host);
    if underlay {
        (d.datapath.peers, d.datapath.peers6) = underlay_peers(view, local);
        d.datapath.tags = local_tags(view, local);
    }
    d.readdressed = before
        .iter()
        .filter(|b| b.host == *local.host && links.contains_key(&b.host_ifname))
        .filter_map(|b| {
            let now = view.containers.get(&b.key)?;
            let same_interface = now.host == *local.host
                && now.netns == b.netns
                && now.ifname == b.ifname
                && now.host_ifname == b.host_ifname;
            let moved = now.ip != b.ip || now.ip6 != b.ip6;
            (same_interface && moved).then(|| (b.clone(), now.clone()))
        })
        .collect();
    d.left_netns = before
        .iter()
        .filter(|b| b.host == *local.host)
        .filter(|b| {
            view.containers
                .get(&b.key)
                .is_none_or(|c| c.host != *local.host || c.netns != b.netns)
        })
        .map(|b| b.netns.clone())
        .collect();
    let addrs6: BTreeSet<Ipv6Addr> = before
        .iter()
        .chain(records.iter().copied())
        .filter_map(|c| c.ip6)
        .collect();
    d.scope = Some(
        Scope::entries(addrs.iter().map(|a| to_ip4(*a)), names, underlay)
            .with_addrs6(addrs6.iter().map(|a| a.octets())),
    );
    d.addrs = Some(addrs);
    d.addrs6 = Some(addrs6);
    // A local container came, went or changed: its publication may have.
    if underlay && let Some(e) = local.edge {
        d.edge = Some(edge::edge_config(view, local.host, e));
    }
}

fn add_container(
    d: &mut Desired,
    view: &MembershipView,
    local: &Local<'_>,
    links: &BTreeMap<String, u32>,
    c: &Container,
) {
    let Some(net) = view.networks.get(&c.network) else {
        return;
    };
    let ip = to_ip4(c.ip);
    if c.host != *local.host {
        // A host the view does not know (or refused) has no peer id: its
        // containers stay unknown, so their traffic fails closed.
        let Some(peer) = view.peer_id(&c.host) else {
            return;
        };
        let member = Member {
            tag: net.tag,
            peer: Some(peer),
        };
        d.members.insert(c.ip, member);
        if let Some(ip6) = c.ip6 {
            d.members6.insert(ip6, member);
        }
        let ep = Endpoint {
            tag: net.tag,
            ifindex: 0,
            peer,
            flags: Endpoint::FLAG_REMOTE,
        };
        d.datapath.endpoints.insert(ip, ep);
        if let Some(ip6) = c.ip6 {
            d.datapath.endpoints6.insert(ip6.octets(), ep);
        }
        return;
    }
    let member = Member {
        tag: net.tag,
        peer: None,
    };
    d.members.insert(c.ip, member);
    if let Some(ip6) = c.ip6 {
        d.members6.insert(ip6, member);
    }
    let Some(&ifindex) = links.get(&c.host_ifname) else {
        d.stale.push(c.key.clone());
        return;
    };
    d.datapath.attached.insert(c.host_ifname.clone());
    let publication = edge::publication(view, local.edge, c);
    let mut iface = edge::iface(ip, net, publication.as_ref());
    if let Some(ip6) = c.ip6 {
        iface.addr6 = ip6.octets();
    }
    d.datapath.ifaces.insert(ifindex, iface);
    let ep = Endpoint {
        tag: net.tag,
        ifindex,
        peer: 0,
        flags: 0,
    };
    d.datapath.endpoints.insert(ip, ep);
    if let Some(ip6) = c.ip6 {
        d.datapath.endpoints6.insert(ip6.octets(), ep);
    }
}

/// `PN_PEERS` and `PN_PEERS6`: the other hosts by their advertised
/// address, each in its family's table (an IPv4-mapped IPv6 one is IPv4).
fn underlay_peers(
    view: &MembershipView,
    local: &Local<'_>,
) -> (BTreeMap<Ip4, Peer>, BTreeMap<Ip6, Peer>) {
    let (mut v4, mut v6) = (BTreeMap::new(), BTreeMap::new());
    for h in view.hosts.values().filter(|h| h.id != *local.host) {
        let Some(a) = h.advertise else { continue };
        let peer = Peer {
            index: h.peer_id,
            flags: 0,
        };
        match a.ip().to_canonical() {
            IpAddr::V4(ip) => v4.insert(to_ip4(ip), peer),
            IpAddr::V6(ip) => v6.insert(ip.octets(), peer),
        };
    }
    (v4, v6)
}

/// The tunnel's peers: the other hosts whose advertised endpoint is of
/// this host's family. The tunnel's sockets are of that family, and a
/// peer's packets come from its advertised address, which the underlay
/// guard knows: a host advertising IPv4 and one advertising IPv6 do not
/// pair (their members are `no_route` to each other). Endpoints are
/// canonical (IPv4-mapped ones as IPv4). All of them while this host has
/// no record with an endpoint yet.
fn tunnel_peers(view: &MembershipView, local: &Local<'_>) -> Vec<(PeerId, [u8; 32], SocketAddr)> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let family = view
        .hosts
        .get(local.host)
        .and_then(|h| h.advertise)
        .map(|a| canonical(a).is_ipv6());
    view.hosts
        .values()
        .filter(|h| h.id != *local.host)
        .filter_map(|h| Some((h.peer_id, h.key_bytes()?, canonical(h.advertise?))))
        .filter(|(_, _, a)| family.is_none_or(|v6| a.is_ipv6() == v6))
        .collect()
}

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod tests;
