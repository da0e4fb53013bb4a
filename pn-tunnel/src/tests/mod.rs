//! Two tunnels talking in memory: handshakes, data both ways, rekeys under
//! traffic, and everything an attacker on the underlay can try (floods of
//! handshakes in `flood`).

mod carry;
mod cipher;
mod flood;
mod members;
mod strangers;
mod workers;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use pn_common::Reason;

use super::*;
use crate::{
    cookie::PeerCookie,
    handshake::StaticKeys,
    wire::{AEAD_TAG_LEN, DATA_HEADER_LEN, INIT_LEN, RESP_LEN},
};

const A: PeerId = 1;
const B: PeerId = 2;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 100, n], 51871))
}

struct Pair {
    a: Tunnel,
    b: Tunnel,
    clock: Clock,
}

impl Pair {
    fn new(mut cfg: Config) -> Pair {
        // Counted handshakes only: their measured time depends on the
        // machine (and on the other tests running).
        cfg.handshake_cpu_per_sec = Duration::from_secs(3600);
        let ka = StaticKeys::generate().unwrap();
        let kb = StaticKeys::generate().unwrap();
        let mut a = Tunnel::new(cfg.clone(), ka.clone(), 0x1234);
        let mut b = Tunnel::new(cfg, kb.clone(), 0x5678);
        a.set_peer(B, kb.public, addr(2));
        b.set_peer(A, ka.public, addr(1));
        Pair {
            a,
            b,
            clock: Clock {
                now: Instant::now(),
                wall_ns: 1_700_000_000_000_000_000,
            },
        }
    }

    fn advance(&mut self, d: Duration) {
        self.clock.now += d;
        self.clock.wall_ns += d.as_nanos() as u64;
    }

    fn sides(&mut self, from_a: bool) -> (&mut Tunnel, &mut Tunnel, PeerId, SocketAddr) {
        if from_a {
            (&mut self.a, &mut self.b, B, addr(1))
        } else {
            (&mut self.b, &mut self.a, A, addr(2))
        }
    }

    /// Delivers one datagram to the other side; returns (packets delivered
    /// there, datagrams it sends back).
    fn deliver(&mut self, to_b: bool, mut d: Vec<u8>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let clock = self.clock;
        let (_, rx, _, from) = self.sides(to_b);
        let mut out = vec![0u8; 2048];
        match rx.decapsulate(clock, from, &mut d, &mut out) {
            Decap::Packet { start, end, .. } if start == end => (vec![], vec![]),
            Decap::Packet { start, end, .. } => (vec![d[start..end].to_vec()], vec![]),
            Decap::Reply { len, .. } => (vec![], vec![out[..len].to_vec()]),
            Decap::Established { flush, .. } => {
                (vec![], flush.into_iter().map(|(_, d)| d).collect())
            }
            Decap::Cookie { len, .. } => (vec![], vec![out[..len].to_vec()]),
            Decap::Done => (vec![], vec![]),
            Decap::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    /// Runs datagrams back and forth until quiet; returns what each side got.
    fn settle(&mut self, mut pending: Vec<(bool, Vec<u8>)>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut at_a, mut at_b) = (vec![], vec![]);
        while let Some((to_b, d)) = pending.pop() {
            let (pkts, back) = self.deliver(to_b, d);
            if to_b {
                at_b.extend(pkts);
            } else {
                at_a.extend(pkts);
            }
            pending.extend(back.into_iter().map(|d| (!to_b, d)));
        }
        (at_a, at_b)
    }

    /// Sends a packet from one side, handling whatever it triggers.
    fn send(&mut self, from_a: bool, pkt: &[u8]) -> Vec<Vec<u8>> {
        let clock = self.clock;
        let (tx, _, peer, _) = self.sides(from_a);
        let mut out = vec![0u8; 2048];
        let first = match tx.encapsulate(clock, peer, 7, 0, pkt, &mut out) {
            Encap::Send { len, .. } | Encap::Handshake { len, .. } => out[..len].to_vec(),
            Encap::Queued => return vec![],
            Encap::Drop(r) => panic!("encapsulate dropped: {r:?}"),
        };
        let (at_a, at_b) = self.settle(vec![(from_a, first)]);
        if from_a { at_b } else { at_a }
    }

    fn tick_both(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let clock = self.clock;
        let (mut oa, mut ob) = (vec![], vec![]);
        self.a.tick(clock, &mut oa);
        self.b.tick(clock, &mut ob);
        let pending = oa
            .into_iter()
            .map(|(_, d)| (true, d))
            .chain(ob.into_iter().map(|(_, d)| (false, d)))
            .collect();
        self.settle(pending)
    }
}

fn packet(n: u32) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 40];
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&[0u8; 32]);
    p
}

