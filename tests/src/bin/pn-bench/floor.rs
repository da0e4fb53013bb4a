//! The kernel's own floor and ceiling at pn's hooks: a two-instruction
//! program (`r0 = K; exit`) attached where pn's programs sit, with pn's
//! detached, measured the same way as pn. An empty TC program is the least
//! any program at those hooks costs (the hook, the call, bpf_stats' own
//! clock reads); a drop-everything program is the cheapest drop any program
//! there can make. Loaded with raw bpf(2): aya only loads ELF objects, and
//! a second eBPF crate for two instructions is not worth its build.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context, bail};
use pn_tests::Namespace;

/// TCX: no verdict, the next program or the default (pass).
pub const TC_NEXT: i32 = -1;
pub const TC_SHOT: i32 = 2;
pub const XDP_DROP: i32 = 1;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const PROG_TYPE_SCHED_CLS: u32 = 3;
const PROG_TYPE_XDP: u32 = 6;
const ATTACH_XDP: u32 = 37;
const ATTACH_TCX_INGRESS: u32 = 46;
const ATTACH_TCX_EGRESS: u32 = 47;
const XDP_FLAGS_SKB_MODE: u32 = 2;
/// sizeof(union bpf_attr) in the uapi this was written against; the kernel
/// takes a shorter or longer one as long as the tail is zero.
pub(crate) const ATTR_LEN: usize = 144;

/// Where a program is attached, as pn attaches its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcIngress,
    TcEgress,
    /// Generic (SKB) mode: pn's on a veth underlay.
    XdpGeneric,
}

impl Hook {
    fn prog_type(self) -> u32 {
        match self {
            Hook::TcIngress | Hook::TcEgress => PROG_TYPE_SCHED_CLS,
            Hook::XdpGeneric => PROG_TYPE_XDP,
        }
    }

    /// (attach type, flags) of BPF_LINK_CREATE.
    fn attach(self) -> (u32, u32) {
        match self {
            Hook::TcIngress => (ATTACH_TCX_INGRESS, 0),
            Hook::TcEgress => (ATTACH_TCX_EGRESS, 0),
            Hook::XdpGeneric => (ATTACH_XDP, XDP_FLAGS_SKB_MODE),
        }
    }
}

/// The hook of one of the agent's pins: `links/IF_in`, `links/IF_eg`
/// (`kernel/links.rs`) or `xdp/IF`.
fn hook_of_pin(dir: &str, name: &str) -> Option<(String, Hook)> {
    match dir {
        "links" => {
            let (ifname, suffix) = name.rsplit_once('_')?;
            let hook = match suffix {
                "in" => Hook::TcIngress,
                "eg" => Hook::TcEgress,
                _ => return None,
            };
            Some((ifname.to_string(), hook))
        }
        "xdp" => Some((name.to_string(), Hook::XdpGeneric)),
        _ => None,
    }
}

/// Every hook the agent pinned a link at under `bpffs`: read before the
/// programs are detached (detaching unpins them).
pub fn pinned_hooks(bpffs: &Path) -> Vec<(String, Hook)> {
    let mut hooks = Vec::new();
    for dir in ["links", "xdp"] {
        for e in std::fs::read_dir(bpffs.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(h) = e.file_name().to_str().and_then(|n| hook_of_pin(dir, n)) {
                hooks.push(h);
            }
        }
    }
    hooks.sort_by(|a, b| a.0.cmp(&b.0));
    hooks
}

/// `r0 = verdict; exit` as struct bpf_insn's (code, dst|src, off, imm).
fn program(verdict: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    p[4..8].copy_from_slice(&verdict.to_le_bytes());
    p[8] = 0x95; // BPF_JMP | BPF_EXIT
    p
}

