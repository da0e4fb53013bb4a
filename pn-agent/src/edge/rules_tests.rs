//! The edge's table, read back as text: every rule of the contract, no kernel.

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::edge::{Edge, Fake, Publication};

fn cfg() -> EdgeConfig {
    EdgeConfig {
        pool: "10.240.0.0/12".parse().unwrap(),
        host_addrs: vec!["198.51.100.1".parse().unwrap()],
        router_cidrs: vec![
            "192.0.2.0/24".parse().unwrap(),
            "192.0.2.128/25".parse().unwrap(),
        ],
        publications: vec![
            Publication {
                host_port: 30001,
                container: "10.240.0.6".parse().unwrap(),
                web_port: 9000,
                container6: None,
            },
            Publication {
                host_port: 30000,
                container: "10.240.0.5".parse().unwrap(),
                web_port: 8080,
                container6: None,
            },
        ],
        egress_deny: vec![
            "169.254.0.0/16".parse().unwrap(),
            "169.254.169.254/32".parse().unwrap(),
            "192.168.50.0/24".parse().unwrap(),
        ],
        interfaces: vec!["pnh*".into(), "pn-tun".into()],
        forward_guard: true,
        forward_guard6: true,
        dns: Some(GatewayDns {
            listen: "169.254.1.1:53".parse().unwrap(),
            clients: vec!["pnh*".into()],
            ipv6: false,
        }),
        v6: None,
        tunnel_notrack: None,
    }
}

fn expr(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(expr).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            let (k, v) = o.iter().next().unwrap();
            match k.as_str() {
                "payload" => format!(
                    "{} {}",
                    v["protocol"].as_str().unwrap(),
                    v["field"].as_str().unwrap()
                ),
                "meta" => format!("meta {}", v["key"].as_str().unwrap()),
                "ct" => format!("ct {}", v["key"].as_str().unwrap()),
                "prefix" => format!("{}/{}", expr(&v["addr"]), v["len"]),
                "&" | "|" => {
                    let parts: Vec<String> = v.as_array().unwrap().iter().map(expr).collect();
                    format!("({})", parts.join(&format!(" {k} ")))
                }
                _ => panic!("unexpected expression {e}"),
            }
        }
        _ => panic!("unexpected expression {e}"),
    }
}

fn statement(s: &Value) -> String {
    let (k, v) = s.as_object().unwrap().iter().next().unwrap();
    match k.as_str() {
        "match" => format!(
            "{} {} {}",
            expr(&v["left"]),
            v["op"].as_str().unwrap(),
            expr(&v["right"])
        ),
        "mangle" => format!("{} set {}", expr(&v["key"]), expr(&v["value"])),
        "jump" => format!("jump {}", v["target"].as_str().unwrap()),
        "dnat" => format!(
            "dnat {} to {}:{}",
            v["family"].as_str().unwrap(),
            expr(&v["addr"]),
            expr(&v["port"])
        ),
        "counter" => format!("counter {}", v.as_str().unwrap()),
        "notrack" | "masquerade" | "accept" | "drop" | "return" => {
            assert!(v.is_null(), "{s}");
            k.clone()
        }
        _ => panic!("unexpected statement {s}"),
    }
}

/// The document's commands in order, and its rules by chain, as text.
struct Text {
    cmds: Vec<(String, String)>,
    chains: BTreeMap<String, Value>,
    sets: BTreeMap<String, Value>,
    rules: BTreeMap<String, Vec<String>>,
}

