//! The restart test bed (issue 16), shared by the test and the benchmark:
//! two hosts on a real etcd with the tunnel on; c1 and c2 on host 1, c3 on
//! host 2, one network; a stream of numbered datagrams from c1 to c2 (same
//! host) and to c3 (across hosts) while something happens to host 1's agent;
//! with [`Bed::ipv6`], to c3 over IPv6 too, from the same sender and tick.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    eventually,
    fleet::Fleet,
    net,
    scenario::{Member, OneApp},
    stream::{Received, Stream},
};

/// What happens to host 1's agent during the stream.
#[derive(Clone, Debug)]
pub enum Event {
    /// Nothing (the control).
    None,
    /// SIGTERM, then the same binary started again, with no service
    /// manager to keep anything in between.
    Restart,
    /// The same under a service manager with a file descriptor store (as
    /// `systemctl restart` of a unit with `FileDescriptorStoreMax=`).
    ServiceRestart,
    /// Another binary started while the agent runs: it takes over.
    Upgrade(PathBuf),
    /// SIGKILL, then the same binary started again.
    Crash,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::None => "no restart",
            Event::Restart => "restart (SIGTERM, start)",
            Event::ServiceRestart => "systemctl restart (fd store)",
            Event::Upgrade(_) => "upgrade (new binary takes over)",
            Event::Crash => "crash (SIGKILL, start)",
        }
    }
}

/// The figures of one event.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub same_host: Received,
    pub cross_host: Received,
    /// The same receiver over IPv6 (with [`Bed::ipv6`]).
    pub cross_host6: Option<Received>,
    /// How long the event itself took (until the new agent answered).
    pub took: Duration,
    /// Host 1's `no_tunnel` drops (remote members' packets while no tunnel
    /// is up): before the event, once the agent answered again, at the end.
    pub no_tunnel: [u64; 3],
}

fn no_tunnel(h: &crate::Host) -> u64 {
    crate::metric_value(&h.metrics(), "pn_packets_total", &[("reason", "no_tunnel")])
}

pub struct Bed {
    pub fleet: Fleet,
    pub c1: Member,
    pub c2: Member,
    pub c3: Member,
    /// The stream goes to c3 over IPv6 as well.
    pub ipv6: bool,
    port: u16,
}

impl Bed {
    pub fn new(prefix: &str) -> Bed {
        let fleet = Fleet::new(prefix, 2);
        let OneApp { app, c1, c2, .. } =
            OneApp::new(&fleet.hosts[0], &fleet.hosts[0], ["web", "worker"]);
        let c3 = fleet.hosts[1].member(&app, "worker", "c3");
        fleet.wait_for_peers(Duration::from_secs(10));
        Bed {
            fleet,
            c1,
            c2,
            c3,
            ipv6: false,
            port: 9000,
        }
    }

    /// Both paths answer (the tunnel is paired) before a measurement.
    pub fn warm_up(&self) {
        let _e2 = net::udp_echo_server(&self.c2, 8999);
        let _e3 = net::udp_echo_server(&self.c3, 8999);
        let _e3_6 = self.ipv6.then(|| net::udp_echo_server6(&self.c3, 8998));
        let mut to = vec![
            SocketAddr::from((self.c2.addr, 8999)),
            SocketAddr::from((self.c3.addr, 8999)),
        ];
        if self.ipv6 {
            to.push(SocketAddr::from((self.c3.addr6(), 8998)));
        }
        for ip in to {
            assert!(
                eventually(Duration::from_secs(10), || net::udp_echo(
                    &self.c1,
                    ip,
                    b"warm",
                    Duration::from_millis(300)
                )
                .is_ok()),
                "{ip} answers before the measurement"
            );
        }
    }

    /// Streams `rate` datagrams a second for `seconds`, with `event` on
    /// host 1's agent after a third of it.
    pub fn measure(&mut self, event: &Event, rate: u32, seconds: f64) -> Outcome {
        // Under a service manager or not, as the event needs (set up before
        // the stream: the agent must have been started that way).
        let h1 = &mut self.fleet.hosts[0];
        match (event, h1.manager.is_some()) {
            (Event::ServiceRestart, false) => {
                h1.with_service_manager();
                h1.restart();
            }
            (Event::Restart, true) => {
                h1.manager = None;
                h1.restart();
            }
            _ => {}
        }
        self.warm_up();
        self.port += 1;
        let count = (f64::from(rate) * seconds) as u32;
        let mut to = vec![
            (&self.c2.ns, SocketAddr::from((self.c2.addr, self.port))),
            (&self.c3.ns, SocketAddr::from((self.c3.addr, self.port))),
        ];
        if self.ipv6 {
            to.push((&self.c3.ns, SocketAddr::from((self.c3.addr6(), self.port))));
        }
        let stream = Stream::start(&self.c1, &to, rate, count);
        std::thread::sleep(Duration::from_secs_f64(seconds / 3.0));
        let h1 = &mut self.fleet.hosts[0];
        let before = no_tunnel(h1);
        let t = Instant::now();
        match event {
            Event::None => {}
            Event::Restart | Event::ServiceRestart => h1.restart(),
            Event::Upgrade(bin) => h1.hand_over(Some(bin)),
            Event::Crash => h1.crash_and_restart(),
        }
        let took = t.elapsed();
        let ready = no_tunnel(h1);
        let mut r = stream.finish();
        let end = no_tunnel(&self.fleet.hosts[0]);
        let cross_host6 = if self.ipv6 { r.pop() } else { None };
        let cross_host = r.pop().expect("two receivers");
        let same_host = r.pop().expect("two receivers");
        Outcome {
            same_host,
            cross_host,
            cross_host6,
            took,
            no_tunnel: [before, ready, end],
        }
    }
}

/// A copy of the agent binary under another name, as an upgrade installs
/// (a new file, not the running one).
pub fn copy_of_agent(dir: &Path) -> PathBuf {
    let to = dir.join("pn-agent-next");
    std::fs::copy(crate::agent_bin(), &to).expect("copying the agent binary");
    to
}
