//! Service addresses (`--balance vip`): the rate of new connections through
//! the service address (balanced in the kernel at the client's side) versus
//! straight to one container's address, same host, same run.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pn_tests::{Host, Namespace, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
};

const PORT: u16 = 8080;
const BACKENDS: usize = 3;

fn ip_of(v: &serde_json::Value) -> anyhow::Result<Ipv4Addr> {
    Ok(v["ip"].as_str().unwrap_or_default().parse()?)
}

/// A server that writes one line to each connection and closes it at
/// once (so the TIME_WAIT is the server's, not the client's ports'): a
/// blocking accept, so the rate measured is the path's, not a poll's.
struct LineServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    netns: File,
}

impl LineServer {
    fn start(ns: &Namespace, addr: SocketAddr) -> anyhow::Result<LineServer> {
        let file = File::open(ns.path())?;
        let netns = file.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, started) = std::sync::mpsc::channel();
        let s = stop.clone();
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
                if let Ok((mut c, _)) = listener.accept() {
                    let _ = c.write_all(b"x\n");
                }
            }
        });
        started.recv_timeout(Duration::from_secs(5))??;
        Ok(LineServer { stop, addr, netns })
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

/// New connections per second from `client` to `dst`, one at a time: open,
/// read the server's line, close; and how many timed out.
fn conn_rate(client: &Namespace, dst: SocketAddr, seconds: u64) -> anyhow::Result<(f64, u64)> {
    client.run(move || {
        let t = Instant::now();
        let (mut n, mut lost) = (0u64, 0u64);
        let mut b = [0u8; 64];
        while t.elapsed() < Duration::from_secs(seconds) {
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) else {
                lost += 1;
                anyhow::ensure!(lost < 10, "{lost} connections to {dst} failed");
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            anyhow::ensure!(s.read(&mut b)? > 0, "{dst} closed without a line");
            n += 1;
        }
        Ok((n as f64 / t.elapsed().as_secs_f64(), lost))
    })
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let net = host.create_network(&[]);
    let svc = host
        .cli_ok(&["app", "create", "--network", &net, "--balance", "vip"])
        .trim()
        .to_string();
    let client_app = host.create_app(&net);
    // Two clients: a reply straight from a backend to a client port that
    // earlier reached that backend through the service address is still
    // translated by the stale reverse entry of the connection table (LRU,
    // never removed at a connection's end), and the client refuses it; one
    // client per path keeps the figures about the path.
    let client = Namespace::new(&format!("{p}-cl"));
    host.attach(&client_app, "worker", &client);
    let direct_client = Namespace::new(&format!("{p}-cd"));
    host.attach(&client_app, "worker", &direct_client);
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let mut ips = Vec::new();
    for i in 0..BACKENDS {
        let ns = Namespace::new(&format!("{p}-b{i}"));
        ips.push(ip_of(&host.attach(&svc, "web", &ns))?);
        servers.push(LineServer::start(&ns, SocketAddr::from((ips[i], PORT)))?);
        backends.push(ns);
    }
    let list = host.json(&["app", "list"]);
    let vip: Ipv4Addr = list
        .as_array()
        .and_then(|l| l.iter().find(|a| a["id"] == svc.as_str()))
        .and_then(|a| a["services"][0]["addr"].as_str())
        .unwrap_or_default()
        .parse()?;
    let (mut via_vip, mut direct) = (vec![], vec![]);
    let (mut lost_vip, mut lost_direct) = (0, 0);
    for i in 0..effort.runs {
        // Alternate which goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through_vip in order {
            let (from, dst) = if through_vip {
                (&client, vip)
            } else {
                (&direct_client, ips[0])
            };
            let (r, lost) = conn_rate(from, SocketAddr::from((dst, PORT)), effort.seconds)?;
            if through_vip {
                via_vip.push(r);
                lost_vip += lost;
            } else {
                direct.push(r);
                lost_direct += lost;
            }
        }
    }
    let rate = Row::versus(
        "new TCP connections, one at a time",
        Measurement::new("conn/s", true, via_vip),
        "straight to a container",
        Measurement::new("conn/s", true, direct),
    );
    Ok(Scenario {
        name: "service".into(),
        title: "Service address (vip) versus a container's address".into(),
        setup: format!(
            "One host; an app balanced by vip with {BACKENDS} containers (a line server each), \
             a client of the same network opening connections one after the other (connect, \
             read one line, close) through the service address (Maglev choice, connection \
             table, replies translated back) versus straight to one container."
        ),
        rows: vec![rate],
        notes: vec![format!(
            "connections timed out (1 s): {lost_vip} through the service address, \
             {lost_direct} straight"
        )],
    })
}
