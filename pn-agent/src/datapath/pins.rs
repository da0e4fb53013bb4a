//! Versioned pins: the maps are pinned in `BPFFS/maps-<layout>`, where the
//! layout is a fingerprint of every map's type, key and value sizes,
//! capacity and flags as the eBPF object defines them (and of
//! [`pn_common::maps::LAYOUT_REVISION`] for changes of meaning). An agent
//! reuses the pins of its own layout. Finding another layout's pins (an
//! upgrade, or the unversioned `maps` of earlier agents), it does not
//! recreate the maps empty: it loads into a new directory, copies every
//! entry whose layout it can read, moves the directory in place and
//! removes the old one. The programs still attached go on with the old
//! maps until the datapath switches each link (atomically) to the new
//! programs, once the new maps hold their entries.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};

use super::error::{Context, Result, plain};

/// What the object says of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub kind: u32,
    pub key: u32,
    pub value: u32,
    pub max: u32,
    pub flags: u32,
}

const RINGBUF: u32 = 27;
/// Per-CPU hash, array, LRU hash and cgroup storage (`bpf_map_type`).
const PERCPU_KINDS: [u32; 4] = [5, 6, 10, 21];

impl MapDef {
    fn of_info(i: &MapInfo) -> MapDef {
        MapDef {
            kind: i.map_type().map_or(u32::MAX, |t| t as u32),
            key: i.key_size(),
            value: i.value_size(),
            max: i.max_entries(),
            flags: i.map_flags(),
        }
    }

    /// Entries of `old` can be copied as bytes into a map of this layout.
    fn reads(&self, old: &MapDef) -> bool {
        self.kind == old.kind && self.key == old.key && self.value == old.value
    }
}

/// Every map of an eBPF object, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout(pub BTreeMap<String, MapDef>);

impl Layout {
    pub fn of_object(object: &[u8]) -> Result<Layout> {
        let obj = aya_obj::Object::parse(object).ctx(|| "parsing the eBPF object".into())?;
        Ok(Layout(
            obj.maps
                .iter()
                // Sections such as .rodata are not pinned.
                .filter(|(name, _)| !name.starts_with('.'))
                .map(|(name, m)| {
                    (
                        name.clone(),
                        MapDef {
                            kind: m.map_type(),
                            key: m.key_size(),
                            value: m.value_size(),
                            max: m.max_entries(),
                            flags: m.map_flags(),
                        },
                    )
                })
                .collect(),
        ))
    }

    /// FNV-1a over the revision and every map's definition.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&pn_common::maps::LAYOUT_REVISION.to_le_bytes());
        for (name, d) in &self.0 {
            eat(name.as_bytes());
            eat(&[0]);
            for v in [d.kind, d.key, d.value, d.max, d.flags] {
                eat(&v.to_le_bytes());
            }
        }
        h
    }

    pub fn dir_name(&self) -> String {
        format!("maps-{:016x}", self.fingerprint())
    }

    /// Whether the maps pinned in `dir` are exactly these.
    fn pinned_in(&self, dir: &Path) -> bool {
        self.0.iter().all(|(name, def)| {
            MapInfo::from_pin(dir.join(name)).is_ok_and(|i| MapDef::of_info(&i) == *def)
        })
    }
}

/// Where to load the object's maps, and what to migrate once loaded.
pub struct Pins {
    /// The pin directory to load with.
    pub load_dir: PathBuf,
    /// Where it must end (differs from `load_dir` while migrating).
    final_dir: PathBuf,
    /// Pins of another layout to copy from, then remove.
    from: Option<PathBuf>,
    /// Other pin directories to remove once done.
    stale: Vec<PathBuf>,
    layout: Layout,
}

/// What a migration carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub from: Option<PathBuf>,
    pub maps: usize,
    pub entries: usize,
    /// Maps whose layout changed in a way no conversion knows: left empty
    /// (the agent refills them from the store before any program uses them).
    pub skipped: Vec<String>,
}

