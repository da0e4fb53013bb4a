//! Floods of handshakes: mac1 keeps out who does not know the key, the load
//! budget and cookies bound what the rest costs, and honest peers get
//! through all along.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    cookie::PeerCookie,
    wire::{COOKIE_REPLY_LEN, Message},
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A spoofed source: any address and port, or one of `ip`'s ports.
    fn source(&mut self, ip: Option<Ipv4Addr>) -> SocketAddr {
        let r = self.next();
        let ip = ip.unwrap_or(Ipv4Addr::from((r >> 32) as u32));
        SocketAddr::new(IpAddr::V4(ip), r as u16)
    }

    fn initiation(&mut self) -> Vec<u8> {
        let mut m: Vec<u8> = (0..INIT_LEN).map(|_| self.next() as u8).collect();
        wire::write_init_header(&mut m, self.next() as u32);
        m
    }
}

/// What an attacker who read `to`'s public key in the store can send: junk
/// with a right mac1.
fn with_mac1(mut m: Vec<u8>, to: [u8; 32], now: Instant) -> Vec<u8> {
    PeerCookie::new(&to).seal_initiation(&mut m, now);
    m
}

#[test]
fn a_flood_with_forged_mac1_costs_no_dh_and_is_dropped() {
    let mut p = Pair::new(Config::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    for _ in 0..10_000 {
        let mut m = rng.initiation();
        let from = rng.source(None);
        assert_eq!(
            p.b.decapsulate(clock, from, &mut m, &mut out),
            Decap::Drop(Reason::BadMac)
        );
    }
    assert_eq!(p.b.stats.initiations_processed, 0, "no DH");
    assert_eq!(p.b.stats.cookies_sent, 0, "no reply either");
    // Nothing was spent: A pairs at once.
    assert_eq!(p.send(true, &packet(1)), vec![packet(1)]);
    assert_eq!(p.b.stats.initiations_processed, 1);
}

#[test]
fn under_load_spoofed_initiations_get_cookies_and_an_honest_peer_gets_through() {
    let cfg = Config {
        handshake_load_per_sec: 5.0,
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let b_public = p.b.public_key();
    let mut flood = |p: &mut Pair, n: usize| {
        let mut out = vec![0u8; 2048];
        let mut cookies = 0;
        for i in 0..n {
            let m = with_mac1(rng.initiation(), b_public, p.clock.now);
            // Half of them claim A's address, on other ports.
            let from = rng.source((i % 2 == 0).then_some(Ipv4Addr::new(192, 168, 100, 1)));
            match p.b.decapsulate(p.clock, from, &mut m.clone(), &mut out) {
                Decap::Cookie { to, len } => {
                    assert_eq!((to, len), (from, COOKIE_REPLY_LEN));
                    cookies += 1;
                }
                Decap::Drop(Reason::HandshakeRejected) => {}
                other => panic!("{other:?}"),
            }
        }
        cookies
    };
    // The budget's worth is processed (and fails); the rest gets cookies.
    assert_eq!(flood(&mut p, 1000), 995);
    assert_eq!(p.b.stats.initiations_processed, 5);
    // A first packet from A, in the middle of the flood: its initiation
    // gets a cookie, the next one (at once) carries it and is answered.
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Handshake { len, .. } = p.a.encapsulate(clock, B, 7, 0, &packet(1), &mut out) else {
        panic!("A starts a handshake")
    };
    let init = out[..len].to_vec();
    assert_eq!(flood(&mut p, 200), 200);
    let (_, back) = p.deliver(true, init);
    assert_eq!(back.len(), 1, "a cookie reply");
    assert_eq!(back[0].len(), COOKIE_REPLY_LEN);
    assert_eq!(
        p.b.stats.initiations_processed, 5,
        "no DH for A's first try"
    );
    let (at_a, _) = p.settle(vec![(false, back[0].clone())]);
    assert!(at_a.is_empty());
    assert_eq!(p.a.stats.cookies_received, 1);
    p.advance(Duration::from_millis(100));
    assert_eq!(flood(&mut p, 200), 200);
    let (_, at_b) = p.tick_both();
    assert_eq!(at_b, vec![packet(1)], "paired, the queued packet through");
    assert_eq!(p.b.stats.initiations_processed, 6);
    assert!(p.a.peer_state(B, p.clock.now).unwrap().established);
    // Traffic flows both ways while the flood goes on.
    assert_eq!(flood(&mut p, 200), 200);
    assert_eq!(p.send(false, &packet(2)), vec![packet(2)]);
    assert_eq!(p.send(true, &packet(3)), vec![packet(3)]);
    // Spoofed sources never reached the per-source limiter: it holds A only
    // (proven by its cookie), however many addresses the flood used.
    assert_eq!(p.b.limiter.len(), 1);
    // A quiet second later, B is no longer under load: no cookie needed.
    p.advance(Duration::from_secs(2));
    assert_eq!(flood(&mut p, 1), 0);
}

#[test]
fn under_load_a_source_with_cookies_is_held_to_its_rate() {
    let cfg = Config {
        handshake_load_per_sec: 1.0,
        handshakes_per_sec: 10.0,
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    let clock = p.clock;
    let attacker = SocketAddr::from(([192, 168, 100, 66], 40000));
    let mut as_b = PeerCookie::new(&p.b.public_key());
    let mut rng = Rng(7);
    let mut out = vec![0u8; 2048];
    // Spend the budget, then collect a cookie at the attacker's real address.
    let mut m = rng.initiation();
    as_b.seal_initiation(&mut m, clock.now);
    assert_eq!(
        p.b.decapsulate(clock, attacker, &mut m.clone(), &mut out),
        Decap::Drop(Reason::HandshakeRejected)
    );
    let Decap::Cookie { len, .. } = p.b.decapsulate(clock, attacker, &mut m, &mut out) else {
        panic!("a cookie")
    };
    let Ok(Message::Cookie { nonce, sealed, .. }) = wire::parse(&out[..len]) else {
        panic!("a cookie reply")
    };
    assert!(as_b.accept(nonce, sealed, clock.now));
    // With it, the attacker's initiations cost DHs, but only its burst.
    let mut processed = 0;
    let mut limited = 0;
    for _ in 0..200 {
        let mut m = rng.initiation();
        as_b.seal_initiation(&mut m, clock.now);
        let before = p.b.stats.initiations_processed;
        match p.b.decapsulate(clock, attacker, &mut m, &mut out) {
            Decap::Drop(Reason::RateLimited) => limited += 1,
            Decap::Drop(Reason::HandshakeRejected) => {}
            other => panic!("{other:?}"),
        }
        processed += p.b.stats.initiations_processed - before;
    }
    assert_eq!(processed, 20, "a burst of 2 × 10");
    assert_eq!(limited, 180);
    // A's own address was never spent: A pairs (cookie, then mac2).
    let got = p.send(true, &packet(1));
    assert!(got.is_empty(), "a cookie first");
    let (_, at_b) = p.tick_both();
    assert_eq!(at_b, vec![packet(1)]);
}

#[test]
fn a_forged_cookie_reply_changes_nothing() {
    let mut p = Pair::new(Config::default());
    let clock = p.clock;
    let mut out = vec![0u8; 2048];
    let Encap::Handshake { .. } = p.a.encapsulate(clock, B, 7, 0, &packet(1), &mut out) else {
        panic!()
    };
    let index = *p.a.by_index.keys().next().unwrap();
    let mut forged = vec![0x55u8; COOKIE_REPLY_LEN];
    wire::write_cookie_header(&mut forged, index);
    assert_eq!(
        p.a.decapsulate(clock, addr(2), &mut forged.clone(), &mut out),
        Decap::Drop(Reason::BadMac)
    );
    wire::write_cookie_header(&mut forged, index ^ 1);
    assert_eq!(
        p.a.decapsulate(clock, addr(2), &mut forged, &mut out),
        Decap::Drop(Reason::UnknownSession)
    );
    assert_eq!(p.a.stats.cookies_received, 0);
}
