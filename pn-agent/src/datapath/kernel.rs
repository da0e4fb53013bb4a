//! Loading the eBPF programs, pinning their maps and links under the agent's
//! bpffs directory, attaching them to container interfaces, and reading and
//! writing the maps. Pins make enforcement outlive the agent process: when the
//! agent stops or restarts, the programs stay attached with their last maps,
//! and the next agent replaces the programs in place (TCX link update) with no
//! moment where a container is unfiltered (`links`). Maps are pinned per
//! layout and migrated to a new one (`pins`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use pn_common::{
    Ip4, Ip6, Reason,
    event::EventKind,
    maps::{Config, Counter, Counters, Endpoint, EventBudget, Iface, Peer},
    objects,
};

use super::error::{Context, Result, plain};
use super::state::{ServiceState, State};
use super::{maps::Maps, pins};

mod links;
mod sweep;

const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `dir` is a directory on a bpffs, mounting one if needed.
/// `ip netns exec` gives its command a fresh /sys without a bpffs, so this is
/// the normal case for an agent started that way.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mut existing = dir.to_path_buf();
    while !existing.exists() {
        if !existing.pop() {
            break;
        }
    }
    if !is_bpffs(&existing) {
        // /sys/fs/bpf is the conventional mount point and cannot hold other
        // directories until a bpffs is there; elsewhere, mount on `dir` itself.
        let target = if existing == Path::new("/sys/fs/bpf") {
            existing.clone()
        } else {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
            dir.to_path_buf()
        };
        nix::mount::mount(
            Some("bpf"),
            &target,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .ctx(|| format!("mounting a bpffs on {}", target.display()))?;
        // Mounted here, it may be private to this process's mount namespace
        // (`ip netns exec` gives one): then the pins go with the agent, and
        // its programs come off every interface until the next one starts.
        log::warn!(
            "mounted a bpffs on {}: if only this agent's mount namespace sees it, enforcement stops with the agent (mount one where the service starts)",
            target.display()
        );
    }
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))
}

/// The loaded programs and their pinned maps: the real [`Maps`].
pub struct Kernel {
    // Owns the loaded programs: dropping it would unload programs that have no
    // pinned link yet.
    ebpf: Ebpf,
    endpoints: HashMap<MapData, Ip4, Endpoint>,
    endpoints6: HashMap<MapData, Ip6, Endpoint>,
    ifaces: HashMap<MapData, u32, Iface>,
    /// `PN_MEMO_GEN` (see `pn_common::memo`), whether the memo is on
    /// (`--tc-memo`; off, the generation stays odd from load on), and
    /// whether this agent has made it odd for a batch of writes not
    /// settled yet.
    memo_gen: Array<MapData, u64>,
    memo: bool,
    memo_writing: bool,
    counters: PerCpuArray<MapData, Counters>,
    budget: PerCpuArray<MapData, EventBudget>,
    config: Array<MapData, Config>,
    peers: HashMap<MapData, Ip4, Peer>,
    peers6: HashMap<MapData, Ip6, Peer>,
    tags: HashMap<MapData, u32, u32>,
    edge: super::edge::EdgeMaps,
    events: Option<RingBuf<MapData>>,
    conn: super::conn::ConnMaps,
    lb: super::lb::LbMaps,
    share: sweep::ShareMaps,
    lb6: super::lb::LbMaps<Ip6>,
    links_dir: PathBuf,
    xdp_dir: PathBuf,
    /// The maps hold an earlier agent's entries (see [`Kernel::carried`]).
    carried: bool,
}

