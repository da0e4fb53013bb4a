//! The `pn` CNI plugin: run by hand as a runtime runs it (the spec's
//! commands, idempotence, error objects, the reaper), then by a real
//! runtime, Debian's podman with its CNI backend.

use std::{net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace,
    cni::{Podman, plugin_conf, run_plugin},
    eventually, net, unique_prefix,
};

const WAIT: Duration = Duration::from_secs(10);

fn containers(h: &Host, app: &str) -> Vec<serde_json::Value> {
    h.json(&["container", "list", "--app", app])
        .as_array()
        .unwrap()
        .clone()
}

/// The agent's host-side interfaces on `h`.
fn host_links(h: &Host) -> usize {
    h.ns.ip(&["-o", "link", "show"])
        .lines()
        .filter(|l| l.contains(": pnh"))
        .count()
}

fn conf_for(h: &Host, app: &str, ctype: &str) -> String {
    let list: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["cni-config", "--app", app, "--type", ctype])).unwrap();
    plugin_conf(&list)
}

#[test]
fn the_plugin_follows_the_spec_and_is_idempotent() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let (net_id, app) = h.network_and_app(&["--cidr", "10.240.8.0/24"]);
    let list: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["cni-config", "--app", &app, "--type", "web"])).unwrap();
    assert_eq!(list["cniVersion"], "1.0.0");
    assert_eq!(list["name"], format!("{app}-web"));
    assert_eq!(list["plugins"][0]["type"], "pn");
    assert_eq!(
        list["plugins"][0]["agentSocket"],
        h.api_socket().display().to_string()
    );
    let conf = plugin_conf(&list);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let ns_path = c1.path().display().to_string();
    let env = |id: &'static str, ns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", ns.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x".to_string()),
        ]
    };
    let refs = |v: &[(&'static str, String)]| -> Vec<(&'static str, String)> { v.to_vec() };
    let run = |cmd: &str, e: &[(&'static str, String)], stdin: &str| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_plugin(cmd, &e, stdin)
    };

    let v = run("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(
        v.json()["supportedVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );

    let add = run("ADD", &refs(&env("c0ffee01", &ns_path)), &conf);
    assert_eq!(add.code, 0, "{add:?}\n{}", h.log());
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], ns_path.as_str());
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert_eq!(mac.len(), 17, "{r}");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["ips"][0]["address"], "10.240.8.1/32");
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r["routes"][0]["dst"], "10.240.0.0/12");
    assert_eq!(r["routes"][0]["gw"], "169.254.1.1");
    assert_eq!(r["dns"]["nameservers"][0], "169.254.1.1");
    assert_eq!(
        r["dns"]["search"][0],
        format!("{net_id}.private-network.internal")
    );
    // What the result says is what the namespace has.
    let link = c1.ip(&["-o", "addr", "show", "eth0"]);
    assert!(link.contains("10.240.8.1/32"), "{link}");
    let info = c1.ip(&["-o", "link", "show", "eth0"]);
    assert!(info.contains(&mac), "{info}");

    // ADD again for the same container: the same attachment.
    let again = run("ADD", &refs(&env("c0ffee01", &ns_path)), &conf);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json(), r);
    assert_eq!(containers(&h, &app).len(), 1);

    // CHECK with the result the runtime kept: fine, and silent.
    let mut with_prev: serde_json::Value = serde_json::from_str(&conf).unwrap();
    with_prev["prevResult"] = r.clone();
    let check = run(
        "CHECK",
        &refs(&env("c0ffee01", &ns_path)),
        &with_prev.to_string(),
    );
    assert_eq!((check.code, check.stdout.as_str()), (0, ""), "{check:?}");
    // Someone removed the address: CHECK says so.
    c1.ip(&["addr", "del", "10.240.8.1/32", "dev", "eth0"]);
    let broken = run(
        "CHECK",
        &refs(&env("c0ffee01", &ns_path)),
        &with_prev.to_string(),
    );
    assert_eq!(broken.error_code(), 999);
    assert!(broken.stdout.contains("10.240.8.1"), "{broken:?}");

    // An index from CNI_ARGS.
    let c2 = Namespace::new(&format!("{p}-c2"));
    let mut e2 = env("c0ffee02", &c2.path().display().to_string());
    e2[3].1 = "IgnoreUnknown=1;PN_INDEX=5".into();
    let add2 = run("ADD", &e2, &conf);
    assert_eq!(add2.code, 0, "{add2:?}");
    let listed = containers(&h, &app);
    assert!(listed.iter().any(|c| c["index"] == 5), "{listed:?}");

    // DEL: detached, address free; DEL again and DEL of a stranger: fine.
    let del = run("DEL", &refs(&env("c0ffee01", &ns_path)), &conf);
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
    assert_eq!(containers(&h, &app).len(), 1);
    assert!(
        c1.exec(&["ip", "link", "show", "eth0"]).status.code() != Some(0),
        "the interface is gone"
    );
    for id in ["c0ffee01", "never-added"] {
        let d = run("DEL", &refs(&env(id, &ns_path)), &conf);
        assert_eq!(d.code, 0, "{id}: {d:?}");
    }
    // DEL without a namespace (the runtime may have removed it already).
    let mut no_ns = refs(&env("c0ffee02", ""));
    no_ns.remove(1);
    assert_eq!(run("DEL", &no_ns, &conf).code, 0);
    assert!(containers(&h, &app).is_empty());
    let gone = run("CHECK", &refs(&env("c0ffee01", &ns_path)), &conf);
    assert_eq!(gone.error_code(), 999, "{gone:?}");

    // A new ADD takes the freed address.
    let add3 = run("ADD", &refs(&env("c0ffee03", &ns_path)), &conf);
    assert_eq!(add3.json()["ips"][0]["address"], "10.240.8.1/32");
    assert_eq!(run("DEL", &refs(&env("c0ffee03", &ns_path)), &conf).code, 0);
    assert_eq!(host_links(&h), 0);
}

