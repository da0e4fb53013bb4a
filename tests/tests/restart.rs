//! Issue 16: restarts, upgrades and crashes of the agent under traffic.
//! Same-host traffic never passes through the agent and must lose nothing;
//! the tunnel is handed over to a successor (the gap is the hand-over
//! itself) and comes back within a second after a crash.

use std::time::Duration;

use pn_tests::{
    restarts::{Bed, Event, Outcome, copy_of_agent},
    unique_prefix,
};

const RATE: u32 = 2_000;
const SECONDS: f64 = 4.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The stream of the issue (2 000 numbered datagrams a second from c1 to c2
/// on the same host and to c3 on the other) through each event; the limits
/// are twice the targets (100 ms for a hand-over, 1 s after a crash), for
/// the noise of a shared machine.
#[test]
fn restarts_upgrades_and_crashes_lose_no_same_host_datagram() {
    let mut bed = Bed::new(&unique_prefix());
    let next = copy_of_agent(&bed.fleet.hosts[0].dir);
    let cases = [
        (Event::None, Duration::from_millis(100)),
        (Event::Restart, Duration::from_millis(200)),
        (Event::Upgrade(next), Duration::from_millis(200)),
        (Event::Crash, Duration::from_secs(2)),
    ];
    let mut results: Vec<(Event, Outcome, Duration)> = Vec::new();
    for (event, limit) in cases {
        let o = bed.measure(&event, RATE, SECONDS);
        eprintln!(
            "{:32} same host: {} lost, gap {:.1} ms | across hosts: {} lost, gap {:.1} ms | took {:.0} ms",
            event.name(),
            o.same_host.lost,
            ms(o.same_host.longest_gap),
            o.cross_host.lost,
            ms(o.cross_host.longest_gap),
            ms(o.took)
        );
        results.push((event, o, limit));
    }
    for (event, o, limit) in &results {
        assert_eq!(
            o.same_host.lost,
            0,
            "{}: same-host datagrams lost: {}",
            event.name(),
            o.same_host
        );
        assert!(
            o.cross_host.longest_gap < *limit,
            "{}: cross-host gap over {limit:?}: {}",
            event.name(),
            o.cross_host
        );
    }
}
