//! The host's `local` routes (table 255, type local): every address the
//! host takes as its own, whole prefixes included (`ip route add local
//! 198.51.100.0/24 dev lo`, AnyIP), whether an interface holds it or not.
//! The edge denies them as the host's addresses. Loopback's and
//! link-local ones are left out: the deny list's special ranges hold them
//! already, and every new interface brings an IPv6 link-local one (a
//! container's attach would read as a change of the host).

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

use super::{
    error::{Result, kernel},
    socket::Netlink,
};

/// The local routing table (`ip route show table local`).
pub const RT_TABLE_LOCAL: u32 = 255;

/// Whether the kernel's route is one the host accepts as its own.
fn is_local_route(r: &RouteMessage) -> bool {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    table == RT_TABLE_LOCAL && r.header.kind == RouteType::Local
}

fn destination(r: &RouteMessage) -> Option<&RouteAddress> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => Some(d),
        _ => None,
    })
}

/// A `local` route that makes the host's facts (see the module's note).
pub fn is_host_local_route(r: &RouteMessage) -> bool {
    is_local_route(r)
        && match destination(r) {
            Some(RouteAddress::Inet(ip)) => !ip.is_loopback() && !ip.is_link_local(),
            Some(RouteAddress::Inet6(ip)) => !ip.is_loopback() && !ip.is_unicast_link_local(),
            _ => true,
        }
}

impl Netlink {
    async fn local_route_messages<T>(
        &self,
        builder: RouteMessageBuilder<T>,
    ) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        let _dump = self.one_dump().await;
        let mut routes = self.handle.route().get(builder.build()).execute();
        while let Some(r) = routes.try_next().await.map_err(kernel("listing routes"))? {
            if is_host_local_route(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every IPv4 `local` route of this namespace, as a prefix (but
    /// loopback's and link-local ones).
    pub async fn local_routes4(&self) -> Result<Vec<Ipv4Net>> {
        let msgs = self
            .local_route_messages(RouteMessageBuilder::<Ipv4Addr>::new())
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|r| {
                let ip = match destination(r) {
                    Some(RouteAddress::Inet(ip)) => *ip,
                    None => Ipv4Addr::UNSPECIFIED,
                    Some(_) => return None,
                };
                Ipv4Net::new(ip, r.header.destination_prefix_length).ok()
            })
            .map(|n| n.trunc())
            .collect())
    }

    /// Every IPv6 `local` route of this namespace, as a prefix (but
    /// loopback's and link-local ones).
    pub async fn local_routes6(&self) -> Result<Vec<Ipv6Net>> {
        let msgs = self
            .local_route_messages(RouteMessageBuilder::<Ipv6Addr>::new())
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|r| {
                let ip = match destination(r) {
                    Some(RouteAddress::Inet6(ip)) => *ip,
                    None => Ipv6Addr::UNSPECIFIED,
                    Some(_) => return None,
                };
                Ipv6Net::new(ip, r.header.destination_prefix_length).ok()
            })
            .map(|n| n.trunc())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: u8, kind: RouteType, dst: RouteAddress) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.table = table;
        r.header.kind = kind;
        r.attributes.push(RouteAttribute::Destination(dst));
        r
    }

    #[test]
    fn only_the_local_tables_local_routes_beyond_the_special_ranges() {
        let anyip = RouteAddress::Inet("198.51.100.0".parse().unwrap());
        assert!(is_host_local_route(&route(
            255,
            RouteType::Local,
            anyip.clone()
        )));
        let v6 = RouteAddress::Inet6("2001:db8:53::".parse().unwrap());
        assert!(is_host_local_route(&route(255, RouteType::Local, v6)));
        // The main table's, a broadcast route, loopback, link-local: not.
        assert!(!is_host_local_route(&route(
            254,
            RouteType::Unicast,
            anyip.clone()
        )));
        assert!(!is_host_local_route(&route(
            255,
            RouteType::Broadcast,
            anyip
        )));
        for dst in [
            RouteAddress::Inet("127.0.0.1".parse().unwrap()),
            RouteAddress::Inet("169.254.1.1".parse().unwrap()),
            RouteAddress::Inet6("::1".parse().unwrap()),
            RouteAddress::Inet6("fe80::1".parse().unwrap()),
        ] {
            assert!(!is_host_local_route(&route(255, RouteType::Local, dst)));
        }
    }
}
