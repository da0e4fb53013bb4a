//! The routes the agent keeps for itself in its namespace: the pool to the
//! tunnel device, and the pool's unreachable guard. Each is read before it
//! is written: a restart finds them as they were and changes nothing.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};

use super::{
    error::{Result, kernel},
    requests::add_route,
    socket::Netlink,
};

/// Metric of the pool's unreachable route: below every real route to it.
const GUARD_METRIC: u32 = u32::MAX;

fn route_attr<T>(r: &RouteMessage, f: impl Fn(&RouteAttribute) -> Option<T>) -> Option<T> {
    r.attributes.iter().find_map(f)
}

fn route_addr(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

impl Netlink {
    /// The main table's IPv4 routes to exactly `dst`.
    async fn routes_to(&self, dst: Ipv4Net) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        let _dump = self.one_dump().await;
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.map_err(kernel("listing routes"))? {
            let to = route_attr(&r, |a| match a {
                RouteAttribute::Destination(d) => route_addr(d),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let table = route_attr(&r, |a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
            if table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && r.header.destination_prefix_length == dst.prefix_len()
                && to == dst.network()
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Makes `dst` unreachable at the lowest priority, so that addresses of
    /// it without a better route (a local /32, the tunnel) are never sent
    /// anywhere else.
    pub async fn ensure_unreachable(&self, dst: Ipv4Net) -> Result<()> {
        let present = self.routes_to(dst).await?.iter().any(|r| {
            r.header.kind == RouteType::Unreachable
                && route_attr(r, |a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                }) == Some(GUARD_METRIC)
        });
        if present {
            return Ok(());
        }
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .kind(RouteType::Unreachable)
            .priority(GUARD_METRIC)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(kernel(format!("adding the unreachable route to {dst}")))
    }

    /// Routes `dst` to the interface `dev` (replacing the route to `dst` of
    /// the same priority), unless that route is there already.
    pub async fn route_to_dev(&self, dst: Ipv4Net, dev: u32, src: Ipv4Addr) -> Result<()> {
        let present = self.routes_to(dst).await?.iter().any(|r| {
            r.header.kind == RouteType::Unicast
                && route_attr(r, |a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) == Some(dev)
                && route_attr(r, |a| match a {
                    RouteAttribute::PrefSource(s) => route_addr(s),
                    _ => None,
                }) == Some(src)
                && route_attr(r, |a| match a {
                    RouteAttribute::Gateway(_) => Some(()),
                    _ => None,
                })
                .is_none()
                && route_attr(r, |a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                })
                .unwrap_or(0)
                    == 0
        });
        if present {
            return Ok(());
        }
        add_route(&self.handle, dst, None, dev, Some(src)).await
    }
}
