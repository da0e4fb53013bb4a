use std::collections::BTreeMap;

use super::*;
use crate::{
    Ip6, ip4, policy::IPPROTO_TCP, policy::IPPROTO_UDP, policy::Ipv4Summary, policy::Ipv6Summary,
};

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
    assert!(maglev::<Ip4>(&[], LB_TABLE_SIZE).is_empty());
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

const SYN: u8 = crate::policy::TCP_SYN;
const ACK: u8 = crate::policy::TCP_ACK;
const FIN: u8 = crate::policy::TCP_FIN;
const RST: u8 = crate::policy::TCP_RST;

fn open(addr: Ip4) -> LbConn {
    LbConn { addr, state: 0 }
}

#[test]
fn the_decision() {
    let svc = Service {
        tag: 7,
        backends: 3,
    };
    let p = pkt(40000);
    let b = ip4(10, 240, 0, 11);
    let live = |_| true;
    let now = || panic!("the clock is read only for a closed entry");
    let step = |flags, known, live: bool| lb_step(&p, flags, Some(&svc), 7, known, |_| live, now);
    assert_eq!(step(SYN, None, true), LbStep::Choose(LbCount::New));
    assert_eq!(step(ACK, Some(open(b)), true), LbStep::Keep(b));
    // A SYN again on an open entry: same backend, entries written again.
    assert_eq!(step(SYN, Some(open(b)), true), LbStep::Renew(b));
    // Its backend left the rotation: chosen again; an established
    // connection counts a reset on the one it left, a SYN a new one.
    assert_eq!(
        step(ACK, Some(open(b)), false),
        LbStep::Choose(LbCount::Reset(b))
    );
    assert_eq!(
        step(SYN, Some(open(b)), false),
        LbStep::Choose(LbCount::New)
    );
    // Entries lost (LRU) mid-connection: chosen again, not counted.
    assert_eq!(step(ACK, None, true), LbStep::Choose(LbCount::Nothing));
    // Another network's client, no service, no backend, no ports: untouched.
    assert_eq!(
        lb_step(&p, SYN, Some(&svc), 8, None, live, now),
        LbStep::Pass
    );
    assert_eq!(lb_step(&p, SYN, None, 7, None, live, now), LbStep::Pass);
    let empty = Service {
        tag: 7,
        backends: 0,
    };
    assert_eq!(
        lb_step(&p, SYN, Some(&empty), 7, None, live, now),
        LbStep::Pass
    );
    let icmp = Ipv4Summary { proto: 1, ..p };
    assert_eq!(
        lb_step(&icmp, 0, Some(&svc), 7, None, live, now),
        LbStep::Pass
    );
    let udp = Ipv4Summary {
        proto: IPPROTO_UDP,
        ..p
    };
    assert_eq!(
        lb_step(&udp, 0, Some(&svc), 7, None, live, now),
        LbStep::Choose(LbCount::New)
    );
    assert_eq!(
        lb_step(&udp, 0, Some(&svc), 7, Some(open(b)), |_| false, now),
        LbStep::Choose(LbCount::Moved(b))
    );
}

#[test]
fn fins_both_ways_or_a_reset_close_a_connection_once() {
    // Half-closed is still open (a client may shut its side and read on).
    let s = lb_closing(0, FIN | ACK, true, 100);
    assert_eq!(s, LB_FIN_CLIENT);
    assert!(!LbConn { addr: 1, state: s }.closed());
    // Its own FIN again (retransmitted): unchanged, no write.
    assert_eq!(lb_closing(s, FIN | ACK, true, 101), s);
    assert_eq!(lb_closing(s, ACK, false, 101), s);
    let closed = lb_closing(s, FIN | ACK, false, 102);
    let c = LbConn {
        addr: 1,
        state: closed,
    };
    assert!(c.closed());
    // Closed at 102: the later FIN/RST keeps that time.
    assert_eq!(lb_closing(closed, FIN | ACK, true, 150), closed);
    assert_eq!(lb_closing(closed, RST, false, 150), closed);
    assert!(!c.expired(102 + LB_CLOSED_GRACE_S - 1));
    assert!(c.expired(102 + LB_CLOSED_GRACE_S));
    // Either side's reset closes at once.
    let r = LbConn {
        addr: 1,
        state: lb_closing(0, RST | ACK, false, 7),
    };
    assert!(r.closed() && !r.expired(8) && r.expired(7 + LB_CLOSED_GRACE_S));
    assert!(
        LbConn {
            addr: 1,
            state: lb_closing(LB_FIN_BACKEND, RST, true, 7)
        }
        .closed()
    );
    // Nothing to do with anything but FIN and RST, and an open entry
    // never expires.
    assert_eq!(lb_closing(0, SYN, true, 7), 0);
    assert!(!open(1).expired(u32::MAX));
    // The clock is kept modulo 2^30 s: a time past the wrap still works.
    let w = LbConn {
        addr: 1,
        state: lb_closing(0, RST, true, (1 << 30) - 5),
    };
    assert!(!w.expired(1 << 30) && w.expired((1 << 30) + LB_CLOSED_GRACE_S));
}

