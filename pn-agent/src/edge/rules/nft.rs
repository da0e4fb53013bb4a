//! Short constructors for the `nftables` crate's objects, expressions and
//! statements, so [`super::ruleset`] reads like the table it writes.

use ipnet::{Ipv4Net, Ipv6Net};
use nftables::{
    expr::{
        BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    },
    schema::{self, Chain, NfListObject, Rule, Set, SetTypeValue},
    stmt::{Counter, Mangle, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use pn_common::edge::MARK_MASK;

/// The table pn owns (family `inet`).
pub const TABLE: &str = "pn";

pub(super) fn addr_set(name: &'static str, nets: &[Ipv4Net]) -> NfListObject<'static> {
    let elem = nets
        .iter()
        .map(|n| prefix(n.network().to_string(), n.prefix_len(), 32))
        .collect();
    prefix_set(name, schema::SetType::Ipv4Addr, elem)
}

pub(super) fn addr_set6(name: &'static str, nets: &[Ipv6Net]) -> NfListObject<'static> {
    let elem = nets
        .iter()
        .map(|n| prefix(n.network().to_string(), n.prefix_len(), 128))
        .collect();
    prefix_set(name, schema::SetType::Ipv6Addr, elem)
}

/// An address, or a prefix when shorter than the family's `full` length.
fn prefix(network: String, len: u8, full: u8) -> Expression<'static> {
    if len == full {
        Expression::String(network.into())
    } else {
        Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
            addr: Box::new(Expression::String(network.into())),
            len: len.into(),
        }))
    }
}

fn prefix_set(
    name: &'static str,
    kind: schema::SetType,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Single(kind),
        flags: Some([schema::SetFlag::Interval].into_iter().collect()),
        elem: (!elem.is_empty()).then(|| elem.into()),
        ..Set::default()
    }))
}

pub(super) fn base_chain(
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

pub(super) fn regular_chain(name: &'static str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    })
}

pub(super) fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

pub(super) fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn meta_mark() -> Expression<'static> {
    meta(MetaKey::Mark)
}

pub(super) fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

/// A packet of a connection conntrack already let through (either way),
/// or related to one (its ICMP errors).
pub(super) fn established() -> Statement<'static> {
    Statement::Match(Match {
        left: ct("state"),
        right: Expression::List(vec![
            Expression::String("established".into()),
            Expression::String("related".into()),
        ]),
        op: Operator::IN,
    })
}

pub(super) fn counted(name: &'static str) -> Statement<'static> {
    Statement::Counter(Counter::Named(name.into()))
}

pub(super) fn ct_mark() -> Expression<'static> {
    ct("mark")
}

pub(super) fn set_ref(name: &'static str) -> Expression<'static> {
    Expression::String(format!("@{name}").into())
}

/// An interface name as nft matches it: a trailing `*` is a prefix match,
/// and a name never holds a `*` elsewhere (checked by `validate`).
pub(super) fn ifname(name: &str) -> Expression<'static> {
    Expression::String(name.to_string().into())
}

pub(super) fn and(e: Expression<'static>, mask: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(e, num(mask))))
}

/// `KEY set (KEY & ~MARK_MASK) | bits`: pn's bits, nobody else's.
pub(super) fn set_bits(key: Expression<'static>, bits: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: key.clone(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            and(key, !MARK_MASK),
            num(bits),
        ]))),
    })
}

pub(super) fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

pub(super) fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}
