//! Load generators and probes shared by the scenarios: iperf3, a TCP
//! request/response loop, a UDP flood, CPU time from /proc/stat, the kernel's
//! per-program BPF statistics, dnsperf.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pn_tests::{Host, Namespace};

/// An iperf3 server (one test, then it exits) inside a namespace.
pub struct IperfServer(Child);

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn iperf_server(ns: &Namespace, port: u16) -> anyhow::Result<IperfServer> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (Debian package iperf3)")?;
    Ok(IperfServer(child))
}

/// TCP throughput from `client` to `server_ip` (either family: iperf3's
/// server listens on both) for `seconds`, in Gbit/s.
pub fn iperf(
    client: &Namespace,
    server: &Namespace,
    server_ip: impl Into<IpAddr>,
    seconds: u64,
) -> anyhow::Result<f64> {
    let server_ip: IpAddr = server_ip.into();
    let port = 5201;
    let _srv = iperf_server(server, port)?;
    // The server needs a moment to listen.
    let mut last_err = String::new();
    for _ in 0..50 {
        let out = client.exec(&[
            "iperf3",
            "-c",
            &server_ip.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_str(&text).context("iperf3 JSON")?;
            match v["end"]["sum_received"]["bits_per_second"].as_f64() {
                Some(bps) => return Ok(bps / 1e9),
                None => last_err = v["error"].as_str().unwrap_or("no sum_received").to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        last_err = text
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("")
            .to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 client failed: {last_err}")
}

/// Transactions per second of a 1-byte TCP ping-pong over one connection.
pub fn tcp_rr(
    client: &Namespace,
    server: &Namespace,
    server_ip: impl Into<IpAddr>,
    seconds: u64,
) -> anyhow::Result<f64> {
    let server_ip: IpAddr = server_ip.into();
    let port = 7077;
    let _srv = if server_ip.is_ipv6() {
        pn_tests::net::tcp_echo_server6(server, port)
    } else {
        pn_tests::net::tcp_echo_server(server, port)
    };
    client.run(move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((server_ip, port)),
            Duration::from_secs(5),
        )?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let mut n = 0u64;
        let mut b = [0u8; 1];
        while Instant::now() < deadline {
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// Sends 64-byte UDP datagrams to `dst` as fast as one core can, for
/// `seconds`; returns how many were sent.
pub fn udp_flood(ns: &Namespace, dst: SocketAddr, seconds: u64) -> anyhow::Result<u64> {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dst)?;
        let payload = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            for _ in 0..256 {
                // Unreachable errors come back as ICMP on a connected socket.
                if s.send(&payload).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })
}

/// Detaches every program of an agent (its pinned links) without stopping
/// it: the baseline runs on exactly the same topology. A restart of the
/// agent attaches them again.
pub fn detach_programs(host: &Host) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for dir in ["links", "xdp"] {
        let d = host.bpffs().join(dir);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let out = Command::new("bpftool")
                    .args(["-j", "link", "show", "pinned"])
                    .arg(e.path())
                    .output()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if let Some(id) = v["id"].as_u64() {
                    ids.push(id);
                }
                std::fs::remove_file(e.path())
                    .with_context(|| format!("unpinning {}", e.path().display()))?;
            }
        }
    }
    // The kernel releases a link from a work queue: wait until it is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let live = v
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["id"].as_u64().is_some_and(|id| ids.contains(&id)));
        if !live {
            // The kernel frees a link's id before it detaches it (and a
            // program already running finishes after): a packet or two
            // could still be counted. Give the release its moment.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the programs did not detach")
}

pub fn reattach_programs(host: &mut Host) {
    host.restart();
}

/// Kernel BPF run-time statistics, on for as long as the guard lives (a
/// kernel-wide setting, restored afterwards).
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        BpfStats::set("1")
    }

    /// Off while the guard lives: a program's run then carries no clock
    /// reads of the statistics (BPF_PROG_TEST_RUN's timings).
    pub fn disable() -> anyhow::Result<BpfStats> {
        BpfStats::set("0")
    }

    fn set(value: &str) -> anyhow::Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let previous = std::fs::read_to_string(path).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(path, value).context("writing kernel.bpf_stats_enabled")?;
        Ok(BpfStats {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.previous);
    }
}

/// What one dnsperf run measured.
pub struct DnsPerf {
    pub qps: f64,
    pub latency_ms: f64,
    /// Share of the answers that were NOERROR (the rest: SERVFAIL, REFUSED…).
    pub noerror: f64,
    /// Queries answered.
    pub completed: f64,
}

