//! Names: DNS for private-network.internal from inside containers, with dig
//! and with a Rust resolver, following membership changes.

use std::{net::Ipv4Addr, time::Duration};

use pn_tests::{Host, Namespace, eventually, metric_value, net, scenario::Member, unique_prefix};

fn dig(ns: &Namespace, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    let out = ns.exec(&full);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(ns: &Namespace, name: &str, qtype: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(ns, &["+short", name, qtype])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn status(ns: &Namespace, name: &str, qtype: &str) -> String {
    let out = dig(ns, &[name, qtype]);
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| format!("no status in {out}"))
}

struct Two {
    host: Host,
    net_a: String,
    app: String,
    c: Vec<Member>,
    other: Member,
    net_b: String,
    app_b: String,
}

/// Network A: app with web-1, web-2 and worker-1; network B: app_b with web-1.
fn setup(extra: &[&str]) -> Two {
    let host = Host::start_with(&unique_prefix(), "h1", extra);
    let (net_a, app) = host.network_and_app(&[]);
    let (net_b, app_b) = host.network_and_app(&[]);
    let c = ["web", "web", "worker"]
        .iter()
        .enumerate()
        .map(|(i, t)| host.member(&app, t, &format!("c{i}")))
        .collect();
    Two {
        c,
        other: host.member(&app_b, "web", "b"),
        host,
        net_a,
        app,
        net_b,
        app_b,
    }
}

const ZONE: &str = "private-network.internal";

#[test]
fn every_name_form_resolves_from_a_container() {
    let t = setup(&[]);
    let base = format!("{}.{}.{ZONE}", t.app, t.net_a);
    let mut webs = vec![t.c[0].addr.to_string(), t.c[1].addr.to_string()];
    webs.sort();
    assert_eq!(
        short(&t.c[2], &format!("{base}."), "A"),
        webs,
        "app name → web containers"
    );
    assert_eq!(short(&t.c[2], &format!("web.{base}"), "A"), webs);
    assert_eq!(
        short(&t.c[0], &format!("2.web.{base}"), "A"),
        vec![t.c[1].addr.to_string()]
    );
    assert_eq!(
        short(&t.c[0], &format!("worker.{base}"), "A"),
        vec![t.c[2].addr.to_string()]
    );
    assert_eq!(
        short(&t.c[0], &format!("1.WORKER.{}", base.to_uppercase()), "A"),
        vec![t.c[2].addr.to_string()]
    );
    // The search domain of resolv.conf: short names relative to the network.
    assert_eq!(
        short(&t.c[0], &format!("1.worker.{}", t.app), "A").len(),
        0,
        "dig does not search by default"
    );
    let out = dig(
        &t.c[0],
        &["+search", "+short", &format!("1.worker.{}", t.app)],
    );
    assert_eq!(out.trim(), t.c[2].addr.to_string());
    // TTL 5 s.
    let ans = dig(&t.c[0], &["+noall", "+answer", &format!("1.web.{base}")]);
    assert!(ans.split_whitespace().nth(1) == Some("5"), "{ans}");
    // domain-names lists them all, env names the container.
    let names = t.host.cli_ok(&["domain-names", "--app", &t.app]);
    let lines: Vec<&str> = names.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{base}."),
            format!("web.{base}."),
            format!("1.web.{base}."),
            format!("2.web.{base}."),
            format!("worker.{base}."),
            format!("1.worker.{base}."),
        ]
    );
    let env = t
        .host
        .cli_ok(&["env", "--app", &t.app, "--type", "worker", "--index", "1"]);
    let ip6 = t.c[2].attached["ip6"].as_str().expect("an IPv6 address");
    assert_eq!(
        env,
        format!(
            "PN_NETWORK_ID={}\nPN_APP_ID={}\nPN_CONTAINER=worker-1\nPN_DOMAIN={base}\nPN_IP6={ip6}\n",
            t.net_a, t.app
        )
    );
}

#[test]
fn answers_rotate_and_membership_never_leaks() {
    let t = setup(&[]);
    let name = format!("web.{}.{}.{ZONE}", t.app, t.net_a);
    let firsts: std::collections::BTreeSet<String> = (0..4)
        .map(|_| {
            dig(&t.c[2], &["+short", &name])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        firsts.len(),
        2,
        "both web containers come first in turn: {firsts:?}"
    );
    // Network B asks for A's names: REFUSED, whether they exist or not.
    assert_eq!(status(&t.other, &name, "A"), "REFUSED");
    assert_eq!(
        status(
            &t.other,
            &format!("9.web.{}.{}.{ZONE}", t.app, t.net_a),
            "A"
        ),
        "REFUSED"
    );
    // B's own name works for B, and is refused to A.
    let b_name = format!("{}.{}.{ZONE}", t.app_b, t.net_b);
    assert_eq!(short(&t.other, &b_name, "A").len(), 1);
    assert_eq!(status(&t.c[0], &b_name, "A"), "REFUSED");
    // Unknown names of one's own network: NXDOMAIN; other types: NOERROR, empty.
    assert_eq!(
        status(&t.c[0], &format!("db.{}.{}.{ZONE}", t.app, t.net_a), "A"),
        "NXDOMAIN"
    );
    assert_eq!(
        status(&t.c[0], &format!("0.web.{}.{}.{ZONE}", t.app, t.net_a), "A"),
        "NXDOMAIN"
    );
    assert_eq!(status(&t.c[0], &name, "TXT"), "NOERROR");
    assert!(short(&t.c[0], &name, "TXT").is_empty());
    let m = t.host.metrics();
    assert!(
        metric_value(&m, "pn_dns_queries_total", &[("outcome", "refused")]) >= 3,
        "{m}"
    );
    assert!(metric_value(&m, "pn_dns_queries_total", &[("outcome", "nxdomain")]) >= 2);
}

#[test]
fn answers_follow_scaling_within_one_ttl() {
    let t = setup(&[]);
    let name = format!("{}.{}.{ZONE}", t.app, t.net_a);
    assert_eq!(short(&t.c[2], &name, "A").len(), 2);
    let _c3 = t.host.member(&t.app, "web", "n3");
    assert!(eventually(Duration::from_secs(5), || short(
        &t.c[2], &name, "A"
    )
    .len()
        == 3));
    t.host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &t.app,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    t.host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &t.app,
        "--type",
        "web",
        "--index",
        "2",
    ]);
    t.host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &t.app,
        "--type",
        "web",
        "--index",
        "3",
    ]);
    assert!(eventually(Duration::from_secs(5), || status(
        &t.c[2], &name, "A"
    ) == "NXDOMAIN"));
}

