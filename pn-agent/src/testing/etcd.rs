//! A real etcd (Debian's `etcd`) for the tests: on loopback with ports of
//! its own (the unit tests), or inside a network namespace on a fixed
//! address (a fleet's underlay); in plain text, or TLS only with client
//! certificates. `stop` and `start` keep its data: an outage and the return.
//! One process is one member: [`super::etcd_cluster`] starts three.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::pki::Pair;

/// etcd's own certificate and the CA its clients must come from
/// (`--client-cert-auth`).
#[derive(Clone)]
pub struct ServerTls {
    pub server: Pair,
    pub client_ca: Pair,
}

/// etcd's raft timing, given explicitly (its defaults) so the tests can
/// bound what a leader's loss costs: a follower calls an election after
/// `ELECTION_TIMEOUT` without a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct EtcdServer {
    name: String,
    netns: Option<String>,
    peer: SocketAddr,
    /// Plain HTTP `/metrics` and `/health`, readable whatever the client
    /// port asks (TLS, authentication): which member leads.
    metrics: SocketAddr,
    /// `--initial-cluster`: this member alone, or all of a cluster's.
    cluster: String,
    tls: Option<ServerTls>,
    dir: PathBuf,
    child: Option<Child>,
    /// `IP:PORT` its clients connect to.
    pub endpoint: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    /// Plain text on loopback.
    pub fn start(name: &str) -> EtcdServer {
        Self::local(name, None)
    }

    /// TLS only on loopback.
    pub fn start_tls(name: &str, tls: ServerTls) -> EtcdServer {
        Self::local(name, Some(tls))
    }

    fn local(name: &str, tls: Option<ServerTls>) -> EtcdServer {
        let mut e = Self::local_member(name, tls);
        e.restart();
        e
    }

    /// On loopback with ports of its own, not started.
    pub(super) fn local_member(name: &str, tls: Option<ServerTls>) -> EtcdServer {
        let on = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (client, peer, metrics) = (on(free_port()), on(free_port()), on(free_port()));
        Self::new(name, None, [client, peer, metrics], tls)
    }

    /// In the network namespace `netns`, on `ip` (clients on 2379).
    pub fn in_netns(netns: &str, ip: Ipv4Addr, tls: Option<ServerTls>) -> EtcdServer {
        let mut e = Self::netns_member(netns, netns, ip, tls);
        e.restart();
        e
    }

    /// Named `name` in the network namespace `netns`, on `ip` (clients on
    /// 2379, peers on 2380, metrics on 2381), not started.
    pub(super) fn netns_member(
        name: &str,
        netns: &str,
        ip: Ipv4Addr,
        tls: Option<ServerTls>,
    ) -> EtcdServer {
        let ports = [2379, 2380, 2381].map(|p| SocketAddr::from((ip, p)));
        Self::new(name, Some(netns.into()), ports, tls)
    }

    fn new(
        name: &str,
        netns: Option<String>,
        [client, peer, metrics]: [SocketAddr; 3],
        tls: Option<ServerTls>,
    ) -> EtcdServer {
        let dir = std::env::temp_dir().join(format!("pn-test-{}-etcd-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        EtcdServer {
            name: name.into(),
            netns,
            peer,
            metrics,
            cluster: format!("{name}=http://{peer}"),
            tls,
            dir,
            child: None,
            endpoint: client.to_string(),
        }
    }

    /// `NAME=PEER_URL`, one entry of a cluster's `--initial-cluster`.
    pub(super) fn peer_entry(&self) -> String {
        format!("{}=http://{}", self.name, self.peer)
    }

    /// Makes it a member of the cluster `initial` (every member's
    /// [`Self::peer_entry`], comma-separated), before its first start.
    pub(super) fn join(&mut self, initial: &str) {
        self.cluster = initial.into();
    }

    /// Starts it (again after `stop`, with the data it had).
    pub fn restart(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.endpoint);
        let peer = format!("http://{}", self.peer);
        let metrics = format!("http://{}", self.metrics);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        if let Some(tls) = &self.tls {
            cmd.args(["--client-cert-auth", "--trusted-ca-file"])
                .arg(&tls.client_ca.crt)
                .arg("--cert-file")
                .arg(&tls.server.crt)
                .arg("--key-file")
                .arg(&tls.server.key);
        }
        let child = cmd
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &self.cluster,
                "--listen-metrics-urls",
                &metrics,
                "--heartbeat-interval",
                &HEARTBEAT.as_millis().to_string(),
                "--election-timeout",
                &ELECTION_TIMEOUT.as_millis().to_string(),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed (cargo xtask installs Debian's etcd-server)");
        self.child = Some(child);
        assert!(self.answers(), "etcd did not start");
    }

    /// Whether its client port accepts connections within 20 s (from its
    /// namespace).
    fn answers(&self) -> bool {
        let addr: SocketAddr = self.endpoint.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        self.in_its_netns(move || {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        })
    }

    /// Runs `f` where its ports are reachable: here, or on a thread in its
    /// namespace.
    fn in_its_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let Some(ns) = &self.netns else {
            return f();
        };
        let file = File::open(Path::new("/run/netns").join(ns)).expect("namespace file");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("probe thread")
    }

    /// Its Prometheus metrics (plain HTTP), `None` while it does not answer.
    pub fn metrics(&self) -> Option<String> {
        let addr = self.metrics;
        self.in_its_netns(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        })
    }

    /// Whether it is running and says it leads (`etcd_server_is_leader`).
    pub fn is_leader(&self) -> bool {
        self.child.is_some()
            && self
                .metrics()
                .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
    }

    /// Whether it is running and knows a leader (`etcd_server_has_leader`).
    pub fn has_leader(&self) -> bool {
        self.child.is_some()
            && self
                .metrics()
                .is_some_and(|m| m.lines().any(|l| l == "etcd_server_has_leader 1"))
    }

    /// Whether its process runs (not `stop`ped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills etcd (as a crash would); the data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
