//! Kernel network configuration through rtnetlink: the veth pair of each
//! container, its addresses, routes and neighbours on both sides, and the
//! agent's gateway device. Work inside a container's namespace runs on a
//! short-lived thread that has entered it (`setns` is per thread), with its
//! own netlink socket bound to that namespace.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::{TryStreamExt, future::BoxFuture};
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
        route::{RouteScope, RouteType},
    },
};

mod container;

pub use container::{
    ContainerLink, Readdress, format_mac, inspect_container_side, readdress_container_side,
};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {0} not found")]
    NamespaceMissing(String),
    #[error("cannot open network namespace {0}: {1}")]
    Namespace(String, std::io::Error),
    #[error("interface {0} already exists{1}")]
    InterfaceExists(String, String),
    #[error("interface {0} not found")]
    InterfaceMissing(String),
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl crate::error::Kind for NetlinkError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            NetlinkError::NamespaceMissing(_) | NetlinkError::InterfaceMissing(_) => {
                ErrorKind::NotFound
            }
            NetlinkError::InterfaceExists(..) => ErrorKind::Conflict,
            // The path given is not a namespace we can enter.
            NetlinkError::Namespace(..) => ErrorKind::Invalid,
            NetlinkError::Kernel { .. } | NetlinkError::Other(_) => ErrorKind::Internal,
        }
    }
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;
const ESRCH: i32 = libc::ESRCH;
const ENOENT: i32 = libc::ENOENT;

/// errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn kernel(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Kernel { op, source }
}

/// A network namespace, by name (`/run/netns/NAME`, as `ip netns` makes them)
/// or by path (e.g. `/proc/PID/ns/net`).
pub struct Netns {
    file: File,
    pub given: String,
    /// The `ip netns` name, when given by name.
    pub name: Option<String>,
}

impl Netns {
    pub fn path_of(given: &str) -> PathBuf {
        if given.contains('/') {
            PathBuf::from(given)
        } else {
            Path::new("/run/netns").join(given)
        }
    }

    pub fn open(given: &str) -> Result<Netns> {
        if given.is_empty() || given == "." || given == ".." {
            return Err(NetlinkError::NamespaceMissing(format!("{given:?}")));
        }
        let path = Self::path_of(given);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetlinkError::NamespaceMissing(given.into())
            } else {
                NetlinkError::Namespace(given.into(), e)
            }
        })?;
        // Anything can be opened; only an nsfs file of a network namespace can
        // be entered. Checking now gives a clear error instead of a failed setns.
        let probe = std::thread::scope(|s| {
            s.spawn(|| nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET))
                .join()
        });
        match probe {
            Ok(Ok(())) => {}
            _ => {
                return Err(NetlinkError::Namespace(
                    given.into(),
                    std::io::Error::other("not a network namespace"),
                ));
            }
        }
        Ok(Netns {
            file,
            given: given.into(),
            name: (!given.contains('/')).then(|| given.to_string()),
        })
    }

    /// Runs `f` with a netlink handle inside this namespace, on its own thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> BoxFuture<'static, Result<T>> + Send + 'static,
    {
        let file = self
            .file
            .try_clone()
            .map_err(|e| NetlinkError::Namespace(self.given.clone(), e))?;
        let given = self.given.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("pn-netns".into())
            .spawn(move || {
                let result = (|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| NetlinkError::Namespace(given.clone(), std::io::Error::from(e)),
                    )?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| NetlinkError::Other(format!("runtime: {e}")))?;
                    rt.block_on(async move {
                        let (conn, handle, _) = rtnetlink::new_connection()
                            .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
                        tokio::spawn(conn);
                        f(handle).await
                    })
                })();
                let _ = tx.send(result);
            })
            .map_err(|e| NetlinkError::Other(format!("thread: {e}")))?;
        rx.await
            .map_err(|_| NetlinkError::Other("namespace worker died".into()))?
    }

    fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Writes a per-interface sysctl of the calling thread's namespace. IPv6 may
