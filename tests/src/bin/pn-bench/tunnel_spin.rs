//! The tunnel scenario's spin rows: 1-byte round trips with both agents
//! spinning before they sleep (`--tunnel-spin-us`) against the same run's
//! pn without, and what the spin costs: the CPU the agents report spent
//! spinning, per second of round trips.

use std::{net::Ipv4Addr, time::Instant};

use pn_tests::{Namespace, fleet::Fleet};

use crate::{
    Effort,
    pingpong::{self, PingPong},
    report::{Measurement, Row},
    tools,
};

/// The spin the rows measure, µs.
pub const SPIN_US: &str = "50";

/// Seconds both agents spent spinning so far.
fn spin_seconds(fleet: &Fleet) -> f64 {
    fleet
        .hosts
        .iter()
        .filter_map(|h| {
            h.metrics()
                .lines()
                .find_map(|l| l.strip_prefix("pn_tunnel_spin_seconds_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .sum()
}

/// Relaunches the fleet with the spin (and leaves it so); `plain` is the
/// same run's pn without it, 1-byte answers.
pub fn rows(
    effort: Effort,
    fleet: &mut Fleet,
    [c1, c2]: [&Namespace; 2],
    ip2: Ipv4Addr,
    plain: &[PingPong],
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    fleet.relaunch(&["--tunnel-spin-us", SPIN_US]);
    tools::wait_for_remote(&fleet.hosts[0])?;
    let secs = effort.seconds.min(4);
    let (mut spun, mut cost) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        let (before, t) = (spin_seconds(fleet), Instant::now());
        spun.push(pingpong::run(c1, c2, ip2, 1, secs)?);
        cost.push((spin_seconds(fleet) - before) / t.elapsed().as_secs_f64());
    }
    let rate =
        |v: &[PingPong]| Measurement::new("trans/s", true, v.iter().map(|p| p.rate).collect());
    let p99 = |v: &[PingPong]| Measurement::new("µs", false, v.iter().map(|p| p.p99_us).collect());
    let label = format!("pn (ring), {SPIN_US} µs spin");
    let notes = vec![format!(
        "The spin (`--tunnel-spin-us {SPIN_US}`, off by default): a loop that just had traffic polls \
         that long before it sleeps, so an answer arriving within it costs no wake-up; idle loops never \
         spin. Its cost is the CPU both agents report spent spinning (`pn_tunnel_spin_seconds_total`) \
         per second of 1-byte round trips."
    )];
    Ok((
        vec![
            Row::versus(
                &format!("request/response, 1 B answers: {label}"),
                rate(&spun),
                "pn (ring), no spin",
                rate(plain),
            ),
            Row::versus(
                &format!("request/response, 1 B answers: p99 round trip, {label}"),
                p99(&spun),
                "pn (ring), no spin",
                p99(plain),
            ),
            Row::alone(
                &format!("the spin's CPU during 1 B round trips, {label}"),
                Measurement::new("core-s/s", false, cost),
            ),
        ],
        notes,
    ))
}