#[test]
fn the_world_is_forwarded_and_garbage_is_counted() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    // The host's own resolver, as the agent would find in resolv.conf.
    let _up = net::fake_dns_upstream(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44));
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let (net_a, app) = host.network_and_app(&[]);
    let c1 = host.member(&app, "web", "c1");
    assert_eq!(
        short(&c1, "example.com", "A"),
        vec!["192.0.2.44".to_string()]
    );
    // Garbage from a container: no crash, counted, service goes on.
    for bytes in [vec![1u8, 2, 3], vec![0u8; 12], {
        let mut v = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        v.extend_from_slice(&[7, b'e', b'x']);
        v
    }] {
        net::send_raw_ipv4(
            &c1,
            net::udp_packet(c1.addr, 40000, Ipv4Addr::new(169, 254, 1, 1), 53, &bytes),
        )
        .unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(
            &host.metrics(),
            "pn_dns_queries_total",
            &[("outcome", "malformed")],
        ) >= 3
    }));
    let base = format!("{app}.{net_a}.{ZONE}");
    assert_eq!(short(&c1, &base, "A").len(), 1);
    assert!(
        metric_value(
            &host.metrics(),
            "pn_dns_queries_total",
            &[("outcome", "forwarded")]
        ) >= 1
    );
    assert!(host.cli_ok(&["status"]).contains("upstream 127.0.0.1:5353"));
}

/// A sealed network (`--egress deny`) cannot tunnel out through the
/// resolver: names of the world get REFUSED, over UDP and TCP, even when
/// cached, and never reach the upstream; an open network still resolves
/// them, and opening the sealed one gives them back.
#[test]
fn a_sealed_network_is_refused_the_world_and_its_upstream() {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let (_up, count) = net::counting_dns_upstream(&host.ns, 5353, Ipv4Addr::new(192, 0, 2, 44));
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let asked = || count.load(std::sync::atomic::Ordering::SeqCst);
    let open = host.create_network(&[]);
    let sealed = host.create_network(&["--egress", "deny"]);
    let app_open = host.create_app(&open);
    let app_sealed = host.create_app(&sealed);
    let c_open = Namespace::new(&format!("{p}-o"));
    let c_sealed = Namespace::new(&format!("{p}-s"));
    host.attach(&app_open, "web", &c_open);
    let ip = host.attach(&app_sealed, "web", &c_sealed)["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        status(&c_sealed, "tunnel-data.example.com", "TXT"),
        "REFUSED"
    );
    assert_eq!(asked(), 0, "a sealed network's name reached the upstream");
    assert_eq!(
        short(&c_open, "example.com", "A"),
        vec!["192.0.2.44".to_string()]
    );
    assert_eq!(asked(), 1);
    // Cached now: still refused to the sealed network, over UDP and TCP.
    assert_eq!(status(&c_sealed, "example.com", "A"), "REFUSED");
    let tcp = dig(&c_sealed, &["+tcp", "example.com", "A"]);
    assert!(tcp.contains("status: REFUSED"), "{tcp}");
    assert_eq!(asked(), 1);
    let body = host.metrics();
    assert_eq!(
        metric_value(&body, "pn_dns_queries_total", &[("outcome", "sealed")]),
        3
    );
    assert_eq!(
        metric_value(&body, "pn_dns_queries_total", &[("outcome", "cached")]),
        0
    );
    // Its own names still resolve.
    assert_eq!(
        short(&c_sealed, &format!("{app_sealed}.{sealed}.{ZONE}"), "A"),
        vec![ip]
    );
    host.cli_ok(&["network", "update", &sealed, "--egress", "allow"]);
    assert!(eventually(Duration::from_secs(5), || {
        status(&c_sealed, "opened.example.com", "A") == "NOERROR"
    }));
    assert_eq!(asked(), 2);
}

#[test]
fn a_rust_resolver_in_a_container_gets_the_same_answers() {
    let t = setup(&[]);
    let name = format!("worker.{}.{}.{ZONE}.", t.app, t.net_a);
    let mut want = vec![std::net::IpAddr::V4(t.c[2].addr)];
    // lookup_ip asks A and AAAA: the IPv6 address too.
    want.extend(
        t.c[2].attached["ip6"]
            .as_str()
            .map(|s| s.parse::<std::net::IpAddr>().unwrap()),
    );
    let got = t.c[0].run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use hickory_resolver::{
                Resolver,
                config::{NameServerConfig, ResolverConfig},
                net::runtime::TokioRuntimeProvider,
            };
            let cfg = ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                Ipv4Addr::new(169, 254, 1, 1).into(),
            )]);
            let r = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default())
                .build()
                .unwrap();
            let mut ips: Vec<std::net::IpAddr> = r.lookup_ip(name).await.unwrap().iter().collect();
            ips.sort();
            ips
        })
    });
    assert_eq!(got, want);
}
