//! `app move`: the application's record, then each of its containers, move
//! to the new network in the store ([`crate::store::Membership`]'s
//! `set_app_network` and `move_container`); every agent then follows the
//! changed records as it follows any other — map entries rewritten, and on
//! the host that owns a container its interface re-addressed in place
//! ([`Agent::readdress`], called by converge).

use pn_common::ids::{AppId, NetworkId};

use super::{Agent, gateway_addr};
use crate::{
    error::Error,
    model::Container,
    netlink::{Netns, Readdress, readdress_container_side, write_resolv_conf},
    proto::AppInfo,
};

impl Agent {
    pub async fn move_app(&self, id: &AppId, network: &NetworkId) -> Result<AppInfo, Error> {
        let (app, old, rev) = self.membership.set_app_network(id, network).await?;
        let mut last = rev;
        let mut moved = 0;
        for c in self.membership.containers_of(id).await? {
            if c.network == *network {
                continue;
            }
            match self.membership.move_container(&c.key, network).await {
                Ok(Some((_, rev))) => {
                    moved += 1;
                    last = Some(last.map_or(rev, |l: i64| l.max(rev)));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::new(
                        crate::error::Kind::kind(&e),
                        format!(
                            "application {id} is now in network {network}, but its container {} could not move: {e}; run the move again to finish it",
                            c.key
                        ),
                    ));
                }
            }
        }
        if let Some(rev) = last {
            self.wait_applied(rev).await?;
        }
        log::info!("moved application {id} from {old} to {network} ({moved} container(s))");
        let v = self.view();
        Ok(AppInfo {
            id: app.id,
            network: app.network,
            name: app.name.clone(),
            containers: v.containers_of_app(id).count(),
            web_port: app.web_port,
            balance: app.balance,
            services: crate::store::view::services::service_infos(&v, &app),
        })
    }

    /// Gives a local container's interface its new address (and, for a
    /// named namespace, the new network's resolv.conf): `was` is the record
    /// before the move, `now` after.
    /// The namespace and interface are the ones this agent attached, never
    /// the record's.
    pub(super) async fn readdress(&self, was: &Container, now: &Container) -> Result<(), Error> {
        let Some(now) = self.attached.local(now) else {
            return Err(Error::not_found(format!(
                "container {} was not attached by this agent: its namespace is left alone",
                now.key
            )));
        };
        let now = &now;
        let ns = Netns::open(&now.netns).await?;
        if now.ip == was.ip {
            // Only its IPv6 address changed (given on an upgrade, taken
            // back with `--ipv6 off`).
            return self.readdress6(&ns, was, now).await;
        }
        let mac = readdress_container_side(
            &ns,
            Readdress {
                ifname: now.ifname.clone(),
                old: was.ip,
                new: now.ip,
                gateway: gateway_addr(),
                routes: self.container_routes(),
            },
        )
        .await?;
        self.netlink
            .readdress_host_side(&now.host_ifname, was.ip, now.ip, mac, gateway_addr())
            .await?;
        if now.ip6 != was.ip6 {
            self.readdress6(&ns, was, now).await?;
        } else {
            self.write_resolv_conf(&ns, now)?;
        }
        log::info!(
            "container {}: re-addressed {} -> {} in {}",
            now.key,
            was.ip,
            now.ip,
            now.netns
        );
        Ok(())
    }

    /// A named namespace's resolv.conf for `c`: the gateway's IPv6 address
    /// listed when it has IPv6.
    fn write_resolv_conf(&self, ns: &Netns, c: &Container) -> Result<(), Error> {
        let v6_ifname = c.ip6.map(|_| c.ifname.as_str());
        write_resolv_conf(ns, &c.network, *self.cfg.dns_listen.ip(), v6_ifname)
            .map_err(|e| Error::internal(format!("writing resolv.conf for {}: {e}", c.netns)))
    }

    /// The IPv6 part of [`Agent::readdress`], both ends of the veth.
    pub(super) async fn readdress6(
        &self,
        ns: &Netns,
        was: &Container,
        now: &Container,
    ) -> Result<(), Error> {
        let (_, gateway_mac) =
            self.netlink.link(&now.host_ifname).await?.ok_or_else(|| {
                Error::internal(format!("interface {} vanished", now.host_ifname))
            })?;
        let net6 = self
            .view()
            .networks
            .get(&now.network)
            .and_then(|n| n.cidr6)
            .map(|n| (n.network(), n.prefix_len()));
        crate::netlink::readdress6_container_side(
            ns,
            now.ifname.clone(),
            now.ip6,
            net6,
            gateway_mac,
        )
        .await?;
        if let Some(ip6) = now.ip6 {
            let link = crate::netlink::inspect_container_side(ns, &now.ifname).await?;
            let mac = link.map(|l| l.mac).unwrap_or_default();
            self.netlink
                .readdress6_host_side(&now.host_ifname, ip6, mac)
                .await?;
        }
        self.write_resolv_conf(ns, now)?;
        log::info!(
            "container {}: IPv6 {:?} -> {:?} in {}",
            now.key,
            was.ip6,
            now.ip6,
            now.netns
        );
        Ok(())
    }
}