#[test]
fn first_packet_waits_for_the_handshake_then_both_ways_flow() {
    let mut p = Pair::new(Config::default());
    let got = p.send(true, &packet(1));
    assert_eq!(
        got,
        vec![packet(1)],
        "queued, then flushed after the handshake"
    );
    assert_eq!(p.a.stats.handshakes_completed, 1);
    assert_eq!(
        p.send(false, &packet(2)),
        vec![packet(2)],
        "B answers on the session A opened"
    );
    for i in 3..50 {
        assert_eq!(p.send(i % 2 == 0, &packet(i)), vec![packet(i)]);
    }
    assert_eq!(
        p.a.stats.initiations_sent + p.b.stats.initiations_sent,
        1,
        "one handshake"
    );
}

#[test]
fn a_rekey_by_count_under_traffic_loses_nothing() {
    let cfg = Config {
        rekey_after_messages: 100,
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    let mut sent = 0;
    let mut got = 0;
    for i in 0..2000u32 {
        sent += 1;
        got += p.send(i % 3 != 0, &packet(i)).len();
        if i % 10 == 0 {
            let (a, b) = p.tick_both();
            got += a.len() + b.len();
        }
    }
    assert_eq!(got, sent, "every packet arrives across the rekeys");
    assert!(
        p.a.stats.handshakes_completed + p.b.stats.handshakes_completed >= 10,
        "{:?} {:?}",
        p.a.stats,
        p.b.stats
    );
}

#[test]
fn a_rekey_by_time_under_traffic_loses_nothing() {
    let cfg = Config {
        rekey_after_time: Duration::from_secs(10),
        reject_after_time: Duration::from_secs(15),
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    let mut indexes = std::collections::BTreeSet::new();
    for i in 0..600u32 {
        assert_eq!(
            p.send(i % 2 == 0, &packet(i)),
            vec![packet(i)],
            "packet {i}"
        );
        p.advance(Duration::from_millis(100));
        let (a, b) = p.tick_both();
        assert!(a.is_empty() && b.is_empty());
        if let Some(s) = p.a.peers[&B].sending() {
            indexes.insert(s.local_index);
        }
    }
    assert!(
        indexes.len() >= 5,
        "sessions renewed every ~10 s: {indexes:?}"
    );
}

#[test]
fn replays_and_tampering_are_dropped() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(2), &mut out) else {
        panic!()
    };
    let d = out[..len].to_vec();
    let mut buf = vec![0u8; 2048];
    assert!(matches!(
        p.b.decapsulate(clock, addr(1), &mut d.clone(), &mut buf),
        Decap::Packet { .. }
    ));
    assert_eq!(
        p.b.decapsulate(clock, addr(1), &mut d.clone(), &mut buf),
        Decap::Drop(Reason::Replayed)
    );
    let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(3), &mut out) else {
        panic!()
    };
    for pos in [0usize, 5, 9, 13, 25, len - 1] {
        let mut t = out[..len].to_vec();
        t[pos] ^= 0x40;
        let r = p.b.decapsulate(clock, addr(1), &mut t, &mut buf);
        assert!(matches!(r, Decap::Drop(_)), "byte {pos}: {r:?}");
    }
    // The untouched one still passes afterwards: failed attempts record nothing.
    assert!(matches!(
        p.b.decapsulate(clock, addr(1), &mut out[..len].to_vec(), &mut buf),
        Decap::Packet { .. }
    ));
}

