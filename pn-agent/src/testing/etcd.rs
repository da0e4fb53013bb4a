//! A real etcd (Debian's `etcd`) for the tests: on loopback with ports of
//! its own (the unit tests), or inside a network namespace on a fixed
//! address (a fleet's underlay); in plain text, or TLS only with client
//! certificates. `stop` and `start` keep its data: an outage and the return.

use std::{
    fs::File,
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

pub struct EtcdServer {
    name: String,
    netns: Option<String>,
    peer: SocketAddr,
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
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        Self::launch(name, None, client, peer, tls)
    }

    /// In the network namespace `netns`, on `ip` (clients on 2379).
    pub fn in_netns(netns: &str, ip: Ipv4Addr, tls: Option<ServerTls>) -> EtcdServer {
        let (client, peer) = ((ip, 2379).into(), (ip, 2380).into());
        Self::launch(netns, Some(netns.into()), client, peer, tls)
    }

    fn launch(
        name: &str,
        netns: Option<String>,
        client: SocketAddr,
        peer: SocketAddr,
        tls: Option<ServerTls>,
    ) -> EtcdServer {
        let dir = std::env::temp_dir().join(format!("pn-test-{}-etcd-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = EtcdServer {
            name: name.into(),
            netns,
            peer,
            tls,
            dir,
            child: None,
            endpoint: client.to_string(),
        };
        e.restart();
        e
    }

    /// Starts it (again after `stop`, with the data it had).
    pub fn restart(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.endpoint);
        let peer = format!("http://{}", self.peer);
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
                &format!("{}={peer}", self.name),
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
        let poll = move || {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        };
        let Some(ns) = &self.netns else {
            return poll();
        };
        let file = File::open(Path::new("/run/netns").join(ns)).expect("namespace file");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            poll()
        })
        .join()
        .expect("probe thread")
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
