//! The session's AEAD as the handshake settles it, seen from two tunnels:
//! which one each pair of hosts ends up with, data both ways on either, an
//! attacker on the path who changes the negotiation, and the replay window
//! and the hand-over unchanged under AES-256-GCM.

use super::*;
use crate::{
    aead::{Aead, Cipher},
    carry::{COUNTER_MARGIN, Carried},
    replay::WINDOW,
    wire::{INIT_HEADER_LEN, RESP_HEADER_LEN},
};

/// A host's preference and whether it has AES instructions.
fn host(cipher: Cipher, aes_hardware: bool) -> Config {
    Config {
        cipher,
        aes_hardware,
        ..Config::default()
    }
}

/// A pair whose hosts have different configurations.
fn pair(a: Config, b: Config) -> Pair {
    let mut p = Pair::new(Config::default());
    let (ka, kb) = (p.a.keys.clone(), p.b.keys.clone());
    let budget = Duration::from_secs(3600);
    p.a = Tunnel::new(
        Config {
            handshake_cpu_per_sec: budget,
            ..a
        },
        ka.clone(),
        0x1234,
    );
    p.b = Tunnel::new(
        Config {
            handshake_cpu_per_sec: budget,
            ..b
        },
        kb.clone(),
        0x5678,
    );
    p.a.set_peer(B, kb.public, addr(2));
    p.b.set_peer(A, ka.public, addr(1));
    p
}

fn aead_of(t: &Tunnel, peer: PeerId, clock: Clock) -> Option<Aead> {
    t.peer_state(peer, clock.now).and_then(|s| s.aead)
}

#[test]
fn both_ends_agree_on_the_aead_and_data_flows_on_either() {
    use Cipher::{Aes256Gcm as Aes, Ring, RustCrypto};
    let table = [
        ((Aes, true), (Aes, true), Aead::Aes256Gcm),
        ((Aes, true), (Ring, true), Aead::ChaCha20Poly1305),
        ((RustCrypto, true), (Aes, true), Aead::ChaCha20Poly1305),
        ((Aes, false), (Aes, true), Aead::ChaCha20Poly1305),
        ((Aes, true), (Aes, false), Aead::ChaCha20Poly1305),
        ((Ring, true), (RustCrypto, false), Aead::ChaCha20Poly1305),
    ];
    for ((ca, ha), (cb, hb), want) in table {
        // Either side may initiate; the answer is the same.
        for a_first in [true, false] {
            let mut p = pair(host(ca, ha), host(cb, hb));
            for i in 0..10 {
                let from_a = (i % 2 == 0) == a_first;
                assert_eq!(p.send(from_a, &packet(i)), vec![packet(i)]);
            }
            let case = format!("{ca:?}/{ha} with {cb:?}/{hb}, a first: {a_first}");
            assert_eq!(aead_of(&p.a, B, p.clock), Some(want), "{case}");
            assert_eq!(aead_of(&p.b, A, p.clock), Some(want), "{case}");
            let counted = |t: &Tunnel| match want {
                Aead::Aes256Gcm => (
                    t.stats.sessions_aes256gcm,
                    t.stats.sessions_chacha20poly1305,
                ),
                Aead::ChaCha20Poly1305 => (
                    t.stats.sessions_chacha20poly1305,
                    t.stats.sessions_aes256gcm,
                ),
            };
            assert_eq!(counted(&p.a), (1, 0), "{case}");
            assert_eq!(counted(&p.b), (1, 0), "{case}");
        }
    }
}

/// A's initiation to B, as it leaves A.
fn initiation(p: &mut Pair) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let Encap::Handshake { len, .. } = p.a.encapsulate(p.clock, B, 7, 0, &packet(1), &mut out)
    else {
        panic!("no initiation")
    };
    out[..len].to_vec()
}

