//! The agent's side of the edge: what it finds on its host (addresses, the
//! underlay's subnet, the store's endpoints), the nftables table applied
//! when it changes and checked by a periodic repair, and the published
//! ports of this host's `web` containers kept in their store records.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::maps::Config;

pub use super::edge_table::EdgeRuntime;
use super::{
    Agent, TUN_DEV,
    reconcile::{EdgeLocal, EdgeLocal6},
};
use crate::{
    config::{RunConfig, StoreSpec},
    edge::{EdgeConfig, GatewayDns, Owners, deny::HostFacts, deny6::HostFacts6},
    model::{Container, HOST_IF_PREFIX},
    netlink::{Netlink, NetlinkError},
};

/// How often the agent looks at its host again (addresses, `local` routes)
/// and checks that its table is still there (changes of IPv4 addresses and
/// of `local` routes are also announced by the kernel, and acted on at
/// once).
pub const REPAIR_EVERY: Duration = Duration::from_secs(10);

/// The pool as `PN_CONFIG` holds it.
pub fn with_pool(mut c: Config, pool: Ipv4Net) -> Config {
    c.pool_addr = u32::from_ne_bytes(pool.network().octets());
    c.pool_mask = u32::from_ne_bytes(pool.netmask().octets());
    c
}

/// The IPv6 pool as `PN_CONFIG` holds it (none: left as it is, zero, which
/// puts every IPv6 address in the pool: nothing of IPv6 is the world).
pub fn with_pool6(mut c: Config, pool6: Option<Ipv6Net>) -> Config {
    if let Some(p) = pool6 {
        c.pool6_addr = p.network().octets();
        c.pool6_mask = p.netmask().octets();
    }
    c
}

/// The IPv6 side of the edge, from the host's IPv6 addresses (interface
/// name and address with prefix) and the store's IPv6 endpoints.
fn edge_local6(
    cfg: &RunConfig,
    addrs6: &[(String, Ipv6Net)],
    store6: Vec<Ipv6Addr>,
    pool6: Option<Ipv6Net>,
) -> EdgeLocal6 {
    let in_pool = |a: &Ipv6Addr| pool6.is_some_and(|p| p.contains(a));
    let mut host_addrs: Vec<Ipv6Addr> = addrs6
        .iter()
        .map(|(_, n)| n.addr())
        .filter(|a| !a.is_loopback() && !a.is_unicast_link_local() && !a.is_multicast())
        .filter(|a| !in_pool(a))
        .collect();
    host_addrs.sort();
    host_addrs.dedup();
    let underlay = cfg.underlay_iface.as_deref().map_or_else(Vec::new, |u| {
        addrs6
            .iter()
            .filter(|(name, n)| name == u && !n.addr().is_unicast_link_local())
            .map(|(_, n)| n.trunc())
            .collect()
    });
    EdgeLocal6 {
        pool: pool6,
        facts: HostFacts6 {
            // The pool's addresses are the containers' (the gateway's
            // side of a veth may hold none, but a stray one is no world).
            addrs: addrs6
                .iter()
                .map(|(_, n)| *n)
                .filter(|n| !in_pool(&n.addr()))
                .collect(),
            // Read with the addresses: `gather`.
            local_routes: Vec::new(),
            underlay,
            store: store6,
            // The other hosts are the view's: added by `reconcile`.
            peers: Vec::new(),
            operator: cfg.egress_deny6.clone(),
        },
        host_addrs,
        router_cidrs: cfg.router_cidrs6.clone(),
    }
}

/// Addresses published ports answer on: the host's own unicast ones,
/// neither loopback nor link-local (the gateway) nor the pool's.
fn host_addrs(addrs: &[(String, Ipv4Net)], pool: &Ipv4Net) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = addrs
        .iter()
        .map(|(_, n)| n.addr())
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_multicast())
        .filter(|a| !pool.contains(a))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The address a publication is shown with: the advertised tunnel
