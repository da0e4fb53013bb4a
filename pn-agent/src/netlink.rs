//! Kernel network configuration through rtnetlink: the veth pair of each
//! container, its addresses, routes and neighbours on both sides, and the
//! agent's gateway device. Work inside a container's namespace runs on a
//! short-lived thread that has entered it (`setns` is per thread), with its
//! own netlink socket bound to that namespace.
//!
//! What the agent sets up for itself (gateway, tunnel device, pool routes,
//! forwarding) is read first and written only if it differs: a restarting
//! agent finds its predecessor's and leaves live traffic alone.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    LinkMessageBuilder, LinkUnspec, LinkVeth,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoVeth, LinkAttribute},
    },
};

mod addrs6;
mod container;
mod error;
mod local_routes;
mod netns;
mod requests;
mod socket;
mod tunnel6;
mod v6;
pub use v6::GATEWAY6;

pub use container::{
    ContainerLink, Readdress, format_mac, inspect_container_side, readdress_container_side,
};

mod routes;

pub use error::NetlinkError;
use error::{EEXIST, ENODEV, ENOENT, ESRCH, Result, errno, kernel};
pub use netns::{Netns, open_netns_file};
use requests::{
    add_default_route, add_permanent_neighbour, add_route, is_up, link_by_name, mac_of, mtu_of,
    name_of,
};
pub use socket::Netlink;

/// Writes a per-interface sysctl of the calling thread's namespace, unless
/// it already holds `value`. IPv6 may be compiled out or disabled: a
/// missing file is not an error.
fn sysctl_if(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    write_sysctl(&path, value)
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetlinkError::Other(format!("writing {path}: {e}"))),
    }
}

/// What the container side of a veth must look like.
#[derive(Clone, Debug)]
pub struct ContainerSide {
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
    /// Destinations routed through the gateway: the fleet pool, and
    /// `0.0.0.0/0` (the world, through the host's edge). A default route the
    /// namespace already has (a container with another interface) is kept:
    /// its world traffic goes the way its operator set.
    pub routes: Vec<Ipv4Net>,
    /// Its IPv6 address, if it has one (see `v6`), and its network's prefix.
    pub ip6: Option<Ipv6Addr>,
    pub net6: Option<(Ipv6Addr, u8)>,
}

/// Configures the container end inside its namespace; returns its MAC.
pub async fn configure_container_side(ns: &Netns, side: ContainerSide) -> Result<[u8; 6]> {
    ns.run(move |h| {
        Box::pin(async move {
            let link = link_by_name(&h, &side.ifname)
                .await?
                .ok_or_else(|| NetlinkError::InterfaceMissing(side.ifname.clone()))?;
            let idx = link.header.index;
            let mac =
                mac_of(&link).ok_or_else(|| NetlinkError::Other("veth without MAC".into()))?;
            // Without an IPv6 address (an IPv4-only host or network), IPv6
            // stays off: nothing of it would pass, and the kernel's router
            // solicitations would only be counted as drops.
            if side.ip6.is_none() {
                sysctl_if("ipv6", &side.ifname, "disable_ipv6", "1")?;
            }
            h.address()
                .add(idx, IpAddr::V4(side.ip), 32)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("adding address {}", side.ip)))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(kernel(format!("setting {} up", side.ifname)))?;
            add_route(&h, Ipv4Net::from(side.gateway), None, idx, None).await?;
            add_permanent_neighbour(&h, idx, side.gateway, side.gateway_mac).await?;
            for dst in side.routes {
                if dst.prefix_len() == 0 {
                    add_default_route(&h, side.gateway, idx, side.ip).await?;
                } else {
                    add_route(&h, dst, Some(side.gateway), idx, Some(side.ip)).await?;
                }
            }
            if let Some(ip6) = side.ip6 {
                v6::container_side(&h, idx, &side.ifname, ip6, side.net6, side.gateway_mac).await?;
            }
            Ok(mac)
        })
    })
    .await
}

/// Gives the container end its IPv6 address anew (`None`: none, IPv6
/// off): IPv6 is switched off on it first, which takes every address and
/// route of the old one with it, then set up as at attach. For a container
/// that gains IPv6 on an upgrade, moves, or loses it with `--ipv6 off`.
pub async fn readdress6_container_side(
    ns: &Netns,
    ifname: String,
    ip6: Option<Ipv6Addr>,
    net6: Option<(Ipv6Addr, u8)>,
    gateway_mac: [u8; 6],
) -> Result<()> {
    ns.run(move |h| {
        Box::pin(async move {
            let link = link_by_name(&h, &ifname)
                .await?
                .ok_or_else(|| NetlinkError::InterfaceMissing(ifname.clone()))?;
            sysctl_if("ipv6", &ifname, "disable_ipv6", "1")?;
            match ip6 {
                Some(ip6) => {
                    v6::container_side(&h, link.header.index, &ifname, ip6, net6, gateway_mac).await
                }
                None => Ok(()),
            }
        })
    })
    .await
}