fn text(cfg: &EdgeConfig) -> Text {
    let doc = to_json(&ruleset(cfg).unwrap());
    let mut t = Text {
        cmds: Vec::new(),
        chains: BTreeMap::new(),
        sets: BTreeMap::new(),
        rules: BTreeMap::new(),
    };
    for cmd in doc["nftables"].as_array().unwrap() {
        let (verb, obj) = cmd.as_object().unwrap().iter().next().unwrap();
        let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
        assert_eq!(body["family"], "inet");
        t.cmds.push((verb.clone(), kind.clone()));
        match kind.as_str() {
            "table" => assert_eq!(body["name"], TABLE),
            "chain" => {
                t.chains
                    .insert(body["name"].as_str().unwrap().into(), body.clone());
            }
            "set" => {
                t.sets
                    .insert(body["name"].as_str().unwrap().into(), body.clone());
            }
            "rule" => {
                let line: Vec<String> = body["expr"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(statement)
                    .collect();
                t.rules
                    .entry(body["chain"].as_str().unwrap().into())
                    .or_default()
                    .push(line.join(" "));
            }
            "counter" => {}
            _ => panic!("unexpected object {kind}"),
        }
    }
    t
}

fn elems(set: &Value) -> Vec<String> {
    set.get("elem")
        .map(|e| e.as_array().unwrap().iter().map(expr).collect())
        .unwrap_or_default()
}

#[test]
fn one_transaction_replaces_the_whole_table() {
    let t = text(&cfg());
    let head: Vec<_> = t
        .cmds
        .iter()
        .take(3)
        .map(|(v, k)| format!("{v} {k}"))
        .collect();
    assert_eq!(head, ["add table", "delete table", "add table"]);
    assert!(t.cmds[3..].iter().all(|(v, _)| v == "add"));
    // Chains come before any rule (a rule may jump to a later chain).
    let first_rule = t.cmds.iter().position(|(_, k)| k == "rule").unwrap();
    assert!(t.cmds[first_rule..].iter().all(|(_, k)| k == "rule"));
    let c = to_json(&clear());
    assert_eq!(
        c,
        serde_json::json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "pn"}}},
            {"delete": {"table": {"family": "inet", "name": "pn"}}},
        ]})
    );
}

#[test]
fn base_chains_sit_where_the_kernel_expects_them() {
    let t = text(&cfg());
    for (name, kind, hook, prio) in [
        ("member_notrack", "filter", "prerouting", -300),
        ("publish_nat", "nat", "prerouting", -100),
        ("publish_mark", "filter", "prerouting", -90),
        ("egress_nat", "nat", "postrouting", 100),
        ("forward", "filter", "forward", 0),
        ("dns_input", "filter", "input", 0),
    ] {
        let c = &t.chains[name];
        assert_eq!(
            (c["type"].as_str(), c["hook"].as_str()),
            (Some(kind), Some(hook)),
            "{name}"
        );
        assert_eq!(c["prio"], prio, "{name}");
        assert_eq!(c["policy"], "accept", "{name}: pn never drops by policy");
    }
    assert!(t.chains["publish"].get("hook").is_none(), "regular chain");
}

#[test]
fn containers_leave_with_the_host_address_except_toward_pn() {
    let t = text(&cfg());
    assert_eq!(
        t.rules["egress_nat"],
        [
            "meta oifname == pnh* return",
            "meta oifname == pn-tun return",
            "ip saddr == @pool ip daddr != @pool masquerade",
        ]
    );
    assert_eq!(elems(&t.sets["pool"]), ["10.240.0.0/12"]);
}

#[test]
fn member_traffic_stays_out_of_conntrack() {
    let t = text(&cfg());
    assert_eq!(
        t.rules["member_notrack"],
        ["ip saddr == @pool ip daddr == @pool notrack"]
    );
}