fn is_pin_dir(name: &str) -> bool {
    name == "maps" || name.starts_with("maps-")
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// Chooses the pin directory for `layout` under `bpffs`.
pub fn prepare(bpffs: &Path, layout: Layout) -> Result<Pins> {
    let final_dir = bpffs.join(layout.dir_name());
    let staging = bpffs.join(format!("{}-new", layout.dir_name()));
    // A migration that stopped half-way: start it again.
    remove_dir(&staging)?;
    let mut others: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(bpffs).ctx(|| format!("reading {}", bpffs.display()))? {
        let path = entry.ctx(|| "reading pins".into())?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path != final_dir && path.is_dir() && name.as_deref().is_some_and(is_pin_dir) {
            others.push(path);
        }
    }
    if final_dir.is_dir() && layout.pinned_in(&final_dir) {
        return Ok(Pins {
            load_dir: final_dir.clone(),
            final_dir,
            from: None,
            stale: others,
            layout,
        });
    }
    // Our directory with other maps in it (a revision not bumped, a hand
    // that changed pins): treat it as one more layout to migrate from.
    if final_dir.exists() {
        let aside = bpffs.join(format!("{}-old", layout.dir_name()));
        remove_dir(&aside)?;
        std::fs::rename(&final_dir, &aside).ctx(|| format!("moving {}", final_dir.display()))?;
        others.push(aside);
    }
    // The newest pins are the ones the running programs use.
    others.sort_by_key(|p| std::cmp::Reverse(modified(p)));
    let from = others.first().cloned();
    std::fs::create_dir_all(&staging).ctx(|| format!("creating {}", staging.display()))?;
    Ok(Pins {
        load_dir: staging,
        final_dir,
        from,
        stale: others,
        layout,
    })
}

impl Pins {
    /// After the object was loaded with pins in `load_dir`: copies the old
    /// maps' entries, puts the directory in place and removes the old ones.
    pub fn finish(self) -> Result<Migrated> {
        let mut m = Migrated::default();
        if let Some(from) = &self.from {
            m.from = Some(from.clone());
            for (name, def) in &self.layout.0 {
                let old_path = from.join(name);
                let Ok(old) = MapData::from_pin(&old_path) else {
                    continue;
                };
                let Ok(old_def) = old.info().map(|i| MapDef::of_info(&i)) else {
                    continue;
                };
                if def.kind == RINGBUF {
                    continue;
                }
                if !def.reads(&old_def) {
                    log::warn!(
                        "map {name}: layout changed ({old_def:?} → {def:?}); its entries are not carried"
                    );
                    m.skipped.push(name.clone());
                    continue;
                }
                let new = MapData::from_pin(self.load_dir.join(name))
                    .ctx(|| format!("opening the new {name}"))?;
                let n = copy_entries(&old, &new, def).ctx(|| format!("copying {name}"))?;
                m.maps += 1;
                m.entries += n;
            }
        }
        if self.load_dir != self.final_dir {
            std::fs::rename(&self.load_dir, &self.final_dir)
                .ctx(|| format!("moving {} in place", self.load_dir.display()))?;
        }
        // Unpinning does not free maps that programs still use: the old
        // programs keep theirs until their links are switched.
        for dir in &self.stale {
            remove_dir(dir)?;
        }
        Ok(m)
    }

    pub fn dir(&self) -> &Path {
        &self.final_dir
    }
}

/// Removes a pin directory (pins, then the directory); absent is fine.
fn remove_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let p = e.ctx(|| "reading pins".into())?.path();
        std::fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
    }
    std::fs::remove_dir(dir).ctx(|| format!("removing {}", dir.display()))
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The bpf(2) attribute of element operations.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, fd: i32, key: *const u8, value: *mut u8) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    };
    // SAFETY: the attribute points at live buffers of the map's key and
    // value sizes, as the caller allocated them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies every entry of `from` into `to` (same key and value layout) as
