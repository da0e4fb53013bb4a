//! Connections and HTTP/1.x requests between IPv6 members: the twins of
//! `requests.rs` (a real python HTTP server on `[::]`, curl keep-alive, a
//! pipelining client, a refused port, a dropped SYN, a 1 MiB response), the
//! same metrics and `flows --http` lines with IPv6 peers, one event per
//! segment between local members, and across two hosts the connection
//! counted once, on the client's host. Flows and drops name IPv6 peers.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use pn_tests::{
    Host, Namespace, eventually, fleet::Fleet, metric_value, scenario::Member, unique_prefix,
};

const SERVER: &str = r#"
import http.server, socket, sys, time
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
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
S(("::", int(sys.argv[1])), H).serve_forever()
"#;

/// The python server in a namespace; killed on drop.
struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server (`delay`: its 200 ms answers, or none) on port 8080 of `ns`,
/// once it answers.
fn serve(ns: &Namespace, delay: bool) -> Python {
    let code = if delay {
        SERVER.to_string()
    } else {
        SERVER.replace("time.sleep(0.2)", "pass")
    };
    let p = Python(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &code, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    assert!(
        eventually(Duration::from_secs(10), || ns
            .exec(&["curl", "-s", "-o", "/dev/null", "http://[::1]:8080/"])
            .status
            .success()),
        "server did not come up"
    );
    p
}

fn curl(ns: &Namespace, args: &[&str]) -> std::process::Output {
    let mut full = vec!["curl", "-s", "-o", "/dev/null", "--max-time", "5"];
    full.extend_from_slice(args);
    ns.exec(&full)
}

fn ip6(m: &Member) -> Ipv6Addr {
    m.attached["ip6"]
        .as_str()
        .unwrap_or_else(|| panic!("no ip6 in {}", m.attached))
        .parse()
        .unwrap()
}

/// `flows --http --output json` of `host`, parsed.
fn requests(host: &Host) -> Vec<serde_json::Value> {
    host.cli_ok(&["flows", "--http", "--output", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn addr_of(v: &serde_json::Value) -> IpAddr {
    v.as_str()
        .unwrap_or_else(|| panic!("no address: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn ipv6_connections_and_requests_are_counted_per_edge() {
    let host = Host::start(&unique_prefix(), "h1");
    let net = host.create_network(&[]);
    let (client_app, server_app) = (host.create_app(&net), host.create_app(&net));
    let cns = host.member(&client_app, "api", "cl");
    let sns = host.member(&server_app, "web", "sv");
    let (cip, sip) = (ip6(&cns), ip6(&sns));
    let _server = serve(&sns, true);
    let url = |path: &str| format!("http://[{sip}]:8080{path}");
    // Keep-alive: three requests on one connection.
    let out = curl(&cns, &[&url("/a"), &url("/missing"), &url("/b")]);
    assert!(out.status.success(), "{out:?}");
    // Pipelined: three requests sent before the first answer.
    let addr = SocketAddr::from((sip, 8080));
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
        !curl(&cns, &[&format!("http://[{sip}]:8081/")])
            .status
            .success()
    );
    sns.exec(&["nft", "add table inet t"]);
    let rules = "add chain inet t c { type filter hook input priority 0; }; add rule inet t c tcp dport 8082 drop";
    assert!(sns.exec(&["nft", rules]).status.success());
    assert!(
        !curl(
            &cns,
            &["--connect-timeout", "1", &format!("http://[{sip}]:8082/")]
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
    assert_eq!(
        metric_value(&body, "pn_events_lost_total", &[]),
        0,
        "{body}"
    );
    // Every event was read as one of the two layouts.
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("pn_conn_events_malformed_total ") && !l.ends_with(" 0")),
        "{body}"
    );

    // The router log, with IPv6 peers.
    let lines = requests(&host);
    assert_eq!(lines.len(), 7, "{lines:?}");
    for l in &lines {
        assert_eq!(addr_of(&l["src"]), IpAddr::V6(cip), "{l}");
        assert_eq!(addr_of(&l["dst"]), IpAddr::V6(sip), "{l}");
        assert_eq!(l["dport"], 8080, "{l}");
        assert_eq!(l["network"], net.as_str(), "{l}");
    }
    let big = lines
        .iter()
        .find(|l| l["http"]["path"] == "/big")
        .expect("/big logged");
    assert_eq!(big["http"]["status"], 200);
    assert_eq!(big["http"]["method"], "GET");
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
    let mut paths: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["http"]["path"].as_str().unwrap(),
                l["http"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/a", 200),
            ("/b", 200),
            ("/big", 200),
            ("/missing", 404),
            ("/missing", 404),
            ("/p1", 200),
            ("/p2", 200)
        ]
    );
    let table = host.cli_ok(&["flows", "--http", "--app", &server_app]);
    assert_eq!(table.lines().count(), 7, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(" POST /p2 200 ") && l.contains(&format!("{client_app}/api"))),
        "{table}"
    );
    assert_eq!(
        host.cli_ok(&["flows", "--http", "--network", &net])
            .lines()
            .count(),
        7
    );
    let status = host.cli_ok(&["status"]);
    assert!(status.contains("events lost conn 0"), "{status}");
}

/// Two local IPv6 members: each segment passes the sender's program and
/// the receiver's, and only the first sends the event (as IPv4's 44..=50
/// for 20 keep-alive requests).
#[test]
fn ipv6_local_segments_are_one_event_each() {
    let host = Host::start(&unique_prefix(), "h1");
    let net = host.create_network(&[]);
    let (ca, sa) = (host.create_app(&net), host.create_app(&net));
    let cns = host.member(&ca, "api", "cl");
    let sns = host.member(&sa, "web", "sv");
    let sip = ip6(&sns);
    let _server = serve(&sns, false);
    let events = |body: &str| metric_value(body, "pn_conn_events_total", &[]);
    let before = events(&host.metrics());
    let urls: Vec<String> = (0..20)
        .map(|i| format!("http://[{sip}]:8080/r{i}"))
        .collect();
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

/// New flows and drops between IPv6 ends name them, in JSON and in the
/// table (an IPv6 address in brackets before its port).
#[test]
fn ipv6_flows_and_drops_show_ipv6_peers() {
    let host = Host::start(&unique_prefix(), "h1");
    let (net_a, app_a) = host.network_and_app(&[]);
    let (_, app_b) = host.network_and_app(&[]);
    let c1 = host.member(&app_a, "api", "c1");
    let c2 = host.member(&app_a, "web", "c2");
    let c3 = host.member(&app_b, "web", "c3");
    let (a1, a2, b3) = (ip6(&c1), ip6(&c2), ip6(&c3));
    let _server = serve(&c2, false);
    assert!(
        curl(&c1, &[&format!("http://[{a2}]:8080/")])
            .status
            .success()
    );
    // Another network: dropped on the sending side.
    assert!(
        !curl(
            &c3,
            &["--connect-timeout", "1", &format!("http://[{a2}]:8080/")]
        )
        .status
        .success()
    );
    let flows = || -> Vec<serde_json::Value> {
        host.cli_ok(&["--output", "json", "flows"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let is = |r: &serde_json::Value, kind: &str, reason: &str, src: Ipv6Addr, dst: Ipv6Addr| {
        r["kind"] == kind
            && r["reason"] == reason
            && r["proto"] == "tcp"
            && r["dport"] == 8080
            && addr_of(&r["src"]) == IpAddr::V6(src)
            && addr_of(&r["dst"]) == IpAddr::V6(dst)
    };
    let mut got = Vec::new();
    let seen = eventually(Duration::from_secs(5), || {
        got = flows();
        got.iter()
            .any(|r| is(r, "new_flow", "forwarded", a1, a2) && r["network"] == net_a.as_str())
            && got.iter().any(|r| is(r, "drop", "policy_denied", b3, a2))
    });
    assert!(seen, "{got:#?}");
    let table = host.cli_ok(&["flows"]);
    assert!(
        table.lines().any(|l| l.contains("new_flow")
            && l.contains(&format!("[{a1}]:"))
            && l.contains(&format!("-> [{a2}]:8080 ({app_a}/web-1)"))),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("policy_denied") && l.contains(&format!("-> [{a2}]:8080"))),
        "{table}"
    );
}

/// Across two hosts (the tunnel carries IPv6 members over the IPv4
/// underlay): the client's host counts the connection and its requests,
/// the server's host counts nothing, so the fleet counts each once.
#[test]
fn ipv6_requests_across_hosts_are_counted_once_on_the_clients_host() {
    let f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let net = h1.create_network(&[]);
    let (ca, sa) = (h1.create_app(&net), h1.create_app(&net));
    let cns = h1.member(&ca, "api", "cl");
    let sns = h2.member(&sa, "web", "sv");
    f.wait_for_peers(Duration::from_secs(10));
    let (cip, sip) = (ip6(&cns), ip6(&sns));
    let _server = serve(&sns, false);
    let url = |path: &str| format!("http://[{sip}]:8080{path}");
    assert!(
        eventually(Duration::from_secs(10), || curl(&cns, &[&url("/warm")])
            .status
            .success()),
        "no answer across hosts"
    );
    const N: u64 = 5;
    let urls: Vec<String> = (0..N).map(|i| url(&format!("/k{i}"))).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert!(curl(&cns, &refs).status.success());
    let gets = |h: &Host| {
        metric_value(
            &h.metrics(),
            "pn_http_requests_total",
            &[
                ("client_app", &ca),
                ("server_app", &sa),
                ("port", "8080"),
                ("method", "GET"),
                ("status_class", "2xx"),
            ],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || gets(h1) == N + 1),
        "{}",
        h1.metrics()
    );
    // Logged once the response's end is seen (the next request, or the
    // connection's close): a moment after the metrics count it.
    let kept = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["http"]["path"].as_str().unwrap().starts_with("/k"))
            .cloned()
            .collect()
    };
    let mut lines = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            lines = requests(h1);
            kept(&lines).len() == N as usize
        }),
        "{lines:?}"
    );
    for l in kept(&lines) {
        assert_eq!(addr_of(&l["src"]), IpAddr::V6(cip), "{l}");
        assert_eq!(addr_of(&l["dst"]), IpAddr::V6(sip), "{l}");
        assert_eq!(l["http"]["status"], 200, "{l}");
        assert!(l["dst_container"].as_str().unwrap().starts_with(&sa), "{l}");
    }
    assert_eq!(
        metric_value(
            &h1.metrics(),
            "pn_conn_opened_total",
            &[("client_app", &ca), ("server_app", &sa)]
        ),
        2
    );
    // The server's host leaves the connection to the client's.
    assert_eq!(gets(h2), 0, "{}", h2.metrics());
    assert!(requests(h2).is_empty());
}
