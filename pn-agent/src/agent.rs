//! The running agent: follows the membership store, keeps the kernel (maps,
//! programs, veths) in line with it, and carries out the control commands.
//!
//! Flow of every change: a command writes the store; the store's watch feeds
//! [`Agent::follow_store`], which updates the view and the kernel and then
//! publishes the applied revision; the command returns once its revision is
//! applied. The same path serves changes made by other agents of the fleet.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use pn_common::{
    GATEWAY, Ip4,
    ids::{AppId, ContainerType, HostId, NetworkId, Uuid},
    ip4, ip4_octets,
    maps::{Config, Endpoint, Iface, Peer},
    names, tunnel,
};
use tokio::sync::watch;

use crate::{
    api::{
        AppInfo, ContainerInfo, DatapathStatus, EndpointCounts, HostInfo, NetworkInfo, PeerStatus,
        Status, StoreStatus,
    },
    config::{RunConfig, StoreSpec},
    datapath::Datapath,
    dns::{self, DnsConfig, DnsHandle, DnsStats},
    flows::FlowHub,
    ipam,
    model::{App, Container, ContainerKey, Host, Network, now_secs},
    netlink::{ContainerSide, Netlink, Netns, enable_forwarding},
    store::{
        Backend, Membership, MembershipError, WatchEvent,
        embedded::Embedded,
        view::{Change, MembershipView},
    },
    tunnel::{self as tun, Member, device::Device, handshake::StaticKeys},
};

/// Name of the dummy device that holds the gateway address.
pub const GATEWAY_DEV: &str = "pn-gw";
/// The TUN device remote members are routed to.
pub const TUN_DEV: &str = "pn-tun";
/// Prefix of host-side veth names; anything with it belongs to the agent.
pub const HOST_IF_PREFIX: &str = "pnh";
/// How long a command waits for its change to reach the kernel.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A command's failure: one line for the operator.
#[derive(Debug)]
pub struct ApiError(pub String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        ApiError(e.to_string())
    }
}

impl From<crate::netlink::NetlinkError> for ApiError {
    fn from(e: crate::netlink::NetlinkError) -> Self {
        ApiError(e.to_string())
    }
}

impl From<crate::datapath::DatapathError> for ApiError {
    fn from(e: crate::datapath::DatapathError) -> Self {
        ApiError(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Deterministic host-side interface name of a container (≤ 15 bytes).
pub fn host_ifname(key: &ContainerKey) -> String {
    // FNV-1a: stable across versions and machines, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IF_PREFIX}{:011x}", h & ((1 << 44) - 1))
}

fn to_ip4(ip: Ipv4Addr) -> Ip4 {
    ip4(
        ip.octets()[0],
        ip.octets()[1],
        ip.octets()[2],
        ip.octets()[3],
    )
}

fn gateway_addr() -> Ipv4Addr {
    Ipv4Addr::from(ip4_octets(GATEWAY))
}

/// Every DNS name of one container, most specific first.
pub fn container_names(network: &NetworkId, key: &ContainerKey) -> Vec<String> {
    let mut out = vec![
        names::container_name(network, &key.app, &key.ctype, key.index),
        names::type_name(network, &key.app, &key.ctype),
    ];
    if key.ctype.as_str() == ContainerType::WEB {
        out.push(names::app_name(network, &key.app));
    }
    out
}

#[derive(Default)]
struct StoreHealth {
    reachable: bool,
    last_error: Option<String>,
}

pub struct Agent {
    pub cfg: RunConfig,
    /// MTU given to container interfaces.
    container_mtu: u32,
    membership: Membership,
    pub view: Arc<RwLock<MembershipView>>,
    datapath: Mutex<Datapath>,
    netlink: Netlink,
    /// Serialises everything that creates or removes local interfaces.
    local_ops: tokio::sync::Mutex<()>,
    applied: watch::Sender<i64>,
    pub flows: FlowHub,
    store_health: Mutex<StoreHealth>,
    pub dns_stats: Arc<DnsStats>,
    dns_upstreams: Vec<std::net::SocketAddr>,
    host_keys: StaticKeys,
    members: MemberTable,
    /// The encrypted tunnel, when this host advertises an endpoint.
    pub tunnel: Option<Device>,
    // Keeps the DNS server running for the agent's life.
    _dns: DnsHandle,
}

/// Address → member, for the tunnel's per-packet checks (kept apart from
/// the view so the data path takes one small lock and one hash lookup).
/// FxHash: the keys are our own allocations, never chosen by a sender, and
/// SipHash was a visible share of the receive path.
#[derive(Clone, Default)]
pub struct MemberTable(Arc<RwLock<MemberMap>>);

type MemberMap = rustc_hash::FxHashMap<Ipv4Addr, Member>;

impl tun::Members for MemberTable {
    fn member(&self, ip: Ipv4Addr) -> Option<Member> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
    }
}

impl MemberTable {
    fn set(&self, ip: Ipv4Addr, m: Member) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, m);
    }
    fn remove(&self, ip: Ipv4Addr) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
    fn replace(&self, all: MemberMap) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = all;
    }
}

