//! Test certificates made with Debian's `openssl`, by the commands README's
//! "etcd: TLS and roles" gives an operator: a CA, and certificates it signs
//! for etcd (its address in subjectAltName) and for each host (CN = host id).
//! Used by pn-agent's unit tests and by the integration tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
#[derive(Clone, Debug)]
pub struct Pair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// A directory of test certificates, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pair {
    pub fn crt(&self) -> &str {
        self.crt.to_str().expect("UTF-8 path")
    }
    pub fn key(&self) -> &str {
        self.key.to_str().expect("UTF-8 path")
    }
}

impl Pki {
    /// A fresh directory under the system's temporary directory.
    pub fn new(name: &str) -> Pki {
        Self::in_dir(&std::env::temp_dir().join(format!("pn-pki-{name}-{}", std::process::id())))
    }

    /// A fresh directory at `dir` (emptied first).
    pub fn in_dir(dir: &Path) -> Pki {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        Pki { dir: dir.into() }
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
            ca.crt(),
            "-CAkey",
            ca.key(),
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