/// address, else the underlay's, else the host's first.
fn public_ip(
    addrs: &[(String, Ipv4Net)],
    hosts: &[Ipv4Addr],
    underlay: Option<&str>,
    advertise: Option<SocketAddr>,
) -> Option<Ipv4Addr> {
    if let Some(SocketAddr::V4(a)) = advertise
        && !a.ip().is_unspecified()
    {
        return Some(*a.ip());
    }
    underlay
        .and_then(|u| {
            addrs
                .iter()
                .find(|(name, n)| name == u && hosts.contains(&n.addr()))
        })
        .map(|(_, n)| n.addr())
        .or_else(|| hosts.first().copied())
}

/// What the edge is made of on this host, from the settings and the
/// host's addresses (`addrs`: interface name and address with prefix).
pub fn edge_local(
    cfg: &RunConfig,
    forwarding: Owners,
    addrs: &[(String, Ipv4Net)],
    store: Vec<Ipv4Addr>,
    v6: EdgeLocal6,
) -> EdgeLocal {
    let hosts = host_addrs(addrs, &cfg.pool);
    let underlay = cfg.underlay_iface.as_deref().and_then(|u| {
        addrs
            .iter()
            .find(|(name, n)| name == u && !n.addr().is_link_local())
            .map(|(_, n)| n.trunc())
    });
    EdgeLocal {
        pool: cfg.pool,
        router_cidrs: cfg.router_cidrs.clone(),
        ports: cfg.publish_ports,
        public_ip: public_ip(addrs, &hosts, cfg.underlay_iface.as_deref(), cfg.advertise),
        host_addrs: hosts,
        facts: HostFacts {
            addrs: addrs.iter().map(|(_, n)| *n).collect(),
            // Read with the addresses: `gather`.
            local_routes: Vec::new(),
            underlay,
            store,
            // The other hosts are the view's: added by `reconcile`.
            peers: Vec::new(),
            operator: cfg.egress_deny.clone(),
        },
        interfaces: vec![format!("{HOST_IF_PREFIX}*"), TUN_DEV.into()],
        forward_guard: cfg.forward_guard.drops_others(forwarding.v4),
        forward_guard6: cfg.forward_guard.drops_others(forwarding.v6),
        dns: Some(GatewayDns {
            listen: cfg.dns_listen,
            clients: vec![format!("{HOST_IF_PREFIX}*")],
            ipv6: cfg.ipv6.is_on(),
        }),
        v6,
        tunnel_notrack: cfg
            .advertise
            .filter(|_| cfg.tunnel_io.notrack)
            .map(|a| a.port()),
    }
}

