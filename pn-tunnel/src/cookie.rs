//! WireGuard's defence against handshake floods (whitepaper §5.3), on pn's
//! messages:
//!
//! - **mac1**, on every initiation and response, is keyed from the
//!   receiver's static public key: a sender who does not know it is dropped
//!   for the price of one BLAKE2s, before any Diffie-Hellman.
//! - A responder **under load** (its per-second budget of handshakes spent)
//!   answers an initiation that lacks a valid **mac2** with a **cookie
//!   reply** instead of a DH: the cookie is a MAC of the sender's address and
//!   port under a secret that rotates every two minutes, sealed
//!   (XChaCha20-Poly1305) under a key from the responder's public key and
//!   bound to the initiation by its mac1. Only who receives packets at that
//!   address learns it, so a flood from spoofed sources cannot; an honest
//!   initiator sends again with mac2 keyed by the cookie, and is answered.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use blake2::{
    Blake2s256, Blake2sMac, Digest as _,
    digest::{KeyInit, Mac as _, consts::U16},
};
use chacha20poly1305::{AeadInOut as _, KeyInit as _, XChaCha20Poly1305};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroize as _;

use crate::wire::{
    AEAD_TAG_LEN, COOKIE_NONCE_LEN, COOKIE_NONCE_OFFSET, COOKIE_REPLY_LEN, COOKIE_SEALED_LEN,
    COOKIE_SEALED_OFFSET, INIT_LEN, INIT_MAC1_OFFSET, INIT_MAC2_OFFSET, MAC_LEN, RESP_LEN,
    RESP_MAC1_OFFSET, write_cookie_header,
};

pub type Mac = [u8; MAC_LEN];
pub type Cookie = [u8; 16];

/// A responder replaces its cookie secret this often…
pub const SECRET_LIFE: Duration = Duration::from_secs(120);
/// …so an initiator stops using a cookie a little before (as WireGuard).
pub const COOKIE_USE_FOR: Duration = Duration::from_secs(115);

const LABEL_MAC1: &[u8] = b"pn tunnel v1 mac1";
const LABEL_COOKIE: &[u8] = b"pn tunnel v1 cookie";

fn hash(label: &[u8], public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(public);
    h.finalize().into()
}

/// Keyed BLAKE2s-128 (keys of at most 32 bytes).
fn mac_state(key: &[u8]) -> Blake2sMac<U16> {
    <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("MAC keys are 16 or 32 bytes")
}

