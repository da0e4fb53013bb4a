//! Service addresses (`--balance vip`), same host, same run: the rate of
//! new connections and the latency of 1-byte requests through the service
//! address (balanced in the kernel at the client's side) versus straight to
//! one container's address; and how 10 000 connections of a client that
//! resolves the name once spread over the backends with `vip` versus `dns`.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pn_tests::{Host, Namespace, scenario::Member, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
};

/// Line server (one line per connection, then closed).
const PORT: u16 = 8080;
/// Echo server (a persistent connection, request/response).
const ECHO: u16 = 8081;
/// The first backend's line server for connections straight to it. Not
/// `PORT`: a client port used straight and then through the service address
/// (or the other way) within the server's TIME_WAIT (60 s) meets that
/// TIME_WAIT with a SYN whose sequence number and timestamp belong to
/// another client-side tuple (Linux draws both per tuple): the server
/// answers the SYN with the old connection's ACK, the client resets and
/// sends its SYN again. Mixed on one port, each path paid for the other's
/// TIME_WAITs (the note counts the SYNs sent again).
const DIRECT: u16 = 8082;
const BACKENDS: usize = 3;
const ZONE: &str = "private-network.internal";

/// A server with a blocking accept (so the rate measured is the path's,
/// not a poll's). `echo: false`: writes one line to each connection and
/// closes it at once (so the TIME_WAIT is the server's, not the client's
/// ports'). `echo: true`: echoes each connection until it closes.
struct LineServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    netns: File,
    /// Connections accepted (the spread is counted here).
    accepted: Arc<AtomicU64>,
}

impl LineServer {
    fn start(ns: &Namespace, addr: SocketAddr, echo: bool) -> anyhow::Result<LineServer> {
        let file = File::open(ns.path())?;
        let netns = file.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (ready, started) = std::sync::mpsc::channel();
        let s = stop.clone();
        let count = accepted.clone();
        std::thread::spawn(move || {
            let listener = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| TcpListener::bind(("0.0.0.0", addr.port())));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            while !s.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                if !echo {
                    let _ = c.write_all(b"x\n");
                    continue;
                }
                std::thread::spawn(move || {
                    let _ = c.set_nodelay(true);
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = c.read(&mut b) {
                        if c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        started.recv_timeout(Duration::from_secs(5))??;
        Ok(LineServer {
            stop,
            addr,
            netns,
            accepted,
        })
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept, from the server's own namespace (the
        // host is no member: its connection would be dropped).
        if let Ok(file) = self.netns.try_clone() {
            let addr = self.addr;
            let _ = std::thread::spawn(move || {
                if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok() {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                }
            })
            .join();
        }
    }
}

/// SYNs the calling thread's network namespace sent again (TcpExt
/// TCPSynRetrans); 0 if unreadable.
fn syn_retrans() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// New connections per second from `client` to `dst`, one at a time: open,
/// read the server's line, close; how many timed out, how many took over
/// 200 ms, and how many SYNs were sent again.
fn conn_rate(
    client: &Namespace,
    dst: SocketAddr,
    seconds: u64,
) -> anyhow::Result<(f64, u64, u64, u64)> {
    client.run(move || {
        let retrans = syn_retrans();
        let t = Instant::now();
        let (mut n, mut lost, mut slow) = (0u64, 0u64, 0u64);
        let mut b = [0u8; 64];
        while t.elapsed() < Duration::from_secs(seconds) {
            let opened = Instant::now();
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) else {
                lost += 1;
                anyhow::ensure!(lost < 10, "{lost} connections to {dst} failed");
                continue;
            };
            if opened.elapsed() > Duration::from_millis(200) {
                slow += 1;
            }
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            anyhow::ensure!(s.read(&mut b)? > 0, "{dst} closed without a line");
            n += 1;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        Ok((rate, lost, slow, syn_retrans().saturating_sub(retrans)))
    })
}

/// 1-byte requests on one connection from `client` to `dst`, one after
/// the other for `seconds`: (round trips per second, p50 µs, p99 µs).
fn ping_pong(client: &Namespace, dst: SocketAddr, seconds: u64) -> anyhow::Result<(f64, f64, f64)> {
    client.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut rtt = Vec::new();
        let mut b = [0u8; 1];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(seconds) {
            let sent = Instant::now();
            s.write_all(b"p")?;
            s.read_exact(&mut b)?;
            rtt.push(sent.elapsed().as_secs_f64() * 1e6);
        }
        let rate = rtt.len() as f64 / t.elapsed().as_secs_f64();
        rtt.sort_by(f64::total_cmp);
        let at = |q: f64| rtt[((rtt.len() - 1) as f64 * q).round() as usize];
        Ok((rate, at(0.50), at(0.99)))
    })
}

/// What a client that resolves once gets for `name`: the first address of
/// the answer (as `connect` to a name tries them in order and keeps the
/// first that answers), from the agent's DNS server.
fn resolve_once(client: &Namespace, name: String) -> anyhow::Result<Ipv4Addr> {
    client.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            use hickory_resolver::{
                Resolver,
                config::{NameServerConfig, ResolverConfig},
                net::runtime::TokioRuntimeProvider,
            };
            let cfg = ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                Ipv4Addr::new(169, 254, 1, 1).into(),
            )]);
            let r = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default()).build()?;
            let first = r
                .lookup_ip(name.as_str())
                .await?
                .iter()
                .find_map(|ip| match ip {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                });
            first.ok_or_else(|| anyhow::anyhow!("no address for {name}"))
        })
    })
}

