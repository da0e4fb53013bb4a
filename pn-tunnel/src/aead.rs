//! ChaCha20-Poly1305 behind a small seam with two implementations of the
//! same cipher and wire format: RustCrypto's `chacha20poly1305` (portable
//! Rust) and `ring` (assembly). The nonce is 32 zero bits then the 64-bit
//! little-endian counter, as WireGuard's.

use std::time::{Duration, Instant};

use chacha20poly1305::{ChaCha20Poly1305, KeyInit, aead::AeadInOut};
use zeroize::Zeroize;

use super::wire::AEAD_TAG_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    RustCrypto,
    Ring,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::RustCrypto, Cipher::Ring];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::RustCrypto => "rustcrypto",
            Cipher::Ring => "ring",
        }
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Cipher, String> {
        match s {
            "rustcrypto" => Ok(Cipher::RustCrypto),
            "ring" => Ok(Cipher::Ring),
            _ => Err(format!("unknown cipher {s:?}: ring or rustcrypto")),
        }
    }
}

/// One direction's key of a session.
pub enum Key {
    RustCrypto(ChaCha20Poly1305),
    // ring's key carries its own expanded state: keep the enum small.
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
            Cipher::Ring => Key::Ring(Box::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
                    .expect("32-byte key"),
            ))),
        };
        key.zeroize();
        k
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
                    .expect("ChaCha20-Poly1305 accepts any tunnel packet length");
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

#[cfg(test)]
mod tests {
    use super::*;

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