fn mac(key: &[u8], data: &[u8]) -> Mac {
    let mut m = mac_state(key);
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Constant time, as the MAC's own check.
fn mac_matches(key: &[u8], data: &[u8], expected: &[u8]) -> bool {
    let mut m = mac_state(key);
    m.update(data);
    m.verify_slice(expected).is_ok()
}

/// What one static public key gives: the mac1 key of messages to its holder,
/// and the key that seals the cookie replies from it.
#[derive(Clone)]
pub struct MacKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl MacKeys {
    pub fn new(public: &[u8; 32]) -> MacKeys {
        MacKeys {
            mac1: hash(LABEL_MAC1, public),
            cookie: hash(LABEL_COOKIE, public),
        }
    }

    /// Writes mac1 at `at` into a message for this key's holder (over all
    /// that precedes it); returns it.
    pub fn write_mac1(&self, msg: &mut [u8], at: usize) -> Mac {
        let m = mac(&self.mac1, &msg[..at]);
        msg[at..at + MAC_LEN].copy_from_slice(&m);
        m
    }

    /// Whether a message for this key's holder carries the right mac1 at `at`.
    pub fn mac1_ok(&self, msg: &[u8], at: usize) -> bool {
        msg.len() >= at + MAC_LEN && mac_matches(&self.mac1, &msg[..at], &msg[at..at + MAC_LEN])
    }
}

/// A responder's side: its own keys, the rotating secret, cookie replies.
pub struct CookieChecker {
    keys: MacKeys,
    secret: [u8; 32],
    born: Option<Instant>,
    rng: SystemRandom,
}

impl Drop for CookieChecker {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl CookieChecker {
    pub fn new(own_public: &[u8; 32]) -> CookieChecker {
        CookieChecker {
            keys: MacKeys::new(own_public),
            secret: [0; 32],
            born: None,
            rng: SystemRandom::new(),
        }
    }

    /// The keys of messages to this host (mac1 checks).
    pub fn keys(&self) -> &MacKeys {
        &self.keys
    }

    /// The cookie `from` gets now: a MAC of its address and port under the
    /// current secret (a new one every [`SECRET_LIFE`]). `None` only if the
    /// system cannot give randomness.
    fn cookie(&mut self, from: SocketAddr, now: Instant) -> Option<Cookie> {
        if self
            .born
            .is_none_or(|b| now.saturating_duration_since(b) >= SECRET_LIFE)
        {
            self.rng.fill(&mut self.secret).ok()?;
            self.born = Some(now);
        }
        let mut addr = [0u8; 18];
        let n = match from.ip() {
            IpAddr::V4(ip) => {
                addr[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                addr[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        addr[n..n + 2].copy_from_slice(&from.port().to_be_bytes());
        let m = mac(&self.secret, &addr[..n + 2]);
        Some(m)
    }

    /// Whether an initiation from `from` carries a mac2 made with the
    /// cookie that address gets now.
    pub fn mac2_ok(&mut self, init: &[u8], from: SocketAddr, now: Instant) -> bool {
        if init.len() != INIT_LEN {
            return false;
        }
        let Some(cookie) = self.cookie(from, now) else {
            return false;
        };
        mac_matches(
            &cookie,
            &init[..INIT_MAC2_OFFSET],
            &init[INIT_MAC2_OFFSET..],
        )
    }

    /// Writes into `out` the cookie reply to initiation `init` (whose
    /// sender index is `sender`) from `from`; returns its length.
    pub fn reply(
        &mut self,
        init: &[u8],
        sender: u32,
        from: SocketAddr,
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
        if init.len() != INIT_LEN || out.len() < COOKIE_REPLY_LEN {
            return None;
        }
        let cookie = self.cookie(from, now)?;
        let out = &mut out[..COOKIE_REPLY_LEN];
        write_cookie_header(out, sender);
        let (head, sealed) = out.split_at_mut(COOKIE_SEALED_OFFSET);
        let nonce = &mut head[COOKIE_NONCE_OFFSET..];
        self.rng.fill(nonce).ok()?;
        let nonce: [u8; COOKIE_NONCE_LEN] = (&*nonce).try_into().ok()?;
        let (body, tag) = sealed.split_at_mut(COOKIE_SEALED_LEN - AEAD_TAG_LEN);
        body.copy_from_slice(&cookie);
        let t = XChaCha20Poly1305::new(&self.keys.cookie.into())
            .encrypt_inout_detached(
                &nonce.into(),
                &init[INIT_MAC1_OFFSET..INIT_MAC2_OFFSET],
                body.into(),
            )
            .ok()?;
        tag.copy_from_slice(&t);
        Some(COOKIE_REPLY_LEN)
    }
}

/// An initiator's side, per peer: the keys of the peer's public key, the
/// mac1 of the last initiation sent (a cookie reply is bound to it), and
/// the cookie the peer gave.
#[derive(Clone)]
pub struct PeerCookie {
    keys: MacKeys,
    last_mac1: Option<Mac>,
    sent_mac2: bool,
    cookie: Option<(Cookie, Instant)>,
    retry: bool,
}

impl PeerCookie {
    pub fn new(peer_public: &[u8; 32]) -> PeerCookie {
        PeerCookie {
            keys: MacKeys::new(peer_public),
            last_mac1: None,
            sent_mac2: false,
            cookie: None,
            retry: false,
        }
    }

    /// Writes mac1 and mac2 into an initiation to the peer: mac2 with the
    /// peer's cookie while it is fresh, zeros otherwise.
    pub fn seal_initiation(&mut self, init: &mut [u8], now: Instant) {
        let init = &mut init[..INIT_LEN];
        self.last_mac1 = Some(self.keys.write_mac1(init, INIT_MAC1_OFFSET));
        let cookie = self
            .cookie
            .filter(|(_, got)| now.saturating_duration_since(*got) < COOKIE_USE_FOR);
        let mac2 = cookie.map_or([0; MAC_LEN], |(c, _)| mac(&c, &init[..INIT_MAC2_OFFSET]));
        init[INIT_MAC2_OFFSET..].copy_from_slice(&mac2);
        self.sent_mac2 = cookie.is_some();
        self.retry = false;
    }

    /// Writes mac1 into a response to the peer.
    pub fn seal_response(&self, resp: &mut [u8]) {
        self.keys
            .write_mac1(&mut resp[..RESP_LEN], RESP_MAC1_OFFSET);
    }

    /// A cookie reply to our last initiation: keeps its cookie, and if that
    /// initiation had none, asks for it to go again at once. False if the
    /// reply does not open (forged, or for an older initiation).
    pub fn accept(
        &mut self,
        nonce: &[u8; COOKIE_NONCE_LEN],
        sealed: &[u8; COOKIE_SEALED_LEN],
        now: Instant,
    ) -> bool {
        let Some(mac1) = self.last_mac1 else {
            return false;
        };
        let mut cookie: Cookie = sealed[..16].try_into().expect("16 bytes");
        let tag: [u8; AEAD_TAG_LEN] = sealed[16..].try_into().expect("16 bytes");
        let opened = XChaCha20Poly1305::new(&self.keys.cookie.into()).decrypt_inout_detached(
            &(*nonce).into(),
            &mac1,
            (&mut cookie[..]).into(),
            &tag.into(),
        );
        if opened.is_err() {
            return false;
        }
        self.cookie = Some((cookie, now));
        // One quick retry per initiation sent without a cookie; one that
        // had a cookie and still got a reply waits for the retry timer, so
        // nothing can make us loop.
        self.retry = !self.sent_mac2;
        true
    }

    /// Whether the initiation in flight should go again now (once, after a
    /// cookie came back for one that had none).
    pub fn take_retry(&mut self) -> bool {
        std::mem::take(&mut self.retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RESP_LEN, write_init_header};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 168, 100, 1], port))
    }

    fn initiation(fill: u8) -> Vec<u8> {
        let mut m = vec![fill; INIT_LEN];
        write_init_header(&mut m, 42);
        m
    }

    #[test]
    fn mac1_needs_the_receivers_public_key() {
        let (ours, other) = ([1u8; 32], [2u8; 32]);
        let mut m = initiation(9);
        PeerCookie::new(&ours).seal_initiation(&mut m, Instant::now());
        let checker = CookieChecker::new(&ours);
        assert!(checker.keys().mac1_ok(&m, INIT_MAC1_OFFSET));
        assert!(
            !CookieChecker::new(&other)
                .keys()
                .mac1_ok(&m, INIT_MAC1_OFFSET)
        );
        // Any changed byte before it breaks it.
        for i in [0, 7, 60, INIT_MAC1_OFFSET - 1, INIT_MAC1_OFFSET] {
            let mut t = m.clone();
            t[i] ^= 1;
            assert!(!checker.keys().mac1_ok(&t, INIT_MAC1_OFFSET), "byte {i}");
        }
        // mac2 is outside mac1.
        m[INIT_LEN - 1] ^= 1;
        assert!(checker.keys().mac1_ok(&m, INIT_MAC1_OFFSET));
        let mut r = vec![3u8; RESP_LEN];
        PeerCookie::new(&ours).seal_response(&mut r);
        assert!(checker.keys().mac1_ok(&r, RESP_MAC1_OFFSET));
        assert!(!checker.keys().mac1_ok(&r[..RESP_LEN - 1], RESP_MAC1_OFFSET));
    }

    #[test]
    fn a_cookie_reply_gives_a_mac2_the_responder_accepts_from_that_address_only() {
        let responder = [5u8; 32];
        let now = Instant::now();
        let mut checker = CookieChecker::new(&responder);
        let mut peer = PeerCookie::new(&responder);
        let mut m = initiation(1);
        peer.seal_initiation(&mut m, now);
        assert!(!checker.mac2_ok(&m, addr(51871), now), "no cookie yet");
        let mut reply = vec![0u8; COOKIE_REPLY_LEN];
        assert_eq!(
            checker.reply(&m, 42, addr(51871), now, &mut reply),
            Some(COOKIE_REPLY_LEN)
        );
        let nonce = reply[COOKIE_NONCE_OFFSET..COOKIE_SEALED_OFFSET]
            .try_into()
            .unwrap();
        let sealed = reply[COOKIE_SEALED_OFFSET..].try_into().unwrap();
        // Bound to the initiation it answers: not for another one's mac1.
        let mut stranger = PeerCookie::new(&responder);
        stranger.seal_initiation(&mut initiation(2), now);
        assert!(!stranger.accept(nonce, sealed, now));
        assert!(peer.accept(nonce, sealed, now));
        assert!(peer.take_retry(), "sent again at once");
        assert!(!peer.take_retry(), "once");
        let mut again = initiation(3);
        peer.seal_initiation(&mut again, now);
        assert!(checker.mac2_ok(&again, addr(51871), now));
        assert!(!checker.mac2_ok(&again, addr(51872), now), "another port");
        assert!(
            !checker.mac2_ok(&again, SocketAddr::from(([192, 168, 100, 2], 51871)), now),
            "another address"
        );
        // A second reply to an initiation that had a cookie: no quick retry.
        let mut reply2 = vec![0u8; COOKIE_REPLY_LEN];
        checker.reply(&again, 42, addr(51871), now, &mut reply2);
        assert!(
            peer.accept(
                reply2[COOKIE_NONCE_OFFSET..COOKIE_SEALED_OFFSET]
                    .try_into()
                    .unwrap(),
                reply2[COOKIE_SEALED_OFFSET..].try_into().unwrap(),
                now
            )
        );
        assert!(!peer.take_retry());
    }

    #[test]
    fn cookies_expire_with_the_secret() {
        let responder = [6u8; 32];
        let now = Instant::now();
        let mut checker = CookieChecker::new(&responder);
        let mut peer = PeerCookie::new(&responder);
        let mut m = initiation(1);
        peer.seal_initiation(&mut m, now);
        let mut reply = vec![0u8; COOKIE_REPLY_LEN];
        checker.reply(&m, 42, addr(1), now, &mut reply).unwrap();
        assert!(
            peer.accept(
                reply[COOKIE_NONCE_OFFSET..COOKIE_SEALED_OFFSET]
                    .try_into()
                    .unwrap(),
                reply[COOKIE_SEALED_OFFSET..].try_into().unwrap(),
                now
            )
        );
        let later = now + SECRET_LIFE;
        peer.seal_initiation(&mut m, later - Duration::from_secs(1));
        assert_eq!(&m[INIT_MAC2_OFFSET..], &[0; MAC_LEN], "too old to use");
        peer.seal_initiation(&mut m, now + Duration::from_secs(10));
        assert!(checker.mac2_ok(&m, addr(1), now + Duration::from_secs(10)));
        assert!(!checker.mac2_ok(&m, addr(1), later), "the secret rotated");
    }
}
