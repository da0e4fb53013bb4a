//! `app move`: an application with containers on two hosts moves to
//! another network while a client there keeps trying; its containers keep
//! their interfaces and namespaces, take addresses of the new network, and
//! the old network loses them.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use pn_tests::{
    Namespace, eventually,
    fleet::Fleet,
    net,
    scenario::{OneApp, ip_of},
    unique_prefix,
};

const WAIT: Duration = Duration::from_secs(15);

/// `dig +short` for `name` from inside `ns` (the agent's DNS).
fn resolve(ns: &Namespace, name: &str) -> Vec<Ipv4Addr> {
    let out = ns.exec(&["dig", "+short", "+time=1", "+tries=1", "@169.254.1.1", name]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn reaches(ns: &Namespace, ip: Ipv4Addr, timeout: Duration) -> bool {
    net::tcp_echo(ns, SocketAddr::from((ip, 9000)), b"hi", timeout).is_ok()
}

/// The interface `pn0` in `ns`: (index, IPv4 addresses).
fn pn0(ns: &Namespace) -> (u64, Vec<String>) {
    let v: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "addr", "show", "pn0"])).unwrap();
    let l = &v[0];
    let addrs = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| a["local"].as_str().unwrap().to_string())
        .collect();
    (l["ifindex"].as_u64().unwrap(), addrs)
}

#[test]
fn an_app_on_two_hosts_moves_to_another_network_in_place() {
    let f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let OneApp {
        net: net_a,
        app,
        c1,
        c2,
    } = OneApp::new(h1, h2, ["web", "web"]);
    let net_b = h1.create_network(&[]);
    let in_a = h1.create_app(&net_a);
    let in_b = h2.create_app(&net_b);
    let ca = h1.member(&in_a, "worker", "ca");
    let cb = h2.member(&in_b, "worker", "cb");
    let (old1, old2) = (c1.addr, c2.addr);
    let _s1 = net::tcp_echo_server(&c1, 9000);
    let _s2 = net::tcp_echo_server(&c2, 9000);
    let short = Duration::from_millis(300);
    assert!(eventually(WAIT, || reaches(&ca, old1, short)
        && reaches(&ca, old2, short)));
    assert!(!reaches(&cb, old1, short) && !reaches(&cb, old2, short));
    let (idx1, _) = pn0(&c1);
    let (idx2, _) = pn0(&c2);
    let name_b = format!("web.{app}.{net_b}.private-network.internal");
    let name_a = format!("web.{app}.{net_a}.private-network.internal");
    assert!(resolve(&cb, &name_b).is_empty());
    assert_eq!(resolve(&ca, &name_a).len(), 2);

    // The client in B keeps resolving the app's name and connecting to
    // what it gets, until it has reached both containers.
    let (moved_at, reached_at) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let deadline = Instant::now() + WAIT;
            let mut reached = std::collections::BTreeMap::new();
            while reached.len() < 2 && Instant::now() < deadline {
                for ip in resolve(&cb, &name_b) {
                    if !reached.contains_key(&ip) && reaches(&cb, ip, Duration::from_millis(200)) {
                        reached.insert(ip, Instant::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            reached
        });
        std::thread::sleep(Duration::from_millis(200));
        let out = h1.cli_ok(&["app", "move", &app, "--network", &net_b]);
        let moved_at = Instant::now();
        assert!(out.contains(&net_b), "{out}");
        (moved_at, client.join().unwrap())
    });
    assert_eq!(
        reached_at.len(),
        2,
        "the client in B reached {reached_at:?}"
    );
    for (ip, at) in &reached_at {
        let after = at.saturating_duration_since(moved_at);
        eprintln!("reached {ip} {after:?} after the move returned");
        assert!(
            after < Duration::from_secs(1),
            "{ip} reached {after:?} after the move"
        );
    }

    // Same interfaces, same namespaces; only the new address on them.
    let listed = h2.json(&["container", "list", "--app", &app]);
    let listed = listed.as_array().unwrap();
    let new: Vec<Ipv4Addr> = listed.iter().map(ip_of).collect();
    assert!(
        listed.iter().all(|c| c["network"] == net_b.as_str()),
        "{listed:?}"
    );
    for (ns, idx, old) in [(&c1, idx1, old1), (&c2, idx2, old2)] {
        let (i, addrs) = pn0(ns);
        assert_eq!(i, idx, "{} kept its interface", ns.name);
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        let now: Ipv4Addr = addrs[0].parse().unwrap();
        assert!(new.contains(&now) && now != old, "{now} in {new:?}");
    }
    // Names follow: the app answers in B, not in A.
    assert_eq!(resolve(&cb, &name_b).len(), 2);
    assert!(resolve(&ca, &name_a).is_empty());
    let names = h1.cli_ok(&["domain-names", "--app", &app]);
    assert!(names.contains(&net_b) && !names.contains(&net_a), "{names}");
    // A's member lost it at once: neither the old nor the new addresses.
    for ip in [old1, old2].into_iter().chain(new.iter().copied()) {
        assert!(!reaches(&ca, ip, short), "{ip} still reachable from A");
    }
    // The old addresses are free: A holds only its own member's now (its
    // IPv4 and its IPv6 lease).
    // (Leases are in their hosts' ranges: `on/<host>/ips/<network>/…`.)
    let leases = f.etcdctl(&["get", "--prefix", "--keys-only", "/pn/on/"]);
    let leases: String = String::from_utf8_lossy(&leases.stdout)
        .lines()
        .filter(|l| l.contains(&format!("/ips/{net_a}/")))
        .map(|l| format!("{l}\n"))
        .collect();
    let of_family = |v6: bool| {
        leases
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.parse::<std::net::IpAddr>().ok())
            .filter(|ip| ip.is_ipv6() == v6)
            .count()
    };
    assert_eq!((of_family(false), of_family(true)), (1, 1), "{leases}");
    assert!(!leases.contains(&old1.to_string()) && !leases.contains(&old2.to_string()));
    // Moving again is a no-op.
    h2.cli_ok(&["app", "move", &app, "--network", &net_b]);
    assert_eq!(
        h2.json(&["container", "list", "--app", &app])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Moving back while h2's agent is down: h2 catches up when it starts
    // (its container still had B's address, the store only A's).
    let mut f = f;
    f.hosts[1].stop();
    f.hosts[0].cli_ok(&["app", "move", &app, "--network", &net_a]);
    f.hosts[1].restart();
    let h1 = &f.hosts[0];
    assert!(
        eventually(WAIT, || {
            let l = h1.json(&["container", "list", "--app", &app]);
            l.as_array()
                .unwrap()
                .iter()
                .all(|c| c["network"] == net_a.as_str() && reaches(&ca, ip_of(c), short))
        }),
        "{}",
        f.hosts[1].log()
    );
    let (i, addrs) = pn0(&c2);
    assert_eq!((i, addrs.len()), (idx2, 1), "{addrs:?}");
    assert!(f.hosts[1].log().contains("re-addressed"));
}
