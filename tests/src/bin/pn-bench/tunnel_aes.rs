//! The tunnel scenario's AES-256-GCM rows: pn with both agents preferring
//! AES-256-GCM (checked: their sessions use it) against plain veth and
//! against pn on ChaCha20-Poly1305 from the same run, and ring's one-core
//! sealing rate of both AEADs.

use std::net::Ipv4Addr;

use anyhow::bail;
use pn_tests::{Namespace, fleet::Fleet, metric_value};
use pn_tunnel::aead::{Cipher, aes_hardware};

use crate::{
    Effort,
    report::{Measurement, Row},
    tools,
};

/// Runs pn on AES-256-GCM between `c1` and `c2` (the fleet is relaunched
/// with it, and left so); `plain` (Gbit/s, and Gbit per core-second) and
/// `pn_chacha` are the same run's figures of plain veth and of pn on
/// ring's ChaCha20-Poly1305.
pub fn rows(
    effort: Effort,
    fleet: &mut Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
    (plain, plain_per_core): (&[f64], &[f64]),
    pn_chacha: &[f64],
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    let mut notes = Vec::new();
    if !aes_hardware() {
        notes.push(
            "This CPU has no AES instructions: no AES-256-GCM rows (the hosts would settle on \
             ChaCha20-Poly1305)."
                .into(),
        );
        return Ok((Vec::new(), notes));
    }
    fleet.relaunch(&["--tunnel-cipher", "aes256gcm"]);
    tools::wait_for_remote(&fleet.hosts[0])?;
    let (mut pn_aes, mut per_core) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        let cpu = tools::tree_cpu_seconds();
        let g = tools::iperf(c1, c2, ip2, effort.seconds)?;
        let cpu = tools::tree_cpu_seconds() - cpu;
        pn_aes.push(g);
        per_core.push(g * effort.seconds as f64 / cpu.max(1e-3));
    }
    for h in &fleet.hosts {
        let aes = metric_value(
            &h.metrics(),
            "pn_tunnel_sessions_total",
            &[("cipher", "aes256gcm")],
        );
        if aes == 0 {
            bail!("{}: no AES-256-GCM session after the AES runs", h.id);
        }
    }
    let (seal_aes, open_aes) = crate::tunnel_limit::rates(Cipher::Aes256Gcm, effort);
    let (seal_chacha, _) = crate::tunnel_limit::rates(Cipher::Ring, effort);
    let g = |v: &[f64]| Measurement::new("Gbit/s", true, v.to_vec());
    let vs_plain = Row::versus(
        "pn (aes256gcm), container to container across hosts",
        g(&pn_aes),
        "plain veth, no encryption",
        g(plain),
    );
    let met = vs_plain.ratio().unwrap_or(0.0) >= 0.70;
    let limit = crate::tunnel_limit::rows(
        "pn (aes256gcm)",
        "AES-256-GCM",
        &per_core,
        plain_per_core,
        (&seal_aes, &open_aes),
        &mut notes,
    );
    Ok((
        vec![
            vs_plain.with_target("≥ 0.70× plain veth", met),
            Row::versus(
                "pn (aes256gcm) against pn (chacha20poly1305, ring)",
                g(&pn_aes),
                "pn (chacha20poly1305, ring)",
                g(pn_chacha),
            ),
            Row::versus(
                "AES-256-GCM sealing, 1400-byte packets, one core: ring",
                g(&seal_aes),
                "ring ChaCha20-Poly1305",
                g(&seal_chacha),
            ),
        ]
        .into_iter()
        .chain(limit)
        .collect(),
        notes,
    ))
}
