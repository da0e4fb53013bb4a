//! The tunnel at start: made before the datapath loads, running first
//! (resumed from the service manager or opened afresh), and its index in
//! the pinned configuration as soon as it is up.

use std::sync::Arc;

use pn_tunnel::{self as tun, device::Device, handshake::StaticKeys};

use super::super::{MemberTable, TUN_DEV, takeover};
use crate::{
    config::RunConfig,
    datapath::pins,
    handover::service::Stored,
    netlink::Netlink,
    store::{Backend, view::MembershipView},
};

/// The tunnel's device (not running yet), when this host advertises an
/// endpoint.
pub(super) fn new_tunnel(
    cfg: &RunConfig,
    host_keys: &StaticKeys,
    members: &MemberTable,
) -> Option<Arc<Device>> {
    cfg.advertise.map(|_| {
        let seed = u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let t = tun::Tunnel::new(cfg.tunnel.clone(), host_keys.clone(), seed);
        Arc::new(Device::new(
            t,
            Arc::new(members.clone()),
            cfg.tunnel_io.clone(),
        ))
    })
}

/// Without a predecessor, the tunnel runs first: the programs and maps of
/// the previous agent still enforce, only the tunnel waited for an agent.
/// It resumes what the service manager kept, or opens afresh with the
/// members and peers of a first listing (not the datapath's, whose load
/// takes longer). Returns that listing's view, if one was read.
pub(super) async fn start_tunnel_early(
    dev: &Device,
    stored: Option<Stored>,
    backend: &dyn Backend,
    netlink: &Netlink,
    cfg: &RunConfig,
    members: &MemberTable,
    mtu: u32,
) -> anyhow::Result<Option<MembershipView>> {
    let resumed = match stored {
        Some(s) if takeover::io_fits(&s.io, cfg) => takeover::resume_stored(dev, members, s),
        _ => false,
    };
    if resumed {
        takeover::route_tunnel(cfg, netlink, mtu).await?;
        return Ok(None);
    }
    let view = super::early_view(backend, netlink, cfg, members, dev).await;
    if dev.listen().is_none() {
        takeover::open_tunnel(dev, cfg, netlink, mtu).await?;
    }
    Ok(view)
}

/// The tunnel's index written into the pinned `PN_CONFIG` as soon as the
/// tunnel is up (issue 25: the load takes ~100 ms more, and until then the
/// programs drop remote members' packets). A start that fails puts 0 back:
/// with no agent reading the tunnel, remote members' traffic is dropped
/// and counted (`no_tunnel`) as after a stop.
pub(super) struct EarlyTunnel {
    bpffs: std::path::PathBuf,
    armed: bool,
}

impl EarlyTunnel {
    pub(super) async fn write(cfg: &RunConfig, netlink: &Netlink) -> Option<EarlyTunnel> {
        let (idx, _) = netlink.link(TUN_DEV).await.ok().flatten()?;
        match pins::set_pinned_tunnel(crate::EBPF_OBJECT, &cfg.bpffs, idx) {
            Ok(true) => Some(EarlyTunnel {
                bpffs: cfg.bpffs.clone(),
                armed: true,
            }),
            Ok(false) => None,
            Err(e) => {
                log::warn!("tunnel up, its index not written before the load: {e}");
                None
            }
        }
    }

    /// The start went through: the agent owns the index now.
    pub(super) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for EarlyTunnel {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = pins::set_pinned_tunnel(crate::EBPF_OBJECT, &self.bpffs, 0)
        {
            log::error!("marking the tunnel down after a failed start: {e}");
        }
    }
}
