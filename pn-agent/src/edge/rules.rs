//! The edge's nftables table as a pure function of the desired state.
//!
//! ```text
//! table inet pn {
//!   sets pool, routers, hosts (ipv4_addr), published (inet_service), egress_deny
//!   (and IPv6's twins of each rule: `rules/v6.rs`)
//!   chain member_notrack  prerouting, raw:     pool -> pool: notrack
//!   chain publish_nat     prerouting, dstnat:  daddr @hosts, tcp dport @published: jump publish
//!   chain publish         (regular):           ct mark := router | other; tcp dport P: dnat to C:W
//!   chain publish_mark    prerouting, dstnat+10: ct mark -> packet mark (original direction)
//!   chain egress_nat      postrouting, srcnat: oif pn's: return; saddr @pool daddr != @pool: masquerade
//!   chain forward         forward, filter:     oif pn's: accept (the programs judge);
//!                                              iif pn's: deny-list drop, accept;
//!                                              saddr @pool: drop (spoofed);
//!                                              guard (per family): established accept, drop
//!   chain dns_input       input, filter:       daddr:port the gateway's DNS, iif not a container's: drop
//!                                              (and IPv6's: any daddr, the port, iif not a container's: drop)
//!   with --tunnel-notrack (`rules/tunnel.rs`):
//!   chain tunnel_notrack_in   prerouting, raw: udp dport tunnel, saddr a peer's: notrack
//!   chain tunnel_notrack_out  output, raw:     udp sport tunnel, daddr a peer's: notrack
//! }
//! ```
//!
//! Every drop is counted in a named counter (`pn_edge_dropped_*{reason}`).

use std::{borrow::Cow, collections::BTreeSet};

use ipnet::Ipv4Net;
use nftables::{
    expr::{Expression, MetaKey},
    schema::{self, NfCmd, NfListObject, NfObject, Nftables, Set, SetTypeValue, Table},
    stmt::{JumpTarget, NAT, NATFamily, Statement},
    types::{NfChainType, NfFamily, NfHook},
};
use pn_common::edge::{MARK_MASK, MARK_OTHER, MARK_ROUTER};

use super::{
    config::{EdgeConfig, GatewayDns},
    counters::{Count, EdgeCounters},
    error::EdgeError,
};

mod nft;
mod tunnel;
mod v6;
pub use super::counters::{
    COUNTER_DNS_DENIED, COUNTER_EGRESS_DENIED, COUNTER_FORWARD_DENIED, COUNTER_POOL_SPOOFED,
};
pub use nft::TABLE;
use nft::*;

const COUNTERS: [&str; 4] = [
    COUNTER_FORWARD_DENIED,
    COUNTER_EGRESS_DENIED,
    COUNTER_POOL_SPOOFED,
    COUNTER_DNS_DENIED,
];

const PRIO_RAW: i32 = -300;
const PRIO_DSTNAT: i32 = -100;
const PRIO_FILTER: i32 = 0;
const PRIO_SRCNAT: i32 = 100;

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

/// Removes pn's table, present or not (`add` first makes `delete` safe).
pub fn clear() -> Nftables<'static> {
    doc(vec![
        NfCmd::Add(NfListObject::Table(table())),
        NfCmd::Delete(NfListObject::Table(table())),
    ])
}

fn doc(cmds: Vec<NfCmd<'static>>) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(cmds.into_iter().map(NfObject::CmdObject).collect()),
    }
}

