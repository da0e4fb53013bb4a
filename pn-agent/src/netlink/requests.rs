//! Single rtnetlink requests (a link by name, a route, a neighbour) and what
//! a link message says about its link.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        link::{LinkAttribute, LinkFlags, LinkMessage},
        route::RouteScope,
    },
};

use super::error::{EEXIST, ENODEV, Result, errno, kernel};

pub(super) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kernel(format!("looking up interface {name}"))(e)),
    }
}

pub(super) fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(a) => a.as_slice().try_into().ok(),
        _ => None,
    })
}

pub(super) fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub(super) fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

pub(super) fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(super) async fn add_route(
    handle: &Handle,
    dst: Ipv4Net,
    via: Option<Ipv4Addr>,
    dev: u32,
    src: Option<Ipv4Addr>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(dev);
    b = match via {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    if let Some(src) = src {
        b = b.pref_source(src);
    }
    match handle.route().add(b.build()).replace().execute().await {
        Ok(()) => Ok(()),
        Err(e) => Err(kernel(format!("adding route to {dst}"))(e)),
    }
}

/// A default route through `gw`, unless the namespace has one.
pub(super) async fn add_default_route(
    handle: &Handle,
    gw: Ipv4Addr,
    dev: u32,
    src: Ipv4Addr,
) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(dev)
        .gateway(gw)
        .pref_source(src)
        .build();
    match handle.route().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => {
            log::info!("the namespace has a default route already; keeping it");
            Ok(())
        }
        Err(e) => Err(kernel("adding the default route")(e)),
    }
}

pub(super) async fn add_permanent_neighbour(
    handle: &Handle,
    dev: u32,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<()> {
    handle
        .neighbours()
        .add(dev, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .replace()
        .execute()
        .await
        .map_err(kernel(format!("adding neighbour {ip}")))
}
