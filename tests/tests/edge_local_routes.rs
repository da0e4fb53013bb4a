//! The host's `local` routes are the host: an address the host accepts
//! only through a `local` route (`ip route add local 198.51.100.0/24 dev
//! lo`, AnyIP, anycast service setups), with no interface holding it, is
//! never the world for a container (`egress_denied`), whether the route
//! was there when the agent started or came later.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{Host, eventually, net, scenario::Member, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);
const FAIL: Duration = Duration::from_millis(700);
/// The agent's repair period (`REPAIR_EVERY`, 10 s) and some: a `local`
/// route added while it runs is denied by then at the latest (the kernel
/// announces it too, so usually at once).
const REPAIR: Duration = Duration::from_secs(15);
/// The host's AnyIP range and the service it serves.
const ANYIP: &str = "198.51.100.0/24";
const SERVICE: &str = "198.51.100.53";

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn add_local_route(host: &Host) {
    host.ns.ip(&["route", "add", "local", ANYIP, "dev", "lo"]);
}

/// One host, its agent, a web container; the local range added first with
/// `before`.
fn fixture(before: bool) -> (Host, String, Member) {
    let mut host = Host::create(&unique_prefix(), "h1");
    if before {
        add_local_route(&host);
    }
    host.launch(&[]);
    let (_, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    (host, app, c1)
}

/// Every attempt from the container at the host's local range fails,
/// counted `egress_denied`, none `egress`.
fn denied(host: &Host, app: &str, c1: &Member) {
    let counted = |reason: &str| host.packets(app, "web-1", reason);
    let egress = counted("egress");
    for (ip, port) in [(SERVICE, 7200), ("198.51.100.200", 7200)] {
        let before = counted("egress_denied");
        assert!(net::tcp_whoami(c1, sa(ip, port), FAIL).is_err(), "tcp {ip}");
        assert!(
            eventually(WAIT, || counted("egress_denied") > before),
            "tcp {ip} counted"
        );
    }
    let before = counted("egress_denied");
    assert!(net::udp_whoami(c1, sa(SERVICE, 7201), FAIL).is_err(), "udp");
    assert!(
        eventually(WAIT, || counted("egress_denied") > before),
        "udp counted"
    );
    assert_eq!(counted("egress"), egress, "nothing passed as the world");
}

#[test]
fn a_hosts_local_route_is_never_the_world() {
    let (host, app, c1) = fixture(true);
    let _tcp = net::tcp_whoami_server(&host.ns, 7200);
    let _udp = net::udp_whoami_server(&host.ns, 7201);
    // The host serves the range itself.
    assert!(net::tcp_whoami(&host.ns, sa(SERVICE, 7200), WAIT).is_ok());
    assert!(net::udp_whoami(&host.ns, sa(SERVICE, 7201), WAIT).is_ok());
    denied(&host, &app, &c1);
    let status = host.json(&["status"]);
    assert_eq!(status["edge"]["applied"], true, "{status}");
}

#[test]
fn a_local_route_added_while_the_agent_runs_is_denied_within_the_repair_period() {
    let (host, app, c1) = fixture(false);
    let _tcp = net::tcp_whoami_server(&host.ns, 7200);
    let _udp = net::udp_whoami_server(&host.ns, 7201);
    // The gateway is reached: the container is up before the route comes.
    let ping = c1.exec(&["ping", "-c1", "-W2", "169.254.1.1"]);
    assert!(ping.status.success(), "{ping:?}");
    add_local_route(&host);
    assert!(net::tcp_whoami(&host.ns, sa(SERVICE, 7200), WAIT).is_ok());
    assert!(
        eventually(REPAIR, || net::tcp_whoami(&c1, sa(SERVICE, 7200), FAIL)
            .is_err()),
        "the new local range is denied"
    );
    denied(&host, &app, &c1);
}
