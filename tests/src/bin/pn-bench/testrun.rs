//! pn's TC programs on one crafted member-to-member segment, warm: the
//! kernel's BPF_PROG_TEST_RUN runs the agent's loaded programs (its real
//! maps) `repeat` times on the same packet and says the average time per
//! run. Beside them the empty TC program (`floor.rs`) on the same packet:
//! what any program costs there. No stream, no other traffic: the maps'
//! buckets and the program stay in cache, so this is pn's own work at its
//! cheapest, to set beside its cost during a stream (`policy.rs`).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    process::Command,
};

use anyhow::{Context, bail};
use pn_tests::{Host, scenario::Member};

use crate::floor::{ATTR_LEN, bpf, load_empty_tc, owned, put32, put64};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
/// TC_ACT_PIPE: what pn's programs answer for a packet they let through.
const TC_ACT_PIPE: u32 = 3;
/// TCP payload of the segment: a full segment at MTU 1500.
const PAYLOAD: usize = 1448;

/// Average ns per run of each program on the segment.
pub struct Warm {
    /// `pn_from_container` at the sender's veth.
    pub from: f64,
    /// `pn_to_container` at the receiver's veth.
    pub to: f64,
    /// The empty program on the same packet.
    pub empty: f64,
}

/// The host-side veth of a member (the route to its address), its
/// programs' ids: (name, from_container's, to_container's).
fn veth_of(host: &Host, m: &Member) -> anyhow::Result<(String, u64, u64)> {
    let out = host.ns.ip(&["-j", "route", "get", &m.addr.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&out).context("ip route get")?;
    let dev = v[0]["dev"]
        .as_str()
        .with_context(|| format!("no device in {out}"))?
        .to_string();
    let prog = |suffix: &str| -> anyhow::Result<u64> {
        let pin = host.bpffs().join("links").join(format!("{dev}_{suffix}"));
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&pin)
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["prog_id"]
            .as_u64()
            .with_context(|| format!("no program behind {}", pin.display()))
    };
    Ok((dev.clone(), prog("in")?, prog("eg")?))
}

/// An established TCP segment (ACK, [`PAYLOAD`] bytes) from `src` to `dst`
/// as it leaves the sender: Ethernet, IPv4 (checksummed), TCP.
fn segment(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + 20 + PAYLOAD) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&2000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
    p.extend_from_slice(&tcp);
    p.resize(p.len() + PAYLOAD, 0);
    p
}

/// The start of a struct __sk_buff up to `ifindex`: the device the packet
/// is at (resolved in the caller's namespace) and where it entered.
fn skb_ctx(ingress_ifindex: u32, ifindex: u32) -> [u8; 44] {
    let mut c = [0u8; 44];
    c[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// BPF_PROG_TEST_RUN: (the program's answer, average ns per run).
fn test_run(prog: &OwnedFd, data: &[u8], ctx: &[u8], repeat: u32) -> anyhow::Result<(u32, u32)> {
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, prog.as_raw_fd() as u32);
    put32(&mut a, 8, data.len() as u32);
    put64(&mut a, 16, data.as_ptr() as u64);
    put32(&mut a, 32, repeat);
    put32(&mut a, 40, ctx.len() as u32);
    put64(&mut a, 48, ctx.as_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut a).context("BPF_PROG_TEST_RUN")?;
    let word = |off: usize| u32::from_ne_bytes([a[off], a[off + 1], a[off + 2], a[off + 3]]);
    Ok((word(4), word(36)))
}

fn prog_by_id(id: u64) -> anyhow::Result<OwnedFd> {
    let mut a = [0u8; ATTR_LEN];
    put32(&mut a, 0, id as u32);
    Ok(owned(
        bpf(BPF_PROG_GET_FD_BY_ID, &mut a).with_context(|| format!("program {id}"))?,
    ))
}

/// pn's programs and the empty one, each `repeat` times on a segment from
/// `c1` to `c2`, in the host's namespace (where the ifindexes mean the
/// veths). Each of the segment's runs is counted by pn like a real packet
/// (`forwarded` for `c1`, `delivered` for `c2`).
pub fn measure(host: &Host, c1: &Member, c2: &Member, repeat: u32) -> anyhow::Result<Warm> {
    let (if1, from_id, _) = veth_of(host, c1)?;
    let (if2, _, to_id) = veth_of(host, c2)?;
    let data = segment(c1.addr, c2.addr);
    host.ns.run(move || {
        let index = |name: &str| -> anyhow::Result<u32> {
            let c = std::ffi::CString::new(name)?;
            // SAFETY: a NUL-terminated name.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => bail!("no interface {name}"),
                i => Ok(i),
            }
        };
        let (i1, i2) = (index(&if1)?, index(&if2)?);
        let (from, to, empty) = (prog_by_id(from_id)?, prog_by_id(to_id)?, load_empty_tc()?);
        let from_ctx = skb_ctx(i1, i1);
        let to_ctx = skb_ctx(i1, i2);
        let (_, e) = test_run(&empty, &data, &from_ctx, repeat)?;
        let (rf, f) = test_run(&from, &data, &from_ctx, repeat)?;
        let (rt, t) = test_run(&to, &data, &to_ctx, repeat)?;
        anyhow::ensure!(
            rf == TC_ACT_PIPE && rt == TC_ACT_PIPE,
            "pn's programs answered {rf} and {rt} to a member's segment (not {TC_ACT_PIPE}, pass)"
        );
        Ok(Warm {
            from: f64::from(f),
            to: f64::from(t),
            empty: f64::from(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_is_an_ack_with_a_valid_ip_checksum() {
        let p = segment(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.len(), 14 + 20 + 20 + PAYLOAD);
        assert_eq!(p[12..14], [0x08, 0x00]);
        let ip = &p[14..34];
        let sum = ip
            .chunks(2)
            .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, p.len() - 14);
        assert_eq!(p[34 + 13], 0x10);
    }

    #[test]
    fn the_context_sets_the_devices() {
        let c = skb_ctx(7, 9);
        assert_eq!(c[36..40], 7u32.to_ne_bytes());
        assert_eq!(c[40..44], 9u32.to_ne_bytes());
        assert!(c[..36].iter().all(|&b| b == 0));
    }
}