#[test]
fn mistakes_are_cni_error_objects_with_the_spec_codes() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let (_, app) = h.network_and_app(&[]);
    let conf = conf_for(&h, &app, "web");
    let c1 = Namespace::new(&format!("{p}-c1"));
    let ns = c1.path().display().to_string();
    let full = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    // 4: the environment.
    assert_eq!(run_plugin("ADD", &full[1..], &conf).error_code(), 4);
    assert_eq!(run_plugin("ADD", &full[..2], &conf).error_code(), 4);
    let missing_ns = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/pn-no-such-namespace"),
        ("CNI_IFNAME", "eth0"),
    ];
    let e = run_plugin("ADD", &missing_ns, &conf);
    assert_eq!(e.error_code(), 4);
    assert!(e.stdout.contains("pn-no-such-namespace"), "{e:?}");
    assert_eq!(run_plugin("FROB", &full, &conf).error_code(), 4);
    // 6: not JSON; 7: the configuration; 1: another spec version.
    assert_eq!(run_plugin("ADD", &full, "{nope").error_code(), 6);
    let unknown_app = conf.replace(&app, "ap-00000000-0000-4000-8000-000000000000");
    let e = run_plugin("ADD", &full, &unknown_app);
    assert_eq!(e.error_code(), 7);
    assert!(e.stdout.contains("not found"), "{e:?}");
    let no_type = conf.replace("containerType", "kind");
    assert_eq!(run_plugin("ADD", &full, &no_type).error_code(), 7);
    let old = conf.replace("1.0.0", "0.4.0");
    let e = run_plugin("ADD", &full, &old);
    assert_eq!(e.error_code(), 1);
    assert_eq!(e.json()["cniVersion"], "0.4.0");
    // STATUS and GC are 1.1.0's.
    assert_eq!(run_plugin("STATUS", &[], &conf).error_code(), 1);
    assert_eq!(run_plugin("GC", &[], &conf).error_code(), 1);
    // 11: the agent is not there; try again later.
    let away = conf.replace(
        &h.api_socket().display().to_string(),
        "/run/pn-no-such-agent.sock",
    );
    let e = run_plugin("ADD", &full, &away);
    assert_eq!(e.error_code(), 11);
    assert!(e.stdout.contains("agent not running"), "{e:?}");
    assert_eq!(run_plugin("DEL", &full, &away).error_code(), 11);
    // STATUS says so with its own code.
    let away11 = away.replace("1.0.0", "1.1.0");
    assert_eq!(run_plugin("STATUS", &[], &away11).error_code(), 50);
    // Nothing was attached by any of it.
    assert!(containers(&h, &app).is_empty());
    assert_eq!(host_links(&h), 0);
}

