//! The control commands that change the fleet: each writes the store, then
//! waits until this agent has applied its revision (so a command that
//! returns is in the kernel). Attach is the exception that touches the
//! kernel itself first: the veth must exist, filtered, before its record.

use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId, Uuid};

use super::{Agent, gateway_addr};
use crate::{
    datapath::DatapathError,
    error::{Error, Kind},
    ipam,
    model::{
        App, Balance, Container, ContainerKey, DEFAULT_WEB_PORT, Egress, Network, RuntimeRef,
        check_app_name, check_ifname, now_secs,
    },
    netlink::{ContainerSide, NetlinkError, Netns, remove_resolv_conf, write_resolv_conf},
    proto::ContainerInfo,
    store::{MembershipError, NewNetwork},
};

/// How long a command waits for its change to reach the kernel.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

type Result<T, E = Error> = std::result::Result<T, E>;

impl From<MembershipError> for Error {
    fn from(e: MembershipError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

impl From<NetlinkError> for Error {
    fn from(e: NetlinkError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

impl From<DatapathError> for Error {
    fn from(e: DatapathError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

impl Agent {
    /// Waits until the change committed at `rev` is in the kernel.
    pub(super) async fn wait_applied(&self, rev: i64) -> Result<()> {
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|r| *r >= rev)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::unavailable(format!(
                "the change was stored (revision {rev}) but this agent has not applied it yet; check `pn-agent status`"
            ))),
        }
    }

    // ---- commands ----------------------------------------------------------

    pub async fn create_network(
        &self,
        id: Option<NetworkId>,
        cidr: Option<Ipv4Net>,
        cidr6: Option<Ipv6Net>,
        egress: Option<Egress>,
    ) -> Result<Network> {
        let id = id.unwrap_or_else(|| NetworkId(random_uuid()));
        let spec = NewNetwork {
            cidr,
            cidr6,
            egress: egress.unwrap_or_default(),
        };
        let (net, rev) = self
            .membership
            .create_network_in(
                id,
                spec,
                &self.cfg.pool,
                self.cfg.network_prefix,
                self.cfg.ipv6,
            )
            .await?;
        self.wait_applied(rev).await?;
        let cidr6 = net.cidr6.map(|c| format!(" and {c}")).unwrap_or_default();
        log::info!(
            "created network {} ({}{cidr6}, tag {}, egress {})",
            net.id,
            net.cidr,
            net.tag,
            net.egress
        );
        Ok(net)
    }

    /// Changes a network's access to the world, live: every host rewrites
    /// the interfaces of its containers in that network.
    pub async fn update_network(&self, id: &NetworkId, egress: Egress) -> Result<Network> {
        let (net, rev) = self.membership.set_network_egress(id, egress).await?;
        self.wait_applied(rev).await?;
        log::info!("network {id}: egress {egress}");
        Ok(net)
    }

    pub async fn delete_network(&self, id: &NetworkId, force: bool) -> Result<()> {
        let rev = self.membership.delete_network(id, force).await?;
        self.wait_applied(rev).await?;
        log::info!("deleted network {id}");
        Ok(())
    }

    pub async fn create_app(
        &self,
        network: &NetworkId,
        id: Option<AppId>,
        name: Option<String>,
        web_port: Option<u16>,
        balance: Balance,
        health_port: Option<u16>,
    ) -> Result<App> {
        if let Some(n) = &name {
            check_app_name(n).map_err(|e| Error::invalid(e.to_string()))?;
        }
        if health_port == Some(0) {
            return Err(Error::invalid("invalid health port 0"));
        }
        let id = id.unwrap_or_else(|| AppId(random_uuid()));
        let (app, rev) = self
            .membership
            .create_app(
                id,
                network,
                name,
                web_port.unwrap_or(DEFAULT_WEB_PORT),
                balance,
                health_port,
            )
            .await?;
        self.wait_applied(rev).await?;
        log::info!(
            "created application {} in {} (balance {})",
            app.id,
            app.network,
            app.balance
        );
        Ok(app)
    }

    pub async fn update_app(
        &self,
        id: &AppId,
        balance: Option<Balance>,
        health_port: Option<u16>,
    ) -> Result<App> {
        if health_port == Some(0) {
            return Err(Error::invalid("invalid health port 0"));
        }
        let (app, rev) = self
            .membership
            .update_app(id, balance, health_port, &self.cfg.host_id)
            .await?;
        self.wait_applied(rev).await?;
        log::info!("updated application {id}: balance {}", app.balance);
        Ok(app)
    }

    pub async fn delete_app(&self, id: &AppId) -> Result<()> {
        let rev = self.membership.delete_app(id).await?;
        self.wait_applied(rev).await?;
        log::info!("deleted application {id}");
        Ok(())
    }

    pub async fn attach(
        &self,
        app: &AppId,
        ctype: ContainerType,
        index: Option<u32>,
        netns: &str,
        ifname: &str,
    ) -> Result<ContainerInfo> {
        let (c, _) = self
            .attach_with(app, ctype, index, netns, ifname, None)
            .await?;
        Ok(self.info(&c))
    }

    /// Attach, for a container runtime (`runtime`) or not; the record, and
    /// the container end's MAC when this call made the interface.
    pub(super) async fn attach_with(
        &self,
        app: &AppId,
        ctype: ContainerType,
        index: Option<u32>,
        netns: &str,
        ifname: &str,
        runtime: Option<RuntimeRef>,
    ) -> Result<(Container, Option<[u8; 6]>)> {
        check_ifname(ifname).map_err(|e| Error::invalid(e.to_string()))?;
        if index == Some(0) {
            return Err(Error::invalid(
                "invalid container index 0: expected an integer from 1",
            ));
        }
        let app_rec = self.membership.app(app).await?;
        let net = self.network_with_ipv6(&app_rec.network).await?;
        let ns = Netns::open(netns).await?;
        let guard = self.local_ops.lock().await;
        // This host's containers of the type, and the indexes taken in
        // the fleet (claims): no listing of the whole fleet per attach.
        let same_type: Vec<Container> = self
            .membership
            .containers_on(&self.cfg.host_id, app)
            .await?
            .into_iter()
            .filter(|c| c.key.ctype == ctype)
            .collect();
        let mut used = self.membership.used_indexes(app, &ctype).await?;
        used.extend(same_type.iter().map(|c| c.key.index));
        let auto_index = index.is_none();
        let mut index = match index {
            Some(i) => i,
            // Without an index, attaching a namespace again means "the
            // container already in it": idempotent for retrying callers.
            None => match same_type.iter().find(|c| c.netns == netns) {
                Some(c) => c.key.index,
                None => ipam::next_index(&used),
            },
        };
        let mut attempts = 0;
        let (key, addrs) = loop {
            let key = ContainerKey {
                app: *app,
                ctype: ctype.clone(),
                index,
            };
            if let Some(existing) = self.membership.container(&key).await? {
                if existing.host != self.cfg.host_id && auto_index && attempts < 64 {
                    // Taken since we listed: try the next index.
                    attempts += 1;
                    used.insert(index);
                    index = ipam::next_index(&used);
                    continue;
                }
                if existing.host != self.cfg.host_id {
                    return Err(Error::conflict(format!(
                        "container {key} is attached on host {}",
                        existing.host
                    )));
                }
                if existing.netns != netns {
                    return Err(Error::conflict(format!(
                        "container {key} is already attached to namespace {}; detach it first",
                        existing.netns
                    )));
                }
                if self.netlink.link(&existing.host_ifname).await?.is_some() {
                    drop(guard);
                    return Ok((existing, None));
                }
                // Recorded, but its interface is gone: start over.
                self.membership.delete_container(&key).await?;
            }
            self.within_quota()?;
            match self
                .membership
                .reserve_address(&net.id, &key, &self.cfg.host_id, self.cfg.ipv6.is_on())
                .await
            {
                Ok(addrs) => break (key, addrs),
                // Another host took this index at the same instant: next one.
                Err(MembershipError::Taken(_)) if auto_index && attempts < 64 => {
                    attempts += 1;
                    used.insert(index);
                    index = ipam::next_index(&used);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let host_if = key.host_ifname();
        // From here until the view shows the record (or the attach fails).
        let _in_flight = self.attaching.start(&host_if, &key);
        let mut c = Container {
            key: key.clone(),
            network: net.id,
            ip: addrs.ip,
            ip6: addrs.ip6,
            host: self.cfg.host_id.clone(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            host_ifname: host_if.clone(),
            created_at: now_secs(),
            runtime,
            unhealthy: false,
            published: None,
        };
        let made = match self.publish_new(&c) {
            Ok(published) => {
                c.published = published;
                match self.make_container(&ns, &net, &c).await {
                    Ok(mac) => match self.attached.record(&c) {
                        Ok(()) => self
                            .membership
                            .put_container(&c)
                            .await
                            .map(|rev| (rev, mac))
                            .map_err(Error::from),
                        Err(e) => Err(Error::internal(format!(
                            "recording container {key} in the state directory: {e}"
                        ))),
                    },
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (rev, mac) = match made {
            Ok(made) => made,
            Err(e) => {
                // Nothing half-made: undo in reverse order, then report.
                let _ = self.dp().detach_now(&host_if);
                self.attached.forget(&host_if);
                if self.netlink.link(&host_if).await.is_ok_and(|l| l.is_some()) {
                    let _ = self.netlink.delete_link(&host_if).await;
                }
                remove_resolv_conf(netns);
                for ip in addrs.all() {
                    if let Err(re) = self
                        .membership
                        .release_address(&self.cfg.host_id, &net.id, ip, &key)
                        .await
                    {
                        log::error!("releasing {ip} after a failed attach: {re}");
                    }
                }
                return Err(e);
            }
        };
        if c.published.is_some() {
            self.pending.insert(c.clone());
        }
        drop(guard);
        self.wait_applied(rev).await?;
        if c.ip6.is_some() {
            self.enable_ipv6(&ns, &c).await?;
        }
        let ip = match c.ip6 {
            Some(ip6) => format!("{} and {ip6}", c.ip),
            None => c.ip.to_string(),
        };
        match c.published {
            Some(at) => log::info!(
                "attached container {key} in {netns} as {ip} ({host_if}), published on {at}"
            ),
            None => log::info!("attached container {key} in {netns} as {ip} ({host_if})"),
        }
        Ok((c, Some(mac)))
    }

    /// A network's record, given its IPv6 range first if this host has
    /// IPv6 on and it has none yet (created by a host with it off, or
    /// before IPv6), so a container attached here gets its address now
    /// rather than at the next full converge. Failing that, the attach goes
    /// on with IPv4 alone.
    async fn network_with_ipv6(&self, id: &NetworkId) -> Result<Network> {
        let net = self.membership.network(id).await?;
        let ipam::Ipv6Mode::On { pool6 } = self.cfg.ipv6 else {
            return Ok(net);
        };
        if net.cidr6.is_some() {
            return Ok(net);
        }
        match self.membership.ensure_network6(id, pool6).await {
            Ok(Some((net, _))) => Ok(net),
            Ok(None) => Ok(self.membership.network(id).await?),
            Err(e) => {
                log::error!("giving network {id} an IPv6 range: {e}");
                Ok(net)
            }
        }
    }

    /// Destinations a container routes through its gateway: the fleet pool
    /// (every network lies in it; the store refuses others).
    pub(super) fn container_routes(&self) -> Vec<Ipv4Net> {
        // Every network lies in the pool (the store refuses others); the
        // rest is the world, through this host's edge.
        vec![self.cfg.pool, Ipv4Net::default()]
    }

    /// IPv6 destinations a container with an IPv6 address routes through
    /// its gateway: all of them (the data plane decides, as for IPv4).
    pub(super) fn container_routes6(&self) -> Vec<Ipv6Net> {
        vec![Ipv6Net::default()]
    }

    /// IPv6 on both ends of a new container's veth, once the maps know its
    /// interface: with IPv6 on at link-up, the container's kernel sends its
    /// listener reports at once, before the attach has written the
    /// interface, and the programs count them `unknown_interface` on the
    /// host's row. IPv4 sends nothing of its own at link-up. On failure
    /// the container is detached, nothing half-made.
    async fn enable_ipv6(&self, ns: &Netns, c: &Container) -> Result<()> {
        let without = Container {
            ip6: None,
            ..c.clone()
        };
        if let Err(e) = self.readdress6(ns, &without, c).await {
            log::error!("container {}: enabling IPv6: {e}", c.key);
            if let Err(de) = self.detach(&c.key).await {
                log::error!("detaching {} after it: {de}", c.key);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Makes the veth pair, filtered, addressed and routed (IPv4 only:
    /// IPv6 stays off on both ends until [`Agent::enable_ipv6`]); the
    /// container end's MAC.
    async fn make_container(&self, ns: &Netns, net: &Network, c: &Container) -> Result<[u8; 6]> {
        self.netlink
            .create_veth(&c.host_ifname, &c.ifname, ns, self.container_mtu)
            .await?;
        // Programs first: until the maps know the interface, they drop
        // everything on it (fail closed), so nothing flows unfiltered.
        self.dp().attach_now(&c.host_ifname)?;
        let (_, host_mac) = self
            .netlink
            .link(&c.host_ifname)
            .await?
            .ok_or_else(|| Error::internal(format!("interface {} vanished", c.host_ifname)))?;
        let routes = self.container_routes();
        let container_mac = crate::netlink::configure_container_side(
            ns,
            ContainerSide {
                ifname: c.ifname.clone(),
                ip: c.ip,
                gateway: gateway_addr(),
                gateway_mac: host_mac,
                routes,
                ip6: None,
                net6: None,
            },
        )
        .await?;
        self.netlink
            .configure_host_side(&c.host_ifname, c.ip, None, container_mac, gateway_addr())
            .await?;
        // IPv6's nameserver once IPv6 is on (`enable_ipv6`).
        write_resolv_conf(ns, &net.id, *self.cfg.dns_listen.ip(), None)
            .map_err(|e| Error::internal(format!("writing resolv.conf for {}: {e}", ns.given)))?;
        Ok(container_mac)
    }

    pub async fn detach(&self, key: &ContainerKey) -> Result<()> {
        let Some((c, rev)) = self.membership.delete_container(key).await? else {
            return Err(Error::not_found(format!("container {key} not found")));
        };
        if c.host == self.cfg.host_id {
            self.wait_applied(rev).await?;
        }
        Ok(())
    }

    pub async fn remove_host(&self, id: &HostId) -> Result<()> {
        if *id == self.cfg.host_id {
            return Err(Error::conflict(format!(
                "host {id} is the one this agent runs on; remove it from another host's agent after stopping this one"
            )));
        }
        let rev = self.membership.remove_host(id).await?;
        self.wait_applied(rev).await?;
        log::info!("removed host {id} from the fleet");
        Ok(())
    }

    /// One more container only within this host's quota: every agent
    /// would refuse its record (`--host-quota`).
    fn within_quota(&self) -> Result<()> {
        let view = self.view();
        let (held, quota) = (view.containers_on(&self.cfg.host_id), view.host_quota());
        if held >= quota {
            return Err(Error::new(
                crate::error::ErrorKind::Exhausted,
                format!(
                    "host {} runs {held} containers, its quota: every agent would refuse \
                     one more (--host-quota {quota})",
                    self.cfg.host_id
                ),
            ));
        }
        Ok(())
    }
}

fn random_uuid() -> Uuid {
    Uuid::from_random_bytes(*uuid::Uuid::new_v4().as_bytes())
}