/// Announcements of IPv4 addresses added to or removed from this
/// namespace, and of `local` routes of either family (the host's own
/// prefixes, AnyIP), as they happen (contents ignored: the receiver reads
/// the addresses again). Other route changes (the agent's own routes to
/// its containers) are not announced.
pub fn address_changes() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use rtnetlink::sys::AsyncSocket as _;
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()
        .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            rtnetlink::constants::RTMGRP_IPV4_IFADDR
                | rtnetlink::constants::RTMGRP_IPV4_ROUTE
                | rtnetlink::constants::RTMGRP_IPV6_ROUTE,
        ))
        .map_err(|e| NetlinkError::Other(format!("subscribing to address changes: {e}")))?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt;
        use rtnetlink::{packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage as M};
        while let Some((m, _)) = messages.next().await {
            let announce = match &m.payload {
                NetlinkPayload::InnerMessage(M::NewRoute(r) | M::DelRoute(r)) => {
                    local_routes::is_host_local_route(r)
                }
                _ => true,
            };
            if announce && tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

impl Netlink {
    /// The link's kind (`veth`, `bridge`…), `None` for a physical device.
    pub async fn kind(&self, name: &str) -> Result<Option<String>> {
        use rtnetlink::packet_route::link::LinkInfo;
        Ok(link_by_name(&self.handle, name).await?.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                }),
                _ => None,
            })
        }))
    }

    pub async fn mtu(&self, name: &str) -> Result<Option<u32>> {
        Ok(link_by_name(&self.handle, name)
            .await?
            .and_then(|l| mtu_of(&l)))
    }

    pub async fn link(&self, name: &str) -> Result<Option<(u32, [u8; 6])>> {
        Ok(link_by_name(&self.handle, name)
            .await?
            .map(|l| (l.header.index, mac_of(&l).unwrap_or_default())))
    }

    /// Names and indexes of the interfaces whose name starts with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        let _dump = self.one_dump().await;
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(kernel("listing interfaces"))?
        {
            if let Some(name) = name_of(&l)
                && name.starts_with(prefix)
            {
                out.push((name.to_string(), l.header.index));
            }
        }
        Ok(out)
    }

    /// The device holding the gateway address, so the host answers ARP for
    /// it, sources packets toward containers from it, and the DNS server can
    /// bind it. A veth pair whose far end stays unused (as Cilium's
    /// cilium_host/cilium_net): it needs no `dummy` driver, which not every
    /// kernel has, and keeps the address off `lo`.
    pub async fn ensure_gateway(&self, name: &str, addr: Ipv4Addr) -> Result<()> {
        let peer = format!("{name}-peer");
        if link_by_name(&self.handle, name).await?.is_none() {
            match self
                .handle
                .link()
                .add(LinkVeth::new(name, &peer).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(kernel(format!("creating {name}"))(e)),
            }
        }
        let link = link_by_name(&self.handle, name)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(name.into()))?;
        let idx = link.header.index;
        sysctl_if("ipv6", name, "disable_ipv6", "1")?;
        if !self.has_address(idx, addr).await? {
            self.handle
                .address()
                .add(idx, IpAddr::V4(addr), 32)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("adding {addr} to {name}")))?;
        }
        for dev in [name, peer.as_str()] {
            if let Some(l) = link_by_name(&self.handle, dev).await? {
                sysctl_if("ipv6", dev, "disable_ipv6", "1")?;
                if !is_up(&l) {
                    self.handle
                        .link()
                        .set(LinkUnspec::new_with_index(l.header.index).up().build())
                        .execute()
                        .await
                        .map_err(kernel(format!("setting {dev} up")))?;
                }
            }
        }
        Ok(())
    }

    async fn has_address(&self, idx: u32, addr: Ipv4Addr) -> Result<bool> {
        let _dump = self.one_dump().await;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute();
        // The whole dump is read: a stream dropped half-way leaves replies
        // the connection can no longer deliver.
        let mut found = false;
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(kernel("listing addresses"))?
        {
            found |= a.header.prefix_len == 32
                && a.attributes
                    .iter()
                    .any(|x| matches!(x, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == addr));
        }
        Ok(found)
    }

    /// Creates the pair: `host_if` here (down), `peer_if` directly inside `ns`.
    pub async fn create_veth(
        &self,
        host_if: &str,
        peer_if: &str,
        ns: &Netns,
        mtu: u32,
    ) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_if.to_string())
            .mtu(mtu)
            .setns_by_fd(ns.raw_fd())
            .build();
        let msg = LinkVeth::new(host_if, peer_if)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Err(NetlinkError::InterfaceExists(
                format!("{host_if} or {peer_if}"),
                format!(" (here or in namespace {})", ns.given),
            )),
            Err(e) => Err(kernel(format!("creating veth {host_if}"))(e)),
        }
    }

    /// Brings the host end up with its route and neighbour toward the container.
    pub async fn configure_host_side(
        &self,
        host_if: &str,
        container_ip: Ipv4Addr,
        container_ip6: Option<Ipv6Addr>,
        container_mac: [u8; 6],
        gateway: Ipv4Addr,
    ) -> Result<u32> {
        let (idx, _) = self
            .link(host_if)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(host_if.into()))?;
        if container_ip6.is_none() {
            sysctl_if("ipv6", host_if, "disable_ipv6", "1")?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(kernel(format!("setting {host_if} up")))?;
        add_route(
            &self.handle,
            Ipv4Net::from(container_ip),
            None,
            idx,
            Some(gateway),
        )
        .await?;
        add_permanent_neighbour(&self.handle, idx, container_ip, container_mac).await?;
        if let Some(ip6) = container_ip6 {
            v6::host_side(&self.handle, idx, host_if, ip6, container_mac).await?;
        }
        Ok(idx)
    }

    /// The host end's part of [`readdress6_container_side`]: `fe80::1`, the
    /// route and neighbours of the new address (a route to the old one is
    /// replaced when its address goes to another container of this host).
    pub async fn readdress6_host_side(
        &self,
        host_if: &str,
        ip6: Ipv6Addr,
        container_mac: [u8; 6],
    ) -> Result<()> {
        let (idx, _) = self
            .link(host_if)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(host_if.into()))?;
        v6::host_side(&self.handle, idx, host_if, ip6, container_mac).await
    }

    /// Sets an interface's MTU and brings it up (if it is not so already),
    /// with IPv6 on it or off (never off then on: that would flush its
    /// IPv6 routes at every start).
    pub async fn set_up(&self, name: &str, mtu: u32, ipv6: bool) -> Result<u32> {
        let link = link_by_name(&self.handle, name)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(name.into()))?;
        let idx = link.header.index;
        if ipv6 {
            v6::enable(name)?;
        } else {
            sysctl_if("ipv6", name, "disable_ipv6", "1")?;
        }
        if is_up(&link) && mtu_of(&link) == Some(mtu) {
            return Ok(idx);
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(kernel(format!("setting {name} up")))?;
        Ok(idx)
    }

    /// Every IPv4 address of this namespace, with its interface's name.
    pub async fn ipv4_addrs(&self) -> Result<Vec<(String, Ipv4Net)>> {
        let names: std::collections::HashMap<u32, String> = self
            .links_with_prefix("")
            .await?
            .into_iter()
            .map(|(n, i)| (i, n))
            .collect();
        let mut out = Vec::new();
        let _dump = self.one_dump().await;
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(kernel("listing addresses"))?
        {
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let (Some(ip), Some(name)) = (addr, names.get(&a.header.index))
                && let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len)
            {
                out.push((name.clone(), net));
            }
        }
        Ok(out)
    }

    /// Deletes an interface (its veth peer goes with it); absent is fine.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = link_by_name(&self.handle, name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENODEV | ESRCH | ENOENT)) => Ok(()),
            Err(e) => Err(kernel(format!("deleting {name}"))(e)),
        }
    }
}