/// The device opens outside the tunnel's lock: two copies of one datagram
/// may both be opened before either is recorded. Only one gets through.
#[test]
fn copies_opened_concurrently_deliver_once() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let (Encap::Send { len, .. }, Some(sealer)) =
        p.a.encapsulate_deferred(clock, B, 7, 0, &packet(2), &mut out)
    else {
        panic!("a session is up")
    };
    // Unsealed, it does not authenticate; sealed, it does.
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        p.b.decapsulate(clock, addr(1), &mut out[..len].to_vec(), &mut buf),
        Decap::Drop(Reason::DecryptFailed)
    );
    sealer.seal(&mut out[..len]);
    let (mut c1, mut c2) = (out[..len].to_vec(), out[..len].to_vec());
    let o1 =
        p.b.decapsulate_deferred(clock, addr(1), &c1, &mut buf)
            .ok()
            .unwrap();
    let o2 =
        p.b.decapsulate_deferred(clock, addr(1), &c2, &mut buf)
            .ok()
            .unwrap();
    assert!(o1.open(&mut c1) && o2.open(&mut c2));
    assert_eq!(&c1[DATA_HEADER_LEN..len - AEAD_TAG_LEN], &packet(2)[..]);
    assert!(matches!(p.b.opened(&o1, len), Decap::Packet { .. }));
    assert_eq!(p.b.opened(&o2, len), Decap::Drop(Reason::Replayed));
    // And a third copy is turned away before any opening.
    assert!(matches!(
        p.b.decapsulate_deferred(clock, addr(1), &out[..len], &mut buf),
        Err(Decap::Drop(Reason::Replayed))
    ));
}

#[test]
fn strangers_and_replayed_initiations_are_rejected() {
    let mut p = Pair::new(Config::default());
    let stranger = StaticKeys::generate().unwrap();
    let mut m = vec![0u8; INIT_LEN];
    handshake::initiate(
        &stranger,
        &p.b.public_key(),
        99,
        p.clock.wall_ns,
        crate::suite::Offer::CHACHA_ONLY,
        &mut m,
    )
    .unwrap();
    let mut out = vec![0u8; 2048];
    let clock = p.clock;
    // Without mac1 it costs B no DH; with it (B's key is public), the DH
    // finds a key that is no peer's.
    assert_eq!(
        p.b.decapsulate(clock, addr(66), &mut m.clone(), &mut out),
        Decap::Drop(Reason::BadMac)
    );
    PeerCookie::new(&p.b.public_key()).seal_initiation(&mut m, clock.now);
    assert_eq!(
        p.b.decapsulate(clock, addr(66), &mut m, &mut out),
        Decap::Drop(Reason::HandshakeRejected)
    );
    // A recorded initiation from A, played again.
    let Encap::Handshake { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(1), &mut out) else {
        panic!()
    };
    let init = out[..len].to_vec();
    let mut buf = vec![0u8; 2048];
    assert!(matches!(
        p.b.decapsulate(clock, addr(1), &mut init.clone(), &mut buf),
        Decap::Reply { .. }
    ));
    assert_eq!(
        p.b.decapsulate(clock, addr(1), &mut init.clone(), &mut buf),
        Decap::Drop(Reason::HandshakeRejected)
    );
    // A forged response, without and with mac1.
    let mut forged = vec![0u8; RESP_LEN];
    wire::write_resp_header(&mut forged, 5, 12345);
    assert_eq!(
        p.a.decapsulate(clock, addr(2), &mut forged.clone(), &mut buf),
        Decap::Drop(Reason::BadMac)
    );
    PeerCookie::new(&p.a.public_key()).seal_response(&mut forged);
    assert_eq!(
        p.a.decapsulate(clock, addr(2), &mut forged, &mut buf),
        Decap::Drop(Reason::UnknownSession)
    );
}

#[test]
fn a_peer_whose_key_changes_is_cut_off() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(2), &mut out) else {
        panic!()
    };
    let other = StaticKeys::generate().unwrap();
    p.b.set_peer(A, other.public, addr(1));
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        p.b.decapsulate(clock, addr(1), &mut out[..len].to_vec(), &mut buf),
        Decap::Drop(Reason::UnknownSession)
    );
    p.b.remove_peer(A);
    assert!(p.b.peer_state(A, clock.now).is_none());
}

