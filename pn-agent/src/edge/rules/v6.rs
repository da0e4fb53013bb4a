//! IPv6's twins of the table's rules, in the same `inet` table: the pool
//! masqueraded to the host's IPv6 address, kept out of conntrack between
//! members, the deny list as the forward hook's second line, pool sources
//! from elsewhere dropped, and published ports on the host's IPv6
//! addresses translated to the container's IPv6 address.
//!
//! ```text
//!   sets pool6, routers6, hosts6, egress_deny6 (ipv6_addr)
//!   member_notrack: ip6 pool6 -> pool6: notrack
//!   publish_nat:    ip6 daddr @hosts6, tcp dport @published: jump publish6
//!   publish6:       ct mark := router | other; tcp dport P: dnat ip6 to [C6]:W
//!   egress_nat:     ip6 saddr @pool6 daddr != @pool6: masquerade
//!   forward:        iif pn's: ip6 daddr @egress_deny6 drop; ip6 saddr @pool6: drop (spoofed)
//!   dns_input:      nfproto ipv6, dport the DNS port, iif not a container's: drop
//! ```

use ipnet::Ipv6Net;
use nftables::{
    expr::{Expression, MetaKey},
    stmt::{JumpTarget, NAT, NATFamily, Statement},
};
use pn_common::edge::{MARK_OTHER, MARK_ROUTER};

use super::{
    super::config::{EdgeConfig6, GatewayDns, Publication},
    COUNTER_DNS_DENIED, COUNTER_EGRESS_DENIED, COUNTER_POOL_SPOOFED, Objects,
    nft::*,
};

pub(super) fn sets(v6: &EdgeConfig6, t: &mut Objects) {
    t.add(addr_set6("pool6", &[v6.pool.trunc()]));
    t.add(addr_set6("routers6", &Ipv6Net::aggregate(&v6.router_cidrs)));
    let hosts: Vec<Ipv6Net> = v6.host_addrs.iter().map(|&a| Ipv6Net::from(a)).collect();
    t.add(addr_set6("hosts6", &Ipv6Net::aggregate(&hosts)));
    t.add(addr_set6(
        "egress_deny6",
        &Ipv6Net::aggregate(&v6.egress_deny),
    ));
}

pub(super) fn member_notrack(t: &mut Objects) {
    t.add(rule(
        "member_notrack",
        vec![
            is(payload("ip6", "saddr"), set_ref("pool6")),
            is(payload("ip6", "daddr"), set_ref("pool6")),
            Statement::Notrack,
        ],
    ));
}

/// `publish_nat`'s IPv6 rule and the chain it jumps to (the marks as
/// IPv4's: `publish_mark` copies them whatever the family).
pub(super) fn publication(pubs: &[Publication], t: &mut Objects) {
    t.add(rule(
        "publish_nat",
        vec![
            is(payload("ip6", "daddr"), set_ref("hosts6")),
            is(payload("tcp", "dport"), set_ref("published")),
            Statement::Jump(JumpTarget {
                target: "publish6".into(),
            }),
        ],
    ));
    t.add(regular_chain("publish6"));
    t.add(rule(
        "publish6",
        vec![
            is(payload("ip6", "saddr"), set_ref("routers6")),
            set_bits(ct_mark(), MARK_ROUTER),
        ],
    ));
    t.add(rule(
        "publish6",
        vec![
            is_not(payload("ip6", "saddr"), set_ref("routers6")),
            set_bits(ct_mark(), MARK_OTHER),
        ],
    ));
    let mut pubs = pubs.to_vec();
    pubs.sort();
    for p in &pubs {
        let Some(c6) = p.container6 else { continue };
        t.add(rule(
            "publish6",
            vec![
                is(payload("tcp", "dport"), num(p.host_port.into())),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(c6.to_string().into())),
                    family: Some(NATFamily::IP6),
                    port: Some(num(p.web_port.into())),
                    flags: None,
                })),
            ],
        ));
    }
}

/// After `egress_nat`'s returns for pn's interfaces.
pub(super) fn masquerade(t: &mut Objects) {
    t.add(rule(
        "egress_nat",
        vec![
            is(payload("ip6", "saddr"), set_ref("pool6")),
            is_not(payload("ip6", "daddr"), set_ref("pool6")),
            Statement::Masquerade(None),
        ],
    ));
}

/// The deny list's second line for a container interface `name`, before
/// its accept.
pub(super) fn deny(name: &str, t: &mut Objects) {
    t.add(rule(
        "forward",
        vec![
            is(meta(MetaKey::Iifname), ifname(name)),
            is(ct("direction"), Expression::String("original".into())),
            is(payload("ip6", "daddr"), set_ref("egress_deny6")),
            counted(COUNTER_EGRESS_DENIED),
            Statement::Drop(None),
        ],
    ));
}

/// A pool source forwarded from anywhere but pn's interfaces.
pub(super) fn pool_spoofed(t: &mut Objects) {
    t.add(rule(
        "forward",
        vec![
            is(payload("ip6", "saddr"), set_ref("pool6")),
            counted(COUNTER_POOL_SPOOFED),
            Statement::Drop(None),
        ],
    ));
}

/// The gateway's DNS over IPv6 answers the containers' interfaces only.
/// Its sockets are bound to `[::]` (the link-local gateway is on every
/// container link), so whatever IPv6 address of the host a packet is
/// sent to, the port reaches them: the underlay's neighbours must not,
/// even to be ignored (a TCP connection would still be accepted).
pub(super) fn gateway_dns(dns: &GatewayDns, t: &mut Objects) {
    for proto in ["udp", "tcp"] {
        let mut expr = vec![
            is(meta(MetaKey::Nfproto), Expression::String("ipv6".into())),
            is(payload(proto, "dport"), num(dns.listen.port().into())),
        ];
        for name in &dns.clients {
            expr.push(is_not(meta(MetaKey::Iifname), ifname(name)));
        }
        expr.push(counted(COUNTER_DNS_DENIED));
        expr.push(Statement::Drop(None));
        t.add(rule("dns_input", expr));
    }
}