/// The host's static X25519 key: created on first start (mode 0600), then
/// reused, so peers keep trusting it across restarts.
pub fn host_key(state_dir: &std::path::Path) -> anyhow::Result<StaticKeys> {
    use base64::Engine as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("host.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .with_context(|| format!("{} is not base64", path.display()))?;
            let private: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} does not hold a 32-byte key", path.display()))?;
            Ok(StaticKeys::from_private(private)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = StaticKeys::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            use std::io::Write as _;
            writeln!(
                f,
                "{}",
                base64::engine::general_purpose::STANDARD.encode(keys.private)
            )?;
            f.sync_all()?;
            log::info!("created host key {}", path.display());
            Ok(keys)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()?
        .try_into()
        .ok()
}

/// The DNS server's view of the membership.
struct ViewDirectory(Arc<RwLock<MembershipView>>);

impl dns::Directory for ViewDirectory {
    fn network_of(&self, client: Ipv4Addr) -> Option<NetworkId> {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        v.container_by_ip(client).map(|c| c.network)
    }

    fn resolve(&self, q: &names::RecordQuery, out: &mut Vec<Ipv4Addr>) -> bool {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        if v.apps.get(&q.app).is_none_or(|a| a.network != q.network) {
            return false;
        }
        let before = out.len();
        out.extend(v.select(&q.app, &q.selector).map(|c| c.ip));
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
            StoreSpec::Etcd(endpoints) => Arc::new(crate::store::etcd::Etcd::new(
                endpoints.clone(),
                cfg.etcd_prefix.clone(),
            )),
        };
        let netlink = Netlink::connect().context("opening netlink")?;
        enable_forwarding()?;
        netlink
            .ensure_gateway(GATEWAY_DEV, gateway_addr())
            .await
            .context("setting up the gateway device")?;
        let mut datapath =
            Datapath::load(crate::EBPF_OBJECT, &cfg.bpffs).context("loading the datapath")?;
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
            datapath.attach_underlay(underlay, mode)?;
            log::info!(
                "underlay guard on {underlay} (tunnel port {tunnel_port}); container MTU {container_mtu}"
            );
        }
        datapath
            .set_config(Config {
                dns_addr: to_ip4(*cfg.dns_listen.ip()),
                dns_port: cfg.dns_listen.port(),
                tunnel_port,
                drop_events_per_sec: cfg.drop_events_per_sec,
                ..Default::default()
            })
            .context("configuring the datapath")?;
        let events = datapath.take_events();
        let dns_upstreams = match &cfg.dns_upstream {
            Some(list) => list.clone(),
            None => dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                *cfg.dns_listen.ip(),
            ),
        };
        let host_keys = host_key(&cfg.state_dir)?;
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
                log::info!(
                    "tunnel on udp {listen} ({}), advertised as {advertise}",
                    cfg.tunnel.cipher.name()
                );
                Some(dev)
            }
            None => None,
        };
        let view: Arc<RwLock<MembershipView>> = Arc::default();
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
            datapath: Mutex::new(datapath),
            netlink,
            local_ops: tokio::sync::Mutex::new(()),
            applied: watch::channel(0).0,
            flows: FlowHub::default(),
            store_health: Mutex::default(),
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
        Ok(agent)
    }

    async fn register_host(&self) -> Result<i64, MembershipError> {
        self.membership
            .put_host(&Host {
                id: self.cfg.host_id.clone(),
                advertise: self.cfg.advertise,
                public_key: self
                    .tunnel
                    .as_ref()
                    .map(|_| encode_key(&self.host_keys.public)),
                started_at: now_secs(),
            })
            .await
    }

    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, MembershipView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_store_health(&self, reachable: bool, error: Option<String>) {
        let mut h = self.store_health.lock().unwrap_or_else(|p| p.into_inner());
        if h.reachable != reachable {
            if reachable {
                log::info!("store reachable");
            } else {
                log::warn!("store unreachable: {}", error.as_deref().unwrap_or("?"));
            }
        }
        h.reachable = reachable;
        if error.is_some() {
            h.last_error = error;
        }
    }

    pub fn store_reachable(&self) -> bool {
        self.store_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reachable
    }

    /// Lists the whole store and brings view and kernel in line with it.
    async fn resync(&self) -> anyhow::Result<i64> {
        let listing = match self.membership.backend().list("").await {
            Ok(l) => l,
            Err(e) => {
                self.set_store_health(false, Some(e.to_string()));
                return Err(e.into());
            }
        };
        self.set_store_health(true, None);
        let (view, errors) = MembershipView::from_listing(&listing);
        for e in errors {
            log::warn!("skipping undecodable record {e}");
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view.clone();
        self.reconcile_all(&view).await;
        self.sync_underlay();
        self.sync_tunnel_routes().await;
        self.applied.send_replace(listing.rev);
        Ok(listing.rev)
    }

    /// Keeps the view and the kernel following the store, forever: list,
    /// watch from the listing's revision, and list again whenever the watch
    /// breaks (store outage, compaction, lag), with backoff.
    async fn follow_store(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        let mut from = self.view().rev + 1;
        loop {
            match self.membership.backend().watch("", from).await {
                Ok(mut rx) => {
                    while let Some(ev) = rx.recv().await {
                        if ev == WatchEvent::Resync {
                            break;
                        }
                        self.apply_event(&ev).await;
                    }
                    log::info!("store watch ended; resynchronising");
                }
                Err(e) => self.set_store_health(false, Some(e.to_string())),
            }
            loop {
                match self.resync().await {
                    Ok(rev) => {
                        backoff = Duration::from_millis(200);
                        from = rev + 1;
                        break;
                    }
                    Err(e) => {
                        log::debug!("resync failed: {e:#}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    async fn apply_event(&self, ev: &WatchEvent) {
        let rev = match ev {
            WatchEvent::Put { rev, .. } | WatchEvent::Delete { rev, .. } => *rev,
            WatchEvent::Resync => return,
        };
        let change = self
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(ev);
        match change {
            Ok(Change::ContainerPut { new, old }) => {
                if let Some(old) = old
                    && old.ip != new.ip
                {
                    self.forget_endpoint(&old).await;
                }
                self.enforce(&new).await;
                if new.host == self.cfg.host_id {
                    self.sync_underlay();
                }
            }
            Ok(Change::ContainerDeleted(c)) => self.forget_endpoint(&c).await,
            Ok(Change::Network) => self.sync_tunnel_routes().await,
            Ok(Change::Host) => {
                self.sync_underlay();
                if let WatchEvent::Delete { key, .. } = ev
                    && key.ends_with(&format!("/{}", self.cfg.host_id))
                {
                    // Somebody removed this host's record while it runs: put it back.
                    if let Err(e) = self.register_host().await {
                        log::warn!("re-registering host: {e}");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("skipping undecodable record {e}"),
        }
        self.applied.send_replace(rev);
    }

    /// Peers (hosts with a tunnel endpoint) and local network tags for the
    /// underlay guard; small sets, recomputed whole.
    fn sync_underlay(&self) {
        let (peers, tags) = {
            let v = self.view();
            let me = &self.cfg.host_id;
            let peers: HashMap<Ip4, Peer> = v
                .hosts
                .values()
                .filter(|h| h.id != *me)
                .filter_map(|h| match h.advertise? {
                    std::net::SocketAddr::V4(a) => Some((
                        to_ip4(*a.ip()),
                        Peer {
                            index: peer_index(&h.id),
                            flags: 0,
                        },
                    )),
                    std::net::SocketAddr::V6(_) => None,
                })
                .collect();
            let tags: HashSet<u32> = v
                .local_containers(me)
                .filter_map(|c| v.networks.get(&c.network).map(|n| n.tag))
                .collect();
            (peers, tags)
        };
        if let Err(e) = self.dp().sync_underlay(&peers, &tags) {
            log::error!("updating the underlay guard: {e}");
        }
        if let Some(dev) = &self.tunnel {
            let v = self.view();
            let peers: Vec<(tun::PeerId, [u8; 32], std::net::SocketAddr)> = v
                .hosts
                .values()
                .filter(|h| h.id != self.cfg.host_id)
                .filter_map(|h| {
                    Some((
                        peer_index(&h.id),
                        decode_key(h.public_key.as_deref()?)?,
                        h.advertise?,
                    ))
                })
                .collect();
            dev.set_peers(&peers);
        }
    }

    /// Networks outside the pool are routed to the tunnel too.
    async fn sync_tunnel_routes(&self) {
        if self.tunnel.is_none() {
            return;
        }
        let outside: Vec<Ipv4Net> = self
            .view()
            .networks
            .values()
            .map(|n| n.cidr)
            .filter(|c| !self.cfg.pool.contains(c))
            .collect();
        let Ok(Some((idx, _))) = self.netlink.link(TUN_DEV).await else {
            return;
        };
        for cidr in outside {
            if let Err(e) = self.netlink.route_to_dev(cidr, idx, gateway_addr()).await {
                log::error!("routing {cidr} to the tunnel: {e}");
            }
        }
    }

    fn network_tag(&self, net: &NetworkId) -> Option<u32> {
        self.view().networks.get(net).map(|n| n.tag)
    }

    /// Puts one container into the maps (and attaches a local one's programs).
    async fn enforce(&self, c: &Container) {
        let Some(tag) = self.network_tag(&c.network) else {
            log::warn!(
                "container {} belongs to unknown network {}",
                c.key,
                c.network
            );
            return;
        };
        let ip = to_ip4(c.ip);
        if c.host != self.cfg.host_id {
            let peer = peer_index(&c.host);
            self.members.set(
                c.ip,
                Member {
                    tag,
                    peer: Some(peer),
                },
            );
            let ep = Endpoint {
                tag,
                ifindex: 0,
                peer,
                flags: Endpoint::FLAG_REMOTE,
            };
            if let Err(e) = self.dp().set_endpoint(ip, ep) {
                log::error!("container {}: {e}", c.key);
            }
            return;
        }
        let ifindex = match self.netlink.link(&c.host_ifname).await {
            Ok(Some((idx, _))) => idx,
            Ok(None) => {
                log::warn!(
                    "container {}: interface {} is missing",
                    c.key,
                    c.host_ifname
                );
                return;
            }
            Err(e) => {
                log::error!("container {}: {e}", c.key);
                return;
            }
        };
        self.members.set(c.ip, Member { tag, peer: None });
        let mut dp = self.dp();
        let result = (|| {
            if !dp.is_attached(&c.host_ifname) {
                dp.attach(&c.host_ifname)?;
            }
            dp.set_iface(
                ifindex,
                Iface {
                    addr: ip,
                    tag,
                    ..Default::default()
                },
            )?;
            dp.set_endpoint(
                ip,
                Endpoint {
                    tag,
                    ifindex,
                    peer: 0,
                    flags: 0,
                },
            )
        })();
        if let Err(e) = result {
            log::error!("container {}: {e}", c.key);
        }
    }

    /// Removes a container from the maps, and a local one's interface.
    async fn forget_endpoint(&self, c: &Container) {
        if self.view().container_by_ip(c.ip).is_none() {
            self.members.remove(c.ip);
        }
        if let Err(e) = self.dp().remove_endpoint(to_ip4(c.ip)) {
            log::error!("container {}: {e}", c.key);
        }
        if c.host != self.cfg.host_id {
            return;
        }
        let _guard = self.local_ops.lock().await;
        // Re-attached meanwhile (same key, same interface name): keep it.
        if self
            .view()
            .containers
            .get(&c.key)
            .is_some_and(|now| now.host == self.cfg.host_id)
        {
            return;
        }
        self.teardown_local(c).await;
        self.sync_underlay();
        log::info!("detached container {} ({})", c.key, c.ip);
    }

    async fn teardown_local(&self, c: &Container) {
        if let Ok(Some((idx, _))) = self.netlink.link(&c.host_ifname).await
            && let Err(e) = self.dp().remove_iface(idx)
        {
            log::error!("container {}: {e}", c.key);
        }
        if let Err(e) = self.dp().detach(&c.host_ifname) {
            log::error!("container {}: {e}", c.key);
        }
        if let Err(e) = self.netlink.delete_link(&c.host_ifname).await {
            log::error!("container {}: {e}", c.key);
        }
        if let Err(e) = self.dp().remove_counters(to_ip4(c.ip)) {
            log::error!("container {}: {e}", c.key);
        }
        remove_resolv_conf(&c.netns);
    }

    /// Brings the kernel in line with a full view: endpoints, local
    /// interfaces, programs, and leftovers of crashed attaches.
    async fn reconcile_all(&self, view: &MembershipView) {
        let _guard = self.local_ops.lock().await;
        let me = &self.cfg.host_id;
        let mut desired_eps: HashMap<Ip4, Endpoint> = HashMap::new();
        let mut desired_ifaces: HashMap<u32, Iface> = HashMap::new();
        let mut local_names: HashSet<String> = HashSet::new();
        let mut stale: Vec<ContainerKey> = Vec::new();
        let mut members = MemberMap::default();
        for c in view.containers.values() {
            let Some(net) = view.networks.get(&c.network) else {
                continue;
            };
            let ip = to_ip4(c.ip);
            if c.host != *me {
                let peer = peer_index(&c.host);
                members.insert(
                    c.ip,
                    Member {
                        tag: net.tag,
                        peer: Some(peer),
                    },
                );
                desired_eps.insert(
                    ip,
                    Endpoint {
                        tag: net.tag,
                        ifindex: 0,
                        peer,
                        flags: Endpoint::FLAG_REMOTE,
                    },
                );
                continue;
            }
            members.insert(
                c.ip,
                Member {
                    tag: net.tag,
                    peer: None,
                },
            );
            match self.netlink.link(&c.host_ifname).await {
                Ok(Some((idx, _))) => {
                    local_names.insert(c.host_ifname.clone());
                    desired_ifaces.insert(
                        idx,
                        Iface {
                            addr: ip,
                            tag: net.tag,
                            ..Default::default()
                        },
                    );
                    desired_eps.insert(
                        ip,
                        Endpoint {
                            tag: net.tag,
                            ifindex: idx,
                            peer: 0,
                            flags: 0,
                        },
                    );
                }
                // The namespace went away with its veth while nobody watched.
                Ok(None) => stale.push(c.key.clone()),
                Err(e) => log::error!("container {}: {e}", c.key),
            }
        }
        self.members.replace(members);
        {
            let mut dp = self.dp();
            let result = (|| {
                for (ip, _) in dp
                    .endpoints()?
                    .into_iter()
                    .filter(|(ip, _)| !desired_eps.contains_key(ip))
                {
                    dp.remove_endpoint(ip)?;
                }
                for (ip, ep) in &desired_eps {
                    dp.set_endpoint(*ip, *ep)?;
                }
                for (idx, _) in dp
                    .ifaces()?
                    .into_iter()
                    .filter(|(i, _)| !desired_ifaces.contains_key(i))
                {
                    dp.remove_iface(idx)?;
                }
                for name in &local_names {
                    if !dp.is_attached(name) {
                        dp.attach(name)?;
                    }
                }
                for (idx, iface) in &desired_ifaces {
                    dp.set_iface(*idx, *iface)?;
                }
                for name in dp.pinned_interfaces()? {
                    if !local_names.contains(&name) {
                        dp.detach(&name)?;
                    }
                }
                Ok::<_, crate::datapath::DatapathError>(())
            })();
            if let Err(e) = result {
                log::error!("reconciling the datapath: {e}");
            }
        }
        match self.netlink.links_with_prefix(HOST_IF_PREFIX).await {
            Ok(links) => {
                for (name, _) in links.into_iter().filter(|(n, _)| !local_names.contains(n)) {
                    log::info!("removing orphan interface {name}");
                    if let Err(e) = self.netlink.delete_link(&name).await {
                        log::error!("{e}");
                    }
                }
            }
            Err(e) => log::error!("listing interfaces: {e}"),
        }
        for key in stale {
            log::info!("container {key}: its interface is gone (namespace deleted?); detaching it");
            if let Err(e) = self.membership.delete_container(&key).await {
                log::error!("detaching {key}: {e}");
            }
        }
        // Addresses reserved by an attach that crashed before recording it.
        if let Ok(leases) = self.membership.leases_of_host(me).await {
            for (net, ip, lease) in leases {
                if !view.containers.contains_key(&lease.owner) {
                    log::info!(
                        "releasing address {ip} left by an interrupted attach of {}",
                        lease.owner
                    );
                    if let Err(e) = self
                        .membership
                        .release_address(&net, ip, &lease.owner)
                        .await
                    {
                        log::error!("{e}");
                    }
                }
            }
        }
    }

    /// Waits until the change committed at `rev` is in the kernel.
    async fn wait_applied(&self, rev: i64) -> ApiResult<()> {
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|r| *r >= rev)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError(format!(
                "the change was stored (revision {rev}) but this agent has not applied it yet; check `pn-agent status`"
            ))),
        }
    }

    // ---- commands ----------------------------------------------------------

    pub async fn create_network(
        &self,
        id: Option<NetworkId>,
        cidr: Option<Ipv4Net>,
    ) -> ApiResult<Network> {
        let id = id.unwrap_or_else(|| NetworkId(random_uuid()));
        let (net, rev) = self
            .membership
            .create_network(id, cidr, &self.cfg.pool, self.cfg.network_prefix)
            .await?;
        self.wait_applied(rev).await?;
        log::info!("created network {} ({}, tag {})", net.id, net.cidr, net.tag);
        Ok(net)
    }

    pub fn list_networks(&self) -> Vec<NetworkInfo> {
        let v = self.view();
        v.networks
            .values()
            .map(|n| NetworkInfo {
                id: n.id,
                cidr: n.cidr,
                tag: n.tag,
                apps: v.apps.values().filter(|a| a.network == n.id).count(),
                containers: v.containers.values().filter(|c| c.network == n.id).count(),
            })
            .collect()
    }

    pub async fn delete_network(&self, id: &NetworkId, force: bool) -> ApiResult<()> {
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
    ) -> ApiResult<App> {
        if let Some(n) = &name
            && (n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()))
        {
            return Err(ApiError(format!(
                "invalid application name {n:?}: 1 to 64 printable characters"
            )));
        }
        let id = id.unwrap_or_else(|| AppId(random_uuid()));
        let (app, rev) = self.membership.create_app(id, network, name).await?;
        self.wait_applied(rev).await?;
        log::info!("created application {} in {}", app.id, app.network);
        Ok(app)
    }

    pub fn list_apps(&self, network: Option<&NetworkId>) -> Vec<AppInfo> {
        let v = self.view();
        v.apps
            .values()
            .filter(|a| network.is_none_or(|n| a.network == *n))
            .map(|a| AppInfo {
                id: a.id,
                network: a.network,
                name: a.name.clone(),
                containers: v.containers_of_app(&a.id).count(),
            })
            .collect()
    }

    pub async fn delete_app(&self, id: &AppId) -> ApiResult<()> {
        let rev = self.membership.delete_app(id).await?;
        self.wait_applied(rev).await?;
        log::info!("deleted application {id}");
        Ok(())
    }

    fn info(&self, c: &Container) -> ContainerInfo {
        ContainerInfo {
            id: c.key.to_string(),
            app: c.key.app,
            network: c.network,
            ctype: c.key.ctype.clone(),
            index: c.key.index,
            ip: c.ip,
            host: c.host.to_string(),
            netns: c.netns.clone(),
            interface: c.ifname.clone(),
            host_interface: c.host_ifname.clone(),
            names: container_names(&c.network, &c.key),
        }
    }

    pub async fn attach(
        &self,
        app: &AppId,
        ctype: ContainerType,
        index: Option<u32>,
        netns: &str,
        ifname: &str,
    ) -> ApiResult<ContainerInfo> {
        validate_ifname(ifname)?;
        if index == Some(0) {
            return Err(ApiError(
                "invalid container index 0: expected an integer from 1".into(),
            ));
        }
        let app_rec = self.membership.app(app).await?;
        let net = self.membership.network(&app_rec.network).await?;
        let ns = Netns::open(netns)?;
        let guard = self.local_ops.lock().await;
        let same_type: Vec<Container> = self
            .membership
            .containers_of(app)
            .await?
            .into_iter()
            .filter(|c| c.key.ctype == ctype)
            .collect();
        let mut used: std::collections::BTreeSet<u32> =
            same_type.iter().map(|c| c.key.index).collect();
        let auto_index = index.is_none();
        let mut index = match index {
            Some(i) => i,
            // Without an index, attaching a namespace again means "the
            // container already in it": idempotent for retrying callers.
            None => match same_type
                .iter()
                .find(|c| c.netns == netns && c.host == self.cfg.host_id)
            {
                Some(c) => c.key.index,
                None => ipam::next_index(&used),
            },
        };
        let mut attempts = 0;
        let (key, ip) = loop {
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
                    return Err(ApiError(format!(
                        "container {key} is attached on host {}",
                        existing.host
                    )));
                }
                if existing.netns != netns {
                    return Err(ApiError(format!(
                        "container {key} is already attached to namespace {}; detach it first",
                        existing.netns
                    )));
                }
                if self.netlink.link(&existing.host_ifname).await?.is_some() {
                    drop(guard);
                    return Ok(self.info(&existing));
                }
                // Recorded, but its interface is gone: start over.
                self.membership.delete_container(&key).await?;
            }
            match self
                .membership
                .reserve_address(&net.id, &key, &self.cfg.host_id)
                .await
            {
                Ok(ip) => break (key, ip),
                // Another host took this index at the same instant: next one.
                Err(MembershipError::Taken(_)) if auto_index && attempts < 64 => {
                    attempts += 1;
                    used.insert(index);
                    index = ipam::next_index(&used);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let host_if = host_ifname(&key);
        let c = Container {
            key: key.clone(),
            network: net.id,
            ip,
            host: self.cfg.host_id.clone(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            host_ifname: host_if.clone(),
            created_at: now_secs(),
        };
        let made = match self.make_container(&ns, &net, &c).await {
            Ok(()) => self
                .membership
                .put_container(&c)
                .await
                .map_err(ApiError::from),
            Err(e) => Err(e),
        };
        let rev = match made {
            Ok(rev) => rev,
            Err(e) => {
                // Nothing half-made: undo in reverse order, then report.
                if self.netlink.link(&host_if).await.is_ok_and(|l| l.is_some()) {
                    let _ = self.dp().detach(&host_if);
                    let _ = self.netlink.delete_link(&host_if).await;
                }
                let _ = self.dp().detach(&host_if);
                remove_resolv_conf(netns);
                if let Err(re) = self.membership.release_address(&net.id, ip, &key).await {
                    log::error!("releasing {ip} after a failed attach: {re}");
                }
                return Err(e);
            }
        };
        drop(guard);
        self.wait_applied(rev).await?;
        log::info!("attached container {key} in {netns} as {ip} ({host_if})");
        Ok(self.info(&c))
    }

    async fn make_container(&self, ns: &Netns, net: &Network, c: &Container) -> ApiResult<()> {
        self.netlink
            .create_veth(&c.host_ifname, &c.ifname, ns, self.container_mtu)
            .await?;
        // Programs first: until the maps know the interface, they drop
        // everything on it (fail closed), so nothing flows unfiltered.
        self.dp().attach(&c.host_ifname)?;
        let (_, host_mac) = self
            .netlink
            .link(&c.host_ifname)
            .await?
            .ok_or_else(|| ApiError(format!("interface {} vanished", c.host_ifname)))?;
        let mut routes = vec![self.cfg.pool];
        if !self.cfg.pool.contains(&net.cidr) {
            routes.push(net.cidr);
        }
        let container_mac = crate::netlink::configure_container_side(
            ns,
            ContainerSide {
                ifname: c.ifname.clone(),
                ip: c.ip,
                gateway: gateway_addr(),
                gateway_mac: host_mac,
                routes,
            },
        )
        .await?;
        self.netlink
            .configure_host_side(&c.host_ifname, c.ip, container_mac, gateway_addr())
            .await?;
        write_resolv_conf(ns, &net.id, *self.cfg.dns_listen.ip())
            .map_err(|e| ApiError(format!("writing resolv.conf for {}: {e}", ns.given)))?;
        Ok(())
    }

    pub async fn detach(&self, key: &ContainerKey) -> ApiResult<()> {
        let Some((c, rev)) = self.membership.delete_container(key).await? else {
            return Err(ApiError(format!("container {key} not found")));
        };
        if c.host == self.cfg.host_id {
            self.wait_applied(rev).await?;
        }
        Ok(())
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

    pub fn domain_names(&self, app: &AppId) -> ApiResult<Vec<String>> {
        let v = self.view();
        let a = v
            .apps
            .get(app)
            .ok_or_else(|| ApiError(format!("application {app} not found")))?;
        Ok(names::formation_names(
            &a.network,
            app,
            v.containers_of_app(app)
                .map(|c| (&c.key.ctype, c.key.index)),
        ))
    }

    pub fn env(&self, key: &ContainerKey) -> ApiResult<Vec<(String, String)>> {
        let v = self.view();
        let c = v
            .containers
            .get(key)
            .ok_or_else(|| ApiError(format!("container {key} not found")))?;
        Ok(vec![
            ("PN_NETWORK_ID".into(), c.network.to_string()),
            ("PN_APP_ID".into(), c.key.app.to_string()),
            ("PN_CONTAINER".into(), c.key.name()),
            (
                "PN_DOMAIN".into(),
                names::app_name(&c.network, &c.key.app)
                    .trim_end_matches('.')
                    .to_string(),
            ),
        ])
    }

    pub fn status(&self) -> Status {
        let v = self.view();
        let me = &self.cfg.host_id;
        let (in_maps, attached) = {
            let dp = self.dp();
            (
                dp.endpoint_count(),
                dp.pinned_interfaces().map(|p| p.len()).unwrap_or(0),
            )
        };
        let health = self.store_health.lock().unwrap_or_else(|p| p.into_inner());
        Status {
            host: me.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            store: StoreStatus {
                backend: self.membership.backend().describe(),
                reachable: health.reachable,
                revision: v.rev,
                last_error: health.last_error.clone(),
            },
            datapath: DatapathStatus {
                bpffs: self.cfg.bpffs.clone(),
                programs: vec![
                    pn_common::objects::PROG_FROM_CONTAINER.into(),
                    pn_common::objects::PROG_TO_CONTAINER.into(),
                ],
                attached_interfaces: attached,
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
                "{} (udp, tcp), ttl {}s, upstream {}",
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
                }
            ),
            tunnel: match &self.tunnel {
                Some(dev) => format!(
                    "udp {} advertised as {}, {}, key {}",
                    dev.listen,
                    self.cfg.advertise.map_or("-".into(), |a| a.to_string()),
                    self.cfg.tunnel.cipher.name(),
                    encode_key(&self.host_keys.public)
                ),
                None => "off (no --advertise)".into(),
            },
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

    pub async fn remove_host(&self, id: &HostId) -> ApiResult<()> {
        if *id == self.cfg.host_id {
            return Err(ApiError(format!(
                "host {id} is the one this agent runs on; remove it from another host's agent after stopping this one"
            )));
        }
        let rev = self.membership.remove_host(id).await?;
        self.wait_applied(rev).await?;
        log::info!("removed host {id} from the fleet");
        Ok(())
    }

    fn peer_tunnel_state(&self, h: &Host) -> String {
        let Some(dev) = &self.tunnel else {
            return "off".into();
        };
        if h.public_key.is_none() || h.advertise.is_none() {
            return "no endpoint or key published".into();
        }
        match dev.peer_state(peer_index(&h.id)) {
            Some(s) if s.established => format!(
                "established (session {}s)",
                s.session_age.map_or(0, |a| a.as_secs())
            ),
            Some(s) if s.handshake_in_flight => format!("handshaking ({} queued)", s.queued),
            Some(_) => "idle".into(),
            None => "unknown".into(),
        }
    }

    pub fn host_id(&self) -> &HostId {
        &self.cfg.host_id
    }

    pub fn datapath_counters(
        &self,
    ) -> anyhow::Result<Vec<(pn_common::maps::CounterKey, pn_common::maps::Counter)>> {
        Ok(self.dp().counters()?)
    }
}

/// Stable, non-zero index of a peer host in the datapath.
fn peer_index(host: &HostId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in host.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn validate_ifname(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "lo"
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError(format!(
            "invalid interface name {name:?}: 1 to 15 characters among a-z, A-Z, 0-9, -, _ and ."
        )))
    }
}

fn random_uuid() -> Uuid {
    Uuid::from_random_bytes(*uuid::Uuid::new_v4().as_bytes())
}

fn resolv_conf_dir(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/')).then(|| PathBuf::from("/etc/netns").join(netns))
}

/// `ip netns exec NAME` bind-mounts `/etc/netns/NAME/resolv.conf` over
/// `/etc/resolv.conf`: containers that are named namespaces get our DNS.
/// `ndots:3` makes names relative to the network (`N.TYPE.ap-X`, two dots)
/// try the search domain first, while most names of the world go straight out.
fn write_resolv_conf(ns: &Netns, network: &NetworkId, dns: Ipv4Addr) -> std::io::Result<()> {
    let Some(dir) = ns.name.as_deref().and_then(resolv_conf_dir) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "# written by pn-agent for a container of {network}\nnameserver {dns}\nsearch {network}.{}\noptions ndots:3 timeout:2 attempts:2\n",
        names::ZONE
    );
    let tmp = dir.join("resolv.conf.pn-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("resolv.conf"))
}

fn remove_resolv_conf(netns: &str) {
    if let Some(dir) = resolv_conf_dir(netns) {
        let path = dir.join("resolv.conf");
        if std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("# written by pn-agent")) {
            let _ = std::fs::remove_file(&path);
            // Only if we left it empty.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, i: u32) -> ContainerKey {
        ContainerKey {
            app: "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap(),
            ctype: t.parse().unwrap(),
            index: i,
        }
    }

    #[test]
    fn host_interface_names_are_short_stable_and_distinct() {
        let a = host_ifname(&key("web", 1));
        assert_eq!(a, host_ifname(&key("web", 1)));
        assert!(a.len() <= 15 && a.starts_with(HOST_IF_PREFIX), "{a}");
        let all: HashSet<_> = (1..500).map(|i| host_ifname(&key("web", i))).collect();
        assert_eq!(all.len(), 499);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(validate_ifname("pn0").is_ok());
        assert!(validate_ifname("eth1.100").is_ok());
        for bad in ["", "lo", "a/b", "way-too-long-name", "sp ace", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_names_follow_the_contract() {
        let net: NetworkId = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c".parse().unwrap();
        let names = container_names(&net, &key("web", 1));
        assert_eq!(
            names,
            [
                "1.web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
            ]
        );
        assert_eq!(container_names(&net, &key("worker", 2)).len(), 2);
    }
}