#[test]
fn an_attacker_on_the_path_cannot_change_the_negotiation() {
    let aes = || host(Cipher::Aes256Gcm, true);
    // The offer byte's ciphertext, in the initiation: after the ephemeral,
    // the encrypted static key and the timestamp. mac1 is keyed with the
    // responder's public key, which the attacker knows: it seals it again.
    let mut p = pair(aes(), aes());
    let mut init = initiation(&mut p);
    init[INIT_HEADER_LEN + 32 + 48 + 8] ^= 1;
    PeerCookie::new(&p.b.public_key()).seal_initiation(&mut init, p.clock.now);
    let mut out = vec![0u8; 2048];
    assert_eq!(
        p.b.decapsulate(p.clock, addr(1), &mut init, &mut out),
        Decap::Drop(Reason::HandshakeRejected)
    );
    assert_eq!(p.b.stats.initiations_answered, 0);
    // The pick byte's ciphertext, in the response: after the ephemeral.
    let mut p = pair(aes(), aes());
    let mut init = initiation(&mut p);
    let Decap::Reply { len, .. } = p.b.decapsulate(p.clock, addr(1), &mut init, &mut out) else {
        panic!("no response")
    };
    let mut resp = out[..len].to_vec();
    resp[RESP_HEADER_LEN + 32] ^= 1;
    PeerCookie::new(&p.a.public_key()).seal_response(&mut resp);
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        p.a.decapsulate(p.clock, addr(2), &mut resp, &mut buf),
        Decap::Drop(Reason::HandshakeRejected)
    );
    assert_eq!(p.a.stats.handshakes_completed, 0);
    assert_eq!(aead_of(&p.a, B, p.clock), None);
    // The attempt goes on: the next initiation pairs them, on AES-256-GCM.
    p.advance(Duration::from_millis(100));
    let (_, at_b) = p.tick_both();
    assert_eq!(
        at_b,
        vec![packet(1)],
        "the queued packet, on the new session"
    );
    assert_eq!(aead_of(&p.a, B, p.clock), Some(Aead::Aes256Gcm));
}

#[test]
fn the_replay_window_is_the_same_under_aes() {
    let mut p = pair(host(Cipher::Aes256Gcm, true), host(Cipher::Aes256Gcm, true));
    p.send(true, &packet(0));
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let mut sealed = Vec::new();
    for i in 0..WINDOW as u32 + 10 {
        let Encap::Send { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(i), &mut out) else {
            panic!()
        };
        sealed.push(out[..len].to_vec());
    }
    let mut buf = vec![0u8; 2048];
    let mut deliver =
        |p: &mut Pair, d: &[u8]| p.b.decapsulate(clock, addr(1), &mut d.to_vec(), &mut buf);
    // The newest first, then the oldest that still fits, then the same
    // again, then one just out of the window.
    let last = sealed.len() - 1;
    let oldest_in = last + 1 - WINDOW as usize;
    assert!(matches!(
        deliver(&mut p, &sealed[last]),
        Decap::Packet { .. }
    ));
    assert!(matches!(
        deliver(&mut p, &sealed[oldest_in]),
        Decap::Packet { .. }
    ));
    assert_eq!(
        deliver(&mut p, &sealed[oldest_in]),
        Decap::Drop(Reason::Replayed)
    );
    assert_eq!(
        deliver(&mut p, &sealed[last]),
        Decap::Drop(Reason::Replayed)
    );
    assert_eq!(
        deliver(&mut p, &sealed[oldest_in - 2]),
        Decap::Drop(Reason::Replayed)
    );
    // Out of order within the window is fine.
    assert!(matches!(
        deliver(&mut p, &sealed[last - 3]),
        Decap::Packet { .. }
    ));
    assert!(matches!(
        deliver(&mut p, &sealed[last - 5]),
        Decap::Packet { .. }
    ));
}

#[test]
fn a_successor_keeps_the_session_aead_whatever_it_prefers() {
    let mut p = pair(host(Cipher::Aes256Gcm, true), host(Cipher::Aes256Gcm, true));
    p.send(true, &packet(0));
    let carried = p.a.export(p.clock.now, COUNTER_MARGIN);
    let back = Carried::decode(&carried.encode()).unwrap();
    assert_eq!(back.peers[0].sessions[0].aead, Aead::Aes256Gcm);
    // The successor prefers ChaCha20-Poly1305 (its new sessions will use
    // it), but the carried one stays AES-256-GCM, as the peer's does.
    let mut next = Tunnel::new(host(Cipher::Ring, true), p.a.keys.clone(), 9);
    next.set_peer(B, p.b.public_key(), addr(2));
    assert_eq!(next.import(&back, p.clock.now), 1);
    p.a = next;
    assert_eq!(aead_of(&p.a, B, p.clock), Some(Aead::Aes256Gcm));
    for i in 1..10 {
        assert_eq!(p.send(i % 2 == 0, &packet(i)), vec![packet(i)]);
    }
    assert_eq!(p.a.stats.initiations_sent, 0);
}