/// The addresses of the store's endpoints (etcd, plain or TLS), resolved
/// now: IPv4's and IPv6's.
pub async fn store_addrs(store: &StoreSpec) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let endpoints = match store {
        StoreSpec::Embedded => return Default::default(),
        StoreSpec::Etcd(endpoints) | StoreSpec::EtcdTls(endpoints, _) => endpoints,
    };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for e in endpoints {
        match tokio::net::lookup_host(e.as_str()).await {
            Ok(found) => found.for_each(|a| match a.ip().to_canonical() {
                IpAddr::V4(ip) => v4.push(ip),
                IpAddr::V6(ip) => v6.push(ip),
            }),
            Err(err) => log::warn!("resolving store endpoint {e}: {err}"),
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (v4, v6)
}

/// Reads the host and makes its [`EdgeLocal`]; `pool6`: the fleet's IPv6
/// pool, if known. The host's own addresses are its interfaces' and its
/// `local` routes' (a prefix the host accepts with no interface holding
/// it is the host all the same).
pub async fn gather(
    netlink: &Netlink,
    cfg: &RunConfig,
    forwarding: Owners,
    pool6: Option<Ipv6Net>,
) -> Result<EdgeLocal, NetlinkError> {
    let addrs = netlink.ipv4_addrs().await?;
    let addrs6 = netlink.ipv6_addrs().await?;
    let (store, store6) = store_addrs(&cfg.store).await;
    let local4 = netlink.local_routes4().await?;
    let local6 = netlink.local_routes6().await?;
    let mut v6 = edge_local6(cfg, &addrs6, store6, pool6);
    // As with the addresses: the pool's are the containers'.
    v6.facts.local_routes = local6
        .into_iter()
        .filter(|n| !pool6.is_some_and(|p| p.contains(n)))
        .collect();
    let mut e = edge_local(cfg, forwarding, &addrs, store, v6);
    e.facts.local_routes = local4;
    Ok(e)
}

/// The fleet's IPv6 pool as far as this agent knows it without asking the
/// store: `--pool6` (with IPv6 on).
pub fn given_pool6(cfg: &RunConfig) -> Option<Ipv6Net> {
    match cfg.ipv6 {
        crate::ipam::Ipv6Mode::On { pool6 } => pool6,
        crate::ipam::Ipv6Mode::Off => None,
    }
}

impl Agent {
    pub(super) fn edge_local(&self) -> Option<EdgeLocal> {
        self.edge_local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies the table (off the async threads: `nft` is a process).
    /// `covered`: the other hosts `--router-cidr` covers, warned about.
    pub(super) async fn apply_edge(&self, cfg: EdgeConfig, verify: bool, covered: Vec<Ipv4Addr>) {
        let (edge, dp) = (self.edge.clone(), self.datapath.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut rt = edge.lock().unwrap_or_else(|p| p.into_inner());
            rt.note_hosts_under_routers(&covered);
            rt.apply(&cfg, verify, &dp);
        })
        .await;
        if let Err(e) = done {
            log::error!("applying the edge: {e}");
        }
    }

    /// Where a container about to be attached is published (`None` for
    /// all but `web` containers of a host with routers). Called with
    /// `local_ops` held, like every allocation of this host's ports.
    pub(super) fn publish_new(
        &self,
        c: &Container,
    ) -> Result<Option<SocketAddrV4>, crate::error::Error> {
        let Some(edge) = self.edge_local() else {
            return Ok(None);
        };
        let mut all = self.pending.overlay(&self.view(), &self.cfg.host_id);
        all.retain(|o| o.key != c.key);
        all.push(c.clone());
        let want = super::reconcile::edge::assign_published(all.iter(), &edge)
            .map_err(|e| crate::error::Error::new(crate::error::Kind::kind(&e), e.to_string()))?;
        Ok(want.get(&c.key).copied().flatten())
    }

    /// Brings this host's records' publications in line with its settings
    /// (a port for each `web` container when routers are configured, none
    /// otherwise). Called with `local_ops` held.
    pub(super) async fn publish_pass(&self) {
        let Some(edge) = self.edge_local() else {
            return;
        };
        let changes = {
            let all = self.pending.overlay(&self.view(), &self.cfg.host_id);
            let want = match super::reconcile::edge::assign_published(all.iter(), &edge) {
                Ok(w) => w,
                Err(e) => {
                    log::error!("publishing web containers: {e}");
                    return;
                }
            };
            all.into_iter()
                .filter_map(|c| {
                    let w = *want.get(&c.key)?;
                    (c.published != w).then_some((c, w))
                })
                .collect::<Vec<_>>()
        };
        for (c, published) in changes {
            match self.membership.set_published(&c, published).await {
                Ok(Some(_)) => {
                    match published {
                        Some(at) => log::info!("container {} published on {at}", c.key),
                        None => log::info!("container {} no longer published", c.key),
                    }
                    self.pending.insert(Container { published, ..c });
                }
                Ok(None) => {}
                Err(e) => log::warn!("publishing {}: {e}", c.key),
            }
        }
    }

    /// The fleet's IPv6 pool: the one known already (it never changes once
    /// given), else `--pool6`, else the store's; none with IPv6 off.
    async fn pool6(&self) -> Option<Ipv6Net> {
        if let crate::ipam::Ipv6Mode::Off = self.cfg.ipv6 {
            return None;
        }
        let known = self.edge_local().and_then(|e| e.v6.pool);
        if let Some(p) = known.or_else(|| given_pool6(&self.cfg)) {
            return Some(p);
        }
        match self.membership.pool6().await {
            Ok(p) => p,
            Err(e) => {
                log::warn!("reading the fleet's IPv6 pool: {e}");
                None
            }
        }
    }

    /// Looks at the host again when an address or a `local` route comes or
    /// goes, and every [`REPAIR_EVERY`]: the deny list and the table follow
    /// the host's addresses and `local` routes, a table someone removed comes back, ports are given or
    /// taken back.
    pub(super) async fn repair_edge(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REPAIR_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A socket of its own: the kernel runs one dump at a time per
        // netlink socket and answers a second with EBUSY, and the converge
        // lists routes and neighbours on the agent's socket meanwhile.
        let netlink = Netlink::connect().unwrap_or_else(|e| {
            log::warn!("{e}; the edge shares the agent's netlink socket");
            self.netlink.clone()
        });
        let mut changes = match crate::netlink::address_changes() {
            Ok(rx) => Some(rx),
            Err(e) => {
                log::warn!("{e}; the host's addresses are read every {REPAIR_EVERY:?} only");
                None
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async {
                    match changes.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // A burst (an interface with several addresses): once.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(rx) = changes.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                }
            }
            let pool6 = self.pool6().await;
            match gather(&netlink, &self.cfg, self.forwarding, pool6).await {
                Ok(e) => {
                    let mut cur = self.edge_local.write().unwrap_or_else(|p| p.into_inner());
                    if cur.as_ref() != Some(&e) {
                        log::info!("host addresses or local routes changed; updating the edge");
                        *cur = Some(e);
                    }
                }
                Err(e) => log::warn!("reading the host's addresses: {e}"),
            }
            self.converge(&super::reconcile::Touched::Edge).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<(String, Ipv4Net)> {
        [
            ("lo", "127.0.0.1/8"),
            ("pn-gw", "169.254.1.1/32"),
            ("eth0", "198.51.100.4/24"),
            ("ul0", "192.168.100.3/24"),
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect()
    }

    #[test]
    fn published_ports_answer_on_the_hosts_own_unicast_addresses() {
        let pool: Ipv4Net = "10.240.0.0/12".parse().unwrap();
        let mut a = addrs();
        a.push(("odd".into(), "10.240.0.9/32".parse().unwrap()));
        assert_eq!(
            host_addrs(&a, &pool),
            [
                "192.168.100.3".parse::<Ipv4Addr>().unwrap(),
                "198.51.100.4".parse().unwrap()
            ]
        );
    }

    #[test]
    fn publications_are_shown_with_the_advertised_then_underlay_address() {
        let pool: Ipv4Net = "10.240.0.0/12".parse().unwrap();
        let a = addrs();
        let h = host_addrs(&a, &pool);
        let adv: SocketAddr = "192.0.2.9:51871".parse().unwrap();
        assert_eq!(
            public_ip(&a, &h, Some("ul0"), Some(adv)),
            Some("192.0.2.9".parse().unwrap())
        );
        assert_eq!(
            public_ip(&a, &h, Some("ul0"), None),
            Some("192.168.100.3".parse().unwrap())
        );
        assert_eq!(
            public_ip(&a, &h, None, None),
            Some("192.168.100.3".parse().unwrap()),
            "the lowest"
        );
        assert_eq!(public_ip(&a[..2], &[], None, None), None, "none to show");
    }

    #[tokio::test]
    async fn the_stores_endpoints_are_denied_over_tls_too() {
        let endpoints = vec!["127.0.0.1:2379".to_string(), "192.0.2.7:2379".into()];
        let want: Vec<Ipv4Addr> = vec!["127.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap()];
        let files = crate::config::TlsFiles {
            cacert: "ca.crt".into(),
            cert: "h1.crt".into(),
            key: "h1.key".into(),
        };
        assert_eq!(
            store_addrs(&StoreSpec::Etcd(endpoints.clone())).await.0,
            want
        );
        assert_eq!(
            store_addrs(&StoreSpec::EtcdTls(endpoints, files)).await.0,
            want
        );
        assert!(store_addrs(&StoreSpec::Embedded).await.0.is_empty());
        let v6 = vec!["[2001:db8::7]:2379".to_string()];
        assert_eq!(
            store_addrs(&StoreSpec::Etcd(v6)).await.1,
            ["2001:db8::7".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn the_pool_goes_into_the_datapath_in_network_order() {
        let c = with_pool(Config::default(), "10.240.0.0/12".parse().unwrap());
        assert_eq!(c.pool_addr.to_ne_bytes(), [10, 240, 0, 0]);
        assert_eq!(c.pool_mask.to_ne_bytes(), [255, 240, 0, 0]);
        assert!(c.in_pool(u32::from_ne_bytes([10, 250, 1, 2])));
        assert!(!c.in_pool(u32::from_ne_bytes([203, 0, 113, 10])));
    }
}