fn validate(cfg: &EdgeConfig) -> Result<(), EdgeError> {
    let bad = |m: String| Err(EdgeError::Invalid(m));
    let mut ports = BTreeSet::new();
    for p in &cfg.publications {
        if p.host_port == 0 || p.web_port == 0 {
            return bad(format!("publication {p:?} has port 0"));
        }
        if !ports.insert(p.host_port) {
            return bad(format!("host port {} published twice", p.host_port));
        }
        if !cfg.pool.contains(&p.container) {
            return bad(format!(
                "published container {} is outside the pool {}",
                p.container, cfg.pool
            ));
        }
    }
    if let Some(v6) = &cfg.v6 {
        for p in &cfg.publications {
            if p.container6.is_some_and(|c| !v6.pool.contains(&c)) {
                return bad(format!(
                    "published container {p:?} is outside the IPv6 pool {}",
                    v6.pool
                ));
            }
        }
    }
    if cfg.tunnel_notrack.as_ref().is_some_and(|t| t.port == 0) {
        return bad("the tunnel's notrack rules need its port, not 0".into());
    }
    if !cfg.publications.is_empty() && cfg.host_addrs.is_empty() {
        return bad("publications need at least one host address".into());
    }
    if cfg.interfaces.is_empty() {
        return bad("no pn interface named".into());
    }
    let clients = cfg.dns.iter().flat_map(|d| &d.clients);
    if cfg.dns.as_ref().is_some_and(|d| d.clients.is_empty()) {
        return bad("the gateway's DNS has no client interface".into());
    }
    for name in cfg.interfaces.iter().chain(clients) {
        let stem = name.strip_suffix('*').unwrap_or(name);
        let ok = !stem.is_empty()
            && stem.len() <= 15
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return bad(format!("interface name {name:?}"));
        }
    }
    Ok(())
}

/// The whole table for `cfg`, as one transaction: the old table (if any)
/// goes and the new one comes in the same batch.
pub fn ruleset(cfg: &EdgeConfig) -> Result<Nftables<'static>, EdgeError> {
    validate(cfg)?;
    let mut cmds = vec![
        NfCmd::Add(NfListObject::Table(table())),
        NfCmd::Delete(NfListObject::Table(table())),
        NfCmd::Add(NfListObject::Table(table())),
    ];
    // Chains before rules: a rule may jump to a chain declared after it.
    let mut t = Objects::default();
    sets(cfg, &mut t);
    for name in COUNTERS {
        t.add(NfListObject::Counter(schema::Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        }));
    }

    // Member traffic needs no translation: keep it out of conntrack, so
    // the edge adds no per-packet state between members.
    t.add(base_chain(
        "member_notrack",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_RAW,
    ));
    t.add(rule(
        "member_notrack",
        vec![
            is(payload("ip", "saddr"), set_ref("pool")),
            is(payload("ip", "daddr"), set_ref("pool")),
            Statement::Notrack,
        ],
    ));
    if cfg.v6.is_some() {
        v6::member_notrack(&mut t);
    }
    publication(cfg, &mut t);
    egress(cfg, &mut t);
    forward(cfg, &mut t);
    if let Some(dns) = &cfg.dns {
        gateway_dns(dns, &mut t);
    }
    if let Some(tn) = &cfg.tunnel_notrack {
        tunnel::notrack(tn, &mut t);
    }
    cmds.extend(t.objects.into_iter().chain(t.rules).map(NfCmd::Add));
    Ok(doc(cmds))
}

/// The table's objects, rules apart (they go last).
#[derive(Default)]
struct Objects {
    objects: Vec<NfListObject<'static>>,
    rules: Vec<NfListObject<'static>>,
}

impl Objects {
    fn add(&mut self, o: NfListObject<'static>) {
        match o {
            NfListObject::Rule(_) => self.rules.push(o),
            _ => self.objects.push(o),
        }
    }
}

fn sets(cfg: &EdgeConfig, t: &mut Objects) {
    let pool = [cfg.pool.trunc()];
    t.add(addr_set("pool", &pool));
    t.add(addr_set("routers", &Ipv4Net::aggregate(&cfg.router_cidrs)));
    let hosts: Vec<Ipv4Net> = cfg.host_addrs.iter().map(|&a| Ipv4Net::from(a)).collect();
    t.add(addr_set("hosts", &Ipv4Net::aggregate(&hosts)));
    t.add(addr_set(
        "egress_deny",
        &Ipv4Net::aggregate(&cfg.egress_deny),
    ));
    if let Some(v6) = &cfg.v6 {
        v6::sets(v6, t);
    }
    let mut published: Vec<u16> = cfg.publications.iter().map(|p| p.host_port).collect();
    published.sort_unstable();
    t.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: "published".into(),
        set_type: SetTypeValue::Single(schema::SetType::InetService),
        elem: (!published.is_empty()).then(|| published.iter().map(|&p| num(p.into())).collect()),
        ..Set::default()
    })));
}