#[test]
fn a_closed_tuple_is_free_for_a_new_connection() {
    let svc = Service {
        tag: 7,
        backends: 3,
    };
    let p = pkt(40000);
    let b = ip4(10, 240, 0, 11);
    let closed = LbConn {
        addr: b,
        state: lb_closing(LB_FIN_CLIENT, FIN | ACK, false, 1000),
    };
    let step = |flags, live: bool, now: u32| {
        lb_step(&p, flags, Some(&svc), 7, Some(closed), |_| live, || now)
    };
    // The same client port opens again: a new connection, chosen afresh.
    assert_eq!(step(SYN, true, 1001), LbStep::Choose(LbCount::New));
    // The last ACK of the close still reaches its backend.
    assert_eq!(step(ACK, true, 1001), LbStep::Keep(b));
    // Its backend gone meanwhile: not a reset of a live connection.
    assert_eq!(step(ACK, false, 1001), LbStep::Choose(LbCount::Nothing));
    // Long after: the entries go.
    assert_eq!(step(ACK, true, 1000 + LB_CLOSED_GRACE_S), LbStep::Expire(b));
}

#[test]
fn only_a_syn_without_ack_opens() {
    assert!(opens(IPPROTO_TCP, SYN));
    assert!(!opens(IPPROTO_TCP, SYN | ACK));
    assert!(!opens(IPPROTO_TCP, ACK));
    assert!(!opens(IPPROTO_UDP, SYN));
    assert!(may_close(FIN | ACK) && may_close(RST) && !may_close(SYN | ACK));
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
    // And from the reply, the forward entry it pairs with.
    assert_eq!(
        LbConnKey::forward_of_reply(&reply, p.dst),
        LbConnKey::forward(&p)
    );
    // A SYN straight to the backend from the same port names the reverse
    // entry the balanced connection left (the one the datapath removes).
    let direct = Ipv4Summary { dst: backend, ..p };
    assert_eq!(
        LbConnKey::reverse_of(&direct, direct.dst),
        LbConnKey::reply(&reply)
    );
}

#[test]
fn a_udp_stamp_ages_and_never_reads_as_closed() {
    let now = 5_000;
    let c = LbConn {
        addr: 1,
        state: udp_stamp(now),
    };
    assert!(!c.closed());
    assert!(!c.expired(now + 1_000));
    assert_eq!(udp_idle_s(c.state, now), 0);
    assert_eq!(udp_idle_s(c.state, now + 300), 300);
    // An earlier agent's entry: as old as the clock.
    assert_eq!(udp_idle_s(0, now), now);
    // Past the 30 bits the seconds wrap, and so does the difference.
    assert_eq!(udp_idle_s(udp_stamp((1 << 30) - 1), 9), 10);
}

