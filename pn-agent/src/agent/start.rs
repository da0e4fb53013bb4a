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

mod early_tunnel;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use early_tunnel::{EarlyTunnel, new_tunnel, start_tunnel_early};
use pn_common::{maps::Config, tunnel};
use pn_tunnel::{device::Device, keyfile};
use tokio::sync::watch;

use super::{
    Agent, GATEWAY_DEV, MemberTable, TUN_DEV,
    edge::{self as agent_edge, EdgeRuntime},
    gateway_addr,
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
        egress_deny6: reconcile::edge::deny_entries6(
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
    let with_pool = agent_edge::with_pool6(agent_edge::with_pool(base, cfg.pool), edge.v6.pool);
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
    let view = MembershipView::new(cfg.pool)
        .with_host_quota(cfg.host_quota)
        .reloaded(&listing);
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
    members.apply6(
        &want.members6,
        None::<std::iter::Empty<&std::net::Ipv6Addr>>,
    );
    if let Some(peers) = &want.tunnel_peers {
        dev.set_peers(peers);
    }
    Some(view)
}

/// The store the settings name. One that refuses this host (a certificate
/// it rejects or does not trust, a role without read access) is a setting
/// to fix, not an outage to ride out: the start stops before touching the
/// kernel. An outage goes on (the pinned state is enforced, the follower
/// retries).
async fn open_store(cfg: &RunConfig) -> anyhow::Result<Arc<dyn Backend>> {
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
    if let Err(StoreError::Refused(why)) = backend.get(keys::POOL).await {
        return Err(Error::unavailable(why).into());
    }
    Ok(backend)
}

/// The host's half of every container's routes: the gateway device, and
/// pool addresses that are not local going through the tunnel or nowhere:
/// never out of the underlay in clear, whatever the tunnel's state (the
/// device missing included).
async fn prepare_routes(netlink: &Netlink, cfg: &RunConfig) -> anyhow::Result<()> {
    netlink
        .ensure_gateway(GATEWAY_DEV, gateway_addr())
        .await
        .context("setting up the gateway device")?;
    netlink
        .ensure_unreachable(cfg.pool)
        .await
        .context("guarding the pool")?;
    Ok(())
}

/// The interface toward the other hosts, and how its guard attaches.
struct Underlay {
    name: String,
    mode: aya::programs::XdpMode,
}

/// The underlay (`--underlay-iface`), and the MTU of container interfaces:
/// `--mtu`, or the underlay's less the tunnel's headers (of the advertised
/// endpoint's family) so inner packets never fragment.
async fn find_underlay(
    netlink: &Netlink,
    cfg: &RunConfig,
) -> anyhow::Result<(Option<Underlay>, u32)> {
    let Some(name) = &cfg.underlay_iface else {
        return Ok((None, cfg.mtu.unwrap_or(crate::config::DEFAULT_MTU)));
    };
    let mtu = netlink
        .mtu(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("underlay interface {name} not found (--underlay-iface)"))?;
    // An IPv6 underlay's outer header is 20 bytes longer than IPv4's.
    let ipv6 = cfg.advertise.is_some_and(|a| a.is_ipv6());
    let container_mtu = cfg
        .mtu
        .unwrap_or(mtu.saturating_sub(tunnel::overhead(ipv6) as u32));
    // On veth, driver-mode XDP turns off the peer's segmentation offloads,
    // which the tunnel's UDP GSO/GRO depends on: generic mode there, driver
    // mode on real devices.
    let mode = if netlink.kind(name).await?.as_deref() == Some("veth") {
        aya::programs::XdpMode::Skb
    } else {
        aya::programs::XdpMode::default()
    };
    let underlay = Underlay {
        name: name.clone(),
        mode,
    };
    Ok((Some(underlay), container_mtu))
}

/// The loaded datapath and what the rest of the start takes from it.
struct Loaded {
    kernel: Kernel,
    /// Drop and flow events, and the connection tracker's.
    events: Option<RingBuf<MapData>>,
    conn_events: Option<RingBuf<MapData>>,
    /// An underlay guard an earlier agent left, kept guarding with its maps
    /// until this agent's are filled (after the first sync).
    guard_later: Option<Underlay>,
    /// The tunnel's entry guard waits for the first sync too (maps that
    /// start empty: see `load_datapath`).
    tunnel_guard_later: bool,
    /// `PN_CONFIG` before the edge adds the pool.
    config: Config,
}

/// Loads (or finds pinned) the programs and maps, attaches the underlay
/// guard (a missing one at once) and the tunnel's entry guard.
async fn load_datapath(
    cfg: &RunConfig,
    netlink: &Netlink,
    underlay: Option<Underlay>,
    with_tunnel: bool,
    container_mtu: u32,
) -> anyhow::Result<Loaded> {
    let mut kernel = Kernel::load(crate::EBPF_OBJECT, &cfg.bpffs, cfg.tc_memo)
        .context("loading the datapath")?;
    let tunnel_port = match &underlay {
        Some(_) => cfg.advertise.map_or(tunnel::DEFAULT_PORT, |a| a.port()),
        None => 0,
    };
    // Not on maps that start empty (issue 25): the guards read them, and
    // would drop the members' and peers' packets (`spoofed_source`,
    // `unknown_peer`) until the first sync; they go on after it then, as
    // the datapath's links do (`Datapath::apply`).
    let fill_first = !kernel.carried();
    let mut guard_later = None;
    if let Some(u) = underlay {
        let name = u.name.clone();
        if kernel.underlay_pinned(&u.name) || fill_first {
            guard_later = Some(u);
        } else {
            kernel.attach_underlay(&u.name, u.mode)?;
        }
        log::info!(
            "underlay guard on {name} (tunnel port {tunnel_port}); container MTU {container_mtu}"
        );
    }
    let events = kernel.take_events();
    kernel
        .conn()
        .set_track(cfg.track)
        .context("configuring request tracking")?;
    let conn_events = kernel.conn().events.take();
    // The tunnel's device is persistent, so its index outlives agents: the
    // programs send remote members only there and admit them only from
    // there (0: no tunnel, remote members are dropped as no_tunnel), and
    // its entry is guarded.
    let mut tunnel_ifindex = 0;
    if with_tunnel && let Some((idx, _)) = netlink.link(TUN_DEV).await? {
        if !fill_first {
            kernel
                .attach_tunnel(TUN_DEV)
                .context("guarding the tunnel's entry")?;
        }
        tunnel_ifindex = idx;
    }
    let tunnel_guard_later = fill_first && tunnel_ifindex != 0;
    let config = Config {
        dns_addr: to_ip4(*cfg.dns_listen.ip()),
        dns_port: cfg.dns_listen.port(),
        tunnel_port,
        tunnel_ifindex,
        drop_events_per_sec: cfg.drop_events_per_sec,
        conn_share: cfg.conn_share,
        ..Default::default()
    };
    Ok(Loaded {
        kernel,
        events,
        conn_events,
        guard_later,
        tunnel_guard_later,
        config,
    })
}

/// Where names outside the private zone are relayed.
fn dns_upstreams(cfg: &RunConfig) -> Vec<std::net::SocketAddr> {
    match &cfg.dns_upstream {
        Some(list) => list.clone(),
        None => dns::upstreams_from_resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            *cfg.dns_listen.ip(),
        ),
    }
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
        let backend = open_store(&cfg).await?;
        let netlink = Netlink::connect().context("opening netlink")?;
        let forwarding = forwarding::Owners {
            v4: forwarding::enable(&cfg.state_dir).context("turning IPv4 forwarding on")?,
            v6: if cfg.ipv6.is_on() {
                forwarding::enable6(&cfg.state_dir).context("turning IPv6 forwarding on")?
            } else {
                forwarding::Forwarding::Shared
            },
        };
        prepare_routes(&netlink, &cfg).await?;
        let (underlay, container_mtu) = find_underlay(&netlink, &cfg).await?;
        let host_keys = keyfile::host_key(&cfg.state_dir)?;
        let members = MemberTable::default();
        let tunnel = new_tunnel(&cfg, &host_keys, &members);
        // With a predecessor, its tunnel is taken over once this agent is
        // ready instead (`take_over`).
        let mut view = None;
        if let (Some(dev), None) = (&tunnel, &predecessor) {
            view = start_tunnel_early(
                dev,
                stored,
                backend.as_ref(),
                &netlink,
                &cfg,
                &members,
                container_mtu,
            )
            .await?;
        }
        let early = match (&tunnel, &predecessor) {
            (Some(_), None) => EarlyTunnel::write(&cfg, &netlink).await,
            _ => None,
        };
        let view =
            view.unwrap_or_else(|| MembershipView::new(cfg.pool).with_host_quota(cfg.host_quota));
        let loaded =
            load_datapath(&cfg, &netlink, underlay, tunnel.is_some(), container_mtu).await?;
        let mut datapath = Datapath::new(loaded.kernel);
        let pool6 = agent_edge::given_pool6(&cfg);
        let edge_local = agent_edge::gather(&netlink, &cfg, forwarding, pool6)
            .await
            .context("reading the host's addresses")?;
        let edge = prepare_edge(&mut datapath, &edge_local, &cfg, loaded.config)?;
        let attached = super::attached::Attached::open(&cfg.state_dir)
            .context("reading the records of the containers this host attached")?;
        let agent = Arc::new(Agent {
            attached,
            attaching: Default::default(),
            membership: Membership::new(backend).with_host_quota(cfg.host_quota),
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
            dns_upstreams: dns_upstreams(&cfg),
            host_keys,
            members,
            tunnel,
            dns: Mutex::new(None),
            cfg,
        });
        agent.read_events(loaded.events, loaded.conn_events);
        let synced = agent
            .first_sync(loaded.guard_later, loaded.tunnel_guard_later)
            .await?;
        if let Some(p) = predecessor {
            agent.take_over(p, synced).await?;
        }
        agent.start_dns().await?;
        tokio::spawn(agent.clone().follow_store());
        tokio::spawn(agent.clone().reap_vanished());
        tokio::spawn(agent.clone().repair_edge());
        tokio::spawn(agent.clone().check_health());
        tokio::spawn(agent.clone().sweep_conns());
        if let Some(e) = early {
            e.keep();
        }
        Ok(agent)
    }

    /// The readers of the datapath's event rings: drops and flows, and
    /// connections and requests.
    fn read_events(&self, events: Option<RingBuf<MapData>>, conn_events: Option<RingBuf<MapData>>) {
        if let Some(ring) = events {
            let hub = self.flows.clone();
            let view = self.view.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.run_reader(ring, view).await {
                    log::error!("flow event reader stopped: {e:#}");
                }
            });
        }
        if let Some(ring) = conn_events {
            let (conns, flows) = (self.conns.clone(), self.flows.clone());
            let view = self.view.clone();
            tokio::spawn(async move {
                if let Err(e) = conns.run_reader(ring, view, flows).await {
                    log::error!("connection event reader stopped: {e:#}");
                }
            });
        }
    }

    /// The first reconciliation, then this agent's underlay guard (its
    /// maps filled now) and its host record. Returns whether the store
    /// answered (the reconciliation happened).
    async fn first_sync(
        &self,
        guard_later: Option<Underlay>,
        tunnel_guard_later: bool,
    ) -> anyhow::Result<bool> {
        // Enforcement of the last known state goes on even if the store is
        // unreachable at start; the follower keeps retrying.
        let synced = match self.resync().await {
            Ok(rev) => {
                log::info!("in sync with the store at revision {rev}");
                true
            }
            Err(e) => {
                log::warn!("store unreachable at start, enforcing pinned state: {e:#}");
                false
            }
        };
        self.adopt_unrecorded().await;
        if let Some(u) = guard_later {
            self.dp().maps_mut().attach_underlay(&u.name, u.mode)?;
        }
        if tunnel_guard_later {
            self.dp()
                .maps_mut()
                .attach_tunnel(TUN_DEV)
                .context("guarding the tunnel's entry")?;
        }
        if let Err(e) = self.register_host().await {
            log::warn!("registering host {}: {e}", self.cfg.host_id);
        }
        Ok(synced)
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
        let backend = self.membership.backend().clone();
        crate::store::metrics::register(r, view, health, backend, self.cfg.host_id.clone());
        self.dns_stats.register(r);
        let edge = self.edge.clone();
        crate::edge::metrics::register(r, move || {
            edge.lock().unwrap_or_else(|p| p.into_inner()).counters()
        });
        self.flows.register(r);
        self.conns.register(r);
    }
}