/// dnsperf against `server` with the queries of `names` (A), for `seconds`
/// with at most `outstanding` queries in flight (4 clients); with `once`,
/// each name is asked once only (the run may end sooner).
pub fn dnsperf(
    ns: &Namespace,
    server: &str,
    port: u16,
    names: &[String],
    seconds: u64,
    outstanding: u32,
    once: bool,
) -> anyhow::Result<DnsPerf> {
    let file = std::env::temp_dir().join(format!(
        "pn-bench-dnsperf-{}-{}",
        std::process::id(),
        ns.name
    ));
    let body: String = names.iter().map(|n| format!("{n} A\n")).collect();
    std::fs::write(&file, body)?;
    let seconds = seconds.to_string();
    let outstanding = outstanding.to_string();
    let mut args = vec![
        "dnsperf",
        "-s",
        server,
        "-d",
        file.to_str().unwrap_or_default(),
        "-l",
        &seconds,
        "-c",
        "4",
        "-q",
        &outstanding,
    ];
    let port = port.to_string();
    args.extend_from_slice(&["-p", &port]);
    if once {
        args.extend_from_slice(&["-n", "1"]);
    }
    let out = ns.exec(&args);
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))?
            .split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let qps = field("Queries per second").with_context(|| format!("dnsperf output: {text}"))?;
    let lat = field("Average Latency (s)").context("dnsperf latency")?;
    let completed = field("Queries completed").context("dnsperf completed")?;
    // "Response codes:       NOERROR 100 (100.00%), SERVFAIL 2 (…)"
    let noerror = text
        .lines()
        .find_map(|l| l.split("NOERROR ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(DnsPerf {
        qps,
        latency_ms: lat * 1000.0,
        noerror: if completed > 0.0 {
            noerror / completed
        } else {
            0.0
        },
        completed,
    })
}

/// Waits until an agent sees a remote endpoint (the fleet converged).
pub fn wait_for_remote(h: &Host) -> anyhow::Result<()> {
    if !pn_tests::eventually(Duration::from_secs(20), || h.remote_endpoints() >= 1) {
        bail!("the agents did not converge")
    }
    Ok(())
}

/// The programs behind the links this agent pinned under its own bpffs.
pub fn pinned_prog_ids(host: &Host) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut dirs = vec![host.bpffs()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
                continue;
            }
            let Ok(out) = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path)
                .output()
            else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && let Some(id) = v["prog_id"].as_u64()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    ids
}

/// ns per program run between two readings of `prog_stats_ids`.
pub fn ns_per_run(before: (u64, u64), after: (u64, u64)) -> f64 {
    after.0.saturating_sub(before.0) as f64 / after.1.saturating_sub(before.1).max(1) as f64
}

/// (run_time_ns, run_cnt) summed over the programs with these ids.
pub fn prog_stats_ids(ids: &[u64]) -> (u64, u64) {
    ids.iter().fold((0, 0), |(t, c), id| {
        let v: serde_json::Value = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default();
        (
            t + v["run_time_ns"].as_u64().unwrap_or(0),
            c + v["run_cnt"].as_u64().unwrap_or(0),
        )
    })
}

/// As [`iperf`], with `streams` parallel TCP streams (`iperf3 -P`): the sum
/// of the streams, in Gbit/s.
pub fn iperf_parallel(
    client: &Namespace,
    server: &Namespace,
    server_ip: Ipv4Addr,
    seconds: u64,
    streams: usize,
) -> anyhow::Result<f64> {
    let port = 5201;
    let _srv = iperf_server(server, port)?;
    let mut last_err = String::new();
    // The server needs a moment to listen.
    for _ in 0..50 {
        let out = client.exec(&[
            "iperf3",
            "-c",
            &server_ip.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_str(&text).context("iperf3 JSON")?;
            match v["end"]["sum_received"]["bits_per_second"].as_f64() {
                Some(bps) => return Ok(bps / 1e9),
                None => last_err = v["error"].as_str().unwrap_or("no sum_received").to_string(),
            }
        } else {
            last_err = text
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 client failed: {last_err}")
}

/// `(pid, ppid, utime + stime + cutime + cstime in clock ticks, comm)` of
/// every process in /proc.
fn processes() -> Vec<(u32, u32, u64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        out.push((
            pid,
            num(1) as u32,
            num(11) + num(12) + num(13) + num(14),
            comm,
        ));
    }
    out
}

/// CPU seconds spent so far by this process, every descendant (alive, or
/// exited and reaped: the kernel adds those to their parent's), and the
/// kernel's softirq threads. On veths the receive work runs as softirq in
/// the context of the task that sent (charged to it) or in ksoftirqd, so
/// the difference over a run is the run's own CPU, apart from the other
/// work of the machine (other sessions' builds share these cores).
pub fn tree_cpu_seconds() -> f64 {
    let procs = processes();
    let ticks = tree_ticks(&procs, |_| true)
        + procs
            .iter()
            .filter(|p| p.3.starts_with("ksoftirqd/"))
            .map(|p| p.2)
            .sum::<u64>();
    ticks_to_seconds(ticks)
}

/// CPU seconds spent so far by the agents this process started (other
/// sessions' agents on the machine are not counted).
pub fn agents_cpu_seconds() -> f64 {
    ticks_to_seconds(tree_ticks(&processes(), |comm| comm == "pn-agent"))
}

/// Clock ticks of this process and its descendants whose name passes `keep`.
fn tree_ticks(procs: &[(u32, u32, u64, String)], keep: impl Fn(&str) -> bool) -> u64 {
    let mut mine = vec![std::process::id()];
    let mut ticks = 0u64;
    let mut i = 0;
    while i < mine.len() {
        let parent = mine[i];
        for (pid, ppid, t, comm) in procs {
            if *pid == parent && keep(comm) {
                ticks += t;
            }
            if *ppid == parent && !mine.contains(pid) {
                mine.push(*pid);
            }
        }
        i += 1;
    }
    ticks
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Softirq time of the whole machine (the `softirq` column of /proc/stat),
/// seconds: where the kernel receives, forwards and drops packets.
pub fn softirq_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}
