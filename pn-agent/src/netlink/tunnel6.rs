//! IPv6 toward remote members: each network's /64 routed to the tunnel's
//! device, as IPv4's pool is (`routes`). A local member's /128 on its veth
//! wins; the rest of the /64 meets `pn_into_tunnel` and the tunnel's
//! membership check, never the underlay in clear. Ours are the routes of
//! protocol `static` on that device (nobody else routes to it): a network
//! deleted takes its route with it.

use std::{collections::BTreeSet, net::Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
};

use super::{
    error::{NetlinkError, Result, kernel},
    requests::link_by_name,
    socket::Netlink,
};

/// The prefix a route leads to, if it is one of ours on `dev`.
fn ours(r: &RouteMessage, dev: u32) -> Option<Ipv6Net> {
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    if oif != Some(dev)
        || r.header.protocol != RouteProtocol::Static
        || r.header.kind != RouteType::Unicast
    {
        return None;
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(*ip),
        _ => None,
    })?;
    Ipv6Net::new(dst, r.header.destination_prefix_length).ok()
}

fn route(net: Ipv6Net, dev: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .output_interface(dev)
        .protocol(RouteProtocol::Static)
        .build()
}

impl Netlink {
    /// Routes exactly `want` to the device `dev` (IPv6 on it already).
    pub async fn tunnel_routes6(&self, dev: &str, want: &BTreeSet<Ipv6Net>) -> Result<()> {
        let idx = link_by_name(&self.handle, dev)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(dev.into()))?
            .header
            .index;
        let mut have = BTreeSet::new();
        let _dump = self.one_dump().await;
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(kernel("listing IPv6 routes"))?
        {
            have.extend(ours(&r, idx));
        }
        for net in want.difference(&have) {
            self.handle
                .route()
                .add(route(*net, idx))
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("routing {net} to {dev}")))?;
        }
        for net in have.difference(want) {
            self.handle
                .route()
                .del(route(*net, idx))
                .execute()
                .await
                .map_err(kernel(format!("removing the route of {net} to {dev}")))?;
        }
        Ok(())
    }
}