fn resolv_conf_dir(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/')).then(|| PathBuf::from("/etc/netns").join(netns))
}

/// `ip netns exec NAME` bind-mounts `/etc/netns/NAME/resolv.conf` over
/// `/etc/resolv.conf`: containers that are named namespaces get our DNS.
/// `ndots:3` makes names relative to the network (`N.TYPE.ap-X`, two dots)
/// try the search domain first, while most names of the world go straight out.
/// A container with IPv6 (`v6_ifname`: its interface) also gets the
/// gateway's IPv6 address, second: IPv4 stays the first one asked.
pub fn write_resolv_conf(
    ns: &Netns,
    network: &pn_common::ids::NetworkId,
    dns: Ipv4Addr,
    v6_ifname: Option<&str>,
) -> std::io::Result<()> {
    let Some(dir) = ns.name.as_deref().and_then(resolv_conf_dir) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    let dns6 = v6_ifname
        .map(|i| format!("nameserver {GATEWAY6}%{i}\n"))
        .unwrap_or_default();
    let text = format!(
        "# written by pn-agent for a container of {network}\nnameserver {dns}\n{dns6}search {network}.{}\noptions ndots:3 timeout:2 attempts:2\n",
        pn_common::names::ZONE
    );
    let tmp = dir.join("resolv.conf.pn-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("resolv.conf"))
}

/// Removes what `write_resolv_conf` wrote (and nothing an operator wrote).
pub fn remove_resolv_conf(netns: &str) {
    if let Some(dir) = resolv_conf_dir(netns) {
        let path = dir.join("resolv.conf");
        if std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("# written by pn-agent")) {
            let _ = std::fs::remove_file(&path);
            // Only if we left it empty.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