#[test]
fn published_ports_translate_and_mark_who_came() {
    let t = text(&cfg());
    assert_eq!(
        t.rules["publish_nat"],
        ["ip daddr == @hosts tcp dport == @published jump publish"]
    );
    let keep = !pn_common::edge::MARK_MASK;
    assert_eq!(
        t.rules["publish"],
        [
            format!(
                "ip saddr == @routers ct mark set ((ct mark & {keep}) | {})",
                pn_common::edge::MARK_ROUTER
            ),
            format!(
                "ip saddr != @routers ct mark set ((ct mark & {keep}) | {})",
                pn_common::edge::MARK_OTHER
            ),
            "tcp dport == 30000 dnat ip to 10.240.0.5:8080".into(),
            "tcp dport == 30001 dnat ip to 10.240.0.6:9000".into(),
        ]
    );
    assert_eq!(elems(&t.sets["published"]), ["30000", "30001"]);
    assert_eq!(elems(&t.sets["hosts"]), ["198.51.100.1"]);
    // Overlapping router ranges are merged (interval sets refuse overlaps).
    assert_eq!(elems(&t.sets["routers"]), ["192.0.2.0/24"]);
}

#[test]
fn every_packet_of_a_published_connection_carries_the_mark() {
    let t = text(&cfg());
    let mask = pn_common::edge::MARK_MASK;
    let keep = !mask;
    let want: Vec<String> = [pn_common::edge::MARK_ROUTER, pn_common::edge::MARK_OTHER]
        .iter()
        .map(|b| {
            format!(
                "(ct mark & {mask}) == {b} ct direction == original meta mark set ((meta mark & {keep}) | {b})"
            )
        })
        .collect();
    assert_eq!(t.rules["publish_mark"], want);
}

#[test]
fn the_host_forwards_nothing_but_pn_traffic_with_the_guard() {
    let t = text(&cfg());
    assert_eq!(
        t.rules["forward"],
        [
            "meta oifname == pnh* accept",
            "meta oifname == pn-tun accept",
            "meta iifname == pnh* ct direction == original ip daddr == @egress_deny counter egress_denied drop",
            "meta iifname == pnh* accept",
            "meta iifname == pn-tun ct direction == original ip daddr == @egress_deny counter egress_denied drop",
            "meta iifname == pn-tun accept",
            "ip saddr == @pool counter pool_spoofed drop",
            "ct state in established,related accept",
            "counter forward_denied drop",
        ]
    );
    assert_eq!(
        elems(&t.sets["egress_deny"]),
        ["169.254.0.0/16", "192.168.50.0/24"]
    );
}

#[test]
fn without_the_guard_the_rest_is_forwarded_but_pn_is_still_no_path() {
    let t = text(&EdgeConfig {
        forward_guard: false,
        forward_guard6: false,
        ..cfg()
    });
    let fwd = &t.rules["forward"];
    assert!(!fwd.iter().any(|r| r.contains("forward_denied")), "{fwd:?}");
    assert!(!fwd.iter().any(|r| r.starts_with("ct state")), "{fwd:?}");
    assert!(fwd.iter().any(|r| r.contains("egress_denied drop")));
    // Into pn's interfaces and pool sources: the same with or without.
    assert_eq!(
        fwd.last().unwrap(),
        "ip saddr == @pool counter pool_spoofed drop"
    );
    assert_eq!(fwd[..2], text(&cfg()).rules["forward"][..2]);
}

#[test]
fn each_family_s_guard_follows_its_own_owner() {
    let fwd = |g4, g6| {
        text(&EdgeConfig {
            forward_guard: g4,
            forward_guard6: g6,
            ..cfg()
        })
        .rules["forward"]
            .clone()
    };
    // pn owns IPv6 forwarding only (the host forwarded IPv4 for Docker):
    // IPv6 that is not pn's is dropped, IPv4 left alone; and the reverse.
    for (g4, g6, family) in [(false, true, "ipv6"), (true, false, "ipv4")] {
        let r = fwd(g4, g6);
        assert_eq!(
            r[r.len() - 2..],
            [
                format!("meta nfproto == {family} ct state in established,related accept"),
                format!("meta nfproto == {family} counter forward_denied drop"),
            ],
            "{g4} {g6}"
        );
    }
    // Both: one guard for the table, as before IPv6 had its own owner.
    assert_eq!(
        fwd(true, true).last().unwrap(),
        "counter forward_denied drop"
    );
    assert!(
        !fwd(false, false)
            .iter()
            .any(|r| r.contains("forward_denied"))
    );
}