fn ip6(last: u16) -> Ip6 {
    let mut a = [
        0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

#[test]
fn ipv4_tables_and_slots_are_what_they_were_before_ipv6() {
    // The formula before the types took an address type: hosts of both
    // releases must keep agreeing on tables and slots.
    let p = pkt(40000);
    let ports = (40000u32 << 16) | p.dport as u32;
    let old = fmix32(p.src ^ fmix32(p.dst ^ fmix32(ports ^ p.proto as u32))) % LB_TABLE_SIZE;
    assert_eq!(slot_of(&p), old);
}

#[test]
fn ipv6_tables_are_even_and_depend_on_the_set_only() {
    for n in [1u16, 2, 3, 7, 50] {
        let b: Vec<Ip6> = (1..=n).map(|i| ip6(0x10 + i)).collect();
        let t = maglev(&b, LB_TABLE_SIZE);
        assert_eq!(t.len(), LB_TABLE_SIZE as usize);
        let mut s: BTreeMap<Ip6, usize> = BTreeMap::new();
        for x in &t {
            *s.entry(*x).or_default() += 1;
        }
        assert_eq!(s.len(), n as usize, "every backend has slots");
        let fair = LB_TABLE_SIZE as usize / n as usize;
        for (_, c) in s {
            assert!(c == fair || c == fair + 1, "{n} backends: {c} slots");
        }
        let mut r = b.clone();
        r.reverse();
        assert_eq!(maglev(&r, LB_TABLE_SIZE), t);
    }
}

#[test]
fn ipv6_addresses_of_one_prefix_fold_apart() {
    // Swapped words would collide under a plain XOR of the words.
    let mut a = ip6(0);
    let mut b = ip6(0);
    a[11] = 1;
    a[15] = 2;
    b[11] = 2;
    b[15] = 1;
    assert_ne!(a.fold(), b.fold());
    let folds: std::collections::BTreeSet<u32> = (0..4096).map(|i| ip6(i).fold()).collect();
    assert_eq!(folds.len(), 4096);
}

#[test]
fn ipv6_flows_spread_and_decide_as_ipv4() {
    let p = |sport| Ipv6Summary {
        src: ip6(2),
        dst: ip6(3),
        proto: IPPROTO_TCP,
        sport,
        dport: 80,
    };
    let slots: std::collections::BTreeSet<u32> = (40000..41000).map(|s| slot_of(&p(s))).collect();
    assert!(slots.len() > 500, "1000 ports hit {} slots", slots.len());
    let svc = Service {
        tag: 7,
        backends: 2,
    };
    let b = ip6(0x11);
    let now = || panic!("the clock is read only for a closed entry");
    let q = p(40000);
    assert_eq!(
        lb_step(&q, SYN, Some(&svc), 7, None, |_| true, now),
        LbStep::Choose(LbCount::New)
    );
    let open6 = LbConn { addr: b, state: 0 };
    assert_eq!(
        lb_step(&q, ACK, Some(&svc), 7, Some(open6), |_| true, now),
        LbStep::Keep(b)
    );
    assert_eq!(
        lb_step(&q, ACK, Some(&svc), 7, Some(open6), |_| false, now),
        LbStep::Choose(LbCount::Reset(b))
    );
    assert_eq!(
        lb_step(&q, SYN, Some(&svc), 8, None, |_| true, now),
        LbStep::Pass
    );
    let closed = lb_closing(lb_closing(0, FIN, true, 5), FIN, false, 9);
    let c = LbConn {
        addr: b,
        state: closed,
    };
    assert!(c.closed());
    assert_eq!(
        lb_step(&q, SYN, Some(&svc), 7, Some(c), |_| true, || 10),
        LbStep::Choose(LbCount::New)
    );
    assert_eq!(
        lb_step(
            &q,
            ACK,
            Some(&svc),
            7,
            Some(c),
            |_| true,
            || 9 + LB_CLOSED_GRACE_S
        ),
        LbStep::Expire(b)
    );
    // Both entries name each other, as IPv4's.
    let r = LbConnKey::reverse_of(&q, b);
    let reply = Ipv6Summary {
        src: b,
        dst: q.src,
        proto: IPPROTO_TCP,
        sport: 80,
        dport: 40000,
    };
    assert_eq!(LbConnKey::reply(&reply), r);
    assert_eq!(
        LbConnKey::forward_of_reply(&reply, q.dst),
        LbConnKey::forward(&q)
    );
}

/// The marks of `PN_LB_CLIENTS` tell apart the containers of a host (one
/// block of addresses), for both families, and stay within the array.
#[test]
fn client_marks_are_the_last_two_bytes_of_an_address() {
    assert_eq!(client_mark(&ip4(10, 240, 1, 7)), 0x0107);
    assert_eq!(client_mark(&ip4(10, 241, 255, 255)), 0xffff);
    assert_ne!(
        client_mark(&ip4(10, 240, 0, 11)),
        client_mark(&ip4(10, 240, 0, 12))
    );
    assert_eq!(client_mark(&ip6(0x0107)), 0x0107);
    assert_ne!(client_mark(&ip6(11)), client_mark(&ip6(12)));
    assert!(client_mark(&[0xff; 16]) < MAX_LB_CLIENTS);
}