pub(crate) fn put32(attr: &mut [u8; ATTR_LEN], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub(crate) fn put64(attr: &mut [u8; ATTR_LEN], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// BPF_PROG_LOAD's attributes: prog_type, insn_cnt, insns, license,
/// prog_name (offsets of union bpf_attr).
fn load_attr(prog_type: u32, insns: &[u8], license: &CString, name: &str) -> [u8; ATTR_LEN] {
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, prog_type);
    put32(&mut a, 4, (insns.len() / 8) as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    let n = name.len().min(15);
    a[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    a
}

/// BPF_LINK_CREATE's attributes: prog_fd, target_ifindex, attach_type,
/// flags; TCX's relative_fd and expected_revision stay 0 (append).
fn link_attr(prog_fd: RawFd, ifindex: u32, hook: Hook) -> [u8; ATTR_LEN] {
    let mut a = [0u8; ATTR_LEN];
    let (attach_type, flags) = hook.attach();
    put32(&mut a, 0, prog_fd as u32);
    put32(&mut a, 4, ifindex);
    put32(&mut a, 8, attach_type);
    put32(&mut a, 12, flags);
    a
}

/// bpf(2): the fd (or 0) it returns, or the errno as an error.
pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a zero-filled union bpf_attr of ATTR_LEN bytes whose
    // pointers (instructions, license, info) outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_LEN as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as RawFd)
}

pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: a fresh fd bpf(2) just returned; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Loads `r0 = verdict; exit` as a program of `prog_type`: its fd and id.
fn load(prog_type: u32, verdict: i32) -> anyhow::Result<(OwnedFd, u64)> {
    let insns = program(verdict);
    let license = CString::new("GPL")?;
    let mut a = load_attr(prog_type, &insns, &license, "pn_bench_floor");
    let prog = owned(bpf(BPF_PROG_LOAD, &mut a).context("loading the floor program")?);
    let mut info = [0u32; 2]; // struct bpf_prog_info: type, id
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, prog.as_raw_fd() as u32);
    put32(&mut a, 4, 8);
    put64(&mut a, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("the floor program's id")?;
    Ok((prog, u64::from(info[1])))
}

/// An empty TC program (`r0 = TC_NEXT; exit`) attached nowhere: for
/// `testrun`, which runs it on a packet beside pn's.
pub fn load_empty_tc() -> anyhow::Result<OwnedFd> {
    Ok(load(PROG_TYPE_SCHED_CLS, TC_NEXT)?.0)
}

/// A loaded two-instruction program attached at some hooks; dropping it
/// closes the links (detaching it) and the program.
pub struct Attached {
    /// The program's id, for `tools::prog_stats_ids`.
    pub id: u64,
    _links: Vec<OwnedFd>,
    _prog: OwnedFd,
}

/// Loads `r0 = verdict; exit` and attaches it at every one of `hooks`
/// (interfaces of `ns`, all of one program type): ifindexes and links are
/// the namespace's, so it is done in a thread inside it.
pub fn attach(ns: &Namespace, hooks: &[(String, Hook)], verdict: i32) -> anyhow::Result<Attached> {
    let Some(first) = hooks.first() else {
        bail!("no hook to attach the floor program at");
    };
    let prog_type = first.1.prog_type();
    anyhow::ensure!(
        hooks.iter().all(|h| h.1.prog_type() == prog_type),
        "TC and XDP hooks need two programs"
    );
    let hooks = hooks.to_vec();
    ns.run(move || {
        let (prog, id) = load(prog_type, verdict)?;
        let mut links = Vec::new();
        for (ifname, hook) in &hooks {
            let c = CString::new(ifname.as_str())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            anyhow::ensure!(ifindex != 0, "no interface {ifname}");
            let mut a = link_attr(prog.as_raw_fd(), ifindex, *hook);
            let fd = bpf(BPF_LINK_CREATE, &mut a)
                .with_context(|| format!("attaching the floor program to {ifname} ({hook:?})"))?;
            links.push(owned(fd));
        }
        Ok(Attached {
            id,
            _links: links,
            _prog: prog,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_mov64_r0_imm_then_exit() {
        let p = program(TC_NEXT);
        assert_eq!(p[..8], [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(p[8..], [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(program(XDP_DROP)[4..8], [1, 0, 0, 0]);
    }

    #[test]
    fn attributes_sit_at_the_uapi_offsets() {
        let insns = program(TC_SHOT);
        let lic = CString::new("GPL").unwrap();
        let a = load_attr(PROG_TYPE_SCHED_CLS, &insns, &lic, "pn_bench_floor");
        assert_eq!(a[0..4], 3u32.to_ne_bytes());
        assert_eq!(a[4..8], 2u32.to_ne_bytes());
        assert_eq!(a[8..16], (insns.as_ptr() as u64).to_ne_bytes());
        assert_eq!(a[16..24], (lic.as_ptr() as u64).to_ne_bytes());
        assert_eq!(&a[48..62], b"pn_bench_floor");
        assert_eq!(a[62], 0, "the name keeps its NUL");
        let l = link_attr(7, 12, Hook::XdpGeneric);
        assert_eq!(l[0..4], 7u32.to_ne_bytes());
        assert_eq!(l[4..8], 12u32.to_ne_bytes());
        assert_eq!(l[8..12], 37u32.to_ne_bytes());
        assert_eq!(l[12..16], 2u32.to_ne_bytes());
        assert_eq!(
            link_attr(7, 12, Hook::TcEgress)[8..16],
            [47, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn pins_name_their_hooks() {
        let h = |d, n| hook_of_pin(d, n);
        assert_eq!(
            h("links", "pn_ab_12_in"),
            Some(("pn_ab_12".into(), Hook::TcIngress))
        );
        assert_eq!(
            h("links", "veth1_eg"),
            Some(("veth1".into(), Hook::TcEgress))
        );
        assert_eq!(h("links", "veth1"), None);
        assert_eq!(h("links", "veth1_x"), None);
        assert_eq!(h("xdp", "ul0"), Some(("ul0".into(), Hook::XdpGeneric)));
        assert_eq!(h("maps", "x"), None);
    }
}
