//! Test certificates made with Debian's `openssl`, by the commands README's
//! "etcd: TLS and roles" gives an operator: a CA, and certificates it signs
//! for etcd (its address in subjectAltName) and for each host (CN = host id).

use std::path::{Path, PathBuf};

use crate::run_ok;

/// A certificate and its private key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn crt(&self) -> &str {
        self.crt.to_str().expect("UTF-8 path")
    }
    pub fn key(&self) -> &str {
        self.key.to_str().expect("UTF-8 path")
    }
}

/// A directory of certificates, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        Pki { dir: dir.into() }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A self-signed CA.
    pub fn ca(&self, name: &str) -> Pair {
        let (crt, key) = (
            self.file(&format!("{name}.crt")),
            self.file(&format!("{name}.key")),
        );
        run_ok(
            "openssl",
            &[
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
            ],
        );
        Pair {
            crt: crt.into(),
            key: key.into(),
        }
    }

    /// A certificate for `cn` signed by `ca`, usable by a server and a
    /// client, valid for the addresses `ips`.
    pub fn issue(&self, ca: &Pair, cn: &str, ips: &[&str]) -> Pair {
        let (crt, key, csr, ext) = (
            self.file(&format!("{cn}.crt")),
            self.file(&format!("{cn}.key")),
            self.file(&format!("{cn}.csr")),
            self.file(&format!("{cn}.ext")),
        );
        let mut text = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !ips.is_empty() {
            let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, text).unwrap();
        run_ok(
            "openssl",
            &[
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
            ],
        );
        run_ok(
            "openssl",
            &[
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
            ],
        );
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
