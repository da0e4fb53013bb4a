//! A container's interface after its attach: what the CNI plugin's CHECK
//! inspects, and the move of its address to another network in place (same
//! interface, same namespace), on both ends of the veth pair.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{LinkAttribute, LinkFlags},
        neighbour::{NeighbourAddress, NeighbourAttribute},
        route::{RouteAddress, RouteAttribute, RouteScope},
    },
};

use super::{
    error::{ENODEV, ENOENT, ESRCH, NetlinkError, Result, errno, kernel},
    netns::Netns,
    requests::{add_permanent_neighbour, add_route, link_by_name, mac_of},
    socket::Netlink,
};

/// The container end of a veth as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    pub mac: [u8; 6],
    pub up: bool,
    pub mtu: u32,
    pub addrs: Vec<Ipv4Addr>,
    /// IPv4 destinations routed through a gateway on this interface.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// `aa:bb:cc:dd:ee:ff`, as runtimes print MAC addresses.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The interface `ifname` inside `ns`, if it exists.
pub async fn inspect_container_side(ns: &Netns, ifname: &str) -> Result<Option<ContainerLink>> {
    let ifname = ifname.to_string();
    ns.run(move |h| {
        Box::pin(async move {
            let Some(link) = link_by_name(&h, &ifname).await? else {
                return Ok(None);
            };
            let idx = link.header.index;
            let mtu = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(0);
            Ok(Some(ContainerLink {
                mac: mac_of(&link).unwrap_or_default(),
                up: link.header.flags.contains(LinkFlags::Up),
                mtu,
                addrs: addresses(&h, idx).await?,
                routes: gateway_routes(&h, idx).await?,
            }))
        })
    })
    .await
}

async fn addresses(h: &Handle, idx: u32) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(idx).execute();
    while let Some(m) = s.try_next().await.map_err(kernel("listing addresses"))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}

async fn gateway_routes(h: &Handle, idx: u32) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let mut out = Vec::new();
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = s.try_next().await.map_err(kernel("listing routes"))? {
        let (mut dst, mut gw, mut oif) = (None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let len = r.header.destination_prefix_length;
        if let (Some(gw), Some(i)) = (gw, oif)
            && i == idx
            && let Ok(net) = Ipv4Net::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED), len)
        {
            out.push((net, gw));
        }
    }
    Ok(out)
}

/// What the container end must become when its container moves to another
/// network.
#[derive(Clone, Debug)]
pub struct Readdress {
    pub ifname: String,
    pub old: Ipv4Addr,
    pub new: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Destinations routed through the gateway, now sourced from `new`.
    pub routes: Vec<Ipv4Net>,
}

/// Gives the container end its new address in place: the new address
/// first, then the routes sourced from it, then the old address goes (the
/// kernel would otherwise flush the routes that still named it). Returns
/// the interface's MAC.
pub async fn readdress_container_side(ns: &Netns, r: Readdress) -> Result<[u8; 6]> {
    ns.run(move |h| {
        Box::pin(async move {
            let link = link_by_name(&h, &r.ifname)
                .await?
                .ok_or_else(|| NetlinkError::InterfaceMissing(r.ifname.clone()))?;
            let idx = link.header.index;
            let mac =
                mac_of(&link).ok_or_else(|| NetlinkError::Other("veth without MAC".into()))?;
            h.address()
                .add(idx, IpAddr::V4(r.new), 32)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("adding address {}", r.new)))?;
            for dst in r.routes {
                add_route(&h, dst, Some(r.gateway), idx, Some(r.new)).await?;
            }
            if r.old != r.new {
                delete_address(&h, idx, r.old).await?;
            }
            Ok(mac)
        })
    })
    .await
}

async fn delete_address(h: &Handle, idx: u32, ip: Ipv4Addr) -> Result<()> {
    let mut s = h
        .address()
        .get()
        .set_link_index_filter(idx)
        .set_address_filter(IpAddr::V4(ip))
        .execute();
    let mut found = Vec::new();
    while let Some(m) = s.try_next().await.map_err(kernel("listing addresses"))? {
        found.push(m);
    }
    for m in found {
        match h.address().del(m).execute().await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    errno(&e),
                    Some(ENODEV | ESRCH | ENOENT | libc::EADDRNOTAVAIL)
                ) => {}
            Err(e) => return Err(kernel(format!("removing address {ip}"))(e)),
        }
    }
    Ok(())
}

impl Netlink {
    /// The host routes (/32) of this namespace by output interface: what
    /// each container's host end routes, whatever the store says now.
    pub async fn host_routes(&self) -> Result<std::collections::BTreeMap<u32, Vec<Ipv4Addr>>> {
        let mut out: std::collections::BTreeMap<u32, Vec<Ipv4Addr>> = Default::default();
        let _dump = self.one_dump().await;
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.map_err(kernel("listing routes"))? {
            if r.header.destination_prefix_length != 32 {
                continue;
            }
            let (mut dst, mut oif) = (None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(d), Some(i)) = (dst, oif) {
                out.entry(i).or_default().push(d);
            }
        }
        Ok(out)
    }

    /// Moves the host end's route and neighbour from `old` to `new` (the
    /// container keeps its MAC).
    pub async fn readdress_host_side(
        &self,
        host_if: &str,
        old: Ipv4Addr,
        new: Ipv4Addr,
        container_mac: [u8; 6],
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let (idx, _) = self
            .link(host_if)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(host_if.into()))?;
        add_route(&self.handle, Ipv4Net::from(new), None, idx, Some(gateway)).await?;
        add_permanent_neighbour(&self.handle, idx, new, container_mac).await?;
        if old == new {
            return Ok(());
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(old, 32)
            .output_interface(idx)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT | ENODEV)) => {}
            Err(e) => return Err(kernel(format!("removing the route to {old}"))(e)),
        }
        let _dump = self.one_dump().await;
        let mut s = self.handle.neighbours().get().execute();
        let mut stale = Vec::new();
        while let Some(n) = s.try_next().await.map_err(kernel("listing neighbours"))? {
            let dst_is_old = n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if *d == old)
            });
            if n.header.ifindex == idx && n.header.family == AddressFamily::Inet && dst_is_old {
                stale.push(n);
            }
        }
        for n in stale {
            match self.handle.neighbours().del(n).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT | ENODEV)) => {}
                Err(e) => return Err(kernel(format!("removing neighbour {old}"))(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn macs_print_as_runtimes_print_them() {
        assert_eq!(
            super::format_mac([0x02, 0xab, 0, 0x10, 0xff, 1]),
            "02:ab:00:10:ff:01"
        );
    }
}