/// bytes; returns how many. Entries a full `to` refuses are counted out.
fn copy_entries(from: &MapData, to: &MapData, def: &MapDef) -> Result<usize> {
    let (src, dst) = (from.fd().as_fd().as_raw_fd(), to.fd().as_fd().as_raw_fd());
    // Per-CPU values come as one 8-byte aligned slot per possible CPU.
    let value_len = if PERCPU_KINDS.contains(&def.kind) {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| plain(format!("{what}: {e}")))?;
        (def.value as usize).div_ceil(8) * 8 * cpus
    } else {
        def.value as usize
    };
    let mut key = vec![0u8; def.key as usize];
    let mut next = vec![0u8; def.key as usize];
    let mut value = vec![0u8; value_len.max(1)];
    let mut copied = 0;
    let mut first = true;
    // Entries may come and go while we walk (the old programs run): bound
    // the walk, a restart from the first key cannot loop forever.
    for _ in 0..(u64::from(def.max) * 2 + 16) {
        let k = if first {
            std::ptr::null()
        } else {
            key.as_ptr()
        };
        match bpf_elem(BPF_MAP_GET_NEXT_KEY, src, k, next.as_mut_ptr()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e).ctx(|| "walking the old map".into()),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        match bpf_elem(BPF_MAP_LOOKUP_ELEM, src, key.as_ptr(), value.as_mut_ptr()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e).ctx(|| "reading the old map".into()),
        }
        match bpf_elem(BPF_MAP_UPDATE_ELEM, dst, key.as_ptr(), value.as_mut_ptr()) {
            Ok(()) => copied += 1,
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {}
            Err(e) => return Err(e).ctx(|| "writing the new map".into()),
        }
    }
    Ok(copied)
}

/// Writes `ifindex` as the tunnel's in the pinned `PN_CONFIG` of `object`'s
/// layout, the rest of the value kept, before the object is loaded: a bare
/// restart's tunnel is up well before the load, while the programs still
/// attached drop remote members' packets (`no_tunnel`) until the index is
/// back. Only pins of this very layout are touched (those the load will
/// reuse, so the running programs read the same `Config`); `false` when
/// there are none (another layout, or no pins), and the load writes it.
pub fn set_pinned_tunnel(object: &[u8], bpffs: &Path, ifindex: u32) -> Result<bool> {
    use aya::maps::{Array, Map};
    use pn_common::{maps::Config, objects};
    if object.is_empty() {
        return Ok(false);
    }
    let layout = Layout::of_object(object)?;
    let dir = bpffs.join(layout.dir_name());
    if !dir.is_dir() || !layout.pinned_in(&dir) {
        return Ok(false);
    }
    let path = dir.join(objects::MAP_CONFIG);
    let map = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .ctx(|| format!("opening {}", path.display()))?;
    let mut config: Array<MapData, Config> =
        Array::try_from(map).ctx(|| format!("map {}", objects::MAP_CONFIG))?;
    let mut cfg = config.get(&0, 0).ctx(|| "reading PN_CONFIG".into())?;
    if cfg.tunnel_ifindex != ifindex {
        cfg.tunnel_ifindex = ifindex;
        config.set(0, cfg, 0).ctx(|| "writing PN_CONFIG".into())?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(value: u32) -> Layout {
        Layout(
            [(
                "PN_ENDPOINTS".to_string(),
                MapDef {
                    kind: 1,
                    key: 4,
                    value,
                    max: 10,
                    flags: 0,
                },
            )]
            .into(),
        )
    }

    #[test]
    fn the_directory_name_follows_every_part_of_the_layout() {
        assert_eq!(layout(16).dir_name(), layout(16).dir_name());
        assert_ne!(layout(16).dir_name(), layout(20).dir_name());
        assert!(layout(16).dir_name().starts_with("maps-"));
        assert!(!layout(16).dir_name().contains('.'), "bpffs refuses dots");
    }

    #[test]
    fn only_same_sized_maps_of_one_kind_are_copied_as_bytes() {
        let d = layout(16).0["PN_ENDPOINTS"];
        assert!(d.reads(&MapDef { max: 99, ..d }), "capacity may change");
        assert!(!d.reads(&MapDef { value: 20, ..d }));
        assert!(!d.reads(&MapDef { kind: 9, ..d }));
    }
}
