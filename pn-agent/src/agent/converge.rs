//! The one path from the desired state to the kernel: the datapath's maps
//! and links, the tunnel's members, peers and routes, leftover interfaces,
//! the addresses of local containers that moved to another network, and the
//! store records of containers whose namespace vanished.

use std::collections::BTreeMap;

use super::{
    Agent,
    reconcile::{self, Local, Touched},
};
use crate::{
    datapath::Scope,
    model::{Container, HOST_IF_PREFIX},
    netlink::remove_resolv_conf,
};

impl Agent {
    /// Brings the kernel in line with the view for what `touched` covers.
    pub(super) async fn converge(&self, touched: &Touched) {
        let _guard = self.local_ops.lock().await;
        self.converge_locked(touched).await;
    }

    /// `converge` for a caller that holds `local_ops` already.
    pub(super) async fn converge_locked(&self, touched: &Touched) {
        let Some(links) = self.links_for(touched).await else {
            // Without the links every local container would look stale:
            // change nothing, the next change or resync retries.
            return;
        };
        let edge = self.edge_local();
        let (want, covered) = {
            let v = self.view();
            let local = Local {
                host: &self.cfg.host_id,
                edge: edge.as_ref(),
            };
            let covered = edge.as_ref().map_or_else(Vec::new, |e| {
                reconcile::edge::hosts_under_routers(&v, &self.cfg.host_id, e)
            });
            (reconcile::desired(&v, &local, &links, touched), covered)
        };
        let scope = want.scope.clone().unwrap_or_else(Scope::all);
        match self.dp().apply(&want.datapath, &scope) {
            Ok(ch) if !ch.is_empty() => log::debug!("datapath: {ch:?}"),
            Ok(_) => {}
            Err(e) => log::error!("updating the datapath: {e}"),
        }
        if let Some(cfg) = want.edge {
            self.apply_edge(cfg, *touched == Touched::Edge, covered)
                .await;
        }
        self.members
            .apply(&want.members, want.addrs.as_ref().map(|a| a.iter()));
        self.members
            .apply6(&want.members6, want.addrs6.as_ref().map(|a| a.iter()));
        if let (Some(dev), Some(peers)) = (&self.tunnel, &want.tunnel_peers) {
            dev.set_peers(peers);
        }
        if let (Some(_), Some(routes), true) =
            (&self.tunnel, &want.tunnel_routes6, self.cfg.ipv6.is_on())
            && let Err(e) = self.netlink.tunnel_routes6(super::TUN_DEV, routes).await
        {
            log::error!("routing IPv6 members to the tunnel: {e}");
        }
        // Only a namespace this agent attached a container in (the store's
        // word is not enough to touch a namespace's files).
        for netns in want
            .left_netns
            .iter()
            .filter(|n| self.attached.has_netns(n))
        {
            remove_resolv_conf(netns);
        }
        // An attach between its record and the view is not a leftover.
        for name in want
            .orphans
            .iter()
            .filter(|n| !self.attaching.has_interface(n))
        {
            log::info!("removing interface {name}: no container of this host claims it");
            match self.netlink.delete_link(name).await {
                Ok(_) => self.attached.forget(name),
                Err(e) => log::error!("{e}"),
            }
        }
        for (was, now) in &want.readdressed {
            if let Err(e) = self.readdress(was, now).await {
                log::error!("container {}: moving to {}: {e}", now.key, now.ip);
            }
        }
        for key in &want.stale {
            log::info!("container {key}: its interface is gone (namespace deleted?); detaching it");
            match self.membership.delete_container(key).await {
                Ok(_) => self.attached.forget(&key.host_ifname()),
                Err(e) => log::error!("detaching {key}: {e}"),
            }
        }
        if *touched == Touched::All {
            self.readdress_missed(&links).await;
            self.release_orphan_leases().await;
            self.give_ipv6().await;
        }
        if matches!(touched, Touched::All | Touched::Edge) {
            self.publish_pass().await;
        }
    }

