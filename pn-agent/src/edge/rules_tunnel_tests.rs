//! `--tunnel-notrack`'s chains (`rules/tunnel.rs`), read as text like the rest.

use super::*;
use crate::edge::TunnelNotrack;

fn with_notrack() -> EdgeConfig {
    EdgeConfig {
        tunnel_notrack: Some(TunnelNotrack {
            port: 51871,
            peers: vec!["192.0.2.3".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            peers6: vec!["2001:db8:2::2".parse().unwrap()],
        }),
        ..cfg()
    }
}

#[test]
fn without_the_switch_the_tunnel_is_tracked_like_anything_else() {
    let t = text(&cfg());
    assert!(!t.chains.contains_key("tunnel_notrack_in"));
    assert!(!t.chains.contains_key("tunnel_notrack_out"));
    assert!(!t.sets.contains_key("tunnel_peers"));
}

#[test]
fn the_tunnels_datagrams_with_peers_skip_conntrack_both_ways() {
    let t = text(&with_notrack());
    for (name, hook) in [
        ("tunnel_notrack_in", "prerouting"),
        ("tunnel_notrack_out", "output"),
    ] {
        let c = &t.chains[name];
        assert_eq!(
            (c["type"].as_str(), c["hook"].as_str()),
            (Some("filter"), Some(hook)),
            "{name}"
        );
        assert_eq!(c["prio"], -300, "{name}: raw, before conntrack");
        assert_eq!(c["policy"], "accept", "{name}");
    }
    assert_eq!(
        t.rules["tunnel_notrack_in"],
        [
            "udp dport == 51871 ip saddr == @tunnel_peers notrack",
            "udp dport == 51871 ip6 saddr == @tunnel_peers6 notrack",
        ]
    );
    assert_eq!(
        t.rules["tunnel_notrack_out"],
        [
            "udp sport == 51871 ip daddr == @tunnel_peers notrack",
            "udp sport == 51871 ip6 daddr == @tunnel_peers6 notrack",
        ]
    );
    assert_eq!(
        elems(&t.sets["tunnel_peers"]),
        ["192.0.2.2", "192.0.2.3"],
        "sorted"
    );
    assert_eq!(elems(&t.sets["tunnel_peers6"]), ["2001:db8:2::2"]);
    // The rest of the table is unchanged.
    let plain = text(&cfg());
    for (chain, rules) in &plain.rules {
        assert_eq!(&t.rules[chain], rules, "{chain}");
    }
}

#[test]
fn with_no_peer_yet_the_chains_are_there_and_match_nothing() {
    let t = text(&EdgeConfig {
        tunnel_notrack: Some(TunnelNotrack {
            port: 51871,
            peers: vec![],
            peers6: vec![],
        }),
        ..cfg()
    });
    assert_eq!(t.rules["tunnel_notrack_in"].len(), 2);
    assert!(elems(&t.sets["tunnel_peers"]).is_empty());
    assert!(elems(&t.sets["tunnel_peers6"]).is_empty());
}

#[test]
fn a_notrack_without_a_port_is_refused() {
    let bad = EdgeConfig {
        tunnel_notrack: Some(TunnelNotrack {
            port: 0,
            peers: vec![],
            peers6: vec![],
        }),
        ..cfg()
    };
    assert!(matches!(ruleset(&bad), Err(EdgeError::Invalid(_))));
}