impl Kernel {
    /// Loads the programs, reusing the maps pinned under `bpffs` if an agent
    /// ran before (so enforcement state and counters carry over). `memo`:
    /// `--tc-memo`, whether the programs may use their memo.
    pub fn load(object: &[u8], bpffs: &Path, memo: bool) -> Result<Kernel> {
        if object.is_empty() {
            return Err(plain(
                "this pn-agent was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it with `cargo xtask build`".into(),
            ));
        }
        ensure_bpffs(bpffs)?;
        let links_dir = bpffs.join("links");
        let xdp_dir = bpffs.join("xdp");
        for d in [&links_dir, &xdp_dir] {
            std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        let pins = pins::prepare(bpffs, pins::Layout::of_object(object)?)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.load_dir)
            .load(object)
            .ctx(|| "loading the eBPF object".into())?;
        let dir = pins.dir().to_path_buf();
        let reused = pins.load_dir == dir;
        let migrated = pins.finish()?;
        let carried = reused || (migrated.from.is_some() && migrated.skipped.is_empty());
        if let Some(from) = &migrated.from {
            log::info!(
                "maps of another layout in {}: {} entries of {} maps carried to {}{}",
                from.display(),
                migrated.entries,
                migrated.maps,
                dir.display(),
                if migrated.skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} refilled from the store)", migrated.skipped.join(", "))
                }
            );
        }
        for name in [
            objects::PROG_FROM_CONTAINER,
            objects::PROG_TO_CONTAINER,
            objects::PROG_INTO_TUNNEL,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| plain(format!("program {name} missing from the object")))?
                .try_into()
                .ctx(|| format!("program {name}"))?;
            prog.load()
                .ctx(|| format!("loading program {name} (verifier)"))?;
            // How close each program is to the verifier's limit (1 000 000).
            if let Some(n) = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
            {
                log::info!("program {name}: {n} instructions verified");
            }
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(objects::PROG_UNDERLAY)
            .ok_or_else(|| {
                plain(format!(
                    "program {} missing from the object",
                    objects::PROG_UNDERLAY
                ))
            })?
            .try_into()
            .ctx(|| objects::PROG_UNDERLAY.to_string())?;
        xdp.load()
            .ctx(|| format!("loading program {} (verifier)", objects::PROG_UNDERLAY))?;
        if let Some(n) = xdp.info().ok().and_then(|i| i.verified_instruction_count()) {
            log::info!(
                "program {}: {n} instructions verified",
                objects::PROG_UNDERLAY
            );
        }
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &str,
        ) -> Result<T> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| plain(format!("map {name} missing from the object")))?;
            T::try_from(map).ctx(|| format!("map {name}"))
        }
        let endpoints = take(&mut ebpf, objects::MAP_ENDPOINTS)?;
        let endpoints6 = take(&mut ebpf, objects::MAP_ENDPOINTS6)?;
        let ifaces = take(&mut ebpf, objects::MAP_IFACES)?;
        let mut memo_gen: Array<MapData, u64> = take(&mut ebpf, objects::MAP_MEMO_GEN)?;
        // Whatever the running programs memoised (this layout's maps reused,
        // or carried with their generation) is void from here, before any
        // program of this agent goes on: the next even generation with the
        // memo on, an odd one (never settled) with it off.
        let g = memo_gen.get(&0, 0).ctx(|| "reading PN_MEMO_GEN".into())?;
        let g = pn_common::memo::loaded(g, memo);
        memo_gen.set(0, g, 0).ctx(|| "writing PN_MEMO_GEN".into())?;
        log::info!(
            "tc memo {} (PN_MEMO_GEN {g})",
            if memo { "on" } else { "off" }
        );
        let counters = take(&mut ebpf, objects::MAP_COUNTERS)?;
        let budget = take(&mut ebpf, objects::MAP_EVENT_BUDGET)?;
        let config = take(&mut ebpf, objects::MAP_CONFIG)?;
        let peers = take(&mut ebpf, objects::MAP_PEERS)?;
        let peers6 = take(&mut ebpf, objects::MAP_PEERS6)?;
        let tags = take(&mut ebpf, objects::MAP_TAGS)?;
        let edge = super::edge::EdgeMaps {
            conns: take(&mut ebpf, objects::MAP_CONNS)?,
            conns6: take(&mut ebpf, objects::MAP_CONNS6)?,
            deny: take(&mut ebpf, objects::MAP_EGRESS_DENY)?,
            deny6: take(&mut ebpf, objects::MAP_EGRESS_DENY6)?,
        };
        let events = Some(take(&mut ebpf, objects::MAP_EVENTS)?);
        let conn = super::conn::ConnMaps {
            events: Some(take(&mut ebpf, objects::MAP_CONN_EVENTS)?),
            track: take(&mut ebpf, objects::MAP_CONN_CFG)?,
            lost: take(&mut ebpf, objects::MAP_LOST)?,
        };
        let lb = super::lb::LbMaps {
            services: take(&mut ebpf, objects::MAP_LB_SERVICES)?,
            slots: take(&mut ebpf, objects::MAP_LB_SLOTS)?,
            backends: take(&mut ebpf, objects::MAP_LB_BACKENDS)?,
            stats: take(&mut ebpf, objects::MAP_LB_STATS)?,
            name: "PN_LB",
        };
        let lb6 = super::lb::LbMaps {
            services: take(&mut ebpf, objects::MAP_LB6_SERVICES)?,
            slots: take(&mut ebpf, objects::MAP_LB6_SLOTS)?,
            backends: take(&mut ebpf, objects::MAP_LB6_BACKENDS)?,
            stats: take(&mut ebpf, objects::MAP_LB6_STATS)?,
            name: "PN_LB6",
        };
        let mut share = sweep::ShareMaps {
            count: take(&mut ebpf, objects::MAP_CONN_COUNT)?,
            lb_conns: take(&mut ebpf, objects::MAP_LB_CONNS)?,
            lb6_conns: take(&mut ebpf, objects::MAP_LB6_CONNS)?,
            clients: take(&mut ebpf, objects::MAP_LB_CLIENTS)?,
        };
        share.mark_clients()?;
        Ok(Kernel {
            ebpf,
            endpoints,
            endpoints6,
            ifaces,
            memo_gen,
            memo,
            memo_writing: false,
            counters,
            budget,
            config,
            peers,
            peers6,
            tags,
            edge,
            events,
            conn,
            lb,
            share,
            lb6,
            links_dir,
            xdp_dir,
            carried,
        })
    }

    /// Whether the maps hold an earlier agent's entries: its pins reused, or
    /// every map carried from another layout's. If not (no pins, as after
    /// the last agent's bpffs went with it, or a map of another layout not
    /// carried), they start empty and only the first sync fills them.
    pub fn carried(&self) -> bool {
        self.carried
    }

    /// The ring buffer of flow and drop events (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Connection and request tracking's maps.
    pub fn conn(&mut self) -> &mut super::conn::ConnMaps {
        &mut self.conn
    }

    pub fn conn_ref(&self) -> &super::conn::ConnMaps {
        &self.conn
    }

    /// Writes the programs' settings, unless they hold these already.
    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        if self.config.get(&0, 0).is_ok_and(|c| c == cfg) {
            return Ok(());
        }
        self.config
            .set(0, cfg, 0)
            .ctx(|| "writing PN_CONFIG".into())
    }

    /// Sets the fleet's IPv6 pool in `PN_CONFIG` (the rest kept): learnt
    /// after the start, once a network has IPv6.
    pub fn set_pool6(&mut self, pool6: ipnet::Ipv6Net) -> Result<()> {
        let mut cfg = self.config.get(&0, 0).ctx(|| "reading PN_CONFIG".into())?;
        cfg.pool6_addr = pool6.network().octets();
        cfg.pool6_mask = pool6.netmask().octets();
        self.set_config(cfg)
    }

    /// The balancer's counters by service address and backend, summed over
    /// CPUs.
    pub fn lb_stats(&self) -> Result<BTreeMap<pn_common::lb::LbStatsKey, pn_common::lb::LbStats>> {
        self.lb.stats()
    }

    /// The same for IPv6 service addresses.
    pub fn lb6_stats(
        &self,
    ) -> Result<BTreeMap<pn_common::lb::LbStatsKey<Ip6>, pn_common::lb::LbStats>> {
        self.lb6.stats()
    }

    /// Counters summed over CPUs, by endpoint and reason: the host's row
    /// (endpoint 0) and the rows of `ifaces` (the interfaces this agent
    /// gave a slot). Reasons never counted are left out.
    pub fn counters(&self, ifaces: &BTreeMap<u32, Iface>) -> Result<Vec<(Ip4, Reason, Counter)>> {
        let rows = std::iter::once((0, 0)).chain(
            ifaces
                .values()
                .filter(|i| i.slot != 0)
                .map(|i| (i.slot, i.addr)),
        );
        let mut out = Vec::new();
        for (slot, endpoint) in rows {
            let per_cpu = self
                .counters
                .get(&u32::from(slot), 0)
                .ctx(|| format!("reading PN_COUNTERS[{slot}]"))?;
            let mut sum = Counters::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            for (r, c) in Reason::ALL.iter().zip(sum.by_reason) {
                if c.packets != 0 {
                    out.push((endpoint, *r, c));
                }
            }
        }
        Ok(out)
    }

    /// Events held back by the per-CPU budget, per kind, summed over CPUs.
    pub fn events_suppressed(&self) -> Result<Vec<(EventKind, u64)>> {
        [EventKind::Drop, EventKind::NewFlow]
            .into_iter()
            .map(|k| {
                let per_cpu = self
                    .budget
                    .get(&EventBudget::index(k), 0)
                    .ctx(|| "reading PN_EVBUDGET".into())?;
                Ok((k, per_cpu.iter().map(|b| b.suppressed).sum()))
            })
            .collect()
    }

    /// Before a write to a map the programs memoise: the generation odd
    /// (once per batch), so the programs look every key up in the maps
    /// until [`Maps::settle`]. With the memo off too: odd since load, but
    /// a predecessor with it on may have settled it since (both agents
    /// write during a hand-over); this agent's writes are never made under
    /// an even generation it would not bump.
    fn memo_writing(&mut self) -> Result<()> {
        if self.memo_writing {
            return Ok(());
        }
        let g = (self.memo_gen.get(&0, 0)).ctx(|| "reading PN_MEMO_GEN".into())?;
        (self.memo_gen.set(0, pn_common::memo::writing(g), 0))
            .ctx(|| "writing PN_MEMO_GEN".into())?;
        self.memo_writing = true;
        Ok(())
    }

    /// Entries of a hash map, read whole.
    fn all<K: aya::Pod + Ord, V: aya::Pod>(
        map: &HashMap<MapData, K, V>,
        name: &str,
    ) -> Result<BTreeMap<K, V>> {
        map.iter()
            .collect::<Result<_, _>>()
            .ctx(|| format!("reading {name}"))
    }
}