#[test]
fn whatever_goes_into_pns_interfaces_is_left_to_the_programs() {
    // They count it per container and show it in `flows` (`not_member`,
    // `spoofed_source`): a drop before them would hide it. So the first
    // word on a packet toward pn's interfaces is accept, with or without
    // the guard, and no other chain of the table looks at the way out.
    for guard in [true, false] {
        let t = text(&EdgeConfig {
            forward_guard: guard,
            forward_guard6: guard,
            ..cfg()
        });
        assert_eq!(
            t.rules["forward"][..2],
            [
                "meta oifname == pnh* accept",
                "meta oifname == pn-tun accept"
            ]
        );
        let oif_drops: Vec<&String> = t
            .rules
            .values()
            .flatten()
            .filter(|r| r.contains("oifname") && r.ends_with("drop"))
            .collect();
        assert!(oif_drops.is_empty(), "{oif_drops:?}");
        assert!(!t.chains.contains_key("into_pn"));
    }
}

#[test]
fn the_gateways_dns_answers_container_interfaces_only() {
    let t = text(&cfg());
    let c = &t.chains["dns_input"];
    assert_eq!(
        (c["type"].as_str(), c["hook"].as_str()),
        (Some("filter"), Some("input"))
    );
    assert_eq!(c["policy"], "accept");
    assert_eq!(
        t.rules["dns_input"],
        [
            "ip daddr == 169.254.1.1 udp dport == 53 meta iifname != pnh* counter dns_denied drop",
            "ip daddr == 169.254.1.1 tcp dport == 53 meta iifname != pnh* counter dns_denied drop",
        ]
    );
    // Listening everywhere: any local address, on the port.
    let t = text(&EdgeConfig {
        dns: Some(GatewayDns {
            listen: "0.0.0.0:5300".parse().unwrap(),
            clients: vec!["pnh*".into(), "veth-x".into()],
            ipv6: false,
        }),
        ..cfg()
    });
    assert_eq!(
        t.rules["dns_input"][0],
        "udp dport == 5300 meta iifname != pnh* meta iifname != veth-x counter dns_denied drop"
    );
    // No DNS, no chain.
    let t = text(&EdgeConfig { dns: None, ..cfg() });
    assert!(!t.chains.contains_key("dns_input"));
}

#[test]
fn nothing_published_and_no_router() {
    let t = text(&EdgeConfig {
        router_cidrs: vec![],
        publications: vec![],
        host_addrs: vec![],
        ..cfg()
    });
    assert!(elems(&t.sets["published"]).is_empty());
    assert!(
        t.sets["published"].get("elem").is_none(),
        "empty sets have no elem key"
    );
    assert!(elems(&t.sets["routers"]).is_empty());
    assert_eq!(t.rules["publish"].len(), 2, "only the mark rules");
}

#[test]
fn bad_configurations_are_refused_before_the_kernel() {
    let p = |host_port, container: &str, web_port| Publication {
        host_port,
        container: container.parse().unwrap(),
        web_port,
        container6: None,
    };
    for (c, want) in [
        (
            EdgeConfig {
                publications: vec![p(30000, "10.240.0.5", 80), p(30000, "10.240.0.6", 80)],
                ..cfg()
            },
            "published twice",
        ),
        (
            EdgeConfig {
                publications: vec![p(30000, "192.168.1.1", 80)],
                ..cfg()
            },
            "outside the pool",
        ),
        (
            EdgeConfig {
                publications: vec![p(0, "10.240.0.5", 80)],
                ..cfg()
            },
            "port 0",
        ),
        (
            EdgeConfig {
                host_addrs: vec![],
                ..cfg()
            },
            "host address",
        ),
        (
            EdgeConfig {
                interfaces: vec![],
                ..cfg()
            },
            "no pn interface",
        ),
        (
            EdgeConfig {
                interfaces: vec!["pn\"; drop".into()],
                ..cfg()
            },
            "interface name",
        ),
        (
            EdgeConfig {
                interfaces: vec!["a-name-longer-than-15".into()],
                ..cfg()
            },
            "interface name",
        ),
        (
            EdgeConfig {
                dns: Some(GatewayDns {
                    listen: "169.254.1.1:53".parse().unwrap(),
                    clients: vec![],
                    ipv6: false,
                }),
                ..cfg()
            },
            "no client interface",
        ),
        (
            EdgeConfig {
                dns: Some(GatewayDns {
                    listen: "169.254.1.1:53".parse().unwrap(),
                    clients: vec!["x\" accept".into()],
                    ipv6: false,
                }),
                ..cfg()
            },
            "interface name",
        ),
    ] {
        let e = ruleset(&c).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(
            crate::error::Kind::kind(&e),
            crate::error::ErrorKind::Invalid
        );
    }
}