/// Publication: every source is translated to the container, and the
/// connection remembers whether it came from a router.
fn publication(cfg: &EdgeConfig, t: &mut Objects) {
    t.add(base_chain(
        "publish_nat",
        NfChainType::NAT,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    t.add(rule(
        "publish_nat",
        vec![
            is(payload("ip", "daddr"), set_ref("hosts")),
            is(payload("tcp", "dport"), set_ref("published")),
            Statement::Jump(JumpTarget {
                target: "publish".into(),
            }),
        ],
    ));
    t.add(regular_chain("publish"));
    t.add(rule(
        "publish",
        vec![
            is(payload("ip", "saddr"), set_ref("routers")),
            set_bits(ct_mark(), MARK_ROUTER),
        ],
    ));
    t.add(rule(
        "publish",
        vec![
            is_not(payload("ip", "saddr"), set_ref("routers")),
            set_bits(ct_mark(), MARK_OTHER),
        ],
    ));
    let mut pubs = cfg.publications.clone();
    pubs.sort();
    for p in &pubs {
        t.add(rule(
            "publish",
            vec![
                is(payload("tcp", "dport"), num(p.host_port.into())),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(p.container.to_string().into())),
                    family: Some(NATFamily::IP),
                    port: Some(num(p.web_port.into())),
                    flags: None,
                })),
            ],
        ));
    }
    if cfg.v6.is_some() {
        v6::publication(&cfg.publications, t);
    }
    // NAT chains see a connection's first packet only; the mark must be on
    // every packet the container's program judges.
    t.add(base_chain(
        "publish_mark",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_DSTNAT + 10,
    ));
    for bits in [MARK_ROUTER, MARK_OTHER] {
        t.add(rule(
            "publish_mark",
            vec![
                is(and(ct_mark(), MARK_MASK), num(bits)),
                is(ct("direction"), Expression::String("original".into())),
                set_bits(meta_mark(), bits),
            ],
        ));
    }
}

/// Egress: containers leave with the host's address.
fn egress(cfg: &EdgeConfig, t: &mut Objects) {
    t.add(base_chain(
        "egress_nat",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    for name in &cfg.interfaces {
        t.add(rule(
            "egress_nat",
            vec![
                is(meta(MetaKey::Oifname), ifname(name)),
                Statement::Return(None),
            ],
        ));
    }
    t.add(rule(
        "egress_nat",
        vec![
            is(payload("ip", "saddr"), set_ref("pool")),
            is_not(payload("ip", "daddr"), set_ref("pool")),
            Statement::Masquerade(None),
        ],
    ));
    if cfg.v6.is_some() {
        v6::masquerade(t);
    }
}

/// Forwarding: into pn's interfaces the programs judge (they count what
/// they drop per container, and show it in `flows`: nothing is dropped
/// here before them); out of them too, with the deny list as a second line
/// for new connections; pool sources from elsewhere never; with the guard,
/// nothing else either.
fn forward(cfg: &EdgeConfig, t: &mut Objects) {
    t.add(base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
    ));
    for name in &cfg.interfaces {
        t.add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Oifname), ifname(name)),
                Statement::Accept(None),
            ],
        ));
    }
    for name in &cfg.interfaces {
        t.add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), ifname(name)),
                is(ct("direction"), Expression::String("original".into())),
                is(payload("ip", "daddr"), set_ref("egress_deny")),
                counted(COUNTER_EGRESS_DENIED),
                Statement::Drop(None),
            ],
        ));
        if cfg.v6.is_some() {
            v6::deny(name, t);
        }
        t.add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), ifname(name)),
                Statement::Accept(None),
            ],
        ));
    }
    // Left unchecked, the egress rule would masquerade it: the host's
    // address lent to whoever claims a container's.
    t.add(rule(
        "forward",
        vec![
            is(payload("ip", "saddr"), set_ref("pool")),
            counted(COUNTER_POOL_SPOOFED),
            Statement::Drop(None),
        ],
    ));
    if cfg.v6.is_some() {
        v6::pool_spoofed(t);
    }
    // Each family's forwarding has its owner (`forwarding`): with one
    // guarded and not the other, the guard names its family.
    let family = match (cfg.forward_guard, cfg.forward_guard6) {
        (false, false) => return,
        (true, true) => None,
        (true, false) => Some("ipv4"),
        (false, true) => Some("ipv6"),
    };
    let only = || family.map(|f| is(meta(MetaKey::Nfproto), Expression::String(f.into())));
    t.add(rule(
        "forward",
        only()
            .into_iter()
            .chain([established(), Statement::Accept(None)])
            .collect(),
    ));
    t.add(rule(
        "forward",
        only()
            .into_iter()
            .chain([counted(COUNTER_FORWARD_DENIED), Statement::Drop(None)])
            .collect(),
    ));
}