/// A missing key is what the caller wanted: not an error.
fn removed(r: Result<(), aya::maps::MapError>, entry: impl FnOnce() -> String) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", entry())),
    }
}

/// An address as errors name it (one apply reports every failed write,
/// so each says which entry it was).
fn dotted(ip: Ip4) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(pn_common::ip4_octets(ip))
}

impl Maps for Kernel {
    fn read(&mut self) -> Result<State> {
        Ok(State {
            endpoints: Self::all(&self.endpoints, "PN_ENDPOINTS")?,
            endpoints6: Self::all(&self.endpoints6, "PN_ENDPOINTS6")?,
            ifaces: Self::all(&self.ifaces, "PN_IFACES")?,
            attached: self.pinned_interfaces()?,
            peers: Self::all(&self.peers, "PN_PEERS")?,
            peers6: Self::all(&self.peers6, "PN_PEERS6")?,
            tags: Self::all(&self.tags, "PN_TAGS")?.into_keys().collect(),
            services: self.lb.read()?,
            services6: self.lb6.read()?,
            egress_deny: self.edge.deny()?,
            egress_deny6: self.edge.deny6()?,
        })
    }

    fn set_service(
        &mut self,
        vip: Ip4,
        old: Option<&ServiceState>,
        new: &ServiceState,
    ) -> Result<()> {
        (self.lb.set(vip, old, new)).ctx(|| format!("service {}", dotted(vip)))
    }

