//! A tunnel handed over to a successor: the sessions go on with no new
//! handshake, no nonce is used twice, and no datagram seen before the
//! hand-over is accepted again after it.

use super::*;
use crate::carry::{COUNTER_MARGIN, Carried, CarryError, VERSION};

/// A's successor: same static key, same peer, A's sessions imported.
fn successor(p: &Pair, carried: &Carried) -> (Tunnel, usize) {
    let mut next = Tunnel::new(Config::default(), p.a.keys.clone(), 0x9999);
    next.set_peer(B, p.b.public_key(), addr(2));
    let bytes = carried.encode();
    let back = Carried::decode(&bytes).expect("decodes what it encoded");
    let taken = next.import(&back, p.clock.now);
    (next, taken)
}

/// The counter of a data datagram (after its type, tag and receiver).
fn counter_of(d: &[u8]) -> u64 {
    u64::from_le_bytes(d[12..20].try_into().unwrap())
}

#[test]
fn sessions_go_on_after_a_hand_over_without_a_handshake() {
    let mut p = Pair::new(Config::default());
    for i in 0..20 {
        assert_eq!(p.send(i % 2 == 0, &packet(i)), vec![packet(i)]);
    }
    // Datagrams B sent to A before the hand-over, kept by an attacker.
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Send { len, .. } = p.b.encapsulate(clock, A, 7, 0, &packet(100), &mut out) else {
        panic!("B has a session")
    };
    let recorded = out[..len].to_vec();
    let (delivered, _) = p.deliver(false, recorded.clone());
    assert_eq!(delivered, vec![packet(100)]);
    let last_a_counter = {
        let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(101), &mut out)
        else {
            panic!()
        };
        let d = out[..len].to_vec();
        assert_eq!(p.deliver(true, d.clone()).0, vec![packet(101)]);
        counter_of(&d)
    };
    let carried = p.a.export(clock.now, COUNTER_MARGIN);
    assert_eq!(carried.sessions(), 1);
    let (next, taken) = successor(&p, &carried);
    assert_eq!(taken, 1);
    p.a = next;
    let handshakes = p.b.stats.initiations_answered + p.b.stats.handshakes_completed;
    // Both ways at once, on the same session.
    let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(102), &mut out) else {
        panic!("the successor sends at once")
    };
    let first = out[..len].to_vec();
    assert_eq!(
        counter_of(&first),
        last_a_counter + 1 + COUNTER_MARGIN,
        "the successor's counters start past the margin"
    );
    assert_eq!(p.deliver(true, first).0, vec![packet(102)]);
    for i in 103..140 {
        assert_eq!(p.send(i % 2 == 0, &packet(i)), vec![packet(i)]);
    }
    assert_eq!(
        p.b.stats.initiations_answered + p.b.stats.handshakes_completed,
        handshakes,
        "no new handshake"
    );
    assert_eq!(p.a.stats.initiations_sent, 0);
    // The replay window came along: the recorded datagram is refused.
    let mut d = recorded;
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        p.a.decapsulate(clock, addr(2), &mut d, &mut buf),
        Decap::Drop(Reason::Replayed)
    );
}

#[test]
fn a_peer_whose_key_changed_meanwhile_gets_no_session() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    let carried = p.a.export(p.clock.now, COUNTER_MARGIN);
    let mut next = Tunnel::new(Config::default(), p.a.keys.clone(), 1);
    next.set_peer(B, StaticKeys::generate().unwrap().public, addr(2));
    assert_eq!(next.import(&carried, p.clock.now), 0);
    let mut alone = Tunnel::new(Config::default(), p.a.keys.clone(), 1);
    assert_eq!(alone.import(&carried, p.clock.now), 0, "unknown peer");
}

#[test]
fn session_ages_carry_over_so_rekeys_stay_on_time() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    p.advance(Duration::from_secs(100));
    let carried = p.a.export(p.clock.now, COUNTER_MARGIN);
    let (next, _) = successor(&p, &carried);
    let age = next
        .peer_state(B, p.clock.now)
        .and_then(|s| s.session_age)
        .unwrap();
    assert!(age >= Duration::from_secs(99), "{age:?}");
}

#[test]
fn other_versions_and_damaged_bytes_are_refused_without_panic() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    p.send(false, &packet(2));
    let bytes = p.a.export(p.clock.now, COUNTER_MARGIN).encode();
    let mut other = bytes.to_vec();
    other[4..8].copy_from_slice(&(VERSION + 1).to_be_bytes());
    assert_eq!(
        Carried::decode(&other).err(),
        Some(CarryError::Version(VERSION + 1))
    );
    assert_eq!(Carried::decode(b"nope").err(), Some(CarryError::Magic));
    for cut in 0..bytes.len() {
        assert!(Carried::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Carried::decode(&longer).is_err());
    let mut x = 0x1234_5678u64;
    for _ in 0..2000 {
        let mut d = bytes.to_vec();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % d.len();
            d[at] ^= (x >> 32) as u8 | 1;
        }
        let _ = Carried::decode(&d);
    }
}