#[test]
fn counters_are_read_from_nft_listings() {
    let listing = serde_json::json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "inet", "name": "forward_denied", "table": "pn", "handle": 1, "packets": 5_000_000_000u64, "bytes": 7}},
        {"counter": {"family": "inet", "name": "egress_denied", "table": "pn", "handle": 2, "packets": 2, "bytes": 120}},
        {"counter": {"family": "inet", "name": "forward_denied", "table": "other", "handle": 3, "packets": 9, "bytes": 9}},
        {"counter": {"family": "inet", "name": "not_ours", "table": "pn", "handle": 4, "packets": 4, "bytes": 240}},
        {"counter": {"family": "inet", "name": "pool_spoofed", "table": "pn", "handle": 5, "packets": 5, "bytes": 300}},
        {"counter": {"family": "inet", "name": "dns_denied", "table": "pn", "handle": 6, "packets": 6, "bytes": 360}},
    ]});
    let c = parse_counters(&listing);
    assert_eq!(c.forward_denied.packets, 5_000_000_000);
    assert_eq!(c.egress_denied.bytes, 120);
    assert_eq!((c.pool_spoofed.packets, c.dns_denied.packets), (5, 6));
    // A counter pn does not know (an older table's) is no reason's count.
    let total: u64 = c.by_reason().iter().map(|(_, n)| n.packets).sum();
    assert_eq!(total, 5_000_000_000 + 2 + 5 + 6);
    assert_eq!(parse_counters(&Value::Null), Default::default());
}

#[test]
fn an_edge_applies_one_document_per_change_and_keeps_its_counts() {
    let mut edge = Edge::with_backend(Fake::default());
    edge.set(&cfg()).unwrap();
    edge.set(&cfg()).unwrap();
    edge.clear().unwrap();
    assert_eq!(edge.backend().applied.len(), 3);
    assert_eq!(
        edge.backend().applied[0],
        to_json(&ruleset(&cfg()).unwrap())
    );
    assert_eq!(edge.backend().applied[2], to_json(&clear()));

    // Each replacement starts the kernel's counters again; the edge adds up.
    let mut edge = Edge::with_backend(Fake {
        listing: Some(serde_json::json!({"nftables": [
            {"counter": {"family": "inet", "name": "forward_denied", "table": "pn", "packets": 3, "bytes": 300}},
        ]})),
        ..Fake::default()
    });
    edge.set(&cfg()).unwrap();
    edge.set(&cfg()).unwrap();
    assert_eq!(edge.counters().unwrap().forward_denied.packets, 9);
    // A refused configuration applies nothing.
    let bad = EdgeConfig {
        interfaces: vec![],
        ..cfg()
    };
    assert!(edge.set(&bad).is_err());
    assert_eq!(edge.backend().applied.len(), 2);
}

#[path = "rules6_tests.rs"]
mod v6;

#[path = "rules_tunnel_tests.rs"]
mod tunnel;