    fn remove_service(&mut self, vip: Ip4, old: &ServiceState) -> Result<()> {
        (self.lb.remove(vip, old)).ctx(|| format!("removing service {}", dotted(vip)))
    }

    fn set_service6(
        &mut self,
        vip: Ip6,
        old: Option<&ServiceState<Ip6>>,
        new: &ServiceState<Ip6>,
    ) -> Result<()> {
        let at = std::net::Ipv6Addr::from(vip);
        (self.lb6.set(vip, old, new)).ctx(|| format!("service {at}"))
    }

    fn remove_service6(&mut self, vip: Ip6, old: &ServiceState<Ip6>) -> Result<()> {
        let at = std::net::Ipv6Addr::from(vip);
        (self.lb6.remove(vip, old)).ctx(|| format!("removing service {at}"))
    }

    fn set_endpoint(&mut self, ip: Ip4, ep: Endpoint) -> Result<()> {
        self.memo_writing()?;
        self.endpoints
            .insert(ip, ep, 0)
            .ctx(|| format!("writing PN_ENDPOINTS[{}]", dotted(ip)))
    }

    fn remove_endpoint(&mut self, ip: Ip4) -> Result<()> {
        self.memo_writing()?;
        removed(self.endpoints.remove(&ip), || {
            format!("PN_ENDPOINTS[{}]", dotted(ip))
        })
    }

