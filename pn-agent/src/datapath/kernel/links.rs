//! Attaching the programs to links and pinning the links under the
//! agent's bpffs directory: the container veths (TCX, one link per
//! direction), the underlay (XDP) and the tunnel's device. A pinned link
//! outlives the agent, and the next agent swaps its program in place, so an
//! interface is never left unfiltered across a restart.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use pn_common::objects;

use super::Kernel;
use crate::datapath::error::{Context, Result, plain};

impl Kernel {
    /// Whether an earlier agent left the underlay guard attached to `ifname`.
    pub fn underlay_pinned(&self, ifname: &str) -> bool {
        self.xdp_dir.join(ifname).exists()
    }

    /// Marks the tunnel down in `PN_CONFIG` (the rest kept): the programs
    /// then drop traffic to remote members (no_tunnel) until an agent puts
    /// a tunnel up again.
    pub fn clear_tunnel(&mut self) -> Result<()> {
        let mut cfg = self.config.get(&0, 0).ctx(|| "reading PN_CONFIG".into())?;
        cfg.tunnel_ifindex = 0;
        self.set_config(cfg)
    }

    /// Attaches the tunnel's entry check to its device's egress, first on
    /// the hook. Not pinned: the device goes with the agent.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<()> {
        let name = objects::PROG_INTO_TUNNEL;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| plain(format!("program {name} missing")))?
            .try_into()
            .ctx(|| format!("program {name}"))?;
        prog.attach_with_options(
            ifname,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .ctx(|| format!("attaching {name} to {ifname}"))?;
        Ok(())
    }

    fn link_pin(&self, ifname: &str, suffix: &str) -> PathBuf {
        // bpffs refuses names with a dot.
        self.links_dir.join(format!("{ifname}_{suffix}"))
    }

    pub(super) fn attach_links(&mut self, ifname: &str) -> Result<()> {
        for (prog_name, attach_type, suffix) in [
            (objects::PROG_FROM_CONTAINER, TcAttachType::Ingress, "in"),
            (objects::PROG_TO_CONTAINER, TcAttachType::Egress, "eg"),
        ] {
            let pin = self.link_pin(ifname, suffix);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .ok_or_else(|| plain(format!("program {prog_name} missing")))?
                .try_into()
                .ctx(|| format!("program {prog_name}"))?;
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                let link: Result<SchedClassifierLink, _> = FdLink::from(old).try_into();
                match link.map(|l| prog.attach_to_link(l)) {
                    // The pin now refers to the updated link: nothing else to keep.
                    Ok(Ok(id)) => {
                        drop(prog.take_link(id));
                        continue;
                    }
                    // The interface of that link is gone (or it is not ours):
                    // forget it and attach afresh.
                    _ => {
                        std::fs::remove_file(&pin)
                            .ctx(|| format!("removing stale pin {}", pin.display()))?;
                    }
                }
            }
            // First on the hook: a program attached before ours cannot
            // pass a packet past the checks.
            let id = prog
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .ctx(|| format!("attaching {prog_name} to {ifname}"))?;
            let link = prog.take_link(id).ctx(|| "taking link".into())?;
            let fd: FdLink = link.try_into().ctx(|| "link is not an fd link".into())?;
            fd.pin(&pin).ctx(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }

    pub(super) fn detach_links(&mut self, ifname: &str) -> Result<()> {
        for suffix in ["in", "eg"] {
            // Unpinning drops the last reference: the link detaches.
            self.unpin(&self.link_pin(ifname, suffix))?;
        }
        Ok(())
    }

    /// Interfaces that have pinned links (attached by this or an earlier agent).
    pub fn pinned_interfaces(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(&self.links_dir)
            .ctx(|| format!("reading {}", self.links_dir.display()))?
        {
            let name = entry.ctx(|| "reading pins".into())?.file_name();
            if let Some((ifname, _)) = name.to_string_lossy().rsplit_once('_') {
                out.insert(ifname.to_string());
            }
        }
        Ok(out)
    }

    /// Attaches the underlay guard (XDP) to `ifname`, replacing in place the
    /// program of a link an earlier agent pinned; detaches it from any other
    /// interface it was pinned on.
    pub fn attach_underlay(&mut self, ifname: &str, mode: XdpMode) -> Result<()> {
        for entry in std::fs::read_dir(&self.xdp_dir)
            .ctx(|| format!("reading {}", self.xdp_dir.display()))?
        {
            let path = entry.ctx(|| "reading pins".into())?.path();
            if path.file_name().is_some_and(|n| n != ifname) {
                self.unpin(&path)?;
            }
        }
        let pin = self.xdp_dir.join(ifname);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(objects::PROG_UNDERLAY)
            .ok_or_else(|| plain(format!("program {} missing", objects::PROG_UNDERLAY)))?
            .try_into()
            .ctx(|| objects::PROG_UNDERLAY.to_string())?;
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link: Result<XdpLink, _> = FdLink::from(old).try_into();
            match link.map(|l| prog.attach_to_link(l)) {
                Ok(Ok(id)) => {
                    drop(prog.take_link(id));
                    return Ok(());
                }
                _ => std::fs::remove_file(&pin)
                    .ctx(|| format!("removing stale pin {}", pin.display()))?,
            }
        }
        let id = prog
            .attach(ifname, mode)
            .ctx(|| format!("attaching the underlay guard to {ifname}"))?;
        let link = prog.take_link(id).ctx(|| "taking link".into())?;
        let fd: FdLink = link
            .try_into()
            .ctx(|| "XDP link is not an fd link".into())?;
        fd.pin(&pin).ctx(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    fn unpin(&self, pin: &Path) -> Result<()> {
        match PinnedLink::from_pin(pin) {
            Ok(link) => {
                link.unpin()
                    .ctx(|| format!("unpinning {}", pin.display()))?;
            }
            Err(_) if !pin.exists() => {}
            Err(_) => std::fs::remove_file(pin).ctx(|| format!("removing {}", pin.display()))?,
        }
        Ok(())
    }
}