/// `n` connections one after the other (connect, read the line, close):
/// (lost, distinct client ports, uses of the most used one). The ports are the kernel's choice; a
/// port used again (its connection closed by the server first, so not in
/// the client's TIME_WAIT) hashes to the same slot, so fewer distinct ports
/// mean a coarser spread.
fn connections(client: &Namespace, dst: SocketAddr, n: usize) -> anyhow::Result<(u64, usize, u32)> {
    client.run(move || {
        let mut lost = 0u64;
        let mut ports = std::collections::HashMap::<u16, u32>::new();
        let mut b = [0u8; 64];
        for _ in 0..n {
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) else {
                lost += 1;
                anyhow::ensure!(lost < 10, "{lost} connections to {dst} failed");
                continue;
            };
            *ports.entry(s.local_addr()?.port()).or_default() += 1;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            anyhow::ensure!(s.read(&mut b)? > 0, "{dst} closed without a line");
        }
        let most = ports.values().copied().max().unwrap_or(0);
        Ok((lost, ports.len(), most))
    })
}

/// Connections each backend accepted while `f` ran.
fn counted<T>(
    servers: &[LineServer],
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<u64>, T)> {
    let before: Vec<u64> = servers
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .collect();
    let lost = f()?;
    let after = servers.iter().map(|s| s.accepted.load(Ordering::Relaxed));
    Ok((after.zip(before).map(|(a, b)| a - b).collect(), lost))
}

