//! What the CNI plugin asks of the agent: ADD, DEL, CHECK and GC for a runtime's
//! container, found again by the runtime's container id and interface name
//! (the record's `runtime`), so each is idempotent as the CNI spec wants.

use pn_common::{
    ids::{AppId, ContainerType},
    names::ZONE,
};

use super::{Agent, gateway_addr, gateway6_addr};
use crate::{
    error::{Error, ErrorKind},
    model::{Container, RuntimeRef},
    netlink::{Netns, format_mac, inspect_container_side},
    proto::{Attachment, ContainerInfo},
};

type Result<T, E = Error> = std::result::Result<T, E>;

impl Agent {
    /// ADD: the attachment this runtime container already has on `ifname`
    /// if it is intact, else a new one.
    pub async fn cni_add(
        &self,
        app: &AppId,
        ctype: ContainerType,
        index: Option<u32>,
        netns: &str,
        ifname: &str,
        runtime: RuntimeRef,
    ) -> Result<Attachment> {
        runtime.check().map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(c) = self.runtime_container(app, &runtime.id, ifname).await? {
            if c.netns == netns && self.netlink.link(&c.host_ifname).await?.is_some() {
                return self.attachment(&c, None).await;
            }
            // A new namespace for the same container (the runtime made its
            // sandbox again), or a half-gone one: the old attachment goes.
            log::info!(
                "container {} of runtime container {}: replacing its attachment in {}",
                c.key,
                runtime.id,
                c.netns
            );
            self.detach(&c.key).await?;
        }
        let (c, mac) = self
            .attach_with(app, ctype, index, netns, ifname, Some(runtime))
            .await?;
        self.attachment(&c, mac).await
    }

    /// DEL: detaches what ADD made for this runtime container on `ifname`;
    /// nothing to detach is success.
    pub async fn cni_del(
        &self,
        app: &AppId,
        ifname: &str,
        runtime: &RuntimeRef,
    ) -> Result<Option<ContainerInfo>> {
        // An ADD of the same container still under way (its runtime gave up
        // on it) records its container before it lets go of this lock.
        drop(self.local_ops.lock().await);
        let Some(c) = self.runtime_container(app, &runtime.id, ifname).await? else {
            return Ok(None);
        };
        match self.detach(&c.key).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        log::info!(
            "detached container {} of runtime container {}",
            c.key,
            runtime.id
        );
        Ok(Some(self.info(&c)))
    }

    /// CHECK: the attachment exists and is as ADD left it (record, both ends
    /// of the veth, address, routes).
    pub async fn cni_check(
        &self,
        app: &AppId,
        netns: &str,
        ifname: &str,
        runtime: &RuntimeRef,
    ) -> Result<Attachment> {
        let c = self
            .runtime_container(app, &runtime.id, ifname)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "runtime container {} has no attachment on {ifname} in application {app}",
                    runtime.id
                ))
            })?;
        if c.netns != netns {
            return Err(Error::conflict(format!(
                "container {} is attached to namespace {}, not {netns}",
                c.key, c.netns
            )));
        }
        if self.netlink.link(&c.host_ifname).await?.is_none() {
            return Err(Error::not_found(format!(
                "container {}: host interface {} is gone",
                c.key, c.host_ifname
            )));
        }
        let ns = Netns::open(netns).await?;
        let link = inspect_container_side(&ns, ifname)
            .await?
            .ok_or_else(|| Error::not_found(format!("interface {ifname} is missing in {netns}")))?;
        if !link.up {
            return Err(Error::conflict(format!(
                "interface {ifname} in {netns} is down"
            )));
        }
        if !link.addrs.contains(&c.ip) {
            return Err(Error::conflict(format!(
                "interface {ifname} in {netns} has {:?}, not its address {}",
                link.addrs, c.ip
            )));
        }
        let gw = gateway_addr();
        for dst in self.container_routes() {
            if !link.routes.contains(&(dst, gw)) {
                return Err(Error::conflict(format!(
                    "{netns} has no route to {dst} via {gw} on {ifname}"
                )));
            }
        }
        self.attachment(&c, Some(link.mac)).await
    }

    /// GC: detaches this host's containers of `app` that the runtime
    /// attached through network `network` and no longer lists as valid.
    pub async fn cni_gc(
        &self,
        app: &AppId,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<ContainerInfo>> {
        // As DEL: an ADD under way records its container first.
        drop(self.local_ops.lock().await);
        let doomed: Vec<Container> = self
            .membership
            .containers_on(&self.cfg.host_id, app)
            .await?
            .into_iter()
            .filter(|c| {
                c.host == self.cfg.host_id
                    && c.runtime.as_ref().is_some_and(|r| {
                        r.network == network
                            && !valid
                                .iter()
                                .any(|(id, ifname)| *id == r.id && *ifname == c.ifname)
                    })
            })
            .collect();
        let mut gone = Vec::new();
        for c in doomed {
            match self.detach(&c.key).await {
                Ok(()) => {
                    log::info!(
                        "GC of runtime network {network}: detached container {}",
                        c.key
                    );
                    gone.push(self.info(&c));
                }
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(gone)
    }

    /// The local container that runtime container `id` has on `ifname`,
    /// read from the store (an attach may have recorded it since the view
    /// last changed).
    async fn runtime_container(
        &self,
        app: &AppId,
        id: &str,
        ifname: &str,
    ) -> Result<Option<Container>> {
        Ok(self
            .membership
            .containers_on(&self.cfg.host_id, app)
            .await?
            .into_iter()
            .find(|c| {
                c.host == self.cfg.host_id
                    && c.ifname == ifname
                    && c.runtime.as_ref().is_some_and(|r| r.id == id)
            }))
    }

    /// What the runtime is told: the container, its interface's MAC (read
    /// from the namespace when not given), routes and DNS.
    async fn attachment(&self, c: &Container, mac: Option<[u8; 6]>) -> Result<Attachment> {
        let mac = match mac {
            Some(m) => m,
            None => {
                // The namespace and interface this agent made, not the record's.
                let c = &self.attached.local(c).ok_or_else(|| {
                    Error::not_found(format!("container {} was not attached here", c.key))
                })?;
                let ns = Netns::open(&c.netns).await?;
                inspect_container_side(&ns, &c.ifname)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "interface {} is missing in {}",
                            c.ifname, c.netns
                        ))
                    })?
                    .mac
            }
        };
        Ok(Attachment {
            container: self.info(c),
            mac: format_mac(mac),
            mtu: self.container_mtu,
            gateway: gateway_addr(),
            routes: self.container_routes(),
            gateway6: c.ip6.map(|_| gateway6_addr()),
            routes6: match c.ip6 {
                Some(_) => self.container_routes6(),
                None => Vec::new(),
            },
            nameservers: vec![*self.cfg.dns_listen.ip()],
            search: vec![format!("{}.{ZONE}", c.network)],
        })
    }
}