    fn set_endpoint6(&mut self, ip: Ip6, ep: Endpoint) -> Result<()> {
        self.memo_writing()?;
        let name = std::net::Ipv6Addr::from(ip);
        (self.endpoints6.insert(ip, ep, 0)).ctx(|| format!("writing PN_ENDPOINTS6[{name}]"))
    }

    fn remove_endpoint6(&mut self, ip: Ip6) -> Result<()> {
        self.memo_writing()?;
        removed(self.endpoints6.remove(&ip), || {
            format!("PN_ENDPOINTS6[{}]", std::net::Ipv6Addr::from(ip))
        })
    }

    fn set_iface(&mut self, ifindex: u32, iface: Iface) -> Result<()> {
        self.memo_writing()?;
        self.ifaces
            .insert(ifindex, iface, 0)
            .ctx(|| format!("writing PN_IFACES[{ifindex}]"))
    }

    fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        self.memo_writing()?;
        removed(self.ifaces.remove(&ifindex), || {
            format!("PN_IFACES[{ifindex}]")
        })
    }

    fn settle(&mut self) -> Result<()> {
        if !self.memo_writing {
            return Ok(());
        }
        // Off: left odd.
        if !self.memo {
            self.memo_writing = false;
            return Ok(());
        }
        let g = (self.memo_gen.get(&0, 0)).ctx(|| "reading PN_MEMO_GEN".into())?;
        (self.memo_gen.set(0, pn_common::memo::written(g), 0))
            .ctx(|| "writing PN_MEMO_GEN".into())?;
        self.memo_writing = false;
        Ok(())
    }

    fn set_peer(&mut self, ip: Ip4, peer: Peer) -> Result<()> {
        self.peers
            .insert(ip, peer, 0)
            .ctx(|| format!("writing PN_PEERS[{}]", dotted(ip)))
    }

    fn remove_peer(&mut self, ip: Ip4) -> Result<()> {
        removed(self.peers.remove(&ip), || {
            format!("PN_PEERS[{}]", dotted(ip))
        })
    }

    fn set_peer6(&mut self, ip: Ip6, peer: Peer) -> Result<()> {
        let name = std::net::Ipv6Addr::from(ip);
        (self.peers6.insert(ip, peer, 0)).ctx(|| format!("writing PN_PEERS6[{name}]"))
    }

    fn remove_peer6(&mut self, ip: Ip6) -> Result<()> {
        removed(self.peers6.remove(&ip), || {
            format!("PN_PEERS6[{}]", std::net::Ipv6Addr::from(ip))
        })
    }

    fn set_tag(&mut self, tag: u32) -> Result<()> {
        self.tags
            .insert(tag, 1, 0)
            .ctx(|| format!("writing PN_TAGS[{tag}]"))
    }

    fn remove_tag(&mut self, tag: u32) -> Result<()> {
        removed(self.tags.remove(&tag), || format!("PN_TAGS[{tag}]"))
    }

    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.attach_links(ifname)
    }

    /// Deleting the interface detaches too; this also removes the pins.
    fn detach(&mut self, ifname: &str) -> Result<()> {
        self.detach_links(ifname)
    }

    /// Zeroes a counter row on every CPU (before an interface gets it).
    fn reset_counters(&mut self, slot: u16) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| plain(format!("counting CPUs ({what}): {e}")))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .ctx(|| "zeroed counters".into())?;
        self.counters
            .set(u32::from(slot), zeros, 0)
            .ctx(|| format!("zeroing PN_COUNTERS[{slot}]"))?;
        self.reset_conn_count(slot)
    }

    fn forget_conns(&mut self, container: Ip4) -> Result<()> {
        (self.edge.forget_conns(container))
            .ctx(|| format!("the connections of {}", dotted(container)))
    }

    fn forget_conns6(&mut self, container: Ip6) -> Result<()> {
        let name = std::net::Ipv6Addr::from(container);
        (self.edge.forget_conns6(container)).ctx(|| format!("the connections of {name}"))
    }

    fn set_deny(&mut self, range: (Ip4, u8), kind: u32) -> Result<()> {
        self.edge.set_deny(range, kind)
    }

    fn remove_deny(&mut self, range: (Ip4, u8)) -> Result<()> {
        self.edge.remove_deny(range)
    }

    fn set_deny6(&mut self, range: (Ip6, u8), kind: u32) -> Result<()> {
        self.edge.set_deny6(range, kind)
    }

    fn remove_deny6(&mut self, range: (Ip6, u8)) -> Result<()> {
        self.edge.remove_deny6(range)
    }
}
