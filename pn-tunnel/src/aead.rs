//! The data path's AEAD behind a small seam: ChaCha20-Poly1305 (the
//! default, and the fallback every host speaks) in two implementations of
//! the same wire format, RustCrypto's `chacha20poly1305` (portable Rust) and
//! `ring` (assembly); and AES-256-GCM (`ring`), which a fleet may prefer
//! where the CPUs have AES instructions (the handshake settles which one a
//! session uses: see `suite`). Both have a 16-byte tag and a 96-bit nonce:
//! 32 zero bits then the 64-bit little-endian counter, as WireGuard's.
//!
//! A key is never used for more than `reject_after_time` (180 s by
//! default): at 40 Gbit/s that is about 2^35 AES blocks, within the margin
//! TLS 1.3 keeps for AES-GCM (RFC 8446 §5.5).

use std::time::{Duration, Instant};

use chacha20poly1305::{ChaCha20Poly1305, KeyInit, aead::AeadInOut};
use zeroize::Zeroize;

use super::wire::AEAD_TAG_LEN;

/// The AEAD algorithm of a session, as the two ends agreed on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aead {
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Aead {
    /// Its number in the handshake's pick and in the carried state.
    pub fn id(self) -> u8 {
        match self {
            Aead::ChaCha20Poly1305 => 0,
            Aead::Aes256Gcm => 1,
        }
    }

    pub fn from_id(id: u8) -> Option<Aead> {
        match id {
            0 => Some(Aead::ChaCha20Poly1305),
            1 => Some(Aead::Aes256Gcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Aead::ChaCha20Poly1305 => "chacha20poly1305",
            Aead::Aes256Gcm => "aes256gcm",
        }
    }
}

/// An implementation of an AEAD, as `--tunnel-cipher` names it: the host's
/// preference (`aes256gcm`), or which implementation of ChaCha20-Poly1305
/// it uses (`ring`, the default, also called `chacha20poly1305`; or
/// `rustcrypto`, kept to compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    RustCrypto,
    Ring,
    Aes256Gcm,
}

impl Cipher {
    pub const ALL: [Cipher; 3] = [Cipher::RustCrypto, Cipher::Ring, Cipher::Aes256Gcm];

    /// The name `--tunnel-cipher` takes.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::RustCrypto => "rustcrypto",
            Cipher::Ring => "chacha20poly1305",
            Cipher::Aes256Gcm => "aes256gcm",
        }
    }

    pub fn aead(self) -> Aead {
        match self {
            Cipher::RustCrypto | Cipher::Ring => Aead::ChaCha20Poly1305,
            Cipher::Aes256Gcm => Aead::Aes256Gcm,
        }
    }

    /// The implementation of `aead` a host with this preference uses: its
    /// own for ChaCha20-Poly1305 when it named one, ring's otherwise.
    pub fn for_aead(self, aead: Aead) -> Cipher {
        match (aead, self) {
            (Aead::Aes256Gcm, _) => Cipher::Aes256Gcm,
            (Aead::ChaCha20Poly1305, Cipher::RustCrypto) => Cipher::RustCrypto,
            (Aead::ChaCha20Poly1305, _) => Cipher::Ring,
        }
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Cipher, String> {
        match s {
            "chacha20poly1305" | "ring" => Ok(Cipher::Ring),
            "rustcrypto" => Ok(Cipher::RustCrypto),
            "aes256gcm" => Ok(Cipher::Aes256Gcm),
            _ => Err(format!(
                "unknown cipher {s:?}: chacha20poly1305, aes256gcm (or rustcrypto: ChaCha20-Poly1305 in portable Rust)"
            )),
        }
    }
}

