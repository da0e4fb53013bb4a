//! Fleet membership with a real etcd: agents converge, addresses never
//! collide, an etcd outage loses nothing, hosts can be removed.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use pn_agent::error::ErrorKind;
use pn_tests::{
    Namespace, eventually,
    fleet::Fleet,
    metric_value, net,
    scenario::{Member, ip_of},
    unique_prefix,
};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn three_agents_converge_on_one_membership() {
    let f = Fleet::new(&unique_prefix(), 3);
    let (h1, h2, h3) = (&f.hosts[0], &f.hosts[1], &f.hosts[2]);
    let net = h1.create_network(&[]);
    let app = h2.create_app(&net);
    let containers: Vec<Member> = (f.hosts.iter().enumerate())
        .map(|(i, h)| h.member(&app, "web", &format!("c{i}")))
        .collect();
    for h in [h1, h2, h3] {
        assert!(
            eventually(WAIT, || h.container_count() == 3),
            "{} does not see the three containers",
            h.id
        );
        assert!(
            eventually(WAIT, || h.remote_endpoints() == 2),
            "{}: remote endpoints",
            h.id
        );
    }
    let lists: BTreeSet<String> = [h1, h2, h3]
        .iter()
        .map(|h| {
            format!(
                "{}{}{}",
                h.cli_ok(&["network", "list"]),
                h.cli_ok(&["app", "list"]),
                h.cli_ok(&["container", "list"])
            )
        })
        .collect();
    assert_eq!(
        lists.len(),
        1,
        "every agent lists the same fleet: {lists:?}"
    );
    let hosts = h3.json(&["host", "list"]);
    assert_eq!(hosts.as_array().unwrap().len(), 3);
    // DNS on h3 knows the containers of h1 and h2.
    let name = format!("{app}.{net}.private-network.internal");
    let out = containers[2].exec(&["dig", "+short", "+time=2", &name]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Detach from another host: the owner tears its interface down.
    h3.cli_ok(&[
        "container",
        "detach",
        "--app",
        &app,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    assert!(
        eventually(WAIT, || containers[0]
            .exec(&["ip", "link", "show", "pn0"])
            .status
            .code()
            != Some(0)),
        "h1 removed the detached container's interface"
    );
    for h in [h1, h2, h3] {
        assert!(eventually(WAIT, || h.container_count() == 2));
    }
}

#[test]
fn concurrent_attaches_on_two_hosts_get_distinct_addresses() {
    let p = unique_prefix();
    let f = Fleet::new(&p, 2);
    let (_, app) = f.hosts[0].network_and_app(&[]);
    let per_host = 6;
    let namespaces: Vec<Vec<Namespace>> = (0..2)
        .map(|h| {
            (0..per_host)
                .map(|i| Namespace::new(&format!("{p}-{h}{i}")))
                .collect()
        })
        .collect();
    let ips: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = f
            .hosts
            .iter()
            .zip(&namespaces)
            .flat_map(|(host, nss)| {
                let app = app.clone();
                nss.iter()
                    .map(move |ns| {
                        let app = app.clone();
                        s.spawn(move || ip_of(&host.attach(&app, "worker", ns)))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 2 * per_host, "duplicate addresses: {ips:?}");
    // Indexes are distinct too, and both agents agree on the result.
    for h in &f.hosts {
        assert!(eventually(WAIT, || h.container_count() == 2 * per_host));
    }
}

#[test]
fn an_etcd_outage_loses_nothing() {
    let mut f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let (_, a) = h1.network_and_app(&[]);
    let (_, b) = h1.network_and_app(&[]);
    let c2 = h1.member(&a, "web", "c2");
    let c1 = h1.member(&a, "web", "c1");
    let c3 = h1.member(&b, "web", "c3");
    let remote = h2.member(&a, "worker", "r1");
    let ip2 = c2.addr;
    assert!(eventually(WAIT, || f.hosts[0].remote_endpoints() == 1));
    let before: Vec<String> = f
        .hosts
        .iter()
        .map(|h| h.cli_ok(&["container", "list"]))
        .collect();

    f.etcd.stop();
    for h in &f.hosts {
        assert!(
            eventually(WAIT, || metric_value(&h.metrics(), "pn_store_up", &[]) == 0
                && h.metrics().contains("pn_store_up 0")),
            "{} noticed the outage",
            h.id
        );
        let status = h.json(&["status"]);
        assert_eq!(status["store"]["reachable"], false);
        assert!(
            status["store"]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("etcd")
        );
    }
    // Enforcement goes on from the last known state.
    let _srv = net::tcp_echo_server(&c2, 9000);
    net::tcp_echo(
        &c1,
        SocketAddr::from((ip2, 9000)),
        b"during",
        Duration::from_secs(5),
    )
    .expect("members talk");
    assert!(
        net::tcp_echo(
            &c3,
            SocketAddr::from((ip2, 9000)),
            b"x",
            Duration::from_millis(800)
        )
        .is_err()
    );
    // Changes are refused with one line while the store is away.
    let out = f.hosts[0].cli(&["network", "create"]);
    out.assert_error(ErrorKind::Unavailable, "etcd");
    // Reads still answer from the last known state.
    assert_eq!(f.hosts[0].cli_ok(&["container", "list"]), before[0]);

    f.etcd.restart();
    for h in &f.hosts {
        assert!(
            eventually(WAIT, || h.json(&["status"])["store"]["reachable"] == true),
            "{} reconnected",
            h.id
        );
    }
    let after: Vec<String> = f
        .hosts
        .iter()
        .map(|h| h.cli_ok(&["container", "list"]))
        .collect();
    assert_eq!(before, after, "nothing lost");
    // And the fleet moves on: an attach on h2 reaches h1, a detach on h1 reaches h2.
    let _r2 = f.hosts[1].member(&a, "worker", "r2");
    assert!(eventually(WAIT, || f.hosts[0].remote_endpoints() == 2));
    f.hosts[0].cli_ok(&[
        "container",
        "detach",
        "--app",
        &a,
        "--type",
        "worker",
        "--index",
        "1",
    ]);
    assert!(eventually(WAIT, || remote
        .exec(&["ip", "link", "show", "pn0"])
        .status
        .code()
        != Some(0)));
    assert!(eventually(WAIT, || f.hosts[0].remote_endpoints() == 1));
}

#[test]
fn a_removed_host_disappears_from_every_agent() {
    let mut f = Fleet::new(&unique_prefix(), 3);
    let (_, app) = f.hosts[0].network_and_app(&[]);
    let _nss: Vec<Member> = (f.hosts.iter().enumerate())
        .map(|(i, h)| h.member(&app, "web", &format!("c{i}")))
        .collect();
    assert!(eventually(WAIT, || f.hosts[0].remote_endpoints() == 2));
    // h3 dies; the operator removes it from h1.
    f.hosts[2].stop();
    let out = f.hosts[0].cli(&["host", "remove", "h1"]);
    out.assert_error(ErrorKind::Conflict, "this agent runs on");
    f.hosts[0].cli_ok(&["host", "remove", "h3"]);
    for h in &f.hosts[..2] {
        assert!(
            eventually(WAIT, || h.remote_endpoints() == 1),
            "{} forgot h3's container",
            h.id
        );
        assert!(eventually(WAIT, || h
            .json(&["host", "list"])
            .as_array()
            .unwrap()
            .len()
            == 2));
    }
    let out = f.hosts[0].cli(&["host", "remove", "h3"]);
    out.assert_error(ErrorKind::NotFound, "not found");
}

/// `etcdctl put` into the fleet's etcd, from the underlay namespace (as
/// anyone who reaches the etcd port could); the revision of the write.
fn etcd_put(f: &Fleet, key: &str, value: &serde_json::Value) -> i64 {
    let (key, value) = (format!("/pn/{key}"), value.to_string());
    let out = f.etcdctl(&["-w", "json", "put", &key, &value]);
    assert!(
        out.status.success(),
        "etcdctl put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    reply["header"]["revision"].as_i64().unwrap()
}

fn rejected(h: &pn_tests::Host, kind: &str) -> u64 {
    h.json(&["status"])["store"]["rejected"][kind]
        .as_u64()
        .unwrap_or(0)
}

/// Records written straight into etcd that name an interface the agent did
/// not make (`eth0`) or an address outside their network are refused by
/// every agent and counted, once; the host's own interfaces are untouched.
#[test]
fn forged_records_are_refused_and_counted() {
    let mut f = Fleet::new(&unique_prefix(), 2);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let (net, app) = h1.network_and_app(&[]);
    let c1 = h1.member(&app, "web", "c1");
    assert!(eventually(WAIT, || h2.remote_endpoints() == 1));
    // An interface of h1's own that a forged record names.
    h1.ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    h1.ns.ip(&["link", "set", "eth0", "up"]);
    // Free, and inside the network's /22.
    let in_range = std::net::Ipv4Addr::from(u32::from(c1.addr) + 200);
    let record = |index: u32, host: &str, ip: std::net::Ipv4Addr, host_ifname: String| {
        serde_json::json!({
            "app": app, "type": "web", "index": index, "network": net, "ip": ip,
            "host": host, "netns": c1.name, "ifname": "pn0",
            "host_ifname": host_ifname, "created_at": 0,
        })
    };
    let key = |index: u32| pn_agent::model::ContainerKey {
        app: app.parse().unwrap(),
        ctype: "web".parse().unwrap(),
        index,
    };
    let _ = etcd_put(
        &f,
        &format!("containers/{app}/web/50"),
        &record(50, "h1", in_range, "eth0".into()),
    );
    let _ = etcd_put(
        &f,
        &format!("containers/{app}/web/51"),
        &record(
            51,
            "h2",
            "192.0.2.7".parse().unwrap(),
            key(51).host_ifname(),
        ),
    );
    for h in [h1, h2] {
        assert!(
            eventually(WAIT, || rejected(h, "host_interface") == 1
                && rejected(h, "address") == 1),
            "{}: {}",
            h.id,
            h.json(&["status"])["store"]
        );
        assert_eq!(h.container_count(), 1);
    }
    assert_eq!(h2.remote_endpoints(), 1);
    assert_eq!(h1.remote_endpoints(), 0);
    // eth0 is still there, up, with none of the agent's programs on it; the
    // only interface with programs is the real container's.
    let link = h1.ns.ip(&["-j", "link", "show", "eth0"]);
    assert!(link.contains("\"UP\""), "{link}");
    // (bpftool does not list TCX links: the agent's pins tell.)
    let pins: Vec<String> = std::fs::read_dir(h1.bpffs().join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !pins.iter().any(|p| p.starts_with("eth0")),
        "programs on eth0: {pins:?}"
    );
    assert_eq!(
        h1.json(&["status"])["datapath"]["attached_interfaces"],
        1,
        "{}",
        c1.attached
    );
    let ul0 = h1.ns.ip(&["-j", "addr", "show", "ul0"]);
    assert!(ul0.contains("192.168.100.1"), "{ul0}");
    // A resync lists them again: not counted twice. etcd stays away longer
    // than a broken watch waits to resume (5 s), so the agent lists again.
    f.etcd.stop();
    std::thread::sleep(Duration::from_secs(6));
    f.etcd.restart();
    let h1 = &f.hosts[0];
    let h1_id = h1.id.clone();
    assert!(eventually(WAIT, || h1.log().contains("resynchronising")));
    // The agent watches again only after listing again: once it has applied
    // a later write, the listing is behind it.
    let rev = etcd_put(&f, "probe", &serde_json::json!("after the resync"));
    assert!(eventually(
        WAIT,
        || h1.json(&["status"])["store"]["revision"]
            .as_i64()
            .unwrap_or(0)
            >= rev
    ));
    assert_eq!(rejected(h1, "host_interface"), 1, "{h1_id}");
    assert_eq!(rejected(h1, "address"), 1, "{h1_id}");
    assert_eq!(
        h1.log()
            .matches(&format!("containers/{app}/web/50 refused"))
            .count(),
        1,
        "logged once"
    );
    // The real container still works and is still listed.
    assert_eq!(h1.container_count(), 1);
    assert!(h1.ns.ip(&["link", "show", "eth0"]).contains("eth0"));
}

/// Peer ids come from the store: distinct, non-zero, kept across restarts.
#[test]
fn hosts_get_distinct_peer_ids_that_survive_a_restart() {
    let mut f = Fleet::new(&unique_prefix(), 3);
    let ids = |f: &Fleet| -> Vec<u64> {
        let out = f.etcdctl(&["get", "--prefix", "--print-value-only", "/pn/hosts/"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["peer_id"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let before = ids(&f);
    assert_eq!(before.len(), 3);
    assert_eq!(
        before.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{before:?}"
    );
    assert!(!before.contains(&0));
    f.hosts[1].restart();
    assert_eq!(ids(&f), before);
}
