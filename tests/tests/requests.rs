//! Connections and HTTP/1.x requests between members, seen by the datapath
//! and counted by the agent: a real python HTTP server that answers after
//! 200 ms, curl (keep-alive), a pipelining client, a refused port, a dropped
//! SYN and a 1 MiB response.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use pn_tests::{Host, Namespace, eventually, metric_value, unique_prefix};

const SERVER: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(0.2)
        if self.path == "/missing":
            code, body = 404, b"no\n"
        elif self.path == "/big":
            code, body = 200, b"x" * 1048576
        else:
            code, body = 200, b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// The python server in a namespace; killed on drop.
struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(ns: &Namespace, args: &[&str]) -> std::process::Output {
    let mut full = vec!["curl", "-s", "-o", "/dev/null", "--max-time", "5"];
    full.extend_from_slice(args);
    ns.exec(&full)
}

#[test]
fn connections_and_requests_are_counted_per_edge() {
    let host = Host::start(&unique_prefix(), "h1");
    let net = host.create_network(&[]);
    let (client_app, server_app) = (host.create_app(&net), host.create_app(&net));
    let cns = host.member(&client_app, "api", "cl");
    let sns = host.member(&server_app, "web", "sv");
    let sip = sns.addr;
    let _server = Python(
        Command::new("ip")
            .args(["netns", "exec", &sns.name, "python3", "-c", SERVER, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let url = |path: &str| format!("http://{sip}:8080{path}");
    assert!(
        eventually(Duration::from_secs(10), || sns
            .exec(&["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/"])
            .status
            .success()),
        "server did not come up"
    );
    // Keep-alive: three requests on one connection.
    let out = curl(&cns, &[&url("/a"), &url("/missing"), &url("/b")]);
    assert!(out.status.success(), "{out:?}");
    // Pipelined: three requests sent before the first answer.
    let addr = format!("{sip}:8080");
    let got = cns.run(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for req in [
            "GET /p1 HTTP/1.1\r\nHost: s\r\n\r\n",
            "POST /p2 HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n",
            "GET /missing HTTP/1.1\r\nHost: s\r\n\r\n",
        ] {
            s.write_all(req.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&all).ends_with("no\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).matches("HTTP/1.1 ").count()
    });
    assert_eq!(got, 3);
    // 1 MiB in one response.
    assert!(curl(&cns, &[&url("/big")]).status.success());
    // Nobody listens on 8081; SYNs to 8082 are dropped inside the server.
    assert!(
        !curl(&cns, &[&format!("http://{sip}:8081/")])
            .status
            .success()
    );
    sns.exec(&["nft", "add table inet t"]);
    let rules = "add chain inet t c { type filter hook input priority 0; }; add rule inet t c tcp dport 8082 drop";
    assert!(sns.exec(&["nft", rules]).status.success());
    assert!(
        !curl(
            &cns,
            &["--connect-timeout", "1", &format!("http://{sip}:8082/")]
        )
        .status
        .success()
    );

    let edge = |port: &'static str| {
        vec![
            ("client_app", client_app.clone()),
            ("client_type", "api".to_string()),
            ("server_app", server_app.clone()),
            ("server_type", "web".to_string()),
            ("port", port.to_string()),
        ]
    };
    let value = |body: &str, name: &str, port: &'static str, more: &[(&str, &str)]| {
        let l = edge(port);
        let mut labels: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.extend_from_slice(more);
        metric_value(body, name, &labels)
    };
    let mut body = String::new();
    let settled = eventually(Duration::from_secs(10), || {
        body = host.metrics();
        value(&body, "pn_conn_timed_out_total", "8082", &[]) == 1
            && value(
                &body,
                "pn_conn_bytes_total",
                "8080",
                &[("direction", "to_client")],
            ) >= 1_048_576
    });
    assert!(settled, "{body}");
    let c = |name, port, more: &[(&str, &str)]| value(&body, name, port, more);
    assert_eq!(c("pn_conn_opened_total", "8080", &[]), 3, "{body}");
    assert_eq!(c("pn_conn_refused_total", "8081", &[]), 1, "{body}");
    assert_eq!(c("pn_conn_opened_total", "8081", &[]), 0);
    assert_eq!(c("pn_conn_opened_total", "8082", &[]), 0);
    let req = |method, class| {
        c(
            "pn_http_requests_total",
            "8080",
            &[("method", method), ("status_class", class)],
        )
    };
    assert_eq!(req("GET", "2xx"), 4, "{body}");
    assert_eq!(req("GET", "4xx"), 2, "{body}");
    assert_eq!(req("POST", "2xx"), 1, "{body}");
    // Every answer took the server's 200 ms, none more than 2 s.
    let bucket = |le| {
        c(
            "pn_http_request_duration_seconds_bucket",
            "8080",
            &[("le", le)],
        )
    };
    assert_eq!(bucket("0.128"), 0, "{body}");
    assert_eq!(bucket("2.048"), 7, "{body}");
    assert_eq!(c("pn_conn_connect_seconds_count", "8080", &[]), 3, "{body}");
    let to_client = c("pn_conn_bytes_total", "8080", &[("direction", "to_client")]);
    assert!((1_048_576..1_060_000).contains(&to_client), "{to_client}");
    // Nothing lost.
    assert_eq!(
        metric_value(&body, "pn_events_lost_total", &[]),
        0,
        "{body}"
    );

    // The router log.
    let log = host.cli_ok(&["flows", "--http", "--output", "json"]);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{log}");
    let big = lines
        .iter()
        .find(|l| l["http"]["path"] == "/big")
        .expect("/big logged");
    assert_eq!(big["http"]["status"], 200);
    let bytes = big["http"]["response_bytes"].as_u64().unwrap();
    assert!((1_048_576..1_049_000).contains(&bytes), "{bytes}");
    let ms = big["http"]["duration_ms"].as_f64().unwrap();
    assert!((200.0..2000.0).contains(&ms), "{ms}");
    assert!(
        big["src_container"]
            .as_str()
            .unwrap()
            .starts_with(&client_app)
    );
    assert!(
        big["dst_container"]
            .as_str()
            .unwrap()
            .starts_with(&server_app)
    );
    let table = host.cli_ok(&["flows", "--http", "--app", &server_app]);
    assert_eq!(table.lines().count(), 7, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(" POST /p2 200 ") && l.contains(&format!("{client_app}/api"))),
        "{table}"
    );
    assert!(
        host.cli_ok(&[
            "flows",
            "--http",
            "--app",
            "ap-00000000-0000-0000-0000-000000000000"
        ])
        .is_empty()
    );
    assert!(
        host.cli_ok(&["flows", "--http", "--network", &net])
            .lines()
            .count()
            == 7
    );
    // Status shows the (zero) losses.
    let status = host.cli_ok(&["status"]);
    assert!(status.contains("events lost conn 0"), "{status}");
}

/// Two local members: each segment passes the sender's program and the
/// receiver's, and only the first sends the event. 20 keep-alive requests
/// are about 2 events each (request, response head) plus the connection's
/// boundaries; with both copies sent they were twice that (88).
#[test]
fn local_segments_are_one_event_each() {
    let host = Host::start(&unique_prefix(), "h1");
    let net = host.create_network(&[]);
    let (ca, sa) = (host.create_app(&net), host.create_app(&net));
    let cns = host.member(&ca, "api", "cl");
    let sns = host.member(&sa, "web", "sv");
    let sip = sns.addr;
    let fast = SERVER.replace("time.sleep(0.2)", "pass");
    let _server = Python(
        Command::new("ip")
            .args(["netns", "exec", &sns.name, "python3", "-c", &fast, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    assert!(eventually(Duration::from_secs(10), || sns
        .exec(&["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/"])
        .status
        .success()));
    let events = |body: &str| metric_value(body, "pn_conn_events_total", &[]);
    let before = events(&host.metrics());
    let urls: Vec<String> = (0..20).map(|i| format!("http://{sip}:8080/r{i}")).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert!(curl(&cns, &refs).status.success());
    let mut body = String::new();
    let answered = eventually(Duration::from_secs(10), || {
        body = host.metrics();
        metric_value(&body, "pn_http_requests_total", &[("method", "GET")]) == 20
            && metric_value(&body, "pn_conn_bytes_total", &[("direction", "to_client")]) > 0
    });
    assert!(answered, "{body}");
    let n = events(&body) - before;
    assert!((44..=50).contains(&n), "{n} events for 20 requests\n{body}");
}

/// Restores `kernel.bpf_stats_enabled` on drop (also when a run panics).
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> BpfStats {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, "1").unwrap();
        BpfStats(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The programs behind the links this agent pinned under its own bpffs:
/// those and no other agent's.
fn pinned_prog_ids(host: &Host) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut dirs = vec![host.bpffs()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                dirs.push(path);
                continue;
            }
            let out = pn_tests::run(
                "bpftool",
                &["-j", "link", "show", "pinned", path.to_str().unwrap()],
            );
            if !out.status.success() {
                continue;
            }
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

/// Summed (run_time_ns, run_cnt) of the programs.
fn prog_stats(ids: &[u64]) -> (u64, u64) {
    ids.iter().fold((0, 0), |(t, c), id| {
        let v: serde_json::Value = serde_json::from_slice(
            &pn_tests::run("bpftool", &["-j", "prog", "show", "id", &id.to_string()]).stdout,
        )
        .unwrap();
        (
            t + v["run_time_ns"].as_u64().unwrap_or(0),
            c + v["run_cnt"].as_u64().unwrap_or(0),
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-packet cost of the TC programs with tracking off, conns, http: a
/// 64 MiB iperf3 stream and 200 keep-alive requests per repetition, then
/// run_time_ns / run_cnt (kernel.bpf_stats_enabled, restored after) of the
/// programs of this agent's pinned links; the median of 5 repetitions.
/// Prints; asserts nothing. `cargo test --test requests -- --ignored --nocapture`.
#[test]
#[ignore]
fn per_packet_cost() {
    let _stats = BpfStats::enable();
    for track in ["off", "conns", "http"] {
        let host = Host::start_with(&unique_prefix(), "h1", &["--track", track]);
        let net = host.create_network(&[]);
        let (ca, sa) = (host.create_app(&net), host.create_app(&net));
        let cns = host.member(&ca, "api", "cl");
        let sns = host.member(&sa, "web", "sv");
        let sip = sns.addr.to_string();
        let fast = SERVER.replace("time.sleep(0.2)", "pass");
        let _server = Python(
            Command::new("ip")
                .args(["netns", "exec", &sns.name, "python3", "-c", &fast, "8080"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let _iperf = Python(
            Command::new("ip")
                .args(["netns", "exec", &sns.name, "iperf3", "-s", "-p", "5201"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        assert!(eventually(Duration::from_secs(10), || sns
            .exec(&["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/"])
            .status
            .success()));
        let ids = pinned_prog_ids(&host);
        assert!(!ids.is_empty(), "no pinned links under {:?}", host.bpffs());
        let urls: Vec<String> = (0..200)
            .map(|i| format!("http://{sip}:8080/r{i}"))
            .collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let (mut bulk, mut keep, mut pkts) = (Vec::new(), Vec::new(), (0, 0));
        for _ in 0..5 {
            let (t0, c0) = prog_stats(&ids);
            let out = cns.exec(&["iperf3", "-c", &sip, "-p", "5201", "-n", "64M"]);
            assert!(out.status.success(), "{out:?}");
            let (t1, c1) = prog_stats(&ids);
            assert!(curl(&cns, &refs).status.success());
            let (t2, c2) = prog_stats(&ids);
            bulk.push((t1 - t0) as f64 / (c1 - c0).max(1) as f64);
            keep.push((t2 - t1) as f64 / (c2 - c1).max(1) as f64);
            pkts = (c1 - c0, c2 - c1);
        }
        println!(
            "track={track} progs {ids:?}: bulk {:.1} ns/packet ({} packets), keep-alive {:.1} ns/packet ({} packets); bulk runs {bulk:.0?}, keep-alive runs {keep:.0?}",
            median(bulk.clone()),
            pkts.0,
            median(keep.clone()),
            pkts.1,
        );
    }
}
