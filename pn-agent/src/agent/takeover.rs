//! The agent's side of a hand-over (`crate::handover`): as a successor, it
//! takes the tunnel of the agent it replaces; as a predecessor, it freezes
//! its tunnel for a successor. Also what a start needs either way: the
//! tunnel's I/O on fresh descriptors.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use pn_tunnel::{
    carry::COUNTER_MARGIN,
    device::{Device, Io},
};
use zeroize::Zeroizing;

use super::{Agent, MemberTable, TUN_DEV, gateway_addr};
use crate::{
    config::RunConfig,
    handover::{
        Handing, Predecessor,
        service::{self, Stored},
        state::AgentState,
    },
    netlink::Netlink,
};

/// How long a successor waits for its predecessor to exit.
const PREDECESSOR_EXIT: Duration = Duration::from_secs(10);

/// Opens the tunnel's device and socket and starts its I/O (no
/// predecessor, or one that had no tunnel to give).
pub(super) async fn open_tunnel(
    dev: &Device,
    cfg: &RunConfig,
    netlink: &Netlink,
    mtu: u32,
) -> anyhow::Result<()> {
    let Some(advertise) = cfg.advertise else {
        return Ok(());
    };
    let listen = tunnel_listen(advertise);
    dev.run(dev.open(TUN_DEV, listen)?)
        .context("starting the tunnel")?;
    route_tunnel(cfg, netlink, mtu).await?;
    log::info!(
        "tunnel on udp {listen} (prefers {}), advertised as {advertise}",
        super::status::preference(&cfg.tunnel)
    );
    Ok(())
}