/// The gateway's DNS answers the containers' interfaces only: anyone else
/// could send queries with a member's source and spend its budget.
fn gateway_dns(dns: &GatewayDns, t: &mut Objects) {
    t.add(base_chain(
        "dns_input",
        NfChainType::Filter,
        NfHook::Input,
        PRIO_FILTER,
    ));
    for proto in ["udp", "tcp"] {
        let mut expr = Vec::new();
        if !dns.listen.ip().is_unspecified() {
            expr.push(is(
                payload("ip", "daddr"),
                Expression::String(dns.listen.ip().to_string().into()),
            ));
        }
        expr.push(is(payload(proto, "dport"), num(dns.listen.port().into())));
        for name in &dns.clients {
            expr.push(is_not(meta(MetaKey::Iifname), ifname(name)));
        }
        expr.push(counted(COUNTER_DNS_DENIED));
        expr.push(Statement::Drop(None));
        t.add(rule("dns_input", expr));
    }
    if dns.ipv6 {
        v6::gateway_dns(dns, t);
    }
}

/// The document as nft reads it. The crate writes its unit statement
/// `Notrack` as the bare string `"notrack"`, which nft refuses (it wants
/// `{"notrack": null}`, as for `masquerade`); that one statement is
/// rewritten here, everything else is the crate's serialization.
pub fn to_json(doc: &Nftables<'_>) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("nftables documents serialize");
    if let Some(cmds) = v.get_mut("nftables").and_then(|c| c.as_array_mut()) {
        for cmd in cmds {
            let stmts = cmd
                .get_mut("add")
                .and_then(|a| a.get_mut("rule"))
                .and_then(|r| r.get_mut("expr"))
                .and_then(|e| e.as_array_mut());
            for st in stmts.into_iter().flatten() {
                if st.as_str() == Some("notrack") {
                    *st = serde_json::json!({ "notrack": null });
                }
            }
        }
    }
    v
}

/// Reads `nft -j list counters table inet pn`.
pub fn parse_counters(listing: &serde_json::Value) -> EdgeCounters {
    let mut out = EdgeCounters::default();
    let items = listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in items.iter().filter_map(|o| o.get("counter")) {
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
            continue;
        }
        let count = Count {
            packets: c.get("packets").and_then(|v| v.as_u64()).unwrap_or(0),
            bytes: c.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0),
        };
        if let Some(c) = c
            .get("name")
            .and_then(|n| n.as_str())
            .and_then(|n| out.by_name(n))
        {
            *c += count;
        }
    }
    out
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
