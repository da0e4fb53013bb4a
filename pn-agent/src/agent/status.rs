//! Read-only answers of the API: lists, names, environment, status. They
//! read the view (and the datapath's own record of what it holds), never
//! the store, so they answer while the store is down.

use pn_common::{
    ids::{AppId, NetworkId},
    names,
};

use pn_tunnel::keyfile;

use super::Agent;
use crate::{
    error::Error,
    model::{Container, ContainerKey, Host},
    proto::{
        AppInfo, BackendCounters, ContainerInfo, DatapathStatus, EdgeStatus, EndpointCounts,
        HostInfo, NetworkInfo, PeerStatus, ServiceInfo, Status, StoreStatus,
    },
};

type Result<T, E = Error> = std::result::Result<T, E>;

impl Agent {
    pub fn list_networks(&self) -> Vec<NetworkInfo> {
        let v = self.view();
        v.networks
            .values()
            .map(|n| NetworkInfo {
                id: n.id,
                cidr: n.cidr,
                cidr6: n.cidr6,
                tag: n.tag,
                egress: n.egress,
                apps: v.apps.values().filter(|a| a.network == n.id).count(),
                containers: v.containers.values().filter(|c| c.network == n.id).count(),
            })
            .collect()
    }

    pub fn list_apps(&self, network: Option<&NetworkId>) -> Vec<AppInfo> {
        // Read before the view is locked (the datapath is never locked
        // under it); counters are this host's, so a read error only hides
        // them.
        let stats = self.dp().maps().lb_stats().unwrap_or_default();
        let stats6 = self.dp().maps().lb6_stats().unwrap_or_default();
        let v = self.view();
        v.apps
            .values()
            .filter(|a| network.is_none_or(|n| a.network == *n))
            .map(|a| {
                let mut services = crate::store::view::services::service_infos(&v, a);
                for s in &mut services {
                    s.counters = counters(s, &stats, &stats6, &v);
                }
                AppInfo {
                    id: a.id,
                    network: a.network,
                    name: a.name.clone(),
                    web_port: a.web_port,
                    containers: v.containers_of_app(&a.id).count(),
                    balance: a.balance,
                    services,
                }
            })
            .collect()
    }

    pub(super) fn info(&self, c: &Container) -> ContainerInfo {
        ContainerInfo {
            id: c.key.to_string(),
            app: c.key.app,
            network: c.network,
            ctype: c.key.ctype.clone(),
            index: c.key.index,
            ip: c.ip,
            ip6: c.ip6,
            host: c.host.to_string(),
            netns: c.netns.clone(),
            interface: c.ifname.clone(),
            host_interface: c.host_ifname.clone(),
            names: c.key.dns_names(&c.network),
            published: c.published,
        }
    }

    pub fn list_containers(
        &self,
        app: Option<&AppId>,
        network: Option<&NetworkId>,
    ) -> Vec<ContainerInfo> {
        let v = self.view();
        v.containers
            .values()
            .filter(|c| app.is_none_or(|a| c.key.app == *a))
            .filter(|c| network.is_none_or(|n| c.network == *n))
            .map(|c| self.info(c))
            .collect()
    }

    pub fn domain_names(&self, app: &AppId) -> Result<Vec<String>> {
        let v = self.view();
        let a = v
            .apps
            .get(app)
            .ok_or_else(|| Error::not_found(format!("application {app} not found")))?;
        Ok(names::formation_names(
            &a.network,
            app,
            v.containers_of_app(app)
                .map(|c| (&c.key.ctype, c.key.index)),
        ))
    }

    pub fn env(&self, key: &ContainerKey) -> Result<Vec<(String, String)>> {
        let v = self.view();
        let c = v
            .containers
            .get(key)
            .ok_or_else(|| Error::not_found(format!("container {key} not found")))?;
        let mut vars = vec![
            ("PN_NETWORK_ID".into(), c.network.to_string()),
            ("PN_APP_ID".into(), c.key.app.to_string()),
            ("PN_CONTAINER".into(), c.key.name()),
            (
                "PN_DOMAIN".into(),
                names::app_name(&c.network, &c.key.app)
                    .trim_end_matches('.')
                    .to_string(),
            ),
        ];
        if let Some(ip6) = c.ip6 {
            vars.push(("PN_IP6".into(), ip6.to_string()));
        }
        // The port routers are sent to: where the app must listen.
        if c.is_web()
            && let Some(app) = v.apps.get(&c.key.app)
        {
            vars.push(("PORT".into(), app.web_port.to_string()));
        }
        Ok(vars)
    }

