//! Cost of connection and request tracking: keep-alive HTTP requests and a
//! TCP stream between two containers with tracking `http`, tracking off and
//! no programs, alternately in the same run, with the programs' ns/packet
//! (kernel.bpf_stats_enabled) beside.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use pn_tests::{Host, Namespace, scenario::OneApp, unique_prefix};

use crate::{
    Effort,
    agent_cpu::AgentCpu,
    report::{Measurement, Row, Scenario},
    tools,
};

const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without this, Nagle waits for the
    # client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keep-alive GETs over one connection for `seconds`: (per second, count).
fn keep_alive(client: &Namespace, ip: Ipv4Addr, seconds: u64) -> anyhow::Result<(f64, u64)> {
    Ok(client.run(move || -> std::io::Result<(f64, u64)> {
        let mut s = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(2))
            {
                Ok(c) => {
                    s = Some(c);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let mut s = s.ok_or_else(|| std::io::Error::other("server not listening"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let (mut n, mut buf) = (0u64, [0u8; 4096]);
        while Instant::now() < deadline {
            s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")?;
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nok\n") {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Err(std::io::Error::other("server closed"));
                }
                got.extend_from_slice(&buf[..k]);
            }
            n += 1;
        }
        Ok((n as f64 / start.elapsed().as_secs_f64(), n))
    })?)
}

/// Sets the tracking bits in the agent's pinned `PN_CONN_CFG`.
fn set_tracking(host: &Host, bits: u8) -> anyhow::Result<()> {
    let map = host.pinned_map("PN_CONN_CFG");
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&map)
        .args([
            "key",
            "0",
            "0",
            "0",
            "0",
            "value",
            &bits.to_string(),
            "0",
            "0",
            "0",
        ])
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool map update {map:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let _stats = tools::BpfStats::enable()?;
    let mut host = Host::start_with(&unique_prefix(), "h1", &["--track", "http"]);
    let OneApp { c1, c2, .. } = OneApp::new(&host, &host, ["web", "web"]);
    let ip2 = c2.addr;
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &c2.name, "python3", "-c", SERVER, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3")?,
    );
    // [http, off, none] × (req/s, Gbit/s, ns/packet requests, ns/packet
    // stream, programs' ns per request, agent's µs per request, its own
    // threads' µs per request, its children's, its context switches a
    // second)
    let mut m: [[Vec<f64>; 9]; 3] = Default::default();
    for i in 0..effort.runs {
        for k in 0..3 {
            // Rotate the order so that drift favours no mode.
            let mode = (k + i) % 3;
            if mode == 2 {
                tools::detach_programs(&host)?;
            } else {
                set_tracking(&host, if mode == 0 { 3 } else { 0 })?;
            }
            let ids = tools::pinned_prog_ids(&host);
            let s0 = tools::prog_stats_ids(&ids);
            let agent0 = tools::agents_cpu_seconds();
            // Read again each round: a reattach restarts the agent.
            let pid = host.pid().context("the agent's process id")?;
            let apart0 = AgentCpu::read(pid);
            let (rate, requests) = keep_alive(&c1, ip2, effort.seconds)?;
            let agent_s = tools::agents_cpu_seconds() - agent0;
            let (own_us, children_us, switches) = apart0.since(AgentCpu::read(pid));
            m[mode][0].push(rate);
            let s1 = tools::prog_stats_ids(&ids);
            m[mode][1].push(tools::iperf(&c1, &c2, ip2, effort.seconds)?);
            let s2 = tools::prog_stats_ids(&ids);
            if mode != 2 {
                m[mode][2].push(tools::ns_per_run(s0, s1));
                m[mode][3].push(tools::ns_per_run(s1, s2));
                m[mode][4].push(s1.0.saturating_sub(s0.0) as f64 / requests.max(1) as f64);
                m[mode][5].push(agent_s * 1e6 / requests.max(1) as f64);
                m[mode][6].push(own_us / requests.max(1) as f64);
                m[mode][7].push(children_us / requests.max(1) as f64);
                m[mode][8].push(switches / effort.seconds.max(1) as f64);
            } else {
                tools::reattach_programs(&mut host);
            }
        }
    }
    let [http, off, none] = m;
    let [
        h_rq,
        h_bw,
        h_nrq,
        h_nbw,
        h_preq,
        h_areq,
        h_own,
        h_child,
        h_sw,
    ] = http;
    let [
        o_rq,
        o_bw,
        o_nrq,
        o_nbw,
        o_preq,
        o_areq,
        o_own,
        o_child,
        o_sw,
    ] = off;
    let [n_rq, n_bw, ..] = none;
    let added = added_share(&h_preq, &o_preq, &h_rq);
    let notes = added_note(
        &added,
        (&h_preq, &o_preq),
        (&h_areq, &o_areq),
        (&h_rq, &o_rq),
    );
    let row = |what: &str, unit: &str, a: Vec<f64>, name: &str, b: Vec<f64>| {
        let r = Row::versus(
            what,
            Measurement::new(unit, true, a),
            name,
            Measurement::new(unit, true, b),
        );
        let met = r.ratio().unwrap_or(0.0) >= 0.97;
        r.with_target("≤ 3 % loss", met)
    };
    Ok(Scenario {
        name: "requests".into(),
        title: "Connection and request tracking".into(),
        setup: "Two containers of one network on one host; a python HTTP/1.1 server, one \
                keep-alive client (a request, then its whole answer) and iperf3 (1 stream); \
                pn with tracking http, tracking off (the same agent, PN_CONN_CFG rewritten) and \
                no programs, in rotating order. ns/packet: run_time_ns / run_cnt of the \
                programs of the agent's pinned links."
            .into(),
        rows: vec![
            row(
                "keep-alive HTTP requests, tracking http",
                "req/s",
                h_rq.clone(),
                "tracking off",
                o_rq,
            ),
            row(
                "keep-alive HTTP requests, tracking http",
                "req/s",
                h_rq,
                "no programs",
                n_rq,
            ),
            row(
                "TCP throughput, tracking http",
                "Gbit/s",
                h_bw.clone(),
                "tracking off",
                o_bw,
            ),
            row(
                "TCP throughput, tracking http",
                "Gbit/s",
                h_bw,
                "no programs",
                n_bw,
            ),
            Row::versus(
                "ns/packet during requests (http vs off)",
                Measurement::new("ns", false, h_nrq),
                "tracking off",
                Measurement::new("ns", false, o_nrq),
            ),
            Row::versus(
                "ns/packet during the stream (http vs off)",
                Measurement::new("ns", false, h_nbw),
                "tracking off",
                Measurement::new("ns", false, o_nbw),
            ),
            Row::versus(
                "programs' run time per request (http vs off)",
                Measurement::new("ns", false, h_preq),
                "tracking off",
                Measurement::new("ns", false, o_preq),
            ),
            Row::alone(
                "tracking's added program time, share of a request's time",
                Measurement::new("%", false, added),
            ),
            Row::versus(
                "the agent's CPU per request (http vs off)",
                Measurement::new("µs", false, h_areq),
                "tracking off",
                Measurement::new("µs", false, o_areq),
            ),
            Row::versus(
                "the agent's own threads' CPU per request (schedstat)",
                Measurement::new("µs", false, h_own),
                "tracking off",
                Measurement::new("µs", false, o_own),
            ),
            Row::versus(
                "the agent's children's CPU per request (nft)",
                Measurement::new("µs", false, h_child),
                "tracking off",
                Measurement::new("µs", false, o_child),
            ),
            Row::versus(
                "the agent's context switches per second",
                Measurement::new("/s", false, h_sw),
                "tracking off",
                Measurement::new("/s", false, o_sw),
            ),
        ],
        notes,
    })
}

