//! The tunnel scenario's AES-256-GCM rows: pn with both agents preferring
//! AES-256-GCM (checked: their sessions use it) against plain veth and
//! against pn on ChaCha20-Poly1305 from the same run, and ring's one-core
//! sealing rate of both AEADs.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::bail;
use pn_tests::{Namespace, fleet::Fleet, metric_value};
use pn_tunnel::aead::{Cipher, aes_hardware, seal_rate};

use crate::{
    Effort,
    report::{Measurement, Row},
    tools,
};

/// Runs pn on AES-256-GCM between `c1` and `c2` (the fleet is relaunched
/// with it, and left so); `plain` and `pn_chacha` are the same run's
/// figures of plain veth and of pn on ring's ChaCha20-Poly1305.
pub fn rows(
    effort: Effort,
    fleet: &mut Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
    plain: &[f64],
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
    let mut pn_aes = Vec::new();
    for _ in 0..effort.runs {
        pn_aes.push(tools::iperf(c1, c2, ip2, effort.seconds)?);
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
    let secs = Duration::from_millis(if effort.seconds <= 1 { 200 } else { 1000 });
    let seal = |c: Cipher| -> Vec<f64> {
        (0..effort.runs)
            .map(|_| seal_rate(c, 1400, secs) * 8.0 / 1e9)
            .collect()
    };
    let (seal_aes, seal_chacha) = (seal(Cipher::Aes256Gcm), seal(Cipher::Ring));
    let g = |v: &[f64]| Measurement::new("Gbit/s", true, v.to_vec());
    let vs_plain = Row::versus(
        "pn (aes256gcm), container to container across hosts",
        g(&pn_aes),
        "plain veth, no encryption",
        g(plain),
    );
    let met = vs_plain.ratio().unwrap_or(0.0) >= 0.45;
    Ok((
        vec![
            vs_plain.with_target("≥ 45 % of plain veth", met),
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
        ],
        notes,
    ))
}