/// Coefficient of variation of the per-backend counts (standard deviation
/// over mean, population): 0 when even; with one backend taking all of
/// `n` backends' share, sqrt(n - 1).
fn cv(counts: &[u64]) -> f64 {
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<u64>() as f64 / n;
    let var = counts
        .iter()
        .map(|c| (*c as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    var.sqrt() / mean
}

/// The largest share, in percent.
fn max_share(counts: &[u64]) -> f64 {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    counts.iter().copied().max().unwrap_or(0) as f64 * 100.0 / total
}

/// An app of `net` with `BACKENDS` web containers, each running a line
/// server and an echo server: (app, addresses, line servers, echo servers,
/// namespaces).
type Backends = (
    String,
    Vec<Ipv4Addr>,
    Vec<LineServer>,
    Vec<LineServer>,
    Vec<Member>,
);

fn backends(host: &Host, net: &str, balance: &str) -> anyhow::Result<Backends> {
    let app = host.create_app_with(net, &["--balance", balance]);
    let (mut ips, mut servers, mut spaces) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..BACKENDS {
        let ns = host.member(&app, "web", &format!("{balance}{i}"));
        let ip = ns.addr;
        servers.push(LineServer::start(&ns, SocketAddr::from((ip, PORT)), false)?);
        servers.push(LineServer::start(&ns, SocketAddr::from((ip, ECHO)), true)?);
        ips.push(ip);
        spaces.push(ns);
    }
    // Even: line servers; odd: echo servers.
    let (line, echo): (Vec<_>, Vec<_>) = servers
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let line = line.into_iter().map(|(_, s)| s).collect();
    let echo = echo.into_iter().map(|(_, s)| s).collect();
    Ok((app, ips, line, echo, spaces))
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let host = Host::start(&unique_prefix(), "h1");
    let (net, client_app) = host.network_and_app(&[]);
    // One client for both paths: its ports reach the backends both through
    // the service address and straight (a connection's table entries end
    // with it, and a direct SYN drops a stale reverse entry).
    let client = host.member(&client_app, "worker", "cl");
    // Dropped in reverse order: servers stop before their namespaces go.
    let (svc, ips, servers, _echo, vip_ns) = backends(&host, &net, "vip")?;
    let _direct = LineServer::start(&vip_ns[0], SocketAddr::from((ips[0], DIRECT)), false)?;
    let (dns_app, _, dns_servers, _dns_echo, _dns_ns) = backends(&host, &net, "dns")?;
    let list = host.json(&["app", "list"]);
    let vip: Ipv4Addr = list
        .as_array()
        .and_then(|l| l.iter().find(|a| a["id"] == svc.as_str()))
        .and_then(|a| a["services"][0]["addr"].as_str())
        .unwrap_or_default()
        .parse()?;
    let (mut via_vip, mut direct) = (vec![], vec![]);
    let (mut rt_vip, mut rt_direct) = (vec![], vec![]);
    let (mut p50_vip, mut p50_direct, mut p99_vip, mut p99_direct) =
        (vec![], vec![], vec![], vec![]);
    let (mut lost_vip, mut lost_direct, mut slow_vip, mut slow_direct) = (0, 0, 0, 0);
    let (mut again_vip, mut again_direct) = (0, 0);
    for i in 0..effort.runs {
        // Alternate which goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through_vip in order {
            let (dst, port) = if through_vip {
                (vip, PORT)
            } else {
                (ips[0], DIRECT)
            };
            let (r, lost, slow, again) =
                conn_rate(&client, SocketAddr::from((dst, port)), effort.seconds)?;
            let (rt, p50, p99) = ping_pong(&client, SocketAddr::from((dst, ECHO)), effort.seconds)?;
            if through_vip {
                via_vip.push(r);
                lost_vip += lost;
                slow_vip += slow;
                again_vip += again;
                rt_vip.push(rt);
                p50_vip.push(p50);
                p99_vip.push(p99);
            } else {
                direct.push(r);
                lost_direct += lost;
                slow_direct += slow;
                again_direct += again;
                rt_direct.push(rt);
                p50_direct.push(p50);
                p99_direct.push(p99);
            }
        }
    }

    // The spread: each app's web name resolved once, then `n` connections
    // to that one address.
    let n = effort.spread_conns;
    let name = |app: &str| format!("web.{app}.{net}.{ZONE}.");
    let vip_addr = resolve_once(&client, name(&svc))?;
    anyhow::ensure!(
        vip_addr == vip,
        "the vip app's name answers {vip_addr}, not {vip}"
    );
    let dns_addr = resolve_once(&client, name(&dns_app))?;
    let (mut cv_vip, mut cv_dns, mut max_vip, mut max_dns) = (vec![], vec![], vec![], vec![]);
    let mut spread = Vec::new();
    for run in 0..effort.runs {
        let t = Instant::now();
        let (v, (lost_v, ports_v, most_v)) = counted(&servers, || {
            connections(&client, SocketAddr::from((vip_addr, PORT)), n)
        })?;
        let took = t.elapsed();
        let (d, (lost_d, ports_d, most_d)) = counted(&dns_servers, || {
            connections(&client, SocketAddr::from((dns_addr, PORT)), n)
        })?;
        cv_vip.push(cv(&v));
        cv_dns.push(cv(&d));
        max_vip.push(max_share(&v));
        max_dns.push(max_share(&d));
        spread.push(format!(
            "run {}: {v:?} through the service address ({:.1} s, {ports_v} distinct client \
             ports, the most used {most_v} times, {lost_v} lost), {d:?} with dns balance \
             ({ports_d} ports, the most used {most_d} times, {lost_d} lost)",
            run + 1,
            took.as_secs_f64()
        ));
    }
    let pct = |what: &str, a: Vec<f64>, b: Vec<f64>, unit: &str, higher: bool| {
        Row::versus(
            what,
            Measurement::new(unit, higher, a),
            "straight to a container",
            Measurement::new(unit, higher, b),
        )
    };
    let rows = vec![
        pct(
            "new TCP connections, one at a time",
            via_vip,
            direct,
            "conn/s",
            true,
        ),
        pct(
            "1-byte request/response on one connection: rate",
            rt_vip,
            rt_direct,
            "req/s",
            true,
        ),
        pct(
            "1-byte request/response: p50 latency",
            p50_vip,
            p50_direct,
            "µs",
            false,
        ),
        pct(
            "1-byte request/response: p99 latency",
            p99_vip,
            p99_direct,
            "µs",
            false,
        ),
        Row::versus(
            &format!(
                "spread of {n} connections of a resolve-once client: coefficient of variation"
            ),
            Measurement::new("cv", false, cv_vip),
            "dns balance",
            Measurement::new("cv", false, cv_dns),
        ),
        Row::versus(
            &format!("spread of {n} connections of a resolve-once client: largest share"),
            Measurement::new("%", false, max_vip),
            "dns balance",
            Measurement::new("%", false, max_dns),
        ),
    ];
    let mut notes = vec![
        format!(
            "connections timed out (1 s): {lost_vip} through the service address, \
             {lost_direct} straight; opened in over 200 ms: {slow_vip} through the service \
             address, {slow_direct} straight; SYNs sent again: {again_vip} through the service \
             address, {again_direct} straight (the straight connections use a port of their own, \
             {DIRECT}: see `DIRECT` in pn-bench's service.rs)"
        ),
        format!("spread, connections per backend: {}", spread.join("; ")),
    ];
    notes.push(format!(
        "spread: per-backend counts are the connections each backend's server accepted; \
         coefficient of variation = population standard deviation / mean over the {BACKENDS} \
         backends (0: even; one backend taking everything: {:.2}); largest share = the busiest \
         backend's percent of all ({:.1} % is even)",
        ((BACKENDS - 1) as f64).sqrt(),
        100.0 / BACKENDS as f64
    ));
    Ok(Scenario {
        name: "service".into(),
        title: "Service address (vip) versus a container's address".into(),
        setup: format!(
            "One host; an app balanced by vip with {BACKENDS} containers (a line server and an \
             echo server each), one client of the same network: connections one after the \
             other (connect, read one line, close) and 1-byte requests on one connection \
             (TCP_NODELAY, write, read the byte back), through the service address (Maglev \
             choice, connection table, replies translated back) versus straight to one \
             container (its line server on a port of its own, {DIRECT}), alternating. \
             Spread: a second app balanced by dns with {BACKENDS} \
             containers; the client resolves each app's web name once (the agent's DNS, the \
             answer's first address) and opens {n} connections to it."
        ),
        rows,
        notes,
    })
}
