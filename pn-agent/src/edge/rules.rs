//! The edge's nftables table as a pure function of the desired state.
//!
//! ```text
//! table inet pn {
//!   sets pool, routers, hosts (ipv4_addr), published (inet_service), egress_deny
//!   chain member_notrack  prerouting, raw:     pool -> pool: notrack
//!   chain publish_nat     prerouting, dstnat:  daddr @hosts, tcp dport @published: jump publish
//!   chain publish         (regular):           ct mark := router | other; tcp dport P: dnat to C:W
//!   chain publish_mark    prerouting, dstnat+10: ct mark -> packet mark (original direction)
//!   chain egress_nat      postrouting, srcnat: oif pn's: return; saddr @pool daddr != @pool: masquerade
//!   chain forward         forward, filter:     oif pn's: accept; iif pn's: deny-list drop, accept;
//!                                              PnOnly: drop (counted)
//! }
//! ```

use std::{borrow::Cow, collections::BTreeSet};

use ipnet::Ipv4Net;
use nftables::{
    expr::{
        BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    },
    schema::{
        self, Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetTypeValue, Table,
    },
    stmt::{Counter, JumpTarget, Mangle, Match, NAT, NATFamily, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use pn_common::edge::{MARK_MASK, MARK_OTHER, MARK_ROUTER};

use super::{EdgeConfig, EdgeError, Forwarding};

/// The table pn owns (family `inet`).
pub const TABLE: &str = "pn";
pub const COUNTER_FORWARD_DENIED: &str = "forward_denied";
pub const COUNTER_EGRESS_DENIED: &str = "egress_denied";

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
    if !cfg.publications.is_empty() && cfg.host_addrs.is_empty() {
        return bad("publications need at least one host address".into());
    }
    if cfg.interfaces.is_empty() {
        return bad("no pn interface named".into());
    }
    for name in &cfg.interfaces {
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
    let mut objects: Vec<NfListObject<'static>> = Vec::new();
    let mut rules: Vec<NfListObject<'static>> = Vec::new();
    let mut add = |o: NfListObject<'static>| match o {
        NfListObject::Rule(_) => rules.push(o),
        _ => objects.push(o),
    };
    declarations(cfg, &mut add);
    member_notrack(&mut add);
    publication(cfg, &mut add);
    egress(cfg, &mut add);
    forward(cfg, &mut add);
    cmds.extend(objects.into_iter().chain(rules).map(NfCmd::Add));
    Ok(doc(cmds))
}

/// The sets and named counters the rules use.
fn declarations(cfg: &EdgeConfig, add: &mut impl FnMut(NfListObject<'static>)) {
    let pool = [cfg.pool.trunc()];
    add(addr_set("pool", &pool));
    add(addr_set("routers", &Ipv4Net::aggregate(&cfg.router_cidrs)));
    let hosts: Vec<Ipv4Net> = cfg.host_addrs.iter().map(|&a| Ipv4Net::from(a)).collect();
    add(addr_set("hosts", &Ipv4Net::aggregate(&hosts)));
    add(addr_set(
        "egress_deny",
        &Ipv4Net::aggregate(&cfg.egress_deny),
    ));
    let mut published: Vec<u16> = cfg.publications.iter().map(|p| p.host_port).collect();
    published.sort_unstable();
    add(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: "published".into(),
        set_type: SetTypeValue::Single(schema::SetType::InetService),
        elem: (!published.is_empty()).then(|| published.iter().map(|&p| num(p.into())).collect()),
        ..Set::default()
    })));
    for name in [COUNTER_FORWARD_DENIED, COUNTER_EGRESS_DENIED] {
        add(NfListObject::Counter(schema::Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        }));
    }
}

