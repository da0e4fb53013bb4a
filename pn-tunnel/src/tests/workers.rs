//! Several workers on one session at once, as the device runs them: each
//! seals under the tunnel's shared lock with counters from the session's
//! atomic, and their datagrams arrive interleaved and out of order, opened
//! by several receivers at once.

use std::sync::RwLock;

use super::*;
use crate::replay::WINDOW;

/// Seals `n` packets from one sender on `a`'s session to B.
fn seal_many(a: &Tunnel, clock: Clock, n: u32, first: u32) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let mut out = vec![0u8; 2048];
            let Some((Encap::Send { len, .. }, Some(sealer))) =
                a.encapsulate_shared(clock, B, 7, 0, &packet(i), &mut out)
            else {
                panic!("a live session takes packets on the shared path")
            };
            out.truncate(len);
            sealer.seal(&mut out);
            out
        })
        .collect()
}

fn counter(d: &[u8]) -> u64 {
    match wire::parse(d) {
        Ok(wire::Message::Data { counter, .. }) => counter,
        _ => panic!("a data datagram"),
    }
}

/// Opens `d` at `b` as a worker does; the packet's number if delivered.
fn receive(b: &RwLock<Tunnel>, clock: Clock, mut d: Vec<u8>) -> Result<u32, Reason> {
    let prepared = b.read().unwrap().decapsulate_shared(clock, &d);
    let opener = match prepared {
        Some(Ok(o)) => o,
        Some(Err(Decap::Drop(r))) => return Err(r),
        other => panic!("unexpected {:?}", other.map(|r| r.err())),
    };
    assert!(opener.open(&mut d));
    let shared = b.read().unwrap().opened_shared(&opener, d.len());
    let decap = shared.unwrap_or_else(|| b.write().unwrap().opened(&opener, d.len()));
    match decap {
        Decap::Packet { start, .. } => Ok(u32::from_be_bytes(
            d[start + 4..start + 8].try_into().unwrap(),
        )),
        Decap::Drop(r) => Err(r),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn two_senders_never_share_a_nonce_and_their_interleaving_is_accepted() {
    const EACH: u32 = 3000;
    // Both senders' datagrams must all fit in the window whatever the
    // interleaving (≥ 2048 is what the device's batches need).
    const _: () = assert!(WINDOW >= 2048 && 2 * EACH as u64 <= WINDOW);
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(0));
    p.send(false, &packet(0));
    let clock = p.clock;
    let (x, y) = std::thread::scope(|s| {
        let a = &p.a;
        let x = s.spawn(move || seal_many(a, clock, EACH, 1));
        let y = s.spawn(move || seal_many(a, clock, EACH, 1 + EACH));
        (x.join().unwrap(), y.join().unwrap())
    });
    let mut counters: Vec<u64> = x.iter().chain(&y).map(|d| counter(d)).collect();
    counters.sort_unstable();
    counters.dedup();
    assert_eq!(counters.len(), 2 * EACH as usize, "a nonce used twice");

    // The receiving side: two workers at once, each with one sender's
    // datagrams (so each sees the other's far ahead or behind), plus a
    // copy of everything replayed afterwards.
    let b = RwLock::new(p.b);
    let (got_x, got_y) = std::thread::scope(|s| {
        let (b, x2, y2) = (&b, x.clone(), y.clone());
        let rx = s.spawn(move || x2.into_iter().map(|d| receive(b, clock, d)).collect());
        let ry = s.spawn(move || y2.into_iter().rev().map(|d| receive(b, clock, d)).collect());
        let (gx, gy): (Vec<_>, Vec<_>) = (rx.join().unwrap(), ry.join().unwrap());
        (gx, gy)
    });
    let mut delivered: Vec<u32> = got_x
        .into_iter()
        .chain(got_y)
        .map(|r| r.expect("every datagram within the window is accepted"))
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=2 * EACH).collect::<Vec<_>>());
    for d in x.into_iter().chain(y) {
        assert_eq!(receive(&b, clock, d), Err(Reason::Replayed));
    }
}

#[test]
fn a_sender_lagging_by_2048_datagrams_is_still_accepted() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(0));
    p.send(false, &packet(0));
    let clock = p.clock;
    // Counters taken by two workers in turns of 64 (a batch each), the
    // second worker's datagrams reaching the peer 2048 counters late.
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for turn in 0..64u32 {
        let batch = seal_many(&p.a, clock, 64, 1 + turn * 64);
        if turn % 2 == 0 {
            fast.extend(batch);
        } else {
            slow.extend(batch);
        }
    }
    let b = RwLock::new(p.b);
    let lag = 2048;
    let mut pending = std::collections::VecDeque::from(slow);
    for d in fast {
        let c = counter(&d);
        assert!(receive(&b, clock, d).is_ok());
        while pending.front().is_some_and(|s| counter(s) + lag <= c) {
            let late = pending.pop_front().unwrap();
            assert!(receive(&b, clock, late).is_ok(), "a datagram {lag} late");
        }
    }
    for late in pending {
        assert!(receive(&b, clock, late).is_ok());
    }
}