    /// Local containers an older release attached (no record of this
    /// agent's own yet): recorded once, at start, from the store, if their
    /// interface is there and the namespace the store names is theirs
    /// (`adoptable`). From then on their namespace is this host's word.
    pub(super) async fn adopt_unrecorded(&self) {
        let links = match self.netlink.links_with_prefix(HOST_IF_PREFIX).await {
            Ok(l) => l
                .into_iter()
                .map(|(n, _)| n)
                .collect::<std::collections::BTreeSet<_>>(),
            Err(e) => {
                log::error!("listing interfaces: {e}");
                return;
            }
        };
        let unrecorded: Vec<Container> = self
            .view()
            .local_containers(&self.cfg.host_id)
            .filter(|c| links.contains(&c.host_ifname) && !self.attached.has(&c.host_ifname))
            .cloned()
            .collect();
        for c in unrecorded {
            if let Err(why) = adoptable(&c).await {
                log::warn!(
                    "container {}: not recorded as found: its namespace {:?} from the store {why}",
                    c.key,
                    c.netns
                );
                continue;
            }
            match self.attached.record(&c) {
                Ok(()) => log::info!("container {}: recorded in {} as found", c.key, c.netns),
                Err(e) => log::error!("recording container {}: {e}", c.key),
            }
        }
    }

    /// Local containers whose app moved while this agent was not running:
    /// their host end still routes the old address (the record only has
    /// the new one), found in one dump of this host's routes.
    async fn readdress_missed(&self, links: &BTreeMap<String, u32>) {
        let routes = match self.netlink.host_routes().await {
            Ok(r) => r,
            Err(e) => {
                log::error!("{e}");
                return;
            }
        };
        let missed: Vec<(Container, Container)> = self
            .view()
            .local_containers(&self.cfg.host_id)
            .filter_map(|c| {
                let routed = routes.get(links.get(&c.host_ifname)?)?;
                match routed.as_slice() {
                    [old] if *old != c.ip => Some((
                        Container {
                            ip: *old,
                            ..c.clone()
                        },
                        c.clone(),
                    )),
                    _ => None,
                }
            })
            .collect();
        for (was, now) in &missed {
            if let Err(e) = self.readdress(was, now).await {
                log::error!("container {}: moving to {}: {e}", now.key, now.ip);
            }
        }
    }

    /// The agent's host-side interfaces that exist (name → ifindex): all of
    /// them for a full pass, those of the touched local containers otherwise.
    async fn links_for(&self, touched: &Touched) -> Option<BTreeMap<String, u32>> {
        match touched {
            Touched::All => match self.netlink.links_with_prefix(HOST_IF_PREFIX).await {
                Ok(l) => Some(l.into_iter().collect()),
                Err(e) => {
                    log::error!("listing interfaces: {e}");
                    None
                }
            },
            Touched::Fleet | Touched::Edge => Some(BTreeMap::new()),
            Touched::Containers(_) | Touched::Network(_) => {
                let names: Vec<String> = {
                    let v = self.view();
                    let me = &self.cfg.host_id;
                    match touched {
                        Touched::Containers(before) => before
                            .iter()
                            .chain(before.iter().filter_map(|b| v.containers.get(&b.key)))
                            .filter(|c| c.host == *me)
                            .map(|c| c.host_ifname.clone())
                            .collect(),
                        Touched::Network(id) => v
                            .local_containers(me)
                            .filter(|c| c.network == *id)
                            .map(|c| c.host_ifname.clone())
                            .collect(),
                        _ => Vec::new(),
                    }
                };
                let mut out = BTreeMap::new();
                for name in names {
                    match self.netlink.link(&name).await {
                        Ok(Some((idx, _))) => {
                            out.insert(name, idx);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            log::error!("looking up {name}: {e}");
                            return None;
                        }
                    }
                }
                Some(out)
            }
        }
    }

    /// With IPv6 on: networks without an IPv6 range get one, this host's
    /// containers without an IPv6 address get one (records written before
    /// IPv6, or while this host ran with it off), and service addresses of
    /// apps with a member here their IPv6 twins. With it off, this
    /// host's containers give theirs back. The records come back through
    /// the watch like any change.
    async fn give_ipv6(&self) {
        let crate::ipam::Ipv6Mode::On { pool6 } = self.cfg.ipv6 else {
            return self.take_ipv6().await;
        };
        let (bare_nets, bare): (Vec<_>, Vec<_>) = {
            let v = self.view();
            (
                v.networks
                    .values()
                    .filter(|n| n.cidr6.is_none())
                    .map(|n| n.id)
                    .collect(),
                v.local_containers(&self.cfg.host_id)
                    .filter(|c| c.ip6.is_none())
                    .map(|c| c.key.clone())
                    .collect(),
            )
        };
        let mut given = std::collections::BTreeSet::new();
        for id in bare_nets {
            match self.membership.ensure_network6(&id, pool6).await {
                Ok(Some((n, _))) => {
                    log::info!("network {id}: IPv6 range {}", n.cidr6.unwrap_or_default());
                    given.insert(id);
                }
                Ok(None) => {}
                Err(e) => log::error!("giving network {id} an IPv6 range: {e}"),
            }
        }
        for key in bare {
            match self.membership.give_ip6(&key).await {
                Ok(Some((c, _))) => {
                    log::info!(
                        "container {key}: IPv6 address {}",
                        c.ip6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
                    );
                }
                Ok(None) => {}
                Err(e) => log::error!("giving container {key} an IPv6 address: {e}"),
            }
        }
        self.give_services6(&given).await;
    }

