//! Start-up: every subsystem built and wired here, in one place, handed to
//! the agent — store backend, netlink, datapath, underlay guard, tunnel, DNS,
//! flow events — then the first reconciliation and the store follower.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Context as _;
use pn_common::{GATEWAY, ip4_octets, maps::Config, tunnel};
use pn_tunnel::{self as tun, device::Device, keyfile};
use tokio::sync::watch;

use super::{Agent, GATEWAY_DEV, MemberTable, TUN_DEV, reconcile::to_ip4};
use crate::{
    config::{RunConfig, StoreSpec},
    datapath::{Datapath, Kernel},
    dns::{self, DnsConfig, DnsStats},
    error::Error,
    flows::FlowHub,
    model::{Host, now_secs},
    netlink::{Netlink, enable_forwarding},
    store::{
        Backend, Membership, MembershipError, StoreError, embedded::Embedded, etcd::Etcd, keys,
        view::MembershipView,
    },
};

pub(super) fn gateway_addr() -> Ipv4Addr {
    Ipv4Addr::from(ip4_octets(GATEWAY))
}

/// The DNS server's view of the membership.
struct ViewDirectory(Arc<RwLock<MembershipView>>);

impl dns::Directory for ViewDirectory {
    fn network_of(&self, client: Ipv4Addr) -> Option<pn_common::ids::NetworkId> {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        v.container_by_ip(client).map(|c| c.network)
    }

    fn resolve(&self, q: &pn_common::names::RecordQuery, out: &mut Vec<Ipv4Addr>) -> bool {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(app) = v.apps.get(&q.app).filter(|a| a.network == q.network) else {
            return false;
        };
        // An app balanced by `vip`: its and its types' names answer the
        // service address; `N.TYPE` still names one container.
        if let Some(vip) = crate::agent::reconcile::service_addr(app, &q.selector) {
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

impl Agent {
    /// Brings the agent up: store, kernel prerequisites, datapath, first sync.
    pub async fn start(cfg: RunConfig) -> anyhow::Result<Arc<Agent>> {
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
        enable_forwarding()?;
        netlink
            .ensure_gateway(GATEWAY_DEV, gateway_addr())
            .await
            .context("setting up the gateway device")?;
        let mut kernel =
            Kernel::load(crate::EBPF_OBJECT, &cfg.bpffs).context("loading the datapath")?;
        let mut container_mtu = cfg.mtu.unwrap_or(crate::config::DEFAULT_MTU);
        let mut tunnel_port = 0;
        if let Some(underlay) = &cfg.underlay_iface {
            let mtu = netlink.mtu(underlay).await?.ok_or_else(|| {
                anyhow::anyhow!("underlay interface {underlay} not found (--underlay-iface)")
            })?;
            // Room for the tunnel's headers, so inner packets never fragment.
            container_mtu = cfg
                .mtu
                .unwrap_or(mtu.saturating_sub(tunnel::OVERHEAD as u32));
            tunnel_port = cfg.advertise.map_or(tunnel::DEFAULT_PORT, |a| a.port());
            // On veth, driver-mode XDP turns off the peer's segmentation
            // offloads, which the tunnel's UDP GSO/GRO depends on: generic
            // mode there, driver mode on real devices.
            let kind = netlink.kind(underlay).await?;
            let mode = if kind.as_deref() == Some("veth") {
                aya::programs::XdpMode::Skb
            } else {
                aya::programs::XdpMode::default()
            };
            kernel.attach_underlay(underlay, mode)?;
            log::info!(
                "underlay guard on {underlay} (tunnel port {tunnel_port}); container MTU {container_mtu}"
            );
        }
        // No tunnel yet (`tunnel_ifindex` 0): until it is up, traffic to
        // remote members is dropped (no_tunnel), never sent in clear text.
        let mut dp_config = Config {
            dns_addr: to_ip4(*cfg.dns_listen.ip()),
            dns_port: cfg.dns_listen.port(),
            tunnel_port,
            drop_events_per_sec: cfg.drop_events_per_sec,
            ..Default::default()
        };
        kernel
            .set_config(dp_config)
            .context("configuring the datapath")?;
        // Before the tunnel's route, and left in place at stop.
        netlink
            .ensure_pool_floor(cfg.pool)
            .await
            .context("adding the pool's blackhole route")?;
        let events = kernel.take_events();
        kernel
            .conn()
            .set_track(cfg.track)
            .context("configuring request tracking")?;
        let conn_events = kernel.conn().events.take();
        let dns_upstreams = match &cfg.dns_upstream {
            Some(list) => list.clone(),
            None => dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                *cfg.dns_listen.ip(),
            ),
        };
        let host_keys = keyfile::host_key(&cfg.state_dir)?;
        let members = MemberTable::default();
        let tunnel = match cfg.advertise {
            Some(advertise) => {
                let seed = u64::from_le_bytes(
                    uuid::Uuid::new_v4().as_bytes()[..8]
                        .try_into()
                        .expect("8 bytes"),
                );
                let t = tun::Tunnel::new(cfg.tunnel.clone(), host_keys.clone(), seed);
                let listen = std::net::SocketAddr::from(([0, 0, 0, 0], advertise.port()));
                let dev = Device::start(TUN_DEV, listen, t, Arc::new(members.clone()))
                    .context("starting the tunnel")?;
                let idx = netlink.set_up(TUN_DEV, container_mtu).await?;
                // Remote members are reached through the tunnel; local ones
                // have /32 routes to their veths, which win.
                netlink.route_to_dev(cfg.pool, idx, gateway_addr()).await?;
                kernel
                    .attach_tunnel(TUN_DEV)
                    .context("guarding the tunnel's entry")?;
                dp_config.tunnel_ifindex = idx;
                kernel
                    .set_config(dp_config)
                    .context("configuring the datapath")?;
                log::info!(
                    "tunnel on udp {listen} ({}), advertised as {advertise}",
                    cfg.tunnel.cipher.name()
                );
                Some(Arc::new(dev))
            }
            None => None,
        };
        let view = Arc::new(RwLock::new(MembershipView::new(cfg.pool)));
        let dns_stats = Arc::new(DnsStats::default());
        let dns_server = dns::serve(
            DnsConfig {
                listen: cfg.dns_listen,
                ttl: cfg.dns_ttl,
                upstreams: dns_upstreams.clone(),
            },
            Arc::new(ViewDirectory(view.clone())),
            dns_stats.clone(),
        )
        .await?;
        let agent = Arc::new(Agent {
            membership: Membership::new(backend),
            view,
            datapath: Arc::new(Mutex::new(Datapath::new(kernel))),
            netlink,
            local_ops: tokio::sync::Mutex::new(()),
            applied: watch::channel(0).0,
            flows: FlowHub::default(),
            store_health: Arc::default(),
            container_mtu,
            dns_stats,
            dns_upstreams,
            host_keys,
            members,
            tunnel,
            _dns: dns_server,
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
            let flows = agent.flows.clone();
            let view = agent.view.clone();
            tokio::spawn(async move {
                if let Err(e) = flows.conns.clone().run_reader(ring, view, flows).await {
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
        if let Err(e) = agent.register_host().await {
            log::warn!("registering host {}: {e}", agent.cfg.host_id);
        }
        tokio::spawn(agent.clone().follow_store());
        tokio::spawn(agent.clone().reap_vanished());
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
