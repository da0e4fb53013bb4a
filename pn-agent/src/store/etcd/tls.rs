//! etcd over TLS with a client certificate (`etcds://`). The three files are
//! named as etcdctl names them (`--etcd-cacert`, `--etcd-cert`,
//! `--etcd-key`) and checked when the agent starts, so a wrong file is one
//! line naming it; a connection that fails in TLS becomes one line saying
//! which side to fix instead of a chain of transport errors.

use std::{io, path::Path, sync::Arc};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use super::probe::Finding;
use crate::{
    config::TlsFiles,
    error::{ErrorKind, Kind},
};

/// A certificate file that cannot be used: the operator fixes the file or
/// the flag naming it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsFileError(String);

impl Kind for TlsFileError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

fn fail(msg: String) -> TlsFileError {
    TlsFileError(msg)
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| fail(format!("cannot read {flag} {}: {e}", path.display())))
}

fn certificates(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{flag} {}: bad PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(fail(format!(
            "{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads and checks the three files: each readable PEM, the CA usable as
    /// a trust anchor, the key the certificate's own.
    pub fn check(&self) -> Result<(), TlsFileError> {
        self.load().map(drop)
    }

    /// The checked files as etcd-client's TLS settings, and as a rustls
    /// client of the same identity for [`super::probe`].
    pub(super) fn load(&self) -> Result<(TlsOptions, Arc<ClientConfig>), TlsFileError> {
        let ca_pem = read("--etcd-cacert", &self.cacert)?;
        let cert_pem = read("--etcd-cert", &self.cert)?;
        let key_pem = read("--etcd-key", &self.key)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("--etcd-cacert", &self.cacert, &ca_pem)? {
            roots.add(ca).map_err(|e| {
                fail(format!(
                    "--etcd-cacert {}: not a usable CA certificate ({e})",
                    self.cacert.display()
                ))
            })?;
        }
        let chain = certificates("--etcd-cert", &self.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            fail(format!(
                "--etcd-key {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                self.key.display()
            ))
        })?;
        refuse_if_exposed(&self.key)?;
        let mut config = ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(format!("TLS settings: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => fail(format!(
                    "--etcd-key {} is not the private key of --etcd-cert {}",
                    self.key.display(),
                    self.cert.display()
                )),
                other => fail(format!(
                    "--etcd-cert {} / --etcd-key {}: {other}",
                    self.cert.display(),
                    self.key.display()
                )),
            })?;
        config.alpn_protocols.push(b"h2".to_vec());
        let options = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem));
        Ok((options, Arc::new(config)))
    }
}

/// A client key others may read lets them pose as this host (or the
/// operator) to the store: refused, as ssh refuses such a key.
fn refuse_if_exposed(key: &Path) -> Result<(), TlsFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key)
        .map_err(|e| fail(format!("cannot read --etcd-key {}: {e}", key.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "--etcd-key {} has mode {mode:03o}: its group or others may read it; chmod 600 it",
            key.display()
        )));
    }
    Ok(())
}

/// Why a request to etcd failed, as the agent acts on it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// An outage: ride it out on the last known state and retry.
    Down(String),
    /// etcd answered but will not serve this host (TLS or permissions):
    /// retrying does not help until someone fixes a certificate or a role.
    Refused(String),
}

/// What the failure is about, for [`explain`].
pub(super) struct Context<'a> {
    pub endpoints: &'a str,
    pub tls: Option<&'a TlsFiles>,
}

/// The TLS error somewhere in an error's chain. `io::Error` hides its inner
/// error from `source()`, so it is opened explicitly.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(r) = find_rustls(inner)
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// Every message of an error's chain, on one line.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ").replace('\n', " ")
}

fn cacert(ctx: &Context<'_>) -> String {
    ctx.tls
        .map_or_else(String::new, |t| format!(" {}", t.cacert.display()))
}

fn cert(ctx: &Context<'_>) -> String {
    ctx.tls
        .map_or_else(String::new, |t| format!(" {}", t.cert.display()))
}

fn explain_rustls(r: &rustls::Error, ctx: &Context<'_>) -> String {
    let ep = ctx.endpoints;
    match r {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "etcd {ep}: its server certificate is not trusted (not signed by --etcd-cacert{}): \
             give the CA that signed etcd's --cert-file",
            cacert(ctx)
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "etcd {ep}: its server certificate does not name the address in --store: \
             add it to the certificate's subjectAltName or use a name the certificate has"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "etcd {ep}: its server certificate has expired or is not valid yet: renew etcd's --cert-file \
             (or check this host's clock)"
        ),
        rustls::Error::InvalidCertificate(other) => format!(
            "etcd {ep}: its server certificate is refused ({other:?}): check etcd's --cert-file \
             against --etcd-cacert{}",
            cacert(ctx)
        ),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied => format!(
                "etcd {ep} rejected this host's client certificate --etcd-cert{} (TLS alert {alert:?}): \
                 it must be signed by the CA of etcd's --trusted-ca-file, be valid now and allow \
                 client authentication",
                cert(ctx)
            ),
            other => format!("etcd {ep} ended the TLS handshake (alert {other:?})"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            explain_finding(&Finding::NoTls, ctx)
        }
        other => format!("etcd {ep}: TLS failed: {other}"),
    }
}

/// The error under etcd-client's, which does not expose it as `source()`.
fn inner(e: &etcd_client::Error) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    }
}

/// One line for a failed request, and whether it is an outage or a refusal.
pub(super) fn explain(e: &etcd_client::Error, ctx: &Context<'_>) -> Failure {
    if let Some(r) = inner(e).and_then(find_rustls) {
        return Failure::Refused(explain_rustls(r, ctx));
    }
    if let etcd_client::Error::GRpcStatus(status) = e {
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                return Failure::Refused(format!(
                    "etcd {}: {} (with etcd authentication on, the etcd user is the CN of \
                     --etcd-cert{} and its role grants what it may read and write: README \
                     \"etcd: TLS and roles\")",
                    ctx.endpoints,
                    status.message(),
                    cert(ctx)
                ));
            }
            _ => {}
        }
    }
    let text = match inner(e) {
        Some(i) => chain_text(i),
        None => e.to_string().replace('\n', " "),
    };
    Failure::Down(format!("etcd {}: {text}", ctx.endpoints))
}

/// Whether a failure that [`explain`] calls an outage may hide a refusal:
/// the transport may only have seen the connection close, or kept
/// reconnecting until the deadline. Not when nothing listens.
pub(super) fn worth_probing(down: &str) -> bool {
    !down.to_ascii_lowercase().contains("connection refused")
}

/// One line for what a probe found.
pub(super) fn explain_finding(f: &Finding, ctx: &Context<'_>) -> String {
    match f {
        Finding::Tls(r) => explain_rustls(r, ctx),
        Finding::ServesTls => format!(
            "etcd {} serves TLS and this agent speaks plain text: use etcds:// with \
             --etcd-cacert, --etcd-cert and --etcd-key",
            ctx.endpoints
        ),
        Finding::NoTls => format!(
            "etcd {} closed the connection on the TLS hello: it does not serve TLS there \
             (give it --cert-file, --key-file, --client-cert-auth, --trusted-ca-file and https:// \
             client URLs) or use etcd://",
            ctx.endpoints
        ),
    }
}

#[cfg(test)]
mod tests;