    pub fn status(&self) -> Status {
        let v = self.view();
        let me = &self.cfg.host_id;
        let (in_maps, attached, lost, suppressed) = {
            let dp = self.dp();
            let suppressed = match dp.maps().events_suppressed() {
                Ok(l) => l
                    .into_iter()
                    .map(|(k, n)| (k.as_str().to_string(), n))
                    .collect(),
                Err(e) => {
                    log::warn!("reading suppressed events: {e}");
                    Default::default()
                }
            };
            let lost = match dp.maps().conn_ref().lost() {
                Ok(l) => l
                    .into_iter()
                    .map(|(k, n)| (k.as_str().to_string(), n))
                    .collect(),
                Err(e) => {
                    log::warn!("reading lost events: {e}");
                    Default::default()
                }
            };
            (
                dp.current().endpoints.len(),
                dp.current().attached.len(),
                lost,
                suppressed,
            )
        };
        let link = self.membership.backend().link();
        Status {
            host: me.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            store: StoreStatus {
                backend: self.membership.backend().describe(),
                reachable: self.store_health.reachable(),
                revision: v.rev,
                last_error: self.store_health.last_error(),
                rejected: v
                    .rejected
                    .by_reason()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
                member: link.as_ref().map(|l| l.member.clone()),
                failovers: link.map_or(0, |l| l.failovers),
            },
            datapath: DatapathStatus {
                bpffs: self.cfg.bpffs.clone(),
                programs: vec![
                    pn_common::objects::PROG_FROM_CONTAINER.into(),
                    pn_common::objects::PROG_TO_CONTAINER.into(),
                ],
                attached_interfaces: attached,
                events_lost: lost,
                events_suppressed: suppressed,
                conns_tracked: self.conns.tracked(),
            },
            endpoints: EndpointCounts {
                local: v.local_containers(me).count(),
                remote: v.containers.values().filter(|c| c.host != *me).count(),
                in_maps,
            },
            peers: v
                .hosts
                .values()
                .filter(|h| h.id != *me)
                .map(|h| PeerStatus {
                    host: h.id.to_string(),
                    advertise: h.advertise.map(|a| a.to_string()),
                    containers: v.containers.values().filter(|c| c.host == h.id).count(),
                    tunnel: self.peer_tunnel_state(h),
                })
                .collect(),
            dns: format!(
                "{} (udp, tcp), ttl {}s, upstream {}, {}",
                self.cfg.dns_listen,
                self.cfg.dns_ttl,
                if self.dns_upstreams.is_empty() {
                    "none".to_string()
                } else {
                    self.dns_upstreams
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                self.dns_stats.cache_summary()
            ),
            tunnel: match &self.tunnel {
                Some(dev) => format!(
                    "udp {} advertised as {}, prefers {}, key {}",
                    dev.listen().map_or("-".into(), |l| l.to_string()),
                    self.cfg.advertise.map_or("-".into(), |a| a.to_string()),
                    preference(&self.cfg.tunnel),
                    keyfile::encode_key(&self.host_keys.public)
                ),
                None => "off (no --advertise)".into(),
            },
            edge: self.edge_status(&v),
        }
    }

    /// `pn-only` when the table drops the family's forwarded traffic that is
    /// not pn's, `shared` otherwise.
    fn guard_word(&self, found: crate::edge::Forwarding) -> String {
        if self.cfg.forward_guard.drops_others(found) {
            "pn-only".into()
        } else {
            "shared".into()
        }
    }

    fn edge_status(&self, v: &crate::store::view::MembershipView) -> EdgeStatus {
        let (applied, last_error, table) = {
            let e = self.edge.lock().unwrap_or_else(|p| p.into_inner());
            (e.applied.is_some(), e.error.clone(), e.applied.clone())
        };
        let local = self.edge_local();
        EdgeStatus {
            applied,
            last_error,
            host_addrs: local
                .as_ref()
                .map(|l| l.host_addrs.clone())
                .unwrap_or_default(),
            router_cidrs: self.cfg.router_cidrs.clone(),
            publish_ports: self.cfg.publish_ports.to_string(),
            published: v
                .local_containers(&self.cfg.host_id)
                .filter(|c| super::reconcile::edge::publication(v, local.as_ref(), c).is_some())
                .count(),
            egress_deny: table.map(|t| t.egress_deny).unwrap_or_default(),
            forwarding: self.guard_word(self.forwarding.v4),
            forward_guard: self.cfg.forward_guard.to_string(),
            forwarded_before_pn: self.forwarding.v4 == crate::edge::Forwarding::Shared,
            forwarding6: self.guard_word(self.forwarding.v6),
        }
    }

    pub fn list_hosts(&self) -> Vec<HostInfo> {
        let v = self.view();
        v.hosts
            .values()
            .map(|h| HostInfo {
                id: h.id.clone(),
                advertise: h.advertise.map(|a| a.to_string()),
                public_key: h.public_key.clone(),
                containers: v.containers.values().filter(|c| c.host == h.id).count(),
                this: h.id == self.cfg.host_id,
            })
            .collect()
    }

    fn peer_tunnel_state(&self, h: &Host) -> String {
        let Some(dev) = &self.tunnel else {
            return "off".into();
        };
        if h.public_key.is_none() || h.advertise.is_none() {
            return "no endpoint or key published".into();
        }
        match dev.peer_state(h.peer_id) {
            Some(s) if s.established => format!(
                "established (session {}s, {})",
                s.session_age.map_or(0, |a| a.as_secs()),
                s.aead.map_or("-", |a| a.name())
            ),
            Some(s) if s.handshake_in_flight => format!("handshaking ({} queued)", s.queued),
            Some(_) => "idle".into(),
            None => "unknown".into(),
        }
    }
}

/// The tunnel AEAD this host prefers, and whether it can offer it.
pub(super) fn preference(cfg: &pn_tunnel::Config) -> String {
    let name = cfg.cipher.name();
    if cfg.cipher == pn_tunnel::aead::Cipher::Aes256Gcm && !cfg.aes_hardware {
        format!("{name} (no AES instructions: chacha20poly1305)")
    } else {
        name.to_string()
    }
}

/// This host's counters of a service's backends, those that left included.
fn counters(
    s: &ServiceInfo,
    stats: &std::collections::BTreeMap<pn_common::lb::LbStatsKey, pn_common::lb::LbStats>,
    stats6: &std::collections::BTreeMap<
        pn_common::lb::LbStatsKey<pn_common::Ip6>,
        pn_common::lb::LbStats,
    >,
    view: &crate::store::view::MembershipView,
) -> Vec<BackendCounters> {
    use std::net::IpAddr;
    let vip = crate::model::to_ip4(s.addr);
    let mut rows: std::collections::BTreeMap<IpAddr, BackendCounters> = stats
        .iter()
        .filter(|(k, _)| k.vip == vip)
        .map(|(k, st)| {
            let backend = IpAddr::from(pn_common::ip4_octets(k.backend));
            let row = BackendCounters {
                backend,
                connections: st.new_conns,
                resets: st.resets,
                moved: st.moved,
            };
            (backend, row)
        })
        .collect();
    // Through the IPv6 service address: added to the backend container's
    // row (named by its IPv4 address) while the view knows it; a backend
    // that left keeps a row of its own under its IPv6 address, so its
    // connections and resets stay in the service's totals.
    if let Some(vip6) = s.addr6.map(|a| a.octets()) {
        for (k, st) in stats6.iter().filter(|(k, _)| k.vip == vip6) {
            let backend6 = std::net::Ipv6Addr::from(k.backend);
            let backend = view
                .container_by_ip6(backend6)
                .map_or(IpAddr::V6(backend6), |c| IpAddr::V4(c.ip));
            let row = rows.entry(backend).or_insert(BackendCounters {
                backend,
                connections: 0,
                resets: 0,
                moved: 0,
            });
            row.connections += st.new_conns;
            row.resets += st.resets;
            row.moved += st.moved;
        }
    }
    rows.into_values().collect()
}
