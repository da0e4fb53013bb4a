//! IPv6 addresses and names on one host: every container an address of its
//! network's /64 (`ip6` in the JSON), never twice, freed on detach; AAAA
//! answers over IPv4 to the agent's DNS, and the DNS over IPv6 on the
//! gateway `fe80::1`; `--ipv6 off` gives and answers none. (Traffic over IPv6 is the data plane's tests' business.)

use std::{collections::BTreeSet, net::Ipv6Addr};

use pn_tests::{Host, Namespace, scenario::Member, unique_prefix};

const ZONE: &str = "private-network.internal";

fn ip6_of(attached: &serde_json::Value) -> Option<Ipv6Addr> {
    attached["ip6"].as_str().map(|s| s.parse().unwrap())
}

/// A network's IPv6 range, as `network list` spells it.
fn cidr6_of(host: &Host, net: &str) -> Option<String> {
    host.json(&["network", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == net)
        .and_then(|n| n["cidr6"].as_str().map(str::to_string))
}

/// Whether `ip` lies in the /64 `cidr6`.
fn in_64(ip: Ipv6Addr, cidr6: &str) -> bool {
    let (net, len) = cidr6.split_once('/').unwrap();
    assert_eq!(len, "64");
    ip.segments()[..4] == net.parse::<Ipv6Addr>().unwrap().segments()[..4]
}

fn dig(ns: &Namespace, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&ns.exec(&full).stdout).into_owned()
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

fn detach(host: &Host, app: &str, ctype: &str, index: &str) {
    host.cli_ok(&[
        "container",
        "detach",
        "--app",
        app,
        "--type",
        ctype,
        "--index",
        index,
    ]);
}

#[test]
fn containers_get_unique_ipv6_addresses_freed_on_detach() {
    let host = Host::start_with(&unique_prefix(), "h1", &["--pool6", "fd0e:1:2::/48"]);
    let (net, app) = host.network_and_app(&[]);
    let cidr6 = cidr6_of(&host, &net).expect("a /64 for the network");
    assert_eq!(cidr6, "fd0e:1:2::/64");
    // An explicit /64, and one that is taken.
    let other = host.create_network(&["--cidr6", "fd0e:1:2:ff::/64"]);
    assert_eq!(cidr6_of(&host, &other).as_deref(), Some("fd0e:1:2:ff::/64"));
    let taken = host.cli(&["network", "create", "--cidr6", "fd0e:1:2:ff::/64"]);
    assert_ne!(taken.code, 0);
    assert!(
        taken.stderr.contains("fd0e:1:2:ff::/64"),
        "{}",
        taken.stderr
    );

    let members: Vec<Member> = (0..12)
        .map(|i| host.member(&app, "worker", &format!("c{i}")))
        .collect();
    let mut seen = BTreeSet::new();
    for m in &members {
        let ip6 = ip6_of(&m.attached).unwrap_or_else(|| panic!("no ip6 in {}", m.attached));
        assert!(in_64(ip6, &cidr6), "{ip6} outside {cidr6}");
        assert!(seen.insert(ip6), "{ip6} given twice");
    }
    // The list says the same, in JSON and in the table.
    let listed: BTreeSet<Ipv6Addr> = host
        .json(&["container", "list", "--app", &app])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(ip6_of)
        .collect();
    assert_eq!(listed, seen);
    let table = host.cli_ok(&["container", "list", "--app", &app]);
    assert!(table.lines().next().unwrap().contains("IP6"), "{table}");
    assert!(table.contains(&ip6_of(&members[3].attached).unwrap().to_string()));
    let env = host.cli_ok(&["env", "--app", &app, "--type", "worker", "--index", "1"]);
    let first = ip6_of(&members[0].attached).unwrap();
    assert!(env.contains(&format!("PN_IP6={first}\n")), "{env}");

    // Detached: its address is free, and the next attach takes it.
    let freed = ip6_of(&members[4].attached).unwrap();
    detach(&host, &app, "worker", "5");
    let again = host.member(&app, "worker", "again");
    assert_eq!(ip6_of(&again.attached), Some(freed));
}

#[test]
fn aaaa_answers_the_ipv6_addresses_over_ipv4() {
    let host = Host::start(&unique_prefix(), "h1");
    let (net, app) = host.network_and_app(&[]);
    let (net_b, app_b) = host.network_and_app(&["--egress", "deny"]);
    let webs: Vec<Member> = (0..2)
        .map(|i| host.member(&app, "web", &format!("w{i}")))
        .collect();
    let worker = host.member(&app, "worker", "k");
    let sealed = host.member(&app_b, "web", "s");
    let base = format!("{app}.{net}.{ZONE}");
    let mut want: Vec<String> = webs
        .iter()
        .map(|w| ip6_of(&w.attached).unwrap().to_string())
        .collect();
    want.sort();
    // The app name and the type name: every web container's, both orders.
    assert_eq!(short(&worker, &format!("{base}."), "AAAA"), want);
    assert_eq!(short(&worker, &format!("web.{base}."), "AAAA"), want);
    let firsts: BTreeSet<String> = (0..4)
        .map(|_| dig(&worker, &["+short", &format!("{base}."), "AAAA"]))
        .filter_map(|o| o.lines().next().map(str::to_string))
        .collect();
    assert_eq!(firsts.len(), 2, "both come first in turn: {firsts:?}");
    assert_eq!(
        short(&webs[0], &format!("1.worker.{base}."), "AAAA"),
        vec![ip6_of(&worker.attached).unwrap().to_string()]
    );
    // A answers IPv4 only, as before.
    assert_eq!(
        short(&webs[0], &format!("1.worker.{base}."), "A"),
        vec![worker.addr.to_string()]
    );
    // The rules of A: other networks REFUSED, unknown names NXDOMAIN.
    assert_eq!(status(&sealed, &format!("{base}."), "AAAA"), "REFUSED");
    assert_eq!(status(&worker, &format!("db.{base}."), "AAAA"), "NXDOMAIN");
    // A sealed network's own names answer; the world stays refused.
    let own = format!("{app_b}.{net_b}.{ZONE}.");
    assert_eq!(
        short(&sealed, &own, "AAAA"),
        vec![ip6_of(&sealed.attached).unwrap().to_string()]
    );
    assert_eq!(status(&sealed, "example.com.", "AAAA"), "REFUSED");
    // Detached: gone from the answers.
    detach(&host, &app, "web", "2");
    assert!(pn_tests::eventually(
        std::time::Duration::from_secs(10),
        || { short(&worker, &format!("{base}."), "AAAA").len() == 1 }
    ));
}

/// The agent's DNS on the gateway's IPv6 address (`fe80::1` on the
/// container's link), over UDP and TCP: the same answers as over IPv4, and
/// another network's container refused as over IPv4. The container's
/// resolv.conf lists it after the IPv4 one.
#[test]
fn the_gateway_answers_over_ipv6_as_over_ipv4() {
    let host = Host::start(&unique_prefix(), "h1");
    let (net, app) = host.network_and_app(&[]);
    let (_, app_b) = host.network_and_app(&[]);
    let web = host.member(&app, "web", "w");
    let worker = host.member(&app, "worker", "k");
    let stranger = host.member(&app_b, "web", "s");
    let name = format!("1.web.{app}.{net}.{ZONE}.");
    let over6 = |ns: &Namespace, extra: &[&str], qtype: &str| {
        let mut args = vec!["@fe80::1%pn0", "+short"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&name, qtype]);
        dig(ns, &args).trim().to_string()
    };
    let ip6 = ip6_of(&web.attached).unwrap().to_string();
    for transport in [&[][..], &["+tcp"][..]] {
        assert_eq!(over6(&worker, transport, "AAAA"), ip6, "{transport:?}");
        assert_eq!(
            over6(&worker, transport, "A"),
            web.addr.to_string(),
            "{transport:?}"
        );
        let refused = dig(
            &stranger,
            &[&["@fe80::1%pn0", &name, "A"], transport].concat(),
        );
        assert!(
            refused.contains("status: REFUSED"),
            "{transport:?}: {refused}"
        );
    }
    // Queries left from the container's own address, which its program
    // takes (never for a spoofed one).
    assert_eq!(host.packets(&app, "worker-1", "spoofed_source"), 0);
    assert!(host.packets(&app, "worker-1", "gateway") > 0);
    let conf = worker.exec(&["cat", "/etc/resolv.conf"]);
    let conf = String::from_utf8_lossy(&conf.stdout);
    let servers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(servers, ["169.254.1.1", "fe80::1%pn0"], "{conf}");
}