/// Whether this CPU runs AES-GCM in hardware (AES rounds and carry-less
/// multiplication): ring uses them when present, but does not say so, and
/// without them AES-GCM is slower than ChaCha20-Poly1305 and not constant
/// time, so a host without them never offers it.
pub fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    // Rust's aarch64 "aes" covers both AES and PMULL.
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// One direction's key of a session.
pub enum Key {
    RustCrypto(ChaCha20Poly1305),
    // ring's key (either algorithm) carries its own expanded state: keep
    // the enum small.
    Ring(Box<ring::aead::LessSafeKey>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthError;

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl Key {
    /// Builds a key and wipes the caller's copy of the bytes.
    pub fn new(cipher: Cipher, key: &mut [u8; 32]) -> Key {
        let k = match cipher {
            Cipher::RustCrypto => Key::RustCrypto(ChaCha20Poly1305::new(&(*key).into())),
            Cipher::Ring => Key::ring(&ring::aead::CHACHA20_POLY1305, key),
            Cipher::Aes256Gcm => Key::ring(&ring::aead::AES_256_GCM, key),
        };
        key.zeroize();
        k
    }

    fn ring(alg: &'static ring::aead::Algorithm, key: &[u8; 32]) -> Key {
        Key::Ring(Box::new(ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(alg, key).expect("32-byte key"),
        )))
    }

    /// Encrypts `buf` in place; returns the tag.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; AEAD_TAG_LEN] {
        let nonce = nonce_bytes(counter);
        match self {
            Key::RustCrypto(k) => {
                let tag = k
                    .encrypt_inout_detached(&nonce.into(), aad, buf.into())
                    .expect("ChaCha20-Poly1305 accepts any tunnel packet length");
                tag.into()
            }
            Key::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        buf,
                    )
                    .expect("both AEADs accept any tunnel packet length");
                let mut out = [0u8; AEAD_TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
        }
    }

    /// Decrypts `buf` in place if `tag` authenticates it (and `aad`).
    pub fn open(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; AEAD_TAG_LEN],
    ) -> Result<(), AuthError> {
        let nonce = nonce_bytes(counter);
        match self {
            Key::RustCrypto(k) => k
                .decrypt_inout_detached(&nonce.into(), aad, buf.into(), &(*tag).into())
                .map_err(|_| AuthError),
            Key::Ring(k) => {
                let tag = ring::aead::Tag::from(*tag);
                k.open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    tag,
                    buf,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| AuthError)
            }
        }
    }
}

/// Single-core sealing rate of `cipher` on `packet_len`-byte packets, in
/// bytes per second (the ceiling of the tunnel's throughput per core).
pub fn seal_rate(cipher: Cipher, packet_len: usize, duration: Duration) -> f64 {
    let mut raw = [7u8; 32];
    let key = Key::new(cipher, &mut raw);
    let mut buf = vec![0x5au8; packet_len];
    let aad = [0u8; 20];
    let start = Instant::now();
    let mut counter = 0u64;
    while start.elapsed() < duration {
        for _ in 0..256 {
            let tag = key.seal(counter, &aad, &mut buf);
            std::hint::black_box(&tag);
            counter += 1;
        }
    }
    (counter as f64 * packet_len as f64) / start.elapsed().as_secs_f64()
}

