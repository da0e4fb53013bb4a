//! The seed's use case end to end: an nginx WAF in network A proxies by
//! private name to two backend containers on port 3000; nobody else reaches
//! the backends.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use pn_tests::{Host, Namespace, eventually, net, unique_prefix};

/// A real nginx inside a namespace; killed on drop.
struct Nginx(Child, std::path::PathBuf);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before exiting (SIGKILL
        // would orphan them).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn nginx(ns: &Namespace, upstream_name: &str) -> Nginx {
    let dir =
        std::env::temp_dir().join(format!("pn-test-{}-nginx-{}", std::process::id(), ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    // A variable in proxy_pass makes nginx resolve the name at request time,
    // through `resolver`, and round-robin over every address it gets.
    let conf = format!(
        r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    resolver 169.254.1.1 valid=5s ipv6=off;
    server {{
        listen 8080;
        location / {{
            set $backend "http://{upstream_name}:3000";
            proxy_pass $backend;
        }}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-c"])
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx (Debian package nginx-light)");
    Nginx(child, dir)
}

fn curl(ns: &Namespace, url: &str) -> Option<String> {
    let out = ns.exec(&["curl", "-s", "--max-time", "3", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_waf_reaches_hidden_backends_by_private_name_and_nobody_else_does() {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let net_a = host.create_network(&[]);
    let waf_app = host
        .cli_ok(&["app", "create", "--network", &net_a, "--name", "waf"])
        .trim()
        .to_string();
    let backend_app = host
        .cli_ok(&["app", "create", "--network", &net_a, "--name", "backend"])
        .trim()
        .to_string();
    let waf = Namespace::new(&format!("{p}-waf"));
    host.attach(&waf_app, "web", &waf);
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let mut backend_ips = Vec::new();
    for i in 1..=2 {
        let ns = Namespace::new(&format!("{p}-be{i}"));
        let v = host.attach(&backend_app, "myappbackend", &ns);
        backend_ips.push(
            v["ip"]
                .as_str()
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .unwrap(),
        );
        servers.push(net::http_server(&ns, 3000, &format!("backend-{i}")));
        backends.push(ns);
    }
    let name = format!("myappbackend.{backend_app}.{net_a}.private-network.internal");
    let _nginx = nginx(&waf, &name);
    assert!(
        eventually(Duration::from_secs(10), || curl(
            &waf,
            "http://127.0.0.1:8080/"
        )
        .is_some()),
        "nginx did not come up"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        if let Some(body) = curl(&waf, "http://127.0.0.1:8080/") {
            seen.insert(body);
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["backend-1".to_string(), "backend-2".to_string()]),
        "nginx reaches both backends through the private name"
    );
    // A container of another network cannot reach the backends…
    let net_b = host.create_network(&[]);
    let other_app = host.create_app(&net_b);
    let other = Namespace::new(&format!("{p}-oth"));
    host.attach(&other_app, "web", &other);
    for ip in &backend_ips {
        assert_eq!(
            curl(&other, &format!("http://{ip}:3000/")),
            None,
            "network B reached a backend"
        );
    }
    // …nor can it resolve their name.
    let out = other.exec(&["dig", "+time=2", "+tries=1", &name]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: REFUSED"));
    // …nor can a namespace outside every network.
    let outside = Namespace::new(&format!("{p}-out"));
    let hif = format!("{}o", &p[..p.len().min(12)]);
    host.ns.ip(&[
        "link",
        "add",
        &hif,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    host.ns.ip(&["addr", "add", "192.168.78.1/24", "dev", &hif]);
    host.ns.ip(&["link", "set", &hif, "up"]);
    outside.ip(&["addr", "add", "192.168.78.2/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    outside.ip(&["route", "add", "10.240.0.0/12", "via", "192.168.78.1"]);
    for ip in &backend_ips {
        assert!(
            net::tcp_echo(
                &outside,
                SocketAddr::from((*ip, 3000)),
                b"GET / HTTP/1.0\r\n\r\n",
                Duration::from_millis(800)
            )
            .is_err(),
            "an outsider reached a backend"
        );
    }
    assert!(host.packets(&backend_app, "myappbackend-1", "delivered") > 0);
}
