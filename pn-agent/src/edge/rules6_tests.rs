//! The table's IPv6 twins (`rules/v6.rs`), read as text like the rest.

use super::*;
use crate::edge::EdgeConfig6;

const C6: &str = "fd12:3456:789a:1::5";

fn cfg6() -> EdgeConfig {
    let mut c = cfg();
    c.publications[1].container6 = Some(C6.parse().unwrap());
    c.v6 = Some(EdgeConfig6 {
        pool: "fd12:3456:789a::/48".parse().unwrap(),
        host_addrs: vec!["2001:db8:1::1".parse().unwrap()],
        router_cidrs: vec!["2001:db8:7::/64".parse().unwrap()],
        egress_deny: vec![
            "fe80::/10".parse().unwrap(),
            "fc00::/7".parse().unwrap(),
            "2001:db8:1::1/128".parse().unwrap(),
        ],
    });
    c
}

#[test]
fn containers_leave_with_the_hosts_ipv6_address_too() {
    let t = text(&cfg6());
    assert_eq!(
        t.rules["egress_nat"],
        [
            "meta oifname == pnh* return",
            "meta oifname == pn-tun return",
            "ip saddr == @pool ip daddr != @pool masquerade",
            "ip6 saddr == @pool6 ip6 daddr != @pool6 masquerade",
        ]
    );
    assert_eq!(elems(&t.sets["pool6"]), ["fd12:3456:789a::/48"]);
    assert_eq!(
        t.rules["member_notrack"][1],
        "ip6 saddr == @pool6 ip6 daddr == @pool6 notrack"
    );
}

#[test]
fn the_ipv6_deny_list_and_pool_guard_sit_beside_ipv4s() {
    let t = text(&cfg6());
    let deny = |i: &str, f: &str, s: &str| {
        format!(
            "meta iifname == {i} ct direction == original {f} daddr == @{s} counter egress_denied drop"
        )
    };
    assert_eq!(
        t.rules["forward"],
        [
            "meta oifname == pnh* accept".to_string(),
            "meta oifname == pn-tun accept".into(),
            deny("pnh*", "ip", "egress_deny"),
            deny("pnh*", "ip6", "egress_deny6"),
            "meta iifname == pnh* accept".into(),
            deny("pn-tun", "ip", "egress_deny"),
            deny("pn-tun", "ip6", "egress_deny6"),
            "meta iifname == pn-tun accept".into(),
            "ip saddr == @pool counter pool_spoofed drop".into(),
            "ip6 saddr == @pool6 counter pool_spoofed drop".into(),
            "ct state in established,related accept".into(),
            "counter forward_denied drop".into(),
        ]
    );
    // fe80::/10 and fc00::/7 do not overlap; the host's address is apart.
    assert_eq!(
        elems(&t.sets["egress_deny6"]),
        ["2001:db8:1::1", "fc00::/7", "fe80::/10"]
    );
}

#[test]
fn published_ports_answer_on_the_hosts_ipv6_addresses() {
    let t = text(&cfg6());
    assert_eq!(
        t.rules["publish_nat"],
        [
            "ip daddr == @hosts tcp dport == @published jump publish",
            "ip6 daddr == @hosts6 tcp dport == @published jump publish6",
        ]
    );
    let keep = !pn_common::edge::MARK_MASK;
    assert_eq!(
        t.rules["publish6"],
        [
            format!(
                "ip6 saddr == @routers6 ct mark set ((ct mark & {keep}) | {})",
                pn_common::edge::MARK_ROUTER
            ),
            format!(
                "ip6 saddr != @routers6 ct mark set ((ct mark & {keep}) | {})",
                pn_common::edge::MARK_OTHER
            ),
            // Only the container that has an IPv6 address.
            format!("tcp dport == 30000 dnat ip6 to {C6}:8080"),
        ]
    );
    // IPv4's translations stay IPv4's.
    assert_eq!(t.rules["publish"].len(), 4);
    assert_eq!(elems(&t.sets["hosts6"]), ["2001:db8:1::1"]);
    assert_eq!(elems(&t.sets["routers6"]), ["2001:db8:7::/64"]);
}

#[test]
fn without_the_ipv6_pool_there_is_no_ipv6_rule() {
    let t = text(&cfg());
    let all: Vec<&String> = t.rules.values().flatten().collect();
    assert!(all.iter().all(|r| !r.contains("ip6")), "{all:?}");
    assert!(!t.chains.contains_key("publish6"));
    assert!(!t.sets.contains_key("pool6"));
}

#[test]
fn a_published_ipv6_address_outside_the_pool_is_refused() {
    let mut c = cfg6();
    c.publications[0].container6 = Some("2001:db8::5".parse().unwrap());
    let err = ruleset(&c).unwrap_err().to_string();
    assert!(err.contains("outside the IPv6 pool"), "{err}");
}

#[test]
fn the_gateways_ipv6_dns_answers_container_interfaces_only() {
    let mut c = cfg6();
    c.dns.as_mut().unwrap().ipv6 = true;
    let t = text(&c);
    // The IPv6 sockets are on `[::]`: any IPv6 destination, on the port.
    assert_eq!(
        t.rules["dns_input"],
        [
            "ip daddr == 169.254.1.1 udp dport == 53 meta iifname != pnh* counter dns_denied drop",
            "ip daddr == 169.254.1.1 tcp dport == 53 meta iifname != pnh* counter dns_denied drop",
            "meta nfproto == ipv6 udp dport == 53 meta iifname != pnh* counter dns_denied drop",
            "meta nfproto == ipv6 tcp dport == 53 meta iifname != pnh* counter dns_denied drop",
        ]
    );
    // No IPv6 server (`--ipv6 off`), no IPv6 rule.
    c.dns.as_mut().unwrap().ipv6 = false;
    assert_eq!(text(&c).rules["dns_input"].len(), 2);
}
