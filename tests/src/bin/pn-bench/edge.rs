//! The edge: a container reaching the world through its host's NAT versus
//! the host reaching the world itself; a router through a published port
//! versus the router talking to the container's address with no pn in the
//! path (programs detached, pn's nftables table removed).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context;
use pn_tests::{
    Host, Namespace,
    edge::{HOST, Outside, ROUTER, WORLD},
    unique_prefix,
};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

/// Requests per second from `client` to `dst`, each on a new TCP
/// connection (what a front router does for a client without keep-alive):
/// connect, send a request, read the answer, close. The client closes with
/// a reset (no TIME_WAIT on either side): otherwise a new connection soon
/// lands on a 4-tuple the server still holds in TIME_WAIT, and the
/// measurement is the kernel's SYN retransmission timer, not the path.
fn request_rate(client: &Namespace, dst: SocketAddr, seconds: u64) -> anyhow::Result<Rate> {
    client.run(move || {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let (mut n, mut failed) = (0u64, 0u64);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            match one_request(dst) {
                Ok(()) => n += 1,
                Err(e) => {
                    failed += 1;
                    last_error = format!("{e:#}");
                }
            }
        }
        // A rare failure is the machine's; many are the path's.
        anyhow::ensure!(
            failed * 100 <= n.max(1),
            "{failed} of {} requests to {dst} failed, the last: {last_error}",
            n + failed
        );
        anyhow::Ok(Rate {
            per_sec: n as f64 / start.elapsed().as_secs_f64(),
            failed,
            last_error,
        })
    })
}

struct Rate {
    per_sec: f64,
    failed: u64,
    last_error: String,
}

fn one_request(dst: SocketAddr) -> anyhow::Result<()> {
    let mut buf = [0u8; 512];
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: waf\r\n\r\n")
        .context("sending the request")?;
    let mut got = Vec::new();
    while !got.ends_with(ANSWER) {
        match s.read(&mut buf).context("reading the answer")? {
            0 => anyhow::bail!("the answer was cut short"),
            k => got.extend_from_slice(&buf[..k]),
        }
    }
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    Ok(())
}

const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A small HTTP server in `ns` on `port`: one answer per connection, then
/// it waits for the client to close, accepting as fast as it can (blocking
/// accept, no polling). Stops when dropped.
struct Answerer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    ns: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn answerer(ns: &Namespace, port: u16) -> anyhow::Result<Answerer> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let file = std::fs::File::open(ns.path())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let bound = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| e.to_string())
            });
        let l = match bound {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 1024];
        for conn in l.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if c.write_all(ANSWER).is_ok() {
                while matches!(c.read(&mut buf), Ok(k) if k > 0) {}
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))?
        .map_err(|e| anyhow::anyhow!("answerer: {e}"))?;
    Ok(Answerer {
        stop,
        port,
        ns: ns.name.clone(),
        thread: Some(thread),
    })
}

impl Drop for Answerer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the blocking accept.
        let port = self.port;
        let _ = pn_tests::run_in(&self.ns, move || {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(1),
            )
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn edge_apply_clear(host: &Host) -> anyhow::Result<()> {
    let out = host.ns.exec(&[
        pn_tests::agent_bin().to_str().unwrap_or("pn-agent"),
        "edge-apply",
        "--clear",
    ]);
    anyhow::ensure!(out.status.success(), "edge-apply --clear: {out:?}");
    Ok(())
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let out = Outside::around(&p, &host.ns);
    host.launch(&["--router-cidr", &format!("{ROUTER}/32")]);
    let net_id = host.create_network(&[]);
    let app = host.create_app(&net_id);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let attached = host.attach(&app, "web", &c1);
    let ip1: Ipv4Addr = attached["ip"].as_str().unwrap_or_default().parse()?;
    let published: SocketAddr = attached["published"]
        .as_str()
        .context("the web container is not published")?
        .parse()?;
    let world: Ipv4Addr = WORLD.parse()?;
    let _web = answerer(&c1, 8080)?;
    let (mut pn_bw, mut host_bw, mut pn_rate, mut direct_rate) = (vec![], vec![], vec![], vec![]);
    let (mut failed, mut last_error) = (0, String::new());
    for i in 0..effort.runs {
        // Alternate which side goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_pn in order {
            if with_pn {
                pn_bw.push(tools::iperf(&c1, &out.world, world, effort.seconds)?);
                let r = request_rate(&out.router, published, effort.seconds)?;
                failed += r.failed;
                if r.failed > 0 {
                    last_error = r.last_error;
                }
                pn_rate.push(r.per_sec);
            } else {
                host_bw.push(tools::iperf(&host.ns, &out.world, world, effort.seconds)?);
                // No pn in the path: programs detached, pn's table gone,
                // the router routing the pool to the host.
                tools::detach_programs(&host)?;
                edge_apply_clear(&host)?;
                out.router
                    .ip(&["route", "replace", "10.240.0.0/12", "via", HOST]);
                let before = host.packets(&app, "web-1", "published");
                let r = request_rate(&out.router, SocketAddr::from((ip1, 8080)), effort.seconds)?;
                failed += r.failed;
                if r.failed > 0 {
                    last_error = r.last_error;
                }
                direct_rate.push(r.per_sec);
                anyhow::ensure!(
                    host.packets(&app, "web-1", "published") == before,
                    "the baseline still ran pn's programs"
                );
                out.router.ip(&["route", "del", "10.240.0.0/12"]);
                // The restart attaches the programs and puts the table back.
                tools::reattach_programs(&mut host);
            }
        }
    }
    let bw = Row::versus(
        "egress, container → world, iperf3, 1 TCP stream",
        Measurement::new("Gbit/s", true, pn_bw),
        "the host itself",
        Measurement::new("Gbit/s", true, host_bw),
    );
    let rate = Row::versus(
        "router → published port, 1 request per TCP connection",
        Measurement::new("req/s", true, pn_rate),
        "router → container address, no pn",
        Measurement::new("req/s", true, direct_rate),
    );
    let mut notes = vec![
        "Publication costs the kernel's NAT per connection (DNAT, conntrack entry, \
         connection mark copied to every packet) and the programs' verdict; the \
         baseline has no netfilter hook in the path at all."
            .to_string(),
    ];
    if failed > 0 {
        notes.push(format!(
            "{failed} request(s) of the whole run failed and were not counted (the last: {last_error})."
        ));
    }
    for r in [&bw, &rate] {
        if let Some(b) = &r.baseline
            && r.pn.min() <= b.max()
            && b.min() <= r.pn.max()
        {
            notes.push(format!(
                "{}: the min–max ranges overlap, so the difference is within this machine's noise.",
                r.what
            ));
        }
    }
    Ok(Scenario {
        name: "edge".into(),
        title: "The edge (world and routers)".into(),
        setup: "One host on a LAN with a gateway to \"the world\" (a namespace behind it) and a \
                router beside it. Egress: iperf3 from a container to a server in the world, \
                through pn's programs and the host's NAT (nftables masquerade), against the same \
                transfer started on the host itself. Publication: a client in the router's \
                namespace opening a new TCP connection per request to the web container's \
                published port (DNAT, connection mark, `published` verdict), against the \
                router sending to the container's address through the host with pn's programs \
                detached and its nftables table removed."
            .into(),
        rows: vec![bw, rate],
        notes,
    })
}