    /// Service addresses without their IPv6 twin, of apps with a container
    /// on this host in a network with an IPv6 range: one the view knows, or
    /// one `given` earlier in this pass (its record comes back through the
    /// watch, but that converge need not be a full one, so the twins are
    /// given now; the store, not the view, is read for the range). Each
    /// host asks only for the apps it serves, not for the whole fleet.
    async fn give_services6(&self, given: &std::collections::BTreeSet<pn_common::ids::NetworkId>) {
        let bare: Vec<_> = {
            let v = self.view();
            let mine: std::collections::BTreeSet<_> = v
                .local_containers(&self.cfg.host_id)
                .map(|c| c.key.app)
                .collect();
            v.apps
                .values()
                .filter(|a| mine.contains(&a.id) && a.services6.len() < a.services.len())
                .filter(|a| {
                    given.contains(&a.network)
                        || v.networks
                            .get(&a.network)
                            .is_some_and(|n| n.cidr6.is_some())
                })
                .map(|a| a.id)
                .collect()
        };
        for id in bare {
            match self
                .membership
                .ensure_services6(&id, &self.cfg.host_id)
                .await
            {
                Ok(Some((a, _))) => {
                    let addrs: Vec<String> =
                        a.services6.values().map(|ip| ip.to_string()).collect();
                    log::info!("app {id}: IPv6 service address(es) {}", addrs.join(", "));
                }
                Ok(None) => {}
                Err(e) => log::error!("giving app {id}'s service addresses IPv6: {e}"),
            }
        }
    }

    /// `--ipv6 off`: this host's containers have no IPv6, so their records
    /// lose the addresses an earlier run gave them (no name answers one).
    async fn take_ipv6(&self) {
        let held: Vec<_> = self
            .view()
            .local_containers(&self.cfg.host_id)
            .filter(|c| c.ip6.is_some())
            .map(|c| c.key.clone())
            .collect();
        for key in held {
            match self.membership.take_ip6(&key).await {
                Ok(Some(_)) => log::info!("container {key}: IPv6 address released (--ipv6 off)"),
                Ok(None) => {}
                Err(e) => log::error!("releasing container {key}'s IPv6 address: {e}"),
            }
        }
    }

    /// Addresses reserved by an attach that crashed before recording it.
    async fn release_orphan_leases(&self) {
        let Ok(leases) = self.membership.leases_of_host(&self.cfg.host_id).await else {
            return;
        };
        for (net, ip, lease) in leases {
            if self.view().containers.contains_key(&lease.owner)
                || self.attaching.has_container(&lease.owner)
            {
                continue;
            }
            log::info!(
                "releasing address {ip} left by an interrupted attach of {}",
                lease.owner
            );
            if let Err(e) = self
                .membership
                .release_address(&self.cfg.host_id, &net, ip, &lease.owner)
                .await
            {
                log::error!("{e}");
            }
        }
    }
}

/// Whether the namespace a store record names (for a container an older
/// release attached) is the container's: a network namespace, opened
/// without following links, off the async workers, holding the record's
/// interface with the record's own address. A record pointed at another
/// tenant's namespace fails there: its interface holds another address
/// (addresses are unique, `address_taken`), so this host never takes it
/// for its own.
async fn adoptable(c: &Container) -> std::result::Result<(), String> {
    let ns = crate::netlink::Netns::open(&c.netns)
        .await
        .map_err(|e| format!("cannot be opened: {e}"))?;
    match crate::netlink::inspect_container_side(&ns, &c.ifname).await {
        Ok(Some(l)) if l.addrs.contains(&c.ip) => Ok(()),
        Ok(Some(_)) => Err(format!(
            "holds {} without the container's address {}",
            c.ifname, c.ip
        )),
        Ok(None) => Err(format!("has no interface {}", c.ifname)),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}