#[test]
fn ipv6_off_gives_and_answers_none() {
    let host = Host::start_with(&unique_prefix(), "h1", &["--ipv6", "off"]);
    let (net, app) = host.network_and_app(&[]);
    assert_eq!(cidr6_of(&host, &net), None);
    let refused = host.cli(&["network", "create", "--cidr6", "fd0e:1:2:3::/64"]);
    assert_ne!(refused.code, 0, "--cidr6 with IPv6 off");
    let a = host.member(&app, "web", "a");
    let b = host.member(&app, "web", "b");
    assert!(a.attached["ip6"].is_null(), "{}", a.attached);
    let name = format!("{app}.{net}.{ZONE}.");
    assert_eq!(short(&b, &name, "A").len(), 2);
    assert_eq!(status(&b, &name, "AAAA"), "NOERROR");
    assert!(short(&b, &name, "AAAA").is_empty());
    let env = host.cli_ok(&["env", "--app", &app, "--type", "web", "--index", "1"]);
    assert!(!env.contains("PN_IP6"), "{env}");
}

/// An upgrade: a host that ran without IPv6 (records with no range and no
/// address) restarts with it on: its network gains a /64 and its running
/// containers an address each, answered by AAAA, without a new attach;
/// back off, they give them back.
#[test]
fn existing_containers_gain_ipv6_on_restart_and_lose_it_with_ipv6_off() {
    let mut host = Host::start_with(&unique_prefix(), "h1", &["--ipv6", "off"]);
    let (net, app) = host.network_and_app(&[]);
    let a = host.member(&app, "web", "a");
    let b = host.member(&app, "web", "b");
    let ipv4: Vec<_> = [&a, &b].iter().map(|m| m.addr).collect();
    host.stop();
    host.launch(&[]);
    let listed = |host: &Host| -> Vec<Option<Ipv6Addr>> {
        host.json(&["container", "list", "--app", &app])
            .as_array()
            .unwrap()
            .iter()
            .map(ip6_of)
            .collect()
    };
    assert!(
        pn_tests::eventually(std::time::Duration::from_secs(10), || {
            listed(&host).iter().all(Option::is_some)
        }),
        "{:?}",
        listed(&host)
    );
    let cidr6 = cidr6_of(&host, &net).expect("the network's /64");
    let given: BTreeSet<Ipv6Addr> = listed(&host).into_iter().flatten().collect();
    assert_eq!(given.len(), 2);
    assert!(
        given.iter().all(|ip| in_64(*ip, &cidr6)),
        "{given:?} {cidr6}"
    );
    // IPv4 unchanged; the names answer the new addresses.
    let now: Vec<String> = host
        .json(&["container", "list", "--app", &app])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        now,
        ipv4.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    let name = format!("{app}.{net}.{ZONE}.");
    let want: Vec<String> = given.iter().map(ToString::to_string).collect();
    assert!(pn_tests::eventually(
        std::time::Duration::from_secs(10),
        || { short(&a, &name, "AAAA") == want }
    ));
    // Off again: given back; the range stays the network's.
    host.stop();
    host.launch(&["--ipv6", "off"]);
    assert!(pn_tests::eventually(
        std::time::Duration::from_secs(10),
        || { listed(&host).iter().all(Option::is_none) }
    ));
    assert_eq!(cidr6_of(&host, &net), Some(cidr6));
}
