//! A real etcd (Debian's `etcd` binary) on loopback for the unit tests,
//! plain or with TLS and client certificates from [`crate::pki`].

pub use crate::pki::{Pair, Pki};

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Instant,
};

pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd's own certificate and the CA its clients must come from.
pub struct ServerTls<'a> {
    pub server: &'a Pair,
    pub client_ca: &'a Pair,
}

impl EtcdServer {
    pub fn start(name: &str) -> EtcdServer {
        Self::start_with(name, None)
    }

    /// etcd serving TLS only, with `--client-cert-auth`.
    pub fn start_tls(name: &str, tls: ServerTls<'_>) -> EtcdServer {
        Self::start_with(name, Some(tls))
    }

    fn start_with(name: &str, tls: Option<ServerTls<'_>>) -> EtcdServer {
        let dir = std::env::temp_dir().join(format!("pn-etcd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("127.0.0.1:{client}");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new("etcd");
        if let Some(tls) = &tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca.crt)
                .arg("--cert-file")
                .arg(&tls.server.crt)
                .arg("--key-file")
                .arg(&tls.server.key);
        }
        let child = cmd
            .args(["--name", name, "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &format!("{scheme}://{endpoint}"),
                "--advertise-client-urls",
                &format!("{scheme}://{endpoint}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("{name}=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed (cargo xtask installs Debian's etcd-server)");
        let server = EtcdServer {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&server.endpoint).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
