use std::path::Path;

use crate::{
    config::TlsFiles,
    error::{ErrorKind, Kind},
    store::{Backend, Op, StoreError, etcd::Etcd},
    testing::{
        etcd::{EtcdServer, ServerTls},
        pki::{Pair, Pki},
    },
};

fn files(cacert: &Path, cert: &Path, key: &Path) -> TlsFiles {
    TlsFiles {
        cacert: cacert.into(),
        cert: cert.into(),
        key: key.into(),
    }
}

#[test]
fn each_bad_file_is_one_line_naming_it() {
    let pki = Pki::new("files");
    let ca = pki.ca("ca");
    let h1 = pki.issue(&ca, "h1", &[]);
    let h2 = pki.issue(&ca, "h2", &[]);
    assert!(files(&ca.crt, &h1.crt, &h1.key).check().is_ok());
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let cut = pki.dir.join("cut.pem");
    let text = std::fs::read_to_string(&h1.crt).unwrap();
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let missing = pki.dir.join("missing.pem");
    for (f, want) in [
        (
            files(&missing, &h1.crt, &h1.key),
            "cannot read --etcd-cacert",
        ),
        (files(&ca.crt, &missing, &h1.key), "cannot read --etcd-cert"),
        (files(&ca.crt, &h1.crt, &missing), "cannot read --etcd-key"),
        (files(&junk, &h1.crt, &h1.key), "holds no PEM certificate"),
        (files(&ca.crt, &cut, &h1.key), "bad PEM"),
        (
            files(&ca.crt, &h1.crt, &h1.crt),
            "holds no usable PEM private key",
        ),
        (
            files(&ca.crt, &h1.crt, &h2.key),
            "is not the private key of --etcd-cert",
        ),
    ] {
        let e = f.check().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
}

#[test]
fn a_key_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = Pki::new("exposed");
    let ca = pki.ca("ca");
    let h1 = pki.issue(&ca, "h1", &[]);
    assert!(
        files(&ca.crt, &h1.crt, &h1.key).check().is_ok(),
        "openssl writes 0600"
    );
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&h1.key, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = files(&ca.crt, &h1.crt, &h1.key).check().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("has mode {mode:03o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
    std::fs::set_permissions(&h1.key, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(files(&ca.crt, &h1.crt, &h1.key).check().is_ok());
}

/// What a first request gets: its error, if any.
async fn first_request(kv: &Etcd) -> Result<(), StoreError> {
    kv.txn(vec![], vec![Op::Put("hosts/h1".into(), "{}".into())])
        .await
        .map(|_| ())
}

fn refused(r: Result<(), StoreError>, want: &str) {
    match r {
        Err(StoreError::Refused(msg)) => {
            assert!(msg.contains(want), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        other => panic!("expected a refusal mentioning {want:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_with_its_certificate_is_served_and_others_are_told_why_not() {
    let pki = Pki::new("serve");
    let ca = pki.ca("ca");
    let other_ca = pki.ca("other-ca");
    let server = pki.issue(&ca, "etcd", &["127.0.0.1"]);
    let h1 = pki.issue(&ca, "h1", &[]);
    let stranger = pki.issue(&other_ca, "stranger", &[]);
    let etcd = EtcdServer::start_tls(
        "tls-serve",
        ServerTls {
            server,
            client_ca: ca.clone(),
        },
    );
    let ep = vec![etcd.endpoint.clone()];
    let tls = |cacert: &Path, pair: &Pair| {
        Etcd::with_tls(
            ep.clone(),
            "/pn/".into(),
            files(cacert, &pair.crt, &pair.key),
        )
        .unwrap()
    };

    let good = tls(&ca.crt, &h1);
    first_request(&good).await.unwrap();
    assert_eq!(good.list("hosts/").await.unwrap().entries.len(), 1);
    assert!(good.describe().starts_with("etcds://"));

    refused(
        first_request(&tls(&ca.crt, &stranger)).await,
        "rejected this host's client certificate",
    );
    refused(
        first_request(&tls(&other_ca.crt, &h1)).await,
        "server certificate is not trusted",
    );
    refused(
        first_request(&Etcd::new(ep.clone(), "/pn/".into())).await,
        "serves TLS and this agent speaks plain text",
    );
    drop(etcd);
    match first_request(&good).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a stopped etcd is an outage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_certificate_for_another_address_or_no_tls_at_all_is_refused() {
    let pki = Pki::new("names");
    let ca = pki.ca("ca");
    let server = pki.issue(&ca, "etcd", &["192.0.2.1"]);
    let h1 = pki.issue(&ca, "h1", &[]);
    let etcd = EtcdServer::start_tls(
        "tls-names",
        ServerTls {
            server,
            client_ca: ca.clone(),
        },
    );
    let kv = Etcd::with_tls(
        vec![etcd.endpoint.clone()],
        "/pn/".into(),
        files(&ca.crt, &h1.crt, &h1.key),
    )
    .unwrap();
    refused(first_request(&kv).await, "does not name the address");

    let plain = EtcdServer::start("tls-plain");
    let kv = Etcd::with_tls(
        vec![plain.endpoint.clone()],
        "/pn/".into(),
        files(&ca.crt, &h1.crt, &h1.key),
    )
    .unwrap();
    refused(first_request(&kv).await, "does not serve TLS");
}
