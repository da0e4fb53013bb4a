//! `--tunnel-notrack`: the tunnel's datagrams with the other hosts skip
//! conntrack, both ways, at raw priority (before conntrack looks at them).
//!
//! ```text
//!   sets tunnel_peers (ipv4_addr), tunnel_peers6 (ipv6_addr)
//!   chain tunnel_notrack_in   prerouting, raw: udp dport P, saddr @tunnel_peers(6): notrack
//!   chain tunnel_notrack_out  output, raw:     udp sport P, daddr @tunnel_peers(6): notrack
//! ```
//!
//! Both families' rules are always there (a set with no peer matches
//! nothing): a peer of either family coming or going changes a set only.

use ipnet::{Ipv4Net, Ipv6Net};
use nftables::{
    stmt::Statement,
    types::{NfChainType, NfHook},
};

use super::{Objects, PRIO_RAW, nft::*};
use crate::edge::config::TunnelNotrack;

pub(super) fn notrack(tn: &TunnelNotrack, t: &mut Objects) {
    let mut peers: Vec<Ipv4Net> = tn.peers.iter().map(|&a| Ipv4Net::from(a)).collect();
    peers.sort();
    peers.dedup();
    t.add(addr_set("tunnel_peers", &peers));
    let mut peers6: Vec<Ipv6Net> = tn.peers6.iter().map(|&a| Ipv6Net::from(a)).collect();
    peers6.sort();
    peers6.dedup();
    t.add(addr_set6("tunnel_peers6", &peers6));
    let port = num(tn.port.into());
    for (chain, hook, ours, theirs) in [
        ("tunnel_notrack_in", NfHook::Prerouting, "dport", "saddr"),
        ("tunnel_notrack_out", NfHook::Output, "sport", "daddr"),
    ] {
        t.add(base_chain(chain, NfChainType::Filter, hook, PRIO_RAW));
        for (family, set) in [("ip", "tunnel_peers"), ("ip6", "tunnel_peers6")] {
            t.add(rule(
                chain,
                vec![
                    is(payload("udp", ours), port.clone()),
                    is(payload(family, theirs), set_ref(set)),
                    Statement::Notrack,
                ],
            ));
        }
    }
}
