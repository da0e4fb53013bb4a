//! Start-up: every subsystem built and wired here, in one place, handed to
//! the agent — store backend, netlink, datapath, underlay guard, tunnel, DNS,
//! flow events — then the first reconciliation and the store follower.
//!
//! Nothing here touches what live traffic depends on unless it differs
//! from what this agent wants (see `netlink`): a restart finds the maps,
//! links, routes and devices of its predecessor and keeps them. With a
//! predecessor still running (an upgrade), everything is made ready first;
//! then the tunnel is taken over (`takeover`) and only once the
//! predecessor is gone are its sockets (DNS, API) bound again.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Context as _;
use pn_common::{GATEWAY, ip4_octets, maps::Config, tunnel};
use pn_tunnel::{self as tun, device::Device, keyfile};
use tokio::sync::watch;

use super::{
    Agent, GATEWAY_DEV, MemberTable, TUN_DEV,
    edge::{self as agent_edge, EdgeRuntime},
    reconcile::{self, to_ip4},
};
use crate::{
    config::{RunConfig, StoreSpec},
    datapath::{Datapath, Kernel, Scope, State},
    dns::{self, DnsStats},
    edge::forwarding,
    error::Error,
    flows::FlowHub,
    handover::{Predecessor, service::Stored},
    model::{Host, now_secs},
    netlink::Netlink,
    store::{
        Backend, Membership, MembershipError, StoreError, embedded::Embedded, etcd::Etcd, keys,
        view::MembershipView,
    },
};

pub(super) fn gateway_addr() -> Ipv4Addr {
    Ipv4Addr::from(ip4_octets(GATEWAY))
}

/// The DNS server's view of the membership.
pub(super) struct ViewDirectory(pub(super) Arc<RwLock<MembershipView>>);

impl dns::Directory for ViewDirectory {
    fn member(&self, client: Ipv4Addr) -> Option<dns::Member> {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        let network = v.container_by_ip(client)?.network;
        // Sealed unless its network says otherwise: a record missing for a
        // moment never opens the world.
        let sealed = v
            .networks
            .get(&network)
            .is_none_or(|n| n.egress != crate::model::Egress::Allow);
        Some(dns::Member { network, sealed })
    }

    fn resolve(&self, q: &pn_common::names::RecordQuery, out: &mut Vec<Ipv4Addr>) -> bool {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(app) = v.apps.get(&q.app).filter(|a| a.network == q.network) else {
            return false;
        };
        // An app balanced by `vip`: its and its types' names answer the
        // service address; `N.TYPE` still names one container.
        if let Some(vip) = crate::store::view::services::service_addr(app, &q.selector) {
            out.push(vip);
            return true;
        }
        let before = out.len();
        // During an app's move its containers change network one by one:
        // only those already in the asked network answer.
        out.extend(
            v.select(&q.app, &q.selector)
                .filter(|c| c.network == q.network)
                .map(|c| c.ip),
        );
        out.len() > before
    }
}

/// The edge before anything reaches the world: the deny list in the
/// datapath, a table in place (an earlier agent's is kept until the first
/// reconciliation replaces it, so open connections and publications carry
/// on), then the pool in `PN_CONFIG`, which lets containers out. If no table
/// can be made, the pool waits for one (containers reach nothing outside).
fn prepare_edge(
    datapath: &mut Datapath,
    edge: &reconcile::EdgeLocal,
    cfg: &RunConfig,
    base: Config,
) -> anyhow::Result<EdgeRuntime> {
    let deny = State {
        // The other hosts come with the first full pass.
        egress_deny: reconcile::edge::deny_entries(
            &MembershipView::new(cfg.pool),
            &cfg.host_id,
            edge,
        ),
        ..Default::default()
    };
    datapath
        .apply(&deny, &Scope::edge())
        .context("writing the edge's deny list")?;
    let mut rt = EdgeRuntime::new();
    let with_pool = agent_edge::with_pool(base, cfg.pool);
    let in_place = rt.edge.present() || {
        let empty = MembershipView::new(cfg.pool);
        let first = reconcile::edge::edge_config(&empty, &cfg.host_id, edge);
        match rt.edge.set(&first) {
            Ok(()) => true,
            Err(e) => {
                log::error!("edge: {e}; containers reach nothing outside the pool until it works");
                rt.error = Some(e.to_string());
                false
            }
        }
    };
    let now = if in_place {
        with_pool
    } else {
        rt.pending_config = Some(with_pool);
        base
    };
    datapath
        .maps_mut()
        .set_config(now)
        .context("configuring the datapath")?;
    Ok(rt)
}

