//! Packet captures (tcpdump inside a namespace) and reading what they
//! caught: what tests look at to prove nothing left in clear.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use crate::namespace::Namespace;

/// A packet capture with tcpdump inside a namespace, to a pcap file; stops
/// (and flushes) on `finish` or drop.
pub struct Capture {
    child: Option<std::process::Child>,
    pub path: std::path::PathBuf,
}

impl Capture {
    pub fn start(ns: &Namespace, iface: &str, filter: &str) -> Capture {
        // Numbered: two captures of one interface may overlap (a watch
        // that rotates its files).
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "pn-test-{}-{}-{iface}-{n}.pcap",
            std::process::id(),
            ns.name
        ));
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "tcpdump",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-i",
                iface,
                "-w",
            ])
            .arg(&path)
            .arg(filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tcpdump");
        // tcpdump creates the file once it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Capture {
            child: Some(child),
            path,
        }
    }

    /// Stops the capture and returns the Ethernet frames it holds.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop();
        let data = std::fs::read(&self.path).unwrap_or_default();
        pcap_frames(&data)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            std::thread::sleep(Duration::from_millis(200));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Frames of a classic pcap file (little-endian, as tcpdump writes here).
pub fn pcap_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let incl =
            u32::from_le_bytes([data[i + 8], data[i + 9], data[i + 10], data[i + 11]]) as usize;
        let start = i + 16;
        if start + incl > data.len() {
            break;
        }
        out.push(data[start..start + incl].to_vec());
        i = start + incl;
    }
    out
}

/// UDP payloads (with source and destination) of IPv4 Ethernet frames, and
/// of IPv6 ones whose UDP header follows the fixed header.
pub fn udp_payloads(frames: &[Vec<u8>]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            if f.len() >= 14 + 40 + 8 && f[12..14] == [0x86, 0xdd] && f[14 + 6] == 17 {
                let (ip, udp) = (&f[14..], &f[14 + 40..]);
                let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
                let src =
                    SocketAddr::from((addr(&ip[8..24]), u16::from_be_bytes([udp[0], udp[1]])));
                let dst =
                    SocketAddr::from((addr(&ip[24..40]), u16::from_be_bytes([udp[2], udp[3]])));
                return Some((src, dst, udp[8..].to_vec()));
            }
            if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
                return None;
            }
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let ip = &f[14..];
            let udp = &ip[ihl..];
            let src = SocketAddr::from((
                Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                u16::from_be_bytes([udp[0], udp[1]]),
            ));
            let dst = SocketAddr::from((
                Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                u16::from_be_bytes([udp[2], udp[3]]),
            ));
            Some((src, dst, udp[8..].to_vec()))
        })
        .collect()
}
