//! Encrypted throughput between two hosts: pn's tunnel (both AEAD
//! implementations) against plain routed veths without encryption and
//! against boringtun (userspace WireGuard), all between the same two host
//! namespaces in the same run; plus the single-core sealing rate of the
//! AEAD, the ceiling per core.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pn_tests::{Namespace, fleet::Fleet, unique_prefix};
use pn_tunnel::aead::{Cipher, seal_rate};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

/// boringtun running in a host namespace; killed on drop.
struct Boringtun(Child, String);

impl Drop for Boringtun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.1));
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn boringtun_binary() -> Option<String> {
    let home = std::env::var("HOME").ok()?;
    let p = format!("{home}/.cargo/bin/boringtun-cli");
    Path::new(&p).exists().then_some(p)
}

/// A WireGuard tunnel between two host namespaces, 10.99.0.1 ↔ 10.99.0.2.
fn boringtun_pair(
    bin: &str,
    hosts: [&Namespace; 2],
    underlay: [Ipv4Addr; 2],
) -> anyhow::Result<Vec<Boringtun>> {
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let private = run(Command::new("wg").arg("genkey"))?;
            let mut child = Command::new("wg")
                .arg("pubkey")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            use std::io::Write;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(private.as_bytes())?;
            let public = String::from_utf8_lossy(&child.wait_with_output()?.stdout)
                .trim()
                .to_string();
            Ok((private, public))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::new();
    for i in 0..2 {
        let name = format!("wgb{}{}", std::process::id() % 10000, i);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hosts[i].name,
                bin,
                "--foreground",
                "--disable-drop-privileges",
                &name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting boringtun-cli")?;
        out.push(Boringtun(child, name.clone()));
        let sock = format!("/var/run/wireguard/{name}.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&sock).exists() {
            if Instant::now() > deadline {
                bail!("boringtun did not create {sock}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = std::env::temp_dir().join(format!("pn-bench-wg-{name}"));
        std::fs::write(&key_file, &keys[i].0)?;
        let other = 1 - i;
        run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &hosts[i].name,
                "wg",
                "set",
                &name,
                "private-key",
            ])
            .arg(&key_file)
            .args([
                "listen-port",
                "51900",
                "peer",
                &keys[other].1,
                "allowed-ips",
                &format!("10.99.0.{}/32", other + 1),
                "endpoint",
                &format!("{}:51900", underlay[other]),
            ]))?;
        let _ = std::fs::remove_file(&key_file);
        hosts[i].ip(&[
            "addr",
            "add",
            &format!("10.99.0.{}/24", i + 1),
            "dev",
            &name,
        ]);
        hosts[i].ip(&["link", "set", &name, "mtu", "1420", "up"]);
    }
    Ok(out)
}

/// One pn run alone, long enough to profile beside it (`perf record -a`),
/// then the loss counters of every namespace: what the figure hides.
fn profile(
    fleet: &Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
    secs: u64,
) -> anyhow::Result<()> {
    if std::env::var_os("PN_BENCH_PROFILE_NO_PROGRAMS").is_some() {
        for h in &fleet.hosts {
            tools::detach_programs(h)?;
        }
    }
    let g = tools::iperf(c1, c2, ip2, secs)?;
    eprintln!("pn (ring) alone: {g:.2} Gbit/s");
    for ns in [&fleet.hosts[0].ns, &fleet.hosts[1].ns, c1, c2] {
        let stats = run(Command::new("ip").args(["netns", "exec", &ns.name, "nstat", "-az"]))?;
        for l in stats.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let lossy = ["Err", "Retrans", "Drop", "Lost"]
                .iter()
                .any(|k| f.first().is_some_and(|n| n.contains(k)));
            if lossy && f.get(1).is_some_and(|v| *v != "0") {
                eprintln!("{} {l}", ns.name);
            }
        }
    }
    Ok(())
}

