//! The running agent: follows the membership store, keeps the kernel (maps,
//! programs, veths) and the tunnel in line with it, and carries out the
//! control commands.
//!
//! How a store change reaches the kernel: a command (of this agent or of any
//! agent of the fleet) writes the store; the watch delivers the change to
//! [`follow`], which updates the [`MembershipView`] and asks [`reconcile`]'s
//! pure `desired()` what the kernel should hold for the containers it
//! touched; [`Agent::converge`] hands that to the datapath (which makes its
//! own diff), the tunnel and netlink, then publishes the applied revision.
//! A command returns once its revision is applied. A full resync (start,
//! watch broken) takes the same path for the whole view.
//!
//! Files: `start` wires the subsystems (their metrics included), `follow`
//! tracks the store, `reconcile` computes the desired state, `converge`
//! applies it, `commands`, `cni` (the CNI plugin's requests), `moving`
//! (`app move`) and `status` answer the API, `reap` detaches containers
//! whose interface vanished, `edge` holds what the edge needs besides the
//! view (host facts, the nftables table, published ports), `health` probes
//! local containers of apps with a health port, `share` sweeps the
//! connection tables for the containers' shares, `names` gives the datapath's
//! metrics the membership's names, `takeover` is the agent's side of a
//! hand-over (and opens the tunnel otherwise), `dns_server` starts the DNS
//! server on the view.

mod attached;
mod attaching;
mod cni;
mod commands;
mod converge;
mod dns_server;
pub mod edge;
mod edge_table;
mod follow;
mod health;
mod members;
mod moving;
mod names;
mod pending;
mod reap;
pub mod reconcile;
mod share;
mod start;
mod status;
mod takeover;

pub use members::MemberTable;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
};

use pn_common::ids::HostId;
use pn_tunnel::{device::Device, handshake::StaticKeys};
use tokio::sync::watch;

use crate::{
    config::RunConfig,
    datapath::Datapath,
    dns::DnsStats,
    flows::FlowHub,
    netlink::Netlink,
    store::{Membership, health::Health, view::MembershipView},
};

/// The veth whose host end holds the gateway address.
pub const GATEWAY_DEV: &str = "pn-gw";
/// The TUN device remote members are routed to.
pub const TUN_DEV: &str = "pn-tun";

/// The containers' gateway, on [`GATEWAY_DEV`].
fn gateway_addr() -> Ipv4Addr {
    Ipv4Addr::from(pn_common::ip4_octets(pn_common::GATEWAY))
}

/// A container's IPv6 gateway: link-local, as IPv4's 169.254.1.1 (never
/// one of the network's addresses, which the allocator keeps clear of).
fn gateway6_addr() -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)
}

/// The agent. Locks, when more than one is needed, are taken in this order
/// and never the other way: `local_ops` (async; held across netlink and
/// store calls of one attach or reconciliation) → `view` (read; never held
/// across an `.await`) → `datapath` (never held across an `.await`).
pub struct Agent {
    pub cfg: RunConfig,
    /// MTU given to container interfaces.
    container_mtu: u32,
    membership: Membership,
    pub view: Arc<RwLock<MembershipView>>,
    pub datapath: Arc<Mutex<Datapath>>,
    netlink: Netlink,
    /// Serialises everything that creates or removes local interfaces.
    local_ops: tokio::sync::Mutex<()>,
    applied: watch::Sender<i64>,
    pub flows: FlowHub,
    /// Connection and request tracking (its log lines go to `flows`).
    pub conns: crate::conns::ConnHub,
    pub store_health: Arc<Health>,
    pub dns_stats: Arc<DnsStats>,
    dns_upstreams: Vec<std::net::SocketAddr>,
    host_keys: StaticKeys,
    members: MemberTable,
    /// The encrypted tunnel, when this host advertises an endpoint.
    pub tunnel: Option<Arc<Device>>,
    /// The edge's nftables table (locked apart from the datapath, and only
    /// off the async threads: applying it runs `nft`).
    pub edge: Arc<Mutex<edge_table::EdgeRuntime>>,
    /// The edge's settings and what the agent found on its host, refreshed
    /// by the edge's repair; `None` until first read.
    edge_local: RwLock<Option<reconcile::EdgeLocal>>,
    /// Publications written and not yet seen in the view.
    pending: pending::Pending,
    /// What this agent attached, as it made it (host-local truth).
    attached: attached::Attached,
    /// Attaches written and not yet in the view: no converge removes them.
    attaching: attaching::Attaching,
    /// Whether pn owns the host's forwarding.
    forwarding: crate::edge::Owners,
    /// The DNS server, running for the agent's life once started (after a
    /// predecessor released its address).
    dns: Mutex<Option<crate::dns::DnsHandle>>,
}

impl Agent {
    pub fn host_id(&self) -> &HostId {
        &self.cfg.host_id
    }

    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, MembershipView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// On the way out: the tunnel goes with this process, so the programs
    /// must stop sending to remote members before it does.
    pub fn stopping(&self) {
        if self.tunnel.is_some()
            && let Err(e) = self.dp().maps_mut().clear_tunnel()
        {
            log::error!("marking the tunnel down in the datapath: {e}");
        }
    }

    pub fn store_reachable(&self) -> bool {
        self.store_health.reachable()
    }
}
