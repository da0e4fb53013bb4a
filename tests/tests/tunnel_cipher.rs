//! The tunnel's AEAD across two hosts: both preferring AES-256-GCM, their
//! session uses it (and keeps it through a hand-over to a successor agent);
//! one host back on ChaCha20-Poly1305, the pair settles on that.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace, bulk, eventually, fleet::Fleet, metric_value, net, scenario::OneApp,
    unique_prefix,
};

const LONG: Duration = Duration::from_secs(10);

/// What `status` says of the (only) peer's tunnel.
fn peer_tunnel(h: &Host) -> String {
    h.json(&["status"])["peers"][0]["tunnel"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn sessions(h: &Host, cipher: &str) -> u64 {
    metric_value(
        &h.metrics(),
        "pn_tunnel_sessions_total",
        &[("cipher", cipher)],
    )
}

/// Echo and a 20 MB download, checked byte by byte (super-packets, sealed
/// and opened in batches), from c1 on h1 to c2 on h2.
fn traffic(c1: &Namespace, dst: std::net::Ipv4Addr, echo: u16, bulk_port: u16) {
    let to = |port| SocketAddr::from((dst, port));
    assert!(
        eventually(Duration::from_secs(15), || net::tcp_echo(
            c1,
            to(echo),
            b"across",
            Duration::from_millis(800)
        )
        .is_ok()),
        "echo across the tunnel"
    );
    assert_eq!(
        bulk::tcp_download(c1, to(bulk_port), LONG).unwrap(),
        20_000_000
    );
}

#[test]
fn hosts_that_both_prefer_aes_use_it_and_fall_back_to_chacha_with_one_that_does_not() {
    // Without AES instructions a host never offers AES-256-GCM: the pair
    // would settle on ChaCha20-Poly1305 (pn-tunnel's unit tests cover it).
    let want = if pn_tunnel::aead::aes_hardware() {
        "aes256gcm"
    } else {
        "chacha20poly1305"
    };
    let aes = ["--tunnel-cipher", "aes256gcm"];
    let mut f = Fleet::with_flags(&unique_prefix(), 2, &aes);
    let OneApp { c1, c2, .. } = OneApp::new(&f.hosts[0], &f.hosts[1], ["web", "worker"]);
    let ip2 = c2.addr;
    let _echo = net::tcp_echo_server(&c2, 4000);
    let _source = bulk::tcp_source_server(&c2, 4001, 20_000_000);

    traffic(&c1, ip2, 4000, 4001);
    for h in &f.hosts {
        let t = peer_tunnel(h);
        assert!(
            t.starts_with("established") && t.contains(want),
            "{}: {t}",
            h.id
        );
        assert!(
            h.json(&["status"])["tunnel"]
                .as_str()
                .unwrap()
                .contains("prefers aes256gcm")
        );
        assert_eq!(sessions(h, want), 1, "{}", h.id);
    }

    // A successor agent on h1 takes the session over with its AEAD: no new
    // handshake, traffic goes on.
    f.hosts[0].hand_over(None);
    traffic(&c1, ip2, 4000, 4001);
    let t = peer_tunnel(&f.hosts[0]);
    assert!(t.contains(want), "after the hand-over: {t}");
    assert_eq!(
        sessions(&f.hosts[0], "aes256gcm") + sessions(&f.hosts[0], "chacha20poly1305"),
        0,
        "the successor made no session of its own"
    );

    // h2 back on ChaCha20-Poly1305: once it restarted (no session), the
    // pair settles on the fallback, whoever initiates.
    let flags = f.flags(2, &["--tunnel-cipher", "chacha20poly1305"]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    f.hosts[1].stop();
    f.hosts[1].launch(&refs);
    traffic(&c1, ip2, 4000, 4001);
    for h in &f.hosts {
        assert!(
            eventually(LONG, || peer_tunnel(h).contains("chacha20poly1305")),
            "{}: {}",
            h.id,
            peer_tunnel(h)
        );
        assert!(sessions(h, "chacha20poly1305") >= 1, "{}", h.id);
    }
    assert!(
        f.hosts[1].json(&["status"])["tunnel"]
            .as_str()
            .unwrap()
            .contains("prefers chacha20poly1305")
    );
}
