//! Arbitrary datagrams into an established tunnel, one on each AEAD, on the
//! exclusive path and on the workers' shared one: never a panic, never a
//! delivered packet, the session still works afterwards.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use libfuzzer_sys::fuzz_target;
use pn_tunnel::{Clock, Config, Decap, Encap, Tunnel, aead::Cipher, handshake::StaticKeys};

struct Pair {
    a: Tunnel,
    b: Tunnel,
    clock: Clock,
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 100, n], 51871))
}

fn established(cfg: Config) -> Pair {
    let ka = StaticKeys::generate().unwrap();
    let kb = StaticKeys::generate().unwrap();
    let mut a = Tunnel::new(cfg.clone(), ka.clone(), 1);
    let mut b = Tunnel::new(cfg, kb.clone(), 2);
    a.set_peer(2, kb.public, addr(2));
    b.set_peer(1, ka.public, addr(1));
    let clock = Clock {
        now: Instant::now(),
        wall_ns: 1_700_000_000_000_000_000,
    };
    let mut out = vec![0u8; 2048];
    let mut reply = vec![0u8; 2048];
    let Encap::Handshake { len, .. } = a.encapsulate(clock, 2, 1, 0, &[0x45; 40], &mut out) else {
        panic!("no initiation")
    };
    let Decap::Reply { len, .. } = b.decapsulate(clock, addr(1), &mut out[..len], &mut reply)
    else {
        panic!("no response")
    };
    let Decap::Established { flush, .. } =
        a.decapsulate(clock, addr(2), &mut reply[..len], &mut out)
    else {
        panic!("not established")
    };
    for (_, mut d) in flush {
        let _ = b.decapsulate(clock, addr(1), &mut d, &mut out);
    }
    Pair { a, b, clock }
}

static PAIRS: OnceLock<[Mutex<Pair>; 2]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let pairs = PAIRS.get_or_init(|| {
        let aes = Config {
            cipher: Cipher::Aes256Gcm,
            aes_hardware: true,
            ..Config::default()
        };
        [
            Mutex::new(established(Config::default())),
            Mutex::new(established(aes)),
        ]
    });
    for p in pairs {
        one(&mut p.lock().unwrap(), data);
    }
});

fn one(p: &mut Pair, data: &[u8]) {
    let clock = p.clock;
    if let Some(Ok(opener)) = p.b.decapsulate_shared(clock, data) {
        assert!(!opener.open(&mut data.to_vec()), "forged datagram opened");
    }
    let mut out = vec![0u8; 2048];
    let mut d = data.to_vec();
    match p.b.decapsulate(clock, addr(1), &mut d, &mut out) {
        Decap::Packet { .. } | Decap::Established { .. } => panic!("forged datagram accepted"),
        Decap::Reply { .. } | Decap::Cookie { .. } | Decap::Done | Decap::Drop(_) => {}
    }
    // The real session still carries traffic.
    let Encap::Send { len, .. } = p.a.encapsulate(clock, 2, 1, 0, &[0x45; 40], &mut out) else {
        panic!("session lost")
    };
    let mut back = vec![0u8; 2048];
    let mut sealed = out[..len].to_vec();
    assert!(matches!(
        p.b.decapsulate(clock, addr(1), &mut sealed, &mut back),
        Decap::Packet { .. }
    ));
}