/// Where the tunnel's sockets bind: every address of the advertised
/// endpoint's family, on its port (the peers are of that family).
pub(super) fn tunnel_listen(advertise: SocketAddr) -> SocketAddr {
    let any = match advertise {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(any, advertise.port())
}

/// Whether descriptors handed over (by a predecessor or the service
/// manager) listen where this agent's tunnel must: an `--advertise` that
/// changed family or port across the restart gets fresh sockets rather
/// than sockets its peers can no longer reach.
pub(super) fn io_fits(io: &Io, cfg: &RunConfig) -> bool {
    let (Some(advertise), Ok(have)) = (cfg.advertise, io.local_addr()) else {
        return false;
    };
    let want = tunnel_listen(advertise);
    if have == want {
        return true;
    }
    log::warn!(
        "the tunnel handed over listens on {have}, not {want} (--advertise {advertise}): \
         opening it afresh"
    );
    false
}

/// Resumes the tunnel the service manager kept across a restart: its
/// descriptors, sessions, members and peers, before anything else (the
/// store is read later). Returns whether it runs; unreadable state leaves
/// the descriptors running with no session (pairing afresh).
pub(super) fn resume_stored(dev: &Device, members: &MemberTable, stored: Stored) -> bool {
    match AgentState::decode(&stored.state) {
        Ok(state) => {
            members.set_all(&state.members, &state.members6);
            let peers: Vec<_> = state
                .tunnel
                .peers
                .iter()
                .map(|p| (p.id, p.public, p.endpoint))
                .collect();
            dev.set_peers(&peers);
            let n = dev.import(&state.tunnel);
            log::info!(
                "resumed the tunnel kept by the service manager: {n} sessions, {} IPv4 and {} IPv6 members",
                state.members.len(),
                state.members6.len()
            );
        }
        Err(e) => log::warn!("the tunnel state kept by the service manager is unreadable ({e})"),
    }
    match dev.run(stored.io) {
        Ok(()) => true,
        Err(e) => {
            log::error!("resuming the tunnel: {e}");
            false
        }
    }
}

/// The device up at the container MTU (IPv6 on it when this host gives
/// containers IPv6: the networks' /64s are routed to it at converge), the
/// pool routed to it (remote members; local ones have /32 routes to their
/// veths, which win). A restart finds both as they were and changes nothing.
pub(super) async fn route_tunnel(
    cfg: &RunConfig,
    netlink: &Netlink,
    mtu: u32,
) -> anyhow::Result<()> {
    let idx = netlink.set_up(TUN_DEV, mtu, cfg.ipv6.is_on()).await?;
    netlink.route_to_dev(cfg.pool, idx, gateway_addr()).await?;
    Ok(())
}

impl Agent {
    async fn open_tunnel(&self) -> anyhow::Result<()> {
        match &self.tunnel {
            Some(dev) => open_tunnel(dev, &self.cfg, &self.netlink, self.container_mtu).await,
            None => Ok(()),
        }
    }

    /// Takes the predecessor's tunnel (its I/O stops for the moment this
    /// takes), then waits for it to exit. `synced`: this agent's first
    /// listing of the store went through, and its member tables are that
    /// listing's; otherwise (the store unreachable at start) it takes the
    /// predecessor's, which its follower replaces once the store answers.
    pub(super) async fn take_over(&self, mut p: Predecessor, synced: bool) -> anyhow::Result<()> {
        let compatible = p.compatible;
        let handed = tokio::task::block_in_place(|| p.take())
            .context("taking over from the running agent")?;
        let mut opened_here = true;
        let io = handed.io.filter(|io| io_fits(io, &self.cfg));
        if let (Some(dev), Some(io)) = (&self.tunnel, io) {
            match AgentState::decode(&handed.state) {
                Ok(state) => {
                    if !synced {
                        self.members.set_all(&state.members, &state.members6);
                    }
                    let n = dev.import(&state.tunnel);
                    log::info!(
                        "took over the tunnel: {n} of {} sessions ({} IPv4 and {} IPv6 members handed over{})",
                        state.tunnel.sessions(),
                        state.members.len(),
                        state.members6.len(),
                        if synced {
                            ""
                        } else {
                            ", taken: the store did not answer"
                        }
                    );
                }
                Err(e) => {
                    log::warn!("the running agent's sessions are unreadable ({e}); pairing afresh")
                }
            }
            dev.run(io).context("resuming the tunnel")?;
            opened_here = false;
        }
        drop(handed.state);
        tokio::task::block_in_place(|| p.taken(PREDECESSOR_EXIT))
            .context("waiting for the running agent to exit")?;
        if !compatible {
            log::warn!("the running agent's state is of another version: started afresh");
        }
        if opened_here {
            self.open_tunnel().await?;
        } else {
            route_tunnel(&self.cfg, &self.netlink, self.container_mtu).await?;
        }
        Ok(())
    }

    /// At a stop under a service manager: leaves the tunnel with it, for
    /// the next start (`systemctl restart`).
    /// Whether the tunnel now waits with the service manager.
    pub fn leave_tunnel_with_service_manager(&self) -> bool {
        if !service::under_service_manager() || self.tunnel.is_none() {
            return false;
        }
        // The next start's version is unknown: this agent's (an older
        // one starts afresh, pairing in one handshake).
        let (io, state) = self.freeze(crate::handover::state::version());
        let Some(io) = io else { return false };
        match service::store(&io, &state) {
            Ok(()) => {
                log::info!("the tunnel waits with the service manager for the next start");
                true
            }
            Err(e) => {
                log::warn!("leaving the tunnel with the service manager: {e}");
                false
            }
        }
    }
}

/// The agent as a predecessor: what it gives a successor.
impl Handing for Agent {
    fn freeze(&self, version: u32) -> (Option<Io>, Zeroizing<Vec<u8>>) {
        let Some(dev) = &self.tunnel else {
            return (None, Zeroizing::new(Vec::new()));
        };
        // Nothing reads, seals or sends here once `stop` returns: the
        // export holds every counter taken.
        let io = dev.stop();
        let state = AgentState {
            members: self.members.entries(),
            members6: self.members.entries6(),
            tunnel: dev.export(COUNTER_MARGIN),
        };
        (io, state.encode_as(version))
    }

    fn resume(&self, io: Option<Io>) {
        let Some(dev) = &self.tunnel else { return };
        dev.forget_sessions();
        if let Some(io) = io
            && let Err(e) = dev.run(io)
        {
            log::error!("resuming the tunnel after a failed hand-over: {e}");
        }
    }
}
