//! A program's own run time, warm, by BPF_PROG_TEST_RUN with a repeat:
//! the kernel runs it on one frame again and again and gives the average
//! duration, with no hook, socket buffer or packet generator around it.
//! pn's guard as the agent loaded it (its maps as the agent filled them)
//! against the drop-everything program of `floor.rs`, both by raw bpf(2).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::Context;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const ATTR_LEN: usize = 144;

fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-filled union bpf_attr of ATTR_LEN bytes whose
    // pointers (the frame) outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_LEN as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The program attached by the link pinned at `pin` (`bpftool link show`).
pub fn linked_prog(pin: &Path) -> anyhow::Result<OwnedFd> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .context("bpftool link show")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["prog_id"]
        .as_u64()
        .with_context(|| format!("no program behind {}", pin.display()))?;
    let mut a = [0u8; ATTR_LEN];
    a[0..4].copy_from_slice(&(id as u32).to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a).context("the program's fd")?;
    // SAFETY: a fresh fd bpf(2) just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs `prog` on `frame` `repeat` times: (its verdict, ns per run).
/// Attributes: prog_fd, retval, data_size_in, data_in, repeat, duration.
pub fn run(prog: &OwnedFd, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
    let mut a = [0u8; ATTR_LEN];
    a[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    a[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    a[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    a[32..36].copy_from_slice(&repeat.to_ne_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut a).context("BPF_PROG_TEST_RUN")?;
    let word = |o: usize| u32::from_ne_bytes([a[o], a[o + 1], a[o + 2], a[o + 3]]);
    Ok((word(4), f64::from(word(36))))
}

/// Ethernet, IPv4 and UDP with a `payload`-byte payload, `src` to `dst`
/// (the bench's flood: port 4000 to 9); checksums left 0, which XDP does
/// not read.
pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_ethernet_ipv4_udp() {
        let f = udp_frame(
            Ipv4Addr::new(192, 168, 90, 2),
            Ipv4Addr::new(10, 240, 0, 1),
            64,
        );
        assert_eq!(f.len(), 14 + 20 + 8 + 64);
        assert_eq!(f[12..14], [0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 92);
        assert_eq!(f[23], 17);
        assert_eq!(f[26..30], [192, 168, 90, 2]);
        assert_eq!(f[30..34], [10, 240, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 72);
    }
}