/// be compiled out or disabled: a missing file is not an error.
fn sysctl_if(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetlinkError::Other(format!("writing {path}: {e}"))),
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kernel(format!("looking up interface {name}"))(e)),
    }
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(a) => a.as_slice().try_into().ok(),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn add_route(
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

async fn add_permanent_neighbour(
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

/// What the container side of a veth must look like.
#[derive(Clone, Debug)]
pub struct ContainerSide {
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
    /// Destinations routed through the gateway (the fleet pool and the
    /// network's own range): not a default route, the container may have
    /// other interfaces.
    pub routes: Vec<Ipv4Net>,
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
            // IPv6 is not carried yet (contract rule 4); keeping it off avoids a
            // stream of router solicitations counted as unsupported_l3.
            sysctl_if("ipv6", &side.ifname, "disable_ipv6", "1")?;
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
                add_route(&h, dst, Some(side.gateway), idx, Some(side.ip)).await?;
            }
            Ok(mac)
        })
    })
    .await
}

/// The agent's own namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection (needs a running tokio runtime).
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

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
        Ok(link_by_name(&self.handle, name).await?.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }

    pub async fn link(&self, name: &str) -> Result<Option<(u32, [u8; 6])>> {
        Ok(link_by_name(&self.handle, name)
            .await?
            .map(|l| (l.header.index, mac_of(&l).unwrap_or_default())))
    }

    /// Names and indexes of the interfaces whose name starts with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
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
        self.handle
            .address()
            .add(idx, IpAddr::V4(addr), 32)
            .replace()
            .execute()
            .await
            .map_err(kernel(format!("adding {addr} to {name}")))?;
        for dev in [name, peer.as_str()] {
            if let Some(l) = link_by_name(&self.handle, dev).await? {
                sysctl_if("ipv6", dev, "disable_ipv6", "1")?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(l.header.index).up().build())
                    .execute()
                    .await
                    .map_err(kernel(format!("setting {dev} up")))?;
            }
        }
        Ok(())
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
        container_mac: [u8; 6],
        gateway: Ipv4Addr,
    ) -> Result<u32> {
        let (idx, _) = self
            .link(host_if)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(host_if.into()))?;
        sysctl_if("ipv6", host_if, "disable_ipv6", "1")?;
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
        Ok(idx)
    }

    /// Sets an interface's MTU and brings it up.
    pub async fn set_up(&self, name: &str, mtu: u32) -> Result<u32> {
        let (idx, _) = self
            .link(name)
            .await?
            .ok_or_else(|| NetlinkError::InterfaceMissing(name.into()))?;
        sysctl_if("ipv6", name, "disable_ipv6", "1")?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(kernel(format!("setting {name} up")))?;
        Ok(idx)
    }

    /// Routes `dst` to the interface `dev` (replacing any route to `dst`).
    pub async fn route_to_dev(&self, dst: Ipv4Net, dev: u32, src: Ipv4Addr) -> Result<()> {
        add_route(&self.handle, dst, None, dev, Some(src)).await
    }

    /// A blackhole for `dst` at [`POOL_FLOOR_METRIC`], under any real route
    /// to it (metric 0): when the tunnel's device and its route go away with
    /// the agent, pool traffic is dropped here instead of following the
    /// default route in clear text. Never removed, so it outlives the agent.
    pub async fn ensure_pool_floor(&self, dst: Ipv4Net) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .kind(RouteType::BlackHole)
            .priority(POOL_FLOOR_METRIC)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(kernel(format!("adding the blackhole route for {dst}")))
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

/// Metric of the pool's blackhole route (see [`Netlink::ensure_pool_floor`]).
pub const POOL_FLOOR_METRIC: u32 = 4242;

/// Enables IPv4 forwarding in the calling thread's namespace (the agent's).
pub fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetlinkError::Other(format!("enabling IPv4 forwarding: {e}")))
}

fn resolv_conf_dir(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/')).then(|| PathBuf::from("/etc/netns").join(netns))
}

/// `ip netns exec NAME` bind-mounts `/etc/netns/NAME/resolv.conf` over
/// `/etc/resolv.conf`: containers that are named namespaces get our DNS.
/// `ndots:3` makes names relative to the network (`N.TYPE.ap-X`, two dots)
/// try the search domain first, while most names of the world go straight out.
pub fn write_resolv_conf(
    ns: &Netns,
    network: &pn_common::ids::NetworkId,
    dns: Ipv4Addr,
) -> std::io::Result<()> {
    let Some(dir) = ns.name.as_deref().and_then(resolv_conf_dir) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "# written by pn-agent for a container of {network}\nnameserver {dns}\nsearch {network}.{}\noptions ndots:3 timeout:2 attempts:2\n",
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
