//! The fleet store authenticated and encrypted: etcd serving TLS only, with
//! `--client-cert-auth`. Agents holding a certificate of the fleet's CA
//! work; an agent without one, with one from another CA, or trusting
//! another CA refuses to start with one line saying what to fix; a client
//! without a certificate (etcdctl, as anyone on the underlay) reads nothing.
//! And a fleet host without a tunnel is refused before it could route
//! member traffic in clear.

use std::{net::SocketAddr, time::Duration};

use pn_agent::error::ErrorKind;
use pn_tests::{
    Host, eventually,
    fleet::{ETCD_ADDR, Fleet},
    net,
    scenario::OneApp,
    unique_prefix,
};

const WAIT: Duration = Duration::from_secs(15);
/// An agent that must refuse to start does so well within this.
const REFUSAL: Duration = Duration::from_secs(30);

fn run(h: &Host, flags: &[String]) -> pn_tests::Cli {
    let t0 = std::time::Instant::now();
    let out = h.run_to_exit(&strs(flags), REFUSAL);
    eprintln!(
        "agent run {flags:?} ended after {:?}: {out:?}",
        t0.elapsed()
    );
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_tls_store_serves_hosts_with_certificates_and_refuses_the_rest() {
    let p = unique_prefix();
    let f = Fleet::tls(&p, 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    assert!(
        h1.json(&["status"])["store"]["backend"]
            .as_str()
            .unwrap()
            .starts_with("etcds://"),
        "status names the TLS store"
    );

    // Hosts with the fleet's certificates work: attach on both, both list
    // both containers, and members talk across the tunnel.
    let OneApp { c1, c2, .. } = OneApp::new(h1, h2, ["web", "web"]);
    for h in [h1, h2] {
        assert!(
            eventually(WAIT, || h.container_count() == 2),
            "{} lists both containers",
            h.id
        );
        assert!(eventually(WAIT, || h.remote_endpoints() == 1));
    }
    let _srv = net::tcp_echo_server(&c2, 9000);
    net::tcp_echo(
        &c1,
        SocketAddr::from((c2.addr, 9000)),
        b"over tls-configured fleet",
        Duration::from_secs(5),
    )
    .expect("members on two hosts talk");

    let pki = f.pki.as_ref().unwrap();
    let h3 = f.plumb(&p, 3);
    let tunnel = Fleet::tunnel_flags(3);
    let with = |store: &str, tls: &[&str]| -> Vec<String> {
        let mut v = vec!["--store".to_string(), store.to_string()];
        v.extend(tls.iter().map(|s| s.to_string()));
        v.extend(tunnel.iter().cloned());
        v
    };
    let tls_store = format!("etcds://{ETCD_ADDR}");

    // Without certificates: plain text against the TLS port.
    let out = run(
        &h3,
        &with(&format!("etcd://{ETCD_ADDR}"), &["--store-insecure"]),
    );
    out.assert_error(
        ErrorKind::Unavailable,
        "serves TLS and this agent speaks plain text: use etcds://",
    );
    // TLS asked for, certificates forgotten: the command line is wrong.
    let out = run(&h3, &with(&tls_store, &[]));
    out.assert_error(
        ErrorKind::Invalid,
        "needs --etcd-cacert, --etcd-cert and --etcd-key",
    );
    // A certificate from another CA: etcd rejects it.
    let rogue_ca = pki.pki.ca("rogue-ca");
    let rogue = pki.pki.issue(&rogue_ca, "rogue-h3", &[]);
    let out = run(
        &h3,
        &with(
            &tls_store,
            &[
                "--etcd-cacert",
                pki.ca.crt(),
                "--etcd-cert",
                rogue.crt(),
                "--etcd-key",
                rogue.key(),
            ],
        ),
    );
    out.assert_error(
        ErrorKind::Unavailable,
        "rejected this host's client certificate",
    );
    // Trusting another CA: etcd's own certificate is not trusted.
    let good = pki.pki.issue(&pki.ca, "h3", &[]);
    let out = run(
        &h3,
        &with(
            &tls_store,
            &[
                "--etcd-cacert",
                rogue_ca.crt(),
                "--etcd-cert",
                good.crt(),
                "--etcd-key",
                good.key(),
            ],
        ),
    );
    out.assert_error(ErrorKind::Unavailable, "server certificate is not trusted");
    // A key that is not the certificate's.
    let out = run(
        &h3,
        &with(
            &tls_store,
            &[
                "--etcd-cacert",
                pki.ca.crt(),
                "--etcd-cert",
                good.crt(),
                "--etcd-key",
                rogue.key(),
            ],
        ),
    );
    out.assert_error(ErrorKind::Invalid, "is not the private key of --etcd-cert");
    // None of them joined.
    assert_eq!(h1.json(&["host", "list"]).as_array().unwrap().len(), 2);

    // A client without a certificate reads nothing, in plain text or TLS.
    let endpoint = format!("https://{ETCD_ADDR}");
    for args in [
        vec!["--endpoints", ETCD_ADDR],
        vec!["--endpoints", &endpoint, "--insecure-skip-tls-verify"],
        vec!["--endpoints", &endpoint, "--cacert", pki.ca.crt()],
    ] {
        let mut cmd = vec!["etcdctl", "--dial-timeout", "2s", "--command-timeout", "3s"];
        cmd.extend(args.iter().copied());
        cmd.extend(["get", "--prefix", "/pn/"]);
        let out = f.underlay.exec(&cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !stdout.contains("/pn/"),
            "{cmd:?} read the membership: {stdout}"
        );
    }
    // The same read with a host's certificate finds the membership: the
    // refusals above are for want of a certificate, not of data.
    let out = f.underlay.exec(&[
        "etcdctl",
        "--endpoints",
        &endpoint,
        "--cacert",
        pki.ca.crt(),
        "--cert",
        pki.hosts[0].crt(),
        "--key",
        pki.hosts[0].key(),
        "get",
        "--prefix",
        "--keys-only",
        "/pn/hosts/",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/pn/hosts/h1") && stdout.contains("/pn/hosts/h2"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host on a fleet store with no tunnel would send traffic to members on
/// other hosts in clear: refused at start, before anything is set up.
#[test]
fn a_fleet_host_without_a_tunnel_is_refused() {
    let p = unique_prefix();
    let h = Host::create(&p, "h1");
    let store = format!("etcd://{ETCD_ADDR}");
    let tunnel = ["--advertise", "192.0.2.1:51871", "--underlay-iface", "ul0"];
    // Plain text to a store off this host: refused before the tunnel is
    // even looked at, unless the test bed says so.
    let mut plain = vec!["--store", &store];
    plain.extend_from_slice(&tunnel);
    h.run_to_exit(&plain, REFUSAL).assert_error(
        ErrorKind::Invalid,
        "is plain text and unauthenticated, and 192.168.100.254:2379 is not on this host's loopback",
    );
    for (flags, want) in [
        (
            vec!["--store", &store, "--store-insecure"],
            "needs --advertise and --underlay-iface",
        ),
        (
            vec![
                "--store",
                &store,
                "--store-insecure",
                "--underlay-iface",
                "ul0",
            ],
            "needs --advertise: without the tunnel",
        ),
        (
            vec![
                "--store",
                &store,
                "--store-insecure",
                "--advertise",
                "192.0.2.1:51871",
            ],
            "needs --underlay-iface",
        ),
    ] {
        h.run_to_exit(&flags, REFUSAL)
            .assert_error(ErrorKind::Invalid, want);
    }
}

/// With etcd authentication on and each host's role as `pn-agent fleet
/// setup` makes it, the fleet works, and a host's identity cannot replace,
/// remove or invent another host's record (its tunnel key and endpoint):
/// not with etcdctl, not through its agent's `host remove`, which fails
/// with one line before removing anything.
#[test]
fn a_host_role_cannot_touch_another_hosts_record() {
    let (f, (_c1, _c2)) = Fleet::tls_with_roles(&unique_prefix(), 2, |f| {
        let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
        let network = h1.create_network(&[]);
        let app = h2.create_app(&network);
        (h1.member(&app, "web", "c1"), h2.member(&app, "web", "c2"))
    });
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    for h in [h1, h2] {
        assert!(
            eventually(WAIT, || h.container_count() == 2),
            "{} lists both containers under its role",
            h.id
        );
    }

    let pki = f.pki.as_ref().unwrap();
    let as_h1 = |args: &[&str]| pki.etcdctl(&f.underlay, &pki.hosts[0], args);
    let forged = r#"{"id":"h2","advertise":"192.0.2.66:51871","public_key":null,"started_at":0,"peer_id":2}"#;
    for args in [
        vec!["put", "/pn/hosts/h2", forged],
        vec!["del", "/pn/hosts/h2"],
        vec!["put", "/pn/hosts/h9", forged],
    ] {
        let out = as_h1(&args);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "h1 may not {args:?}: {out:?}"
        );
    }
    // Its own record it may write (the agent re-registers at every start).
    let own = as_h1(&["get", "/pn/hosts/h1", "--print-value-only"]);
    let value = String::from_utf8_lossy(&own.stdout).trim().to_string();
    assert!(as_h1(&["put", "/pn/hosts/h1", &value]).status.success());

    let out = h1.cli(&["host", "remove", "h2"]);
    out.assert_error(ErrorKind::Unavailable, "permission denied");
    assert_eq!(h1.json(&["host", "list"]).as_array().unwrap().len(), 2);
    assert_eq!(h2.container_count(), 2, "nothing of h2 was removed");
    // The administrator's certificate (etcd's root) may.
    let out = pki.etcdctl(&f.underlay, &pki.root, &["get", "/pn/hosts/h2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/pn/hosts/h2"));
}
