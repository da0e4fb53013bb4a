//! Restarts, upgrades and crashes of the agent under traffic (issue 16):
//! what each costs a stream of numbered datagrams, on the same host (which
//! never passes through the agent) and across hosts (through the tunnel).
//! The control is the same stream with nothing happening.

use pn_tests::{
    restarts::{Bed, Event, copy_of_agent},
    unique_prefix,
};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
};

const RATE: u32 = 2_000;

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let mut bed = Bed::new(&unique_prefix());
    let next = copy_of_agent(&bed.fleet.hosts[0].dir);
    // Long enough for the event to sit well inside the stream.
    let seconds = (effort.seconds as f64).max(2.0);
    let events = [
        (Event::None, None),
        // Issue 25: a bare restart under 100 ms across hosts.
        (Event::Restart, Some(100.0)),
        (Event::Upgrade(next), Some(100.0)),
        (Event::ServiceRestart, Some(100.0)),
        (Event::Crash, Some(1000.0)),
    ];
    let mut measured = Vec::new();
    for (event, target) in events {
        let (mut same, mut cross, mut gap) = (vec![], vec![], vec![]);
        for _ in 0..effort.runs {
            let o = bed.measure(&event, RATE, seconds);
            eprintln!(
                "pn-bench: restart: {}: {} | {}",
                event.name(),
                o.same_host,
                o.cross_host
            );
            same.push(f64::from(o.same_host.lost));
            cross.push(f64::from(o.cross_host.lost));
            gap.push(o.cross_host.longest_gap.as_secs_f64() * 1e3);
        }
        measured.push((event, target, same, cross, gap));
    }
    let lost = |v: &Vec<f64>| Measurement::new("datagrams", false, v.clone());
    let ms = |v: &Vec<f64>| Measurement::new("ms", false, v.clone());
    let control_gap = measured[0].4.clone();
    let mut rows = Vec::new();
    for (event, target, same, cross, gap) in &measured {
        let name = event.name();
        let Some(target) = target else {
            rows.push(Row::alone(
                &format!("{name}: longest gap, across hosts"),
                ms(gap),
            ));
            continue;
        };
        let none_lost = same.iter().all(|x| *x == 0.0);
        rows.push(
            Row::alone(&format!("{name}: datagrams lost, same host"), lost(same))
                .with_target("0 in every run", none_lost),
        );
        rows.push(Row::alone(
            &format!("{name}: datagrams lost, across hosts"),
            lost(cross),
        ));
        let gap_row = Row::versus(
            &format!("{name}: longest gap, across hosts"),
            ms(gap),
            "no restart",
            ms(&control_gap),
        );
        let met = gap_row.pn.median() < *target;
        rows.push(gap_row.with_target(&format!("< {target} ms"), met));
    }
    Ok(Scenario {
        name: "restart".into(),
        title: "Restarts, upgrades and crashes under traffic".into(),
        setup: format!(
            "Two hosts on a real etcd with the tunnel on; a stream of {RATE} numbered 64-byte UDP \
             datagrams a second ({seconds:.0} s) from a container on host 1 to a container on the \
             same host and to one on host 2; a third of the way in, host 1's agent is restarted \
             (SIGTERM, then started again with no service manager), upgraded (a copy of the \
             binary started while it runs: it takes the tunnel over the hand-over socket), \
             restarted as `systemctl restart` does under a unit with a file descriptor store (the \
             tunnel waits there), or crashed (SIGKILL, then started). Lost: datagrams that never \
             arrived; gap: the longest time between two arrivals at the receiver. Baseline: the \
             same stream with nothing happening."
        ),
        rows,
        notes: vec![
            "A bare restart or a crash keeps nothing of the tunnel's sessions: the gap is the new \
             agent's start (the tunnel comes first, before the datapath load) and one handshake."
                .into(),
            "Before issue 16 (main, debug build, the integration test's stream of 2 000/s): same \
             host 0 lost in every case; across hosts a restart lost 330–640 datagrams (gap \
             200–365 ms), a crash 260–355 (gap 170–230 ms), and an upgrade could not run (a \
             second agent refused the state directory)."
                .into(),
        ],
    })
}
