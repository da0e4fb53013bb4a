//! The tunnel scenario's rows against the machine's limit: what a stream
//! through pn costs in CPU per Gbit, and the least it could cost here,
//! computed from the same run: plain veth's cost per Gbit (the two TCP
//! stacks and the forward) plus one sealing and one opening of every
//! byte at the rates one core reaches (measured between the rounds).

use std::time::Duration;

use pn_tunnel::aead::{Cipher, open_rate, seal_rate};

use crate::{
    Effort,
    report::{Measurement, Row},
};

/// One core's sealing and opening rates of `cipher` on 1400-byte
/// packets, Gbit/s, a value per run.
pub fn rates(cipher: Cipher, effort: Effort) -> (Vec<f64>, Vec<f64>) {
    let secs = Duration::from_millis(if effort.seconds <= 1 { 200 } else { 1000 });
    let gbit = |bytes_per_s: f64| bytes_per_s * 8.0 / 1e9;
    (0..effort.runs)
        .map(|_| {
            (
                gbit(seal_rate(cipher, 1400, secs)),
                gbit(open_rate(cipher, 1400, secs)),
            )
        })
        .unzip()
}

/// Core-seconds per Gbit from Gbit per core-second.
fn cost(per_core: &[f64]) -> Vec<f64> {
    per_core.iter().map(|g| 1.0 / g.max(1e-9)).collect()
}

/// The limit per run: plain's cost plus a sealing and an opening per Gbit.
fn limit(plain_per_core: &[f64], seal: &[f64], open: &[f64]) -> Vec<f64> {
    cost(plain_per_core)
        .iter()
        .zip(seal.iter().zip(open))
        .map(|(p, (s, o))| p + 1.0 / s + 1.0 / o)
        .collect()
}

/// The rows of one AEAD (`label`, e.g. "pn (ring)"): its opening rate,
/// pn's CPU per Gbit against the limit (target ≤ 1.3×), and pn's share of
/// the limit (the limit over pn's cost: 100 % is the machine's best).
pub fn rows(
    label: &str,
    aead: &str,
    pn_per_core: &[f64],
    plain_per_core: &[f64],
    (seal, open): (&[f64], &[f64]),
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let g = |v: &[f64]| Measurement::new("Gbit/s", true, v.to_vec());
    let limit = limit(plain_per_core, seal, open);
    let pn_cost = cost(pn_per_core);
    let vs = Row::versus(
        &format!("CPU per Gbit, 1 stream: {label}"),
        Measurement::new("core-s/Gbit", false, pn_cost.clone()),
        "the limit (plain veth's cost + one seal and one open per Gbit)",
        Measurement::new("core-s/Gbit", false, limit.clone()),
    );
    let ratio = vs.ratio().unwrap_or(f64::INFINITY);
    let share: Vec<f64> = limit
        .iter()
        .zip(&pn_cost)
        .map(|(l, c)| 100.0 * l / c)
        .collect();
    let m = |v: &[f64]| Measurement::new("", true, v.to_vec()).median();
    notes.push(format!(
        "The limit with {aead} (medians of this run): plain veth {:.3} core-s/Gbit + sealing at \
         {:.1} Gbit/s + opening at {:.1} Gbit/s per core = {:.3} core-s/Gbit; {label} costs {:.3}, \
         {:.0} % of the machine's best.",
        m(&cost(plain_per_core)),
        m(seal),
        m(open),
        m(&limit),
        m(&pn_cost),
        m(&share),
    ));
    vec![
        Row::alone(
            &format!("{aead} opening, 1400-byte packets, one core (this run)"),
            g(open),
        ),
        Row::alone(
            &format!("{aead} sealing, 1400-byte packets, one core (this run)"),
            g(seal),
        ),
        vs.with_target("≤ 1.3× the limit", ratio <= 1.3),
        Row::alone(
            &format!("{label}: share of the limit (limit ÷ pn's CPU per Gbit)"),
            Measurement::new("%", true, share),
        ),
    ]
}
