use std::collections::BTreeMap;

use super::*;
use crate::{ip4, policy::IPPROTO_TCP, policy::IPPROTO_UDP};

fn backends(n: u8) -> Vec<Ip4> {
    (1..=n).map(|i| ip4(10, 240, 0, 10 + i)).collect()
}

fn shares(table: &[Ip4]) -> BTreeMap<Ip4, usize> {
    let mut out = BTreeMap::new();
    for b in table {
        *out.entry(*b).or_default() += 1;
    }
    out
}

#[test]
fn every_slot_names_a_backend_and_shares_are_even() {
    for n in [1u8, 2, 3, 7, 50] {
        let t = maglev(&backends(n), LB_TABLE_SIZE);
        assert_eq!(t.len(), LB_TABLE_SIZE as usize);
        let s = shares(&t);
        assert_eq!(s.len(), n as usize);
        let fair = LB_TABLE_SIZE as usize / n as usize;
        for (b, c) in s {
            assert!(c == fair || c == fair + 1, "{n} backends: {b:x} has {c}");
        }
    }
    assert!(maglev(&[], LB_TABLE_SIZE).is_empty());
}

#[test]
fn the_table_depends_on_the_set_only() {
    let mut b = backends(5);
    let t = maglev(&b, LB_TABLE_SIZE);
    b.reverse();
    b.push(b[0]);
    assert_eq!(maglev(&b, LB_TABLE_SIZE), t);
}

#[test]
fn a_backend_change_moves_little_more_than_its_share() {
    let before = maglev(&backends(10), LB_TABLE_SIZE);
    // One removed: its slots move, and only a few others.
    let mut nine = backends(10);
    let gone = nine.remove(3);
    let after = maglev(&nine, LB_TABLE_SIZE);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let own = before.iter().filter(|b| **b == gone).count();
    assert!(moved >= own, "{moved} < {own}");
    assert!(
        moved <= own + LB_TABLE_SIZE as usize / 10,
        "removing one of 10 moved {moved} slots (its own: {own})"
    );
    for (a, b) in before.iter().zip(&after) {
        if *a != gone && a != b {
            continue;
        }
        if *a == gone {
            assert_ne!(*b, gone);
        }
    }
    // One added: it takes about its share, from everybody.
    let eleven: Vec<Ip4> = backends(11);
    let after = maglev(&eleven, LB_TABLE_SIZE);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let share = LB_TABLE_SIZE as usize / 11;
    assert!(
        moved <= share + LB_TABLE_SIZE as usize / 10,
        "adding one to 10 moved {moved} slots (share {share})"
    );
}

fn pkt(sport: u16) -> Ipv4Summary {
    Ipv4Summary {
        src: ip4(10, 240, 0, 2),
        dst: ip4(10, 240, 0, 200),
        proto: IPPROTO_TCP,
        sport,
        dport: 80,
    }
}

#[test]
fn connections_of_one_client_spread_over_the_slots() {
    let t = maglev(&backends(3), LB_TABLE_SIZE);
    let mut per = BTreeMap::<Ip4, u32>::new();
    for port in 32768..(32768 + 3000) {
        let slot = slot_of(&pkt(port));
        assert!(slot < LB_TABLE_SIZE);
        *per.entry(t[slot as usize]).or_default() += 1;
    }
    assert_eq!(per.len(), 3);
    for (b, n) in per {
        assert!((900..=1100).contains(&n), "{b:x}: {n} of 3000");
    }
    // Deterministic: the same flow, the same slot.
    assert_eq!(slot_of(&pkt(40000)), slot_of(&pkt(40000)));
}

#[test]
fn the_decision() {
    let svc = Service {
        tag: 7,
        backends: 3,
    };
    let p = pkt(40000);
    let live = |_| true;
    assert_eq!(
        lb_step(&p, Some(&svc), 7, None, live),
        LbStep::Choose { moved: false }
    );
    assert_eq!(
        lb_step(&p, Some(&svc), 7, Some(ip4(10, 240, 0, 11)), live),
        LbStep::Keep(ip4(10, 240, 0, 11))
    );
    // Its backend left the rotation: chosen again, counted as moved.
    assert_eq!(
        lb_step(&p, Some(&svc), 7, Some(ip4(10, 240, 0, 11)), |_| false),
        LbStep::Choose { moved: true }
    );
    // Another network's client, no service, no backend, no ports: untouched.
    assert_eq!(lb_step(&p, Some(&svc), 8, None, live), LbStep::Pass);
    assert_eq!(lb_step(&p, None, 7, None, live), LbStep::Pass);
    let empty = Service {
        tag: 7,
        backends: 0,
    };
    assert_eq!(lb_step(&p, Some(&empty), 7, None, live), LbStep::Pass);
    let icmp = Ipv4Summary { proto: 1, ..p };
    assert_eq!(lb_step(&icmp, Some(&svc), 7, None, live), LbStep::Pass);
    let udp = Ipv4Summary {
        proto: IPPROTO_UDP,
        ..p
    };
    assert_eq!(
        lb_step(&udp, Some(&svc), 7, None, live),
        LbStep::Choose { moved: false }
    );
}

#[test]
fn a_reply_finds_the_reverse_entry_its_request_left() {
    let p = pkt(40000);
    let backend = ip4(10, 240, 0, 12);
    let reply = Ipv4Summary {
        src: backend,
        dst: p.src,
        proto: p.proto,
        sport: p.dport,
        dport: p.sport,
    };
    assert_eq!(LbConnKey::reply(&reply), LbConnKey::reverse_of(&p, backend));
    assert_ne!(LbConnKey::forward(&p), LbConnKey::reverse_of(&p, p.dst));
}
