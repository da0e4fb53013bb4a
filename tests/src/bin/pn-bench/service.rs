//! Service addresses (`--balance vip`): the rate of new connections through
//! the service address (balanced in the kernel at the client's side) versus
//! straight to one container's address, same host, same run.

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use pn_tests::{Host, Namespace, net, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
};

const PORT: u16 = 8080;
const BACKENDS: usize = 3;

fn ip_of(v: &serde_json::Value) -> anyhow::Result<Ipv4Addr> {
    Ok(v["ip"].as_str().unwrap_or_default().parse()?)
}

/// New connections per second from `client` to `dst`, one at a time: open,
/// read the server's line, close.
fn conn_rate(client: &Namespace, dst: SocketAddr, seconds: u64) -> anyhow::Result<f64> {
    client.run(move || {
        let t = Instant::now();
        let mut n = 0u64;
        let mut b = [0u8; 64];
        while t.elapsed() < Duration::from_secs(seconds) {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            anyhow::ensure!(s.read(&mut b)? > 0, "{dst} closed without a line");
            n += 1;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
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
    let client = Namespace::new(&format!("{p}-cl"));
    host.attach(&client_app, "worker", &client);
    // The client closes first: its TIME_WAIT ports must be reusable, or a
    // few seconds of connections use up the port range.
    client.run(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
    })?;
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let mut ips = Vec::new();
    for i in 0..BACKENDS {
        let ns = Namespace::new(&format!("{p}-b{i}"));
        ips.push(ip_of(&host.attach(&svc, "web", &ns))?);
        servers.push(net::tcp_whoami_self_server(&ns, PORT));
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
    for i in 0..effort.runs {
        // Alternate which goes first, so drift does not favour one.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through_vip in order {
            let dst = if through_vip { vip } else { ips[0] };
            let r = conn_rate(&client, SocketAddr::from((dst, PORT)), effort.seconds)?;
            if through_vip {
                via_vip.push(r);
            } else {
                direct.push(r);
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
        notes: vec![],
    })
}