/// How long a start waits for the store's first listing before it goes on
/// without (the follower keeps trying).
const EARLY_LISTING: std::time::Duration = std::time::Duration::from_secs(2);

/// The view of a first listing, with the tunnel's members and peers set
/// from it; `None` when the store does not answer in time.
async fn early_view(
    backend: &dyn Backend,
    netlink: &Netlink,
    cfg: &RunConfig,
    members: &MemberTable,
    dev: &Device,
) -> Option<MembershipView> {
    let listing = match tokio::time::timeout(EARLY_LISTING, backend.list("")).await {
        Ok(Ok(l)) => l,
        _ => return None,
    };
    let view = MembershipView::new(cfg.pool).reloaded(&listing);
    let links = netlink
        .links_with_prefix(crate::model::HOST_IF_PREFIX)
        .await
        .ok()?
        .into_iter()
        .collect();
    let want = reconcile::desired(
        &view,
        &reconcile::Local {
            host: &cfg.host_id,
            edge: None,
        },
        &links,
        &reconcile::Touched::All,
    );
    members.apply(&want.members, None::<std::iter::Empty<&Ipv4Addr>>);
    if let Some(peers) = &want.tunnel_peers {
        dev.set_peers(peers);
    }
    Some(view)
}

impl Agent {
    /// Brings the agent up: store, kernel prerequisites, datapath, first
    /// sync. With a `predecessor`, takes its place once ready and returns
    /// when it is gone; with a tunnel `stored` by the service manager,
    /// resumes it first thing.
    pub async fn start(
        cfg: RunConfig,
        predecessor: Option<Predecessor>,
        stored: Option<Stored>,
    ) -> anyhow::Result<Arc<Agent>> {
        let backend: Arc<dyn Backend> = match &cfg.store {
            StoreSpec::Embedded => Arc::new(
                Embedded::open(&cfg.state_dir)
                    .with_context(|| format!("opening the store in {}", cfg.state_dir.display()))?,
            ),
            StoreSpec::Etcd(endpoints) => {
                log::warn!(
                    "store etcd://{} is plain text and unauthenticated: for a fleet use etcds://",
                    endpoints.join(",")
                );
                Arc::new(Etcd::new(endpoints.clone(), cfg.etcd_prefix.clone()))
            }
            StoreSpec::EtcdTls(endpoints, files) => Arc::new(
                Etcd::with_tls(endpoints.clone(), cfg.etcd_prefix.clone(), files.clone())
                    .map_err(|e| Error::invalid(e.to_string()))?,
            ),
        };
        // A store that refuses this host (a certificate it rejects or does
        // not trust, a role without read access) is a setting to fix, not an
        // outage to ride out: stop before touching the kernel. An outage
        // goes on below (enforce the pinned state, retry).
        if let Err(StoreError::Refused(why)) = backend.get(keys::POOL).await {
            return Err(Error::unavailable(why).into());
        }
        let netlink = Netlink::connect().context("opening netlink")?;
        let forwarding =
            forwarding::enable(&cfg.state_dir).context("turning IPv4 forwarding on")?;
        netlink
            .ensure_gateway(GATEWAY_DEV, gateway_addr())
            .await
            .context("setting up the gateway device")?;
        // Pool addresses that are not local go through the tunnel or
        // nowhere: never out of the underlay in clear, whatever the
        // tunnel's state (the device missing included).
        netlink
            .ensure_unreachable(cfg.pool)
            .await
            .context("guarding the pool")?;
        let mut container_mtu = cfg.mtu.unwrap_or(crate::config::DEFAULT_MTU);
        let mut underlay = None;
        if let Some(name) = &cfg.underlay_iface {
            let mtu = netlink.mtu(name).await?.ok_or_else(|| {
                anyhow::anyhow!("underlay interface {name} not found (--underlay-iface)")
            })?;
            // Room for the tunnel's headers, so inner packets never fragment.
            container_mtu = cfg
                .mtu
                .unwrap_or(mtu.saturating_sub(tunnel::OVERHEAD as u32));
            // On veth, driver-mode XDP turns off the peer's segmentation
            // offloads, which the tunnel's UDP GSO/GRO depends on: generic
            // mode there, driver mode on real devices.
            let mode = if netlink.kind(name).await?.as_deref() == Some("veth") {
                aya::programs::XdpMode::Skb
            } else {
                aya::programs::XdpMode::default()
            };
            underlay = Some((name.clone(), mode));
        }
        let host_keys = keyfile::host_key(&cfg.state_dir)?;
        let members = MemberTable::default();
        let tunnel = cfg.advertise.map(|_| {
            let seed = u64::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..8]
                    .try_into()
                    .expect("8 bytes"),
            );
            let t = tun::Tunnel::new(cfg.tunnel.clone(), host_keys.clone(), seed);
            Arc::new(Device::new(t, Arc::new(members.clone())))
        });
        let mut view = MembershipView::new(cfg.pool);
        // The tunnel first: the programs and maps of the previous agent
        // still enforce, only the tunnel waited for an agent. It needs the
        // members and peers of a first listing, not the datapath (whose
        // load takes longer). With a predecessor, its tunnel is taken over
        // once this agent is ready instead (`take_over`).
        if let (Some(dev), None) = (&tunnel, &predecessor) {
            let resumed = match stored {
                Some(s) => super::takeover::resume_stored(dev, &members, s),
                None => false,
            };
            if resumed {
                super::takeover::route_tunnel(&cfg, &netlink, container_mtu).await?;
            } else {
                if let Some(v) = early_view(backend.as_ref(), &netlink, &cfg, &members, dev).await {
                    view = v;
                }
                if dev.listen().is_none() {
                    super::takeover::open_tunnel(dev, &cfg, &netlink, container_mtu).await?;
                }
            }
        }
        let mut kernel =
            Kernel::load(crate::EBPF_OBJECT, &cfg.bpffs).context("loading the datapath")?;
        let tunnel_port = match &underlay {
            Some(_) => cfg.advertise.map_or(tunnel::DEFAULT_PORT, |a| a.port()),
            None => 0,
        };
        // A guard an earlier agent left keeps guarding with its maps until
        // this agent's are filled (after the first sync); a missing one goes
        // on at once. Not on maps that start empty (issue 25): the guards
        // read them, and would drop the members' and peers' packets
        // (`spoofed_source`, `unknown_peer`) until the first sync; they go
        // on after it then, as the datapath's links do (`Datapath::apply`).
        let fill_first = !kernel.carried();
        let mut guard_later = None;
        if let Some((name, mode)) = underlay {
            if kernel.underlay_pinned(&name) || fill_first {
                guard_later = Some((name, mode));
            } else {
                kernel.attach_underlay(&name, mode)?;
            }
            log::info!(
                "underlay guard on {} (tunnel port {tunnel_port}); container MTU {container_mtu}",
                cfg.underlay_iface.as_deref().unwrap_or_default()
            );
        }
        let events = kernel.take_events();
        kernel
            .conn()
            .set_track(cfg.track)
            .context("configuring request tracking")?;
        let conn_events = kernel.conn().events.take();
        // The tunnel's device is persistent, so its index outlives agents:
        // the programs send remote members only there and admit them only
        // from there (0: no tunnel, remote members are dropped as
        // no_tunnel), and its entry is guarded.
        let tunnel_ifindex = match &tunnel {
            Some(_) => match netlink.link(TUN_DEV).await? {
                Some((idx, _)) => {
                    if !fill_first {
                        kernel
                            .attach_tunnel(TUN_DEV)
                            .context("guarding the tunnel's entry")?;
                    }
                    idx
                }
                None => 0,
            },
            None => 0,
        };
        let base_config = Config {
            dns_addr: to_ip4(*cfg.dns_listen.ip()),
            dns_port: cfg.dns_listen.port(),
            tunnel_port,
            tunnel_ifindex,
            drop_events_per_sec: cfg.drop_events_per_sec,
            ..Default::default()
        };
        let mut datapath = Datapath::new(kernel);
        let edge_local = agent_edge::gather(&netlink, &cfg, forwarding)
            .await
            .context("reading the host's addresses")?;
        let edge = prepare_edge(&mut datapath, &edge_local, &cfg, base_config)?;
        let dns_upstreams = match &cfg.dns_upstream {
            Some(list) => list.clone(),
            None => dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                *cfg.dns_listen.ip(),
            ),
        };
        let agent = Arc::new(Agent {
            membership: Membership::new(backend),
            view: Arc::new(RwLock::new(view)),
            datapath: Arc::new(Mutex::new(datapath)),
            edge: Arc::new(Mutex::new(edge)),
            edge_local: RwLock::new(Some(edge_local)),
            pending: Default::default(),
            forwarding,
            netlink,
            local_ops: tokio::sync::Mutex::new(()),
            applied: watch::channel(0).0,
            flows: FlowHub::default(),
            conns: crate::conns::ConnHub::default(),
            store_health: Arc::default(),
            container_mtu,
            dns_stats: Arc::new(DnsStats::default()),
            dns_upstreams,
            host_keys,
            members,
            tunnel,
            dns: Mutex::new(None),
            cfg,
        });
        if let Some(ring) = events {
            let hub = agent.flows.clone();
            let view = agent.view.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.run_reader(ring, view).await {
                    log::error!("flow event reader stopped: {e:#}");
                }
            });
        }
        if let Some(ring) = conn_events {
            let (conns, flows) = (agent.conns.clone(), agent.flows.clone());
            let view = agent.view.clone();
            tokio::spawn(async move {
                if let Err(e) = conns.run_reader(ring, view, flows).await {
                    log::error!("connection event reader stopped: {e:#}");
                }
            });
        }
        // Enforcement of the last known state goes on even if the store is
        // unreachable at start; the follower keeps retrying.
        match agent.resync().await {
            Ok(rev) => log::info!("in sync with the store at revision {rev}"),
            Err(e) => log::warn!("store unreachable at start, enforcing pinned state: {e:#}"),
        }
        if let Some((name, mode)) = guard_later {
            agent.dp().maps_mut().attach_underlay(&name, mode)?;
        }
        if fill_first && tunnel_ifindex != 0 {
            agent
                .dp()
                .maps_mut()
                .attach_tunnel(TUN_DEV)
                .context("guarding the tunnel's entry")?;
        }
        if let Err(e) = agent.register_host().await {
            log::warn!("registering host {}: {e}", agent.cfg.host_id);
        }
        if let Some(p) = predecessor {
            agent.take_over(p).await?;
        }
        agent.start_dns().await?;
        tokio::spawn(agent.clone().follow_store());
        tokio::spawn(agent.clone().reap_vanished());
        tokio::spawn(agent.clone().repair_edge());
        tokio::spawn(agent.clone().check_health());
        Ok(agent)
    }

    pub(super) async fn register_host(&self) -> Result<i64, MembershipError> {
        let (_, rev) = self
            .membership
            .register_host(&Host {
                id: self.cfg.host_id.clone(),
                advertise: self.cfg.advertise,
                public_key: self
                    .tunnel
                    .as_ref()
                    .map(|_| keyfile::encode_key(&self.host_keys.public)),
                started_at: now_secs(),
                // Allocated (or kept) by the store.
                peer_id: 0,
            })
            .await?;
        Ok(rev)
    }
}

impl Agent {
    /// Every subsystem's metrics, each registered by its owner in `r` (the
    /// `/metrics` endpoint serves them).
    pub fn register_metrics(&self, r: &mut prometheus_client::registry::Registry) {
        let names = Arc::new(super::names::ViewNames(self.view.clone()));
        crate::datapath::metrics::register(r, self.datapath.clone(), names);
        if let Some(dev) = &self.tunnel {
            pn_tunnel::device::metrics::register(r, dev.clone());
        }
        let (view, health) = (self.view.clone(), self.store_health.clone());
        crate::store::metrics::register(r, view, health, self.cfg.host_id.clone());
        self.dns_stats.register(r);
        let edge = self.edge.clone();
        crate::edge::metrics::register(r, move || {
            edge.lock().unwrap_or_else(|p| p.into_inner()).counters()
        });
        self.flows.register(r);
        self.conns.register(r);
    }
}