#[test]
fn expired_sessions_and_hopeless_handshakes_go() {
    let cfg = Config {
        reject_after_time: Duration::from_secs(30),
        handshake_give_up: Duration::from_secs(20),
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    p.send(true, &packet(1));
    p.advance(Duration::from_secs(31));
    let mut out = vec![];
    p.a.tick(p.clock, &mut out);
    assert!(!p.a.peer_state(B, p.clock.now).unwrap().established);
    // B is gone: A queues, retries, then gives up and drops the queue.
    let clock = p.clock;
    let mut buf = vec![0u8; 2048];
    assert!(matches!(
        p.a.encapsulate(clock, B, 7, 0, &packet(2), &mut buf),
        Encap::Handshake { .. }
    ));
    for _ in 0..5 {
        p.advance(Duration::from_secs(5));
        let mut o = vec![];
        p.a.tick(p.clock, &mut o);
    }
    assert_eq!(p.a.peer_state(B, p.clock.now).unwrap().queued, 0);
    assert_eq!(p.a.stats.queue_dropped, 1);
}

#[test]
fn arbitrary_datagrams_never_panic_nor_deliver() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..300usize {
        for first in [1u8, 2, 3, 4, 0, 200] {
            let mut d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Some(b) = d.first_mut() {
                *b = first;
            }
            let r = p.b.decapsulate(clock, addr(1), &mut d, &mut out);
            assert!(
                !matches!(r, Decap::Packet { .. } | Decap::Established { .. }),
                "{r:?}"
            );
        }
    }
}

#[test]
fn ring_is_the_faster_cipher_here() {
    // Not a benchmark (no assertion on speed across machines): just that the
    // measurement function works for both implementations.
    for c in aead::Cipher::ALL {
        assert!(aead::seal_rate(c, 1400, Duration::from_millis(20)) > 0.0);
    }
}

#[test]
fn a_restarted_peer_pairs_again_at_the_first_packet() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(1));
    // B restarts: same static key, no session.
    let mut b = Tunnel::new(Config::default(), p.b.keys.clone(), 99);
    b.set_peer(A, p.a.public_key(), addr(1));
    p.b = b;
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(2), &mut out) else {
        panic!()
    };
    let mut buf = vec![0u8; 2048];
    let mut d = out[..len].to_vec();
    assert_eq!(
        p.b.decapsulate(clock, addr(1), &mut d, &mut buf),
        Decap::Drop(Reason::UnknownSession)
    );
    // B's next tick initiates; the pair is whole again.
    p.advance(Duration::from_millis(100));
    p.tick_both();
    assert_eq!(p.send(true, &packet(3)), vec![packet(3)]);
    assert_eq!(p.send(false, &packet(4)), vec![packet(4)]);
}

#[test]
fn rekeys_by_time_and_count_together_lose_nothing() {
    let cfg = Config {
        rekey_after_messages: 150,
        rekey_after_time: Duration::from_secs(2),
        reject_after_time: Duration::from_secs(7),
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    for i in 0..12_000u32 {
        // A request from A, its answer from B, as a UDP echo does.
        assert_eq!(p.send(true, &packet(i)), vec![packet(i)], "request {i}");
        assert_eq!(p.send(false, &packet(i)), vec![packet(i)], "answer {i}");
        p.advance(Duration::from_micros(600));
        if i % 160 == 0 {
            let (a, b) = p.tick_both();
            assert!(a.is_empty() && b.is_empty());
        }
    }
}

#[test]
fn simultaneous_rekeys_from_both_sides_lose_nothing() {
    let mut p = Pair::new(Config::default());
    p.send(true, &packet(0));
    for round in 0..30u32 {
        p.a.peers.get_mut(&B).unwrap().rekey_wanted = true;
        p.b.peers.get_mut(&A).unwrap().rekey_wanted = true;
        // Both initiations leave before either side hears the other.
        let clock = p.clock;
        let (mut oa, mut ob) = (vec![], vec![]);
        p.a.tick(clock, &mut oa);
        p.b.tick(clock, &mut ob);
        // Data keeps flowing while the handshakes cross.
        for i in 0..5 {
            assert_eq!(
                p.send(true, &packet(round * 100 + i)),
                vec![packet(round * 100 + i)]
            );
            assert_eq!(
                p.send(false, &packet(round * 100 + 50 + i)),
                vec![packet(round * 100 + 50 + i)]
            );
        }
        let mut pending: Vec<(bool, Vec<u8>)> = oa.into_iter().map(|(_, d)| (true, d)).collect();
        pending.extend(ob.into_iter().map(|(_, d)| (false, d)));
        if round % 2 == 0 {
            pending.reverse();
        }
        let (a, b) = p.settle(pending);
        assert!(a.is_empty() && b.is_empty());
        for i in 5..20 {
            assert_eq!(
                p.send(i % 2 == 0, &packet(round * 100 + i)),
                vec![packet(round * 100 + i)],
                "round {round}, packet {i}"
            );
        }
    }
    assert!(p.a.peers[&B].sessions.len() <= session::HARD_MAX_SESSIONS);
}