/// Spec 1.1.0: STATUS says whether ADD can work; GC detaches what this
/// network attached and the runtime no longer lists, and nothing else.
#[test]
fn status_and_gc_of_spec_1_1() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let (_, app) = h.network_and_app(&[]);
    let conf = conf_for(&h, &app, "web").replace("1.0.0", "1.1.0");
    let status = run_plugin("STATUS", &[], &conf);
    assert_eq!((status.code, status.stdout.as_str()), (0, ""), "{status:?}");
    // Two containers through this network, one through another.
    let other: serde_json::Value = serde_json::from_str(&h.cli_ok(&[
        "cni-config",
        "--app",
        &app,
        "--type",
        "worker",
        "--name",
        "other",
    ]))
    .unwrap();
    let other = plugin_conf(&other).replace("1.0.0", "1.1.0");
    let nss: Vec<Namespace> = (0..3)
        .map(|i| Namespace::new(&format!("{p}-c{i}")))
        .collect();
    for (i, (id, c)) in [("keep", &conf), ("stale", &conf), ("theirs", &other)]
        .into_iter()
        .enumerate()
    {
        let ns = nss[i].path().display().to_string();
        let env = [
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let add = run_plugin("ADD", &env, c);
        assert_eq!(add.code, 0, "{add:?}");
        assert_eq!(add.json()["cniVersion"], "1.1.0");
    }
    assert_eq!(containers(&h, &app).len(), 3);
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = run_plugin("GC", &[], &gc.to_string());
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    let left: Vec<String> = containers(&h, &app)
        .iter()
        .map(|c| c["netns"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        !left.contains(&nss[1].path().display().to_string()),
        "{left:?}"
    );
    assert_eq!(host_links(&h), 2);
}

/// A runtime that deletes a namespace without DEL (it crashed, or forgot):
/// the agent notices the interface is gone and frees the address within
/// seconds.
#[test]
fn a_vanished_namespace_is_reaped_within_seconds() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let (_, app) = h.network_and_app(&["--cidr", "10.240.9.0/24"]);
    let conf = conf_for(&h, &app, "worker");
    let c1 = Namespace::new(&format!("{p}-c1"));
    let ns = c1.path().display().to_string();
    let env = [
        ("CNI_CONTAINERID", "doomed"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let add = run_plugin("ADD", &env, &conf);
    assert_eq!(add.code, 0, "{add:?}");
    drop(c1);
    let start = std::time::Instant::now();
    assert!(
        eventually(WAIT, || containers(&h, &app).is_empty()),
        "not reaped:\n{}",
        h.log()
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "reaped after {took:?}");
    assert_eq!(host_links(&h), 0);
    // Its address is free again.
    let c2 = Namespace::new(&format!("{p}-c2"));
    let got = h.attach(&app, "worker", &c2);
    assert_eq!(got["ip"], "10.240.9.1");
    // DEL of the reaped one, later, is still fine.
    assert_eq!(run_plugin("DEL", &env, &conf).code, 0);
}

/// Two podman containers of one network talk over TCP and UDP and find
/// each other by name; a container of another network reaches neither;
/// `podman rm -f` frees the address.
#[test]
fn podman_containers_of_a_network_talk_and_strangers_cannot() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let net_a = h.create_network(&[]);
    let net_b = h.create_network(&[]);
    let (web, worker, other) = (
        h.create_app(&net_a),
        h.create_app(&net_a),
        h.create_app(&net_b),
    );
    let pm = Podman::new(&h);
    pm.add_network(&h, "pn-web", &web, "web");
    pm.add_network(&h, "pn-worker", &worker, "worker");
    pm.add_network(&h, "pn-other", &other, "web");
    pm.start(
        "srv",
        "pn-web",
        &["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    pm.start("cli", "pn-worker", &["/bin/sleep", "3600"]);
    pm.start("stranger", "pn-other", &["/bin/sleep", "3600"]);
    let srv = &containers(&h, &web)[0];
    let srv_ip = srv["ip"].as_str().unwrap().to_string();
    assert_eq!(srv["interface"], "eth0");
    assert!(srv["netns"].as_str().unwrap().starts_with("/run/netns/"));

    // The runtime wrote the container's resolv.conf from the result.
    let resolv = pm.exec("cli", "cat /etc/resolv.conf");
    let resolv = String::from_utf8_lossy(&resolv.stdout).to_string();
    assert!(resolv.contains("nameserver 169.254.1.1"), "{resolv}");
    assert!(
        resolv.contains(&format!("search {net_a}.private-network.internal")),
        "{resolv}"
    );
    // Dual-stack, the IPv4 server only: podman refuses a zoned link-local
    // one and cannot use an unzoned one (`pn-cni` `reply`). It answers AAAA.
    let srv_ip6 = srv["ip6"].as_str().expect("a dual-stack container");
    assert!(!resolv.contains("fe80::"), "{resolv}");
    // By name (busybox's nslookup skips the search list: the full name;
    // it asks AAAA too: its IPv4 answer), then TCP to what it resolved.
    let name = format!("1.web.{web}.{net_a}.private-network.internal");
    let script = format!(
        "IP=$(nslookup {name} | awk '/^Address: / && $2 !~ /:/ {{print $2}}' | tail -1); echo \"ip=$IP\"; \
         printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \"$IP\" 8080"
    );
    let out = pm.exec("cli", &script);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("ip={srv_ip}")), "{text}");
    assert!(text.contains("hello from pn"), "{text} {out:?}");
    let out = pm.exec("cli", &format!("nslookup -type=AAAA {name}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(srv_ip6), "{text}");
    // UDP (and TCP) between the two containers' namespaces.
    let srv_ns = pm.netns("srv");
    let cli_ns = pm.netns("cli");
    let stranger_ns = pm.netns("stranger");
    let _udp = net::udp_echo_server(&srv_ns, 9001);
    let _tcp = net::tcp_echo_server(&srv_ns, 9000);
    let dst_ip: std::net::Ipv4Addr = srv_ip.parse().unwrap();
    let got = net::udp_echo(
        &cli_ns,
        SocketAddr::from((dst_ip, 9001)),
        b"over udp",
        Duration::from_secs(3),
    )
    .expect("UDP between members");
    assert_eq!(got, b"over udp");
    net::tcp_echo(
        &cli_ns,
        SocketAddr::from((dst_ip, 9000)),
        b"over tcp",
        Duration::from_secs(3),
    )
    .expect("TCP between members");

    // The stranger reaches nothing and learns no name.
    let out = pm.exec(
        "stranger",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {srv_ip} 8080; nslookup {name}"),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("hello from pn"), "{text}");
    assert!(!text.contains(&format!("Address: {srv_ip}")), "{text}");
    assert!(
        net::udp_echo(
            &stranger_ns,
            SocketAddr::from((dst_ip, 9001)),
            b"x",
            Duration::from_millis(800)
        )
        .is_err()
    );
    assert!(h.packets(&other, "web-1", "policy_denied") > 0);

    // `podman rm -f`: detached, address free (the next one takes it).
    let before = host_links(&h);
    pm.ok(&["rm", "--force", "--time", "0", "srv"]);
    assert!(containers(&h, &web).is_empty());
    assert_eq!(host_links(&h), before - 1);
    pm.start("srv2", "pn-web", &["/bin/sleep", "3600"]);
    assert_eq!(containers(&h, &web)[0]["ip"], srv_ip.as_str());
}

/// The plugin is killed after the agent attached but before podman read
/// the answer: podman's failed run leaves nothing half-made, and the next
/// run gets the same address.
#[test]
fn a_plugin_killed_mid_add_leaves_nothing_behind() {
    let p = unique_prefix();
    let h = Host::start(&p, "h1");
    let (_, app) = h.network_and_app(&["--cidr", "10.240.10.0/24"]);
    let pm = Podman::new(&h);
    pm.add_network(&h, "pn-web", &app, "web");
    pm.crash_plugin_after_add();
    let args = pm.run_args("pn-web", &["--rm"], &["/bin/true"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pm.cmd(&refs);
    assert!(!out.status.success(), "the run should fail: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("killed"),
        "{out:?}"
    );
    assert!(
        eventually(WAIT, || containers(&h, &app).is_empty()
            && host_links(&h) == 0),
        "left behind: {:?}\n{}",
        containers(&h, &app),
        h.log()
    );
    // The real plugin again: a clean run, on the lowest address.
    pm.restore_plugin();
    pm.start("ok", "pn-web", &["/bin/sleep", "3600"]);
    assert_eq!(containers(&h, &app)[0]["ip"], "10.240.10.1");
}
