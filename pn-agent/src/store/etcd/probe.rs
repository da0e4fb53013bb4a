//! A TLS handshake with etcd made by hand, only after a request failed
//! without saying why. With TLS 1.3 a server rejects a client certificate
//! after the client's side of the handshake is done, and the gRPC transport
//! reports that as "connection closed"; likewise a plain-text client that
//! reached a TLS port only sees the connection go. Handshaking here, and
//! reading once after it, gets the server's own answer.

use std::{
    io::{self, Read},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};

/// Longest a probe waits on one step (connect, handshake, the read after).
const STEP: Duration = Duration::from_millis(1500);

/// What a probe learnt about an endpoint.
#[derive(Debug)]
pub(super) enum Finding {
    /// The TLS session failed: the server's alert, or our verdict on its
    /// certificate.
    Tls(rustls::Error),
    /// A plain-text client's endpoint answered a TLS hello: it serves TLS.
    ServesTls,
    /// The endpoint closed the connection on our TLS hello: it serves no TLS.
    NoTls,
}

/// The rustls error inside an I/O error from a session.
fn rustls_error(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

fn probe_one(endpoint: &str, config: Option<Arc<ClientConfig>>) -> Option<Finding> {
    let (host, _) = endpoint.rsplit_once(':')?;
    let addr = endpoint.to_socket_addrs().ok()?.next()?;
    let mut sock = TcpStream::connect_timeout(&addr, STEP).ok()?;
    sock.set_read_timeout(Some(STEP)).ok()?;
    sock.set_write_timeout(Some(STEP)).ok()?;
    let plain = config.is_none();
    // A plain-text client only asks "is this TLS?": trusting no CA, a TLS
    // server gets as far as its certificate, which is all we need to know.
    let config = config.unwrap_or_else(|| {
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        )
    });
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string()).ok()?;
    let mut conn = ClientConnection::new(config, name).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return match rustls_error(&e) {
                Some(rustls::Error::InvalidCertificate(_)) if plain => Some(Finding::ServesTls),
                Some(r) if !plain => Some(Finding::Tls(r)),
                None if e.kind() == io::ErrorKind::UnexpectedEof && !plain => Some(Finding::NoTls),
                _ => None,
            };
        }
    }
    if plain {
        return None;
    }
    // The server's verdict on our certificate comes after our Finished.
    let mut buf = [0u8; 1];
    // Data, the end of the stream or a timeout is no verdict against us.
    rustls::Stream::new(&mut conn, &mut sock)
        .read_exact(&mut buf)
        .err()
        .and_then(|e| rustls_error(&e))
        .map(Finding::Tls)
}

/// Probes the endpoints in turn (a few seconds at most each, off the async
/// threads); the first finding wins. `config` is the TLS client's, or `None`
/// for a plain-text client.
pub(super) async fn diagnose(
    endpoints: Vec<String>,
    config: Option<Arc<ClientConfig>>,
) -> Option<Finding> {
    tokio::task::spawn_blocking(move || endpoints.iter().find_map(|e| probe_one(e, config.clone())))
        .await
        .ok()
        .flatten()
}