pub fn run_scenario(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let mut fleet = Fleet::new(&p, 2);
    let net = fleet.hosts[0].create_network(&[]);
    let app = fleet.hosts[0].create_app(&net);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let c2 = Namespace::new(&format!("{p}-c2"));
    fleet.hosts[0].attach(&app, "web", &c1);
    let ip2: Ipv4Addr = fleet.hosts[1].attach(&app, "web", &c2)["ip"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let underlay = [
        Ipv4Addr::new(192, 168, 100, 1),
        Ipv4Addr::new(192, 168, 100, 2),
    ];
    tools::wait_for_remote(&fleet.hosts[0])?;
    if let Some(secs) = std::env::var("PN_BENCH_PROFILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        profile(&fleet, [&c1, &c2], ip2, secs)?;
        bail!("PN_BENCH_PROFILE_SECS: one profiling run, nothing recorded");
    }
    let boringtun = boringtun_binary();
    let wg = match &boringtun {
        Some(bin) => Some(boringtun_pair(
            bin,
            [&fleet.hosts[0].ns, &fleet.hosts[1].ns],
            underlay,
        )?),
        None => None,
    };
    let (mut pn_ring, mut pn_rc, mut plain, mut bt) = (vec![], vec![], vec![], vec![]);
    // Plain: nothing of pn on the path (its underlay guard detached).
    for h in &fleet.hosts {
        tools::detach_programs(h)?;
    }
    for _ in 0..effort.runs {
        plain.push(tools::iperf(
            &fleet.hosts[0].ns,
            &fleet.hosts[1].ns,
            underlay[1],
            effort.seconds,
        )?);
    }
    fleet.relaunch(&[]);
    tools::wait_for_remote(&fleet.hosts[0])?;
    // pn and boringtun alternate, on the same underlay with the guard on.
    for _ in 0..effort.runs {
        pn_ring.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
        if wg.is_some() {
            bt.push(tools::iperf(
                &fleet.hosts[0].ns,
                &fleet.hosts[1].ns,
                Ipv4Addr::new(10, 99, 0, 2),
                effort.seconds,
            )?);
        }
    }
    if std::env::var_os("PN_BENCH_VERBOSE").is_some() {
        for h in &fleet.hosts {
            for l in h.metrics().lines().filter(|l| l.starts_with("pn_tunnel_")) {
                eprintln!("{} {l}", h.id);
            }
        }
    }
    fleet.relaunch(&["--tunnel-cipher", "rustcrypto"]);
    tools::wait_for_remote(&fleet.hosts[0])?;
    for _ in 0..effort.runs {
        pn_rc.push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
    }
    // AES-256-GCM: its own rows (crate::tunnel_aes), the fleet relaunched.
    let (aes_rows, aes_notes) =
        crate::tunnel_aes::rows(effort, &mut fleet, [&c1, &c2], ip2, &plain, &pn_ring)?;
    fleet.relaunch(&[]);
    let had_wireguard = wg.is_some();
    drop(wg);
    let secs = Duration::from_millis(if effort.seconds <= 1 { 200 } else { 1000 });
    let seal = |c: Cipher| -> Vec<f64> {
        (0..effort.runs)
            .map(|_| seal_rate(c, 1400, secs) * 8.0 / 1e9)
            .collect()
    };
    let (seal_ring, seal_rc) = (seal(Cipher::Ring), seal(Cipher::RustCrypto));
    let g = |v: Vec<f64>| Measurement::new("Gbit/s", true, v);
    let mut rows = Vec::new();
    let vs_plain = Row::versus(
        "pn (ring), container to container across hosts",
        g(pn_ring.clone()),
        "plain veth, no encryption",
        g(plain.clone()),
    );
    let met = vs_plain.ratio().unwrap_or(0.0) >= 0.30;
    rows.push(vs_plain.with_target("≥ 30 % of plain veth", met));
    let mut notes = Vec::new();
    if !had_wireguard {
        notes.push("boringtun-cli was not installed (`cargo install boringtun-cli`): no WireGuard baseline in this run.".into());
    } else {
        let vs_bt = Row::versus(
            "pn (ring) against userspace WireGuard",
            g(pn_ring.clone()),
            "boringtun",
            g(bt),
        );
        let met = vs_bt.ratio().unwrap_or(0.0) >= 5.0;
        rows.push(vs_bt.with_target("≥ 5× boringtun", met));
    }
    rows.push(Row::versus(
        "pn (rustcrypto) against pn (ring)",
        g(pn_rc),
        "pn (ring)",
        g(pn_ring),
    ));
    rows.push(Row::versus(
        "ChaCha20-Poly1305 sealing, 1400-byte packets, one core: ring",
        g(seal_ring),
        "RustCrypto chacha20poly1305",
        g(seal_rc),
    ));
    rows.extend(aes_rows);
    notes.extend(aes_notes);
    Ok(Scenario {
        name: "tunnel".into(),
        title: "Encrypted throughput between hosts".into(),
        setup: "Two host namespaces joined by a Linux bridge (the underlay, MTU 1500), one iperf3 TCP \
                stream. pn: from a container on host 1 to a container on host 2 through both agents' \
                tunnels. Plain veth: host 1 to host 2 over the same underlay, nothing encrypted and pn's programs detached. \
                boringtun: `boringtun-cli` in both host namespaces, configured with `wg`, host to host \
                over the same underlay, pn's underlay guard on as for pn. Everything shares the same 2 cores (senders, receivers, both \
                agents). pn (aes256gcm): both agents with `--tunnel-cipher aes256gcm` (their sessions checked to use it). \
                Sealing rate: `pn_tunnel::aead::seal_rate`, one core."
            .into(),
        rows,
        notes,
    })
}