/// Member traffic needs no translation: keep it out of conntrack, so
/// the edge adds no per-packet state between members.
fn member_notrack(add: &mut impl FnMut(NfListObject<'static>)) {
    add(base_chain(
        "member_notrack",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_RAW,
    ));
    add(rule(
        "member_notrack",
        vec![
            is(payload("ip", "saddr"), set_ref("pool")),
            is(payload("ip", "daddr"), set_ref("pool")),
            Statement::Notrack,
        ],
    ));
}

/// Publication: every source is translated to the container, and the
/// connection remembers whether it came from a router.
fn publication(cfg: &EdgeConfig, add: &mut impl FnMut(NfListObject<'static>)) {
    add(base_chain(
        "publish_nat",
        NfChainType::NAT,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    add(rule(
        "publish_nat",
        vec![
            is(payload("ip", "daddr"), set_ref("hosts")),
            is(payload("tcp", "dport"), set_ref("published")),
            Statement::Jump(JumpTarget {
                target: "publish".into(),
            }),
        ],
    ));
    add(regular_chain("publish"));
    add(rule(
        "publish",
        vec![
            is(payload("ip", "saddr"), set_ref("routers")),
            set_bits(ct_mark(), MARK_ROUTER),
        ],
    ));
    add(rule(
        "publish",
        vec![
            is_not(payload("ip", "saddr"), set_ref("routers")),
            set_bits(ct_mark(), MARK_OTHER),
        ],
    ));
    let mut pubs = cfg.publications.clone();
    pubs.sort();
    for p in &pubs {
        add(rule(
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
    // NAT chains see a connection's first packet only; the mark must be on
    // every packet the container's program judges.
    add(base_chain(
        "publish_mark",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_DSTNAT + 10,
    ));
    for bits in [MARK_ROUTER, MARK_OTHER] {
        add(rule(
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
fn egress(cfg: &EdgeConfig, add: &mut impl FnMut(NfListObject<'static>)) {
    add(base_chain(
        "egress_nat",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    for name in &cfg.interfaces {
        add(rule(
            "egress_nat",
            vec![
                is(meta(MetaKey::Oifname), ifname(name)),
                Statement::Return(None),
            ],
        ));
    }
    add(rule(
        "egress_nat",
        vec![
            is(payload("ip", "saddr"), set_ref("pool")),
            is_not(payload("ip", "daddr"), set_ref("pool")),
            Statement::Masquerade(None),
        ],
    ));
}

/// Forwarding: into pn's interfaces the programs judge; out of them
/// too, with the deny list as a second line for new connections.
fn forward(cfg: &EdgeConfig, add: &mut impl FnMut(NfListObject<'static>)) {
    add(base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
    ));
    for name in &cfg.interfaces {
        add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Oifname), ifname(name)),
                Statement::Accept(None),
            ],
        ));
    }
    for name in &cfg.interfaces {
        add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), ifname(name)),
                is(ct("direction"), Expression::String("original".into())),
                is(payload("ip", "daddr"), set_ref("egress_deny")),
                Statement::Counter(Counter::Named(COUNTER_EGRESS_DENIED.into())),
                Statement::Drop(None),
            ],
        ));
        add(rule(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), ifname(name)),
                Statement::Accept(None),
            ],
        ));
    }
    if cfg.forwarding == Forwarding::PnOnly {
        add(rule(
            "forward",
            vec![
                Statement::Counter(Counter::Named(COUNTER_FORWARD_DENIED.into())),
                Statement::Drop(None),
            ],
        ));
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
pub fn parse_counters(listing: &serde_json::Value) -> super::EdgeCounters {
    let mut out = super::EdgeCounters::default();
    let items = listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in items.iter().filter_map(|o| o.get("counter")) {
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
            continue;
        }
        let count = super::Count {
            packets: c.get("packets").and_then(|v| v.as_u64()).unwrap_or(0),
            bytes: c.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0),
        };
        match c.get("name").and_then(|n| n.as_str()) {
            Some(COUNTER_FORWARD_DENIED) => out.forward_denied += count,
            Some(COUNTER_EGRESS_DENIED) => out.egress_denied += count,
            _ => {}
        }
    }
    out
}

fn addr_set(name: &'static str, nets: &[Ipv4Net]) -> NfListObject<'static> {
    let elem: Vec<Expression<'static>> = nets
        .iter()
        .map(|n| {
            if n.prefix_len() == 32 {
                Expression::String(n.addr().to_string().into())
            } else {
                Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
                    addr: Box::new(Expression::String(n.network().to_string().into())),
                    len: n.prefix_len().into(),
                }))
            }
        })
        .collect();
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Single(schema::SetType::Ipv4Addr),
        flags: Some([schema::SetFlag::Interval].into_iter().collect()),
        elem: (!elem.is_empty()).then(|| elem.into()),
        ..Set::default()
    }))
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn regular_chain(name: &'static str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn meta_mark() -> Expression<'static> {
    meta(MetaKey::Mark)
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn ct_mark() -> Expression<'static> {
    ct("mark")
}

fn set_ref(name: &'static str) -> Expression<'static> {
    Expression::String(format!("@{name}").into())
}

/// An interface name as nft matches it: a trailing `*` is a prefix match,
/// and a name never holds a `*` elsewhere (checked by `validate`).
fn ifname(name: &str) -> Expression<'static> {
    Expression::String(name.to_string().into())
}

fn and(e: Expression<'static>, mask: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(e, num(mask))))
}

/// `KEY set (KEY & ~MARK_MASK) | bits`: pn's bits, nobody else's.
fn set_bits(key: Expression<'static>, bits: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: key.clone(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            and(key, !MARK_MASK),
            num(bits),
        ]))),
    })
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