/// Single-core opening rate of `cipher` on `packet_len`-byte packets, in
/// bytes per second (the receiving side's ceiling; each opening starts
/// from a copy of the sealed packet, whose cost is counted too).
pub fn open_rate(cipher: Cipher, packet_len: usize, duration: Duration) -> f64 {
    let (mut a, mut b) = ([7u8; 32], [7u8; 32]);
    let (sealer, opener) = (Key::new(cipher, &mut a), Key::new(cipher, &mut b));
    let aad = [0u8; 20];
    let mut sealed = vec![0x5au8; packet_len];
    let tag = sealer.seal(0, &aad, &mut sealed);
    let mut buf = sealed.clone();
    let start = Instant::now();
    let mut opened = 0u64;
    while start.elapsed() < duration {
        for _ in 0..256 {
            buf.copy_from_slice(&sealed);
            let ok = opener.open(0, &aad, &mut buf, &tag).is_ok();
            std::hint::black_box(ok);
            opened += 1;
        }
    }
    (opened as f64 * packet_len as f64) / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rates_measure_something() {
        let d = Duration::from_millis(5);
        assert!(seal_rate(Cipher::Ring, 1400, d) > 0.0);
        assert!(open_rate(Cipher::Ring, 1400, d) > 0.0);
    }

    #[test]
    fn both_implementations_speak_the_same_wire_format() {
        for (a, b) in [
            (Cipher::Ring, Cipher::RustCrypto),
            (Cipher::RustCrypto, Cipher::Ring),
        ] {
            let (mut ka, mut kb) = ([9u8; 32], [9u8; 32]);
            let (sealer, opener) = (Key::new(a, &mut ka), Key::new(b, &mut kb));
            assert_eq!(ka, [0; 32], "caller's key bytes are wiped");
            let aad = b"header";
            let mut buf = b"some inner ip packet".to_vec();
            let tag = sealer.seal(42, aad, &mut buf);
            assert_ne!(&buf, b"some inner ip packet");
            opener.open(42, aad, &mut buf, &tag).unwrap();
            assert_eq!(&buf, b"some inner ip packet");
        }
    }

    #[test]
    fn every_cipher_round_trips_and_none_opens_another_aeads_packets() {
        for c in Cipher::ALL {
            let key = Key::new(c, &mut [4u8; 32]);
            for len in [0usize, 1, 15, 16, 17, 1400, 9000] {
                let clear: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut buf = clear.clone();
                let tag = key.seal(u64::MAX - 1, b"hdr", &mut buf);
                if len > 0 {
                    assert_ne!(buf, clear, "{c:?} encrypts");
                }
                key.open(u64::MAX - 1, b"hdr", &mut buf, &tag).unwrap();
                assert_eq!(buf, clear, "{c:?} {len}");
            }
        }
        // Same key bytes, same nonce: an AES-256-GCM packet is no
        // ChaCha20-Poly1305 packet, and the other way round.
        let aes = Key::new(Cipher::Aes256Gcm, &mut [4u8; 32]);
        let chacha = Key::new(Cipher::Ring, &mut [4u8; 32]);
        for (sealer, opener) in [(&aes, &chacha), (&chacha, &aes)] {
            let mut buf = vec![1u8; 64];
            let tag = sealer.seal(3, b"hdr", &mut buf);
            assert_eq!(opener.open(3, b"hdr", &mut buf, &tag), Err(AuthError));
        }
    }

    #[test]
    fn names_parse_back_and_the_chacha_implementation_is_kept() {
        for c in Cipher::ALL {
            assert_eq!(c.name().parse::<Cipher>(), Ok(c));
        }
        assert_eq!("ring".parse::<Cipher>(), Ok(Cipher::Ring));
        assert!("aes128gcm".parse::<Cipher>().is_err());
        assert_eq!(
            Cipher::RustCrypto.for_aead(Aead::ChaCha20Poly1305),
            Cipher::RustCrypto
        );
        assert_eq!(
            Cipher::Aes256Gcm.for_aead(Aead::ChaCha20Poly1305),
            Cipher::Ring
        );
        assert_eq!(Cipher::Ring.for_aead(Aead::Aes256Gcm), Cipher::Aes256Gcm);
    }

    #[test]
    fn tampering_is_detected() {
        for c in Cipher::ALL {
            let key = Key::new(c, &mut [1u8; 32]);
            let mut buf = vec![3u8; 100];
            let tag = key.seal(1, b"aad", &mut buf);
            let mut bad = buf.clone();
            bad[50] ^= 1;
            assert_eq!(key.open(1, b"aad", &mut bad, &tag), Err(AuthError));
            let mut copy = buf.clone();
            assert_eq!(
                key.open(2, b"aad", &mut copy, &tag),
                Err(AuthError),
                "wrong counter"
            );
            let mut copy = buf.clone();
            assert_eq!(
                key.open(1, b"aaD", &mut copy, &tag),
                Err(AuthError),
                "wrong header"
            );
            let mut bad_tag = tag;
            bad_tag[0] ^= 0x80;
            assert_eq!(key.open(1, b"aad", &mut buf, &bad_tag), Err(AuthError));
        }
    }
}
