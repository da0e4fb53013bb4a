//! A real etcd (Debian's `etcd` binary) on loopback for the unit tests,
//! plain or with TLS and client certificates made by Debian's `openssl`
//! (the commands README's "etcd: TLS and roles" gives).

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

/// `openssl` with arguments, which must succeed.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (cargo xtask installs Debian's openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and its key, as files.
pub struct Pair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// A directory of test certificates, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("pn-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A self-signed CA named `name`.
    pub fn ca(&self, name: &str) -> Pair {
        let (crt, key) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        Pair {
            crt: crt.into(),
            key: key.into(),
        }
    }

    /// A certificate for `cn` signed by `ca`, for servers and clients, valid
    /// for the addresses `ips`.
    pub fn issue(&self, ca: &Pair, cn: &str, ips: &[&str]) -> Pair {
        let (crt, key, csr, ext) = (
            self.path(&format!("{cn}.crt")),
            self.path(&format!("{cn}.key")),
            self.path(&format!("{cn}.csr")),
            self.path(&format!("{cn}.ext")),
        );
        let mut ext_text = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !ips.is_empty() {
            let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
            ext_text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, ext_text).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca.crt.to_string_lossy(),
            "-CAkey",
            &ca.key.to_string_lossy(),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
        Pair {
            crt: crt.into(),
            key: key.into(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
