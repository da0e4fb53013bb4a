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
/// `--conn-share` of the agent: the whole of `PN_LB_CONNS`.
const CONN_SHARE: &str = "131072";

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

/// Client ports the spread walks through, one per connection. The client's
/// namespace is its own and runs nothing else while the spread runs, so the
/// whole range is free; walking it (rather than letting the kernel choose)
/// gives every connection a 5-tuple no earlier one had: the kernel reuses
/// the few ports whose connections the server closed first (not in the
/// client's TIME_WAIT), and each reused port hashes to the same backend
/// (1 659 distinct ports of 10 000 in a full run of 2026-12-07, whose runs
/// 2–5 put between 44 and 929 of 10 000 on one backend).
const SPREAD_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// The next port of [`SPREAD_PORTS`] after `port`, wrapping.
fn next_port(port: u16) -> u16 {
    if port >= *SPREAD_PORTS.end() {
        *SPREAD_PORTS.start()
    } else {
        port + 1
    }
}

/// What [`connections`] saw.
struct Spread {
    lost: u64,
    /// Distinct client ports, and the uses of the most used one.
    ports: usize,
    most: u32,
    /// Ports skipped because a socket of the namespace held them.
    busy: u64,
    /// SYNs the client sent again (a port's earlier connection still in
    /// the server's TIME_WAIT, after the walk wrapped).
    syn_again: u64,
}

/// `n` connections one after the other (connect, read the line, close),
/// each from the next free port of [`SPREAD_PORTS`] after `*port` (left at
/// the last one used, so the next run goes on from there).
fn connections(
    client: &Namespace,
    dst: SocketAddr,
    n: usize,
    port: &mut u16,
) -> anyhow::Result<Spread> {
    let start = *port;
    let (spread, last) = client.run(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let retrans = syn_retrans();
        let mut port = start;
        let (mut lost, mut busy) = (0u64, 0u64);
        let mut ports = std::collections::HashMap::<u16, u32>::new();
        let mut b = [0u8; 64];
        for _ in 0..n {
            // Busy ports are only skipped: the kernel's ephemeral ports of
            // the scenario's earlier connections (the new-connection rows,
            // tens of thousands in a full run) sit in TIME_WAIT without
            // SO_REUSEADDR, which refuses a bind even with it; only a whole
            // lap without a free port is an error.
            let mut tries = 0usize;
            let s = loop {
                port = next_port(port);
                tries += 1;
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                // A port of the other destination's walk may sit in this
                // side's TIME_WAIT (a close that came before the server's
                // FIN); another destination is another 5-tuple.
                s.set_reuse_address(true)?;
                match s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()) {
                    Ok(()) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        busy += 1;
                        anyhow::ensure!(
                            tries < SPREAD_PORTS.len(),
                            "no free client port in {}..={}",
                            SPREAD_PORTS.start(),
                            SPREAD_PORTS.end()
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if let Err(e) = s.connect_timeout(&dst.into(), Duration::from_secs(1)) {
                lost += 1;
                anyhow::ensure!(
                    lost < 10,
                    "{lost} connections to {dst} failed (the last from port {port}: {e})"
                );
                continue;
            }
            let mut s = TcpStream::from(s);
            *ports.entry(s.local_addr()?.port()).or_default() += 1;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            anyhow::ensure!(s.read(&mut b)? > 0, "{dst} closed without a line");
        }
        let spread = Spread {
            lost,
            ports: ports.len(),
            most: ports.values().copied().max().unwrap_or(0),
            busy,
            syn_again: syn_retrans().saturating_sub(retrans),
        };
        Ok((spread, port))
    })?;
    *port = last;
    Ok(spread)
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
    // The spread's fresh ports make every connection a new entry of the
    // balanced connections' table, each kept 60 s after it closes: past
    // the default share (16 384 entries) of the client, its next
    // connections would be dropped (`conn_quota`), so the client here may
    // hold the whole table.
    let host = Host::start_with(&unique_prefix(), "h1", &["--conn-share", CONN_SHARE]);
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
    // One walk per destination: a full run's 5 × 10 000 connections to
    // each fit in the range, so no 5-tuple comes twice.
    let (mut port_v, mut port_d) = (*SPREAD_PORTS.start() - 1, *SPREAD_PORTS.start() - 1);
    for run in 0..effort.runs {
        let t = Instant::now();
        let (v, sv) = counted(&servers, || {
            connections(&client, SocketAddr::from((vip_addr, PORT)), n, &mut port_v)
        })?;
        let took = t.elapsed();
        let (d, sd) = counted(&dns_servers, || {
            connections(&client, SocketAddr::from((dns_addr, PORT)), n, &mut port_d)
        })?;
        cv_vip.push(cv(&v));
        cv_dns.push(cv(&d));
        max_vip.push(max_share(&v));
        max_dns.push(max_share(&d));
        spread.push(format!(
            "run {}: {v:?} through the service address ({:.1} s, {} distinct client \
             ports, the most used {} times, {} busy ports skipped, {} SYNs sent again, {} \
             lost), {d:?} with dns balance ({} ports, the most used {} times, {} lost)",
            run + 1,
            took.as_secs_f64(),
            sv.ports,
            sv.most,
            sv.busy,
            sv.syn_again,
            sv.lost,
            sd.ports,
            sd.most,
            sd.lost,
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
             answer's first address) and opens {n} connections to it, one after the other, \
             each from a fresh source port (bound before connecting, walking {}–{} on from one \
             run to the next: no two of a bench run's spread connections share a 5-tuple; the \
             agent runs with `--conn-share {CONN_SHARE}`, the whole balanced table, since the \
             default share, 16 384 entries kept 60 s after each connection, would drop them).",
            SPREAD_PORTS.start(),
            SPREAD_PORTS.end()
        ),
        rows,
        notes,
    })
}
