//! Data datagrams naming indexes nobody gave, as anyone on the underlay can
//! send them under a peer's address: they must not buy handshakes.

use super::*;
use crate::wire::{DATA_MIN_LEN, write_data_header};

/// A data datagram under `from`'s address naming `receiver`, sealed by
/// nobody.
fn forged(p: &mut Pair, to_b: bool, receiver: u32) -> Decap {
    let clock = p.clock;
    let (_, rx, _, from) = p.sides(to_b);
    let mut d = vec![0u8; DATA_MIN_LEN + 40];
    write_data_header(&mut d[..DATA_HEADER_LEN], 0, 7, receiver, 1);
    let mut out = vec![0u8; 2048];
    rx.decapsulate(clock, from, &mut d, &mut out)
}

#[test]
fn sprayed_indexes_start_no_handshake_while_the_pair_is_whole() {
    let mut p = Pair::new(Config::default());
    assert_eq!(p.send(true, &packet(1)), vec![packet(1)]);
    assert_eq!(p.send(false, &packet(2)), vec![packet(2)]);
    let before = p.a.stats.initiations_sent + p.b.stats.initiations_sent;
    for i in 0..1000u32 {
        let receiver = i.wrapping_mul(0x9e37_79b9) | 1;
        assert_eq!(
            forged(&mut p, true, receiver),
            Decap::Drop(Reason::UnknownSession)
        );
    }
    p.advance(Duration::from_millis(100));
    let (a, b) = p.tick_both();
    assert!(a.is_empty() && b.is_empty());
    assert_eq!(
        p.a.stats.initiations_sent + p.b.stats.initiations_sent,
        before,
        "no handshake bought by a stranger"
    );
    assert_eq!(p.send(true, &packet(3)), vec![packet(3)]);
}

#[test]
fn without_a_session_sprayed_indexes_start_one_attempt_at_most() {
    let mut p = Pair::new(Config::default());
    // B holds no session with A (a restart lost them): the first datagram
    // on an unknown index asks for one, as a restarted host needs…
    for i in 0..100u32 {
        assert_eq!(
            forged(&mut p, true, 0x100 + i),
            Decap::Drop(Reason::UnknownSession)
        );
    }
    let clock = p.clock;
    let mut out = vec![];
    p.b.tick(clock, &mut out);
    assert_eq!(out.len(), 1, "one initiation");
    // …and while it is in flight, more of them ask for nothing.
    for i in 0..100u32 {
        forged(&mut p, true, 0x1000 + i);
    }
    p.advance(Duration::from_millis(100));
    out.clear();
    let clock = p.clock;
    p.b.tick(clock, &mut out);
    assert!(out.is_empty());
    assert_eq!(p.b.stats.initiations_sent, 1);
}