/// Per round: what tracking adds to the programs' time per request, as a
/// share of one request's wall time with tracking on, %. The rounds pair
/// up: round i measured both modes minutes apart.
fn added_share(http_ns: &[f64], off_ns: &[f64], http_rate: &[f64]) -> Vec<f64> {
    http_ns
        .iter()
        .zip(off_ns)
        .zip(http_rate)
        .map(|((h, o), r)| (h - o) * r / 1e9 * 100.0)
        .collect()
}

/// Where tracking's cost per request goes: the programs' extra time and
/// the agent's (reading request events), against the measured gap.
fn added_note(
    added: &[f64],
    (h_ns, o_ns): (&[f64], &[f64]),
    (h_a, o_a): (&[f64], &[f64]),
    (h_rq, o_rq): (&[f64], &[f64]),
) -> Vec<String> {
    let med = |v: &[f64]| Measurement::new("", true, v.to_vec()).median();
    let gap = (1.0 - med(h_rq) / med(o_rq).max(1e-9)) * 100.0;
    let request_us = 1e6 / med(h_rq).max(1e-9);
    vec![format!(
        "Tracking's cost per request (medians): the programs {:.0} ns with http against \
         {:.0} ns off ({:.2} % of a request's {:.0} µs), the agent's CPU {:.1} µs against \
         {:.1} µs off; the request rate's median gap in this run: {:.1} %.",
        med(h_ns),
        med(o_ns),
        med(added),
        request_us,
        med(h_a),
        med(o_a),
        gap
    )]
}
