//! Which AEAD a session uses, settled in the handshake: the initiator says
//! what it offers in its initiation's payload, the responder picks and says
//! so in its response's payload, and the initiator refuses a pick it did not
//! offer. Both payloads are encrypted and authenticated by Noise and bound
//! into its transcript hash, so an on-path attacker who changes either
//! breaks the handshake: it can neither downgrade nor upgrade a session.
//!
//! ChaCha20-Poly1305 is always offered; AES-256-GCM only by a host that
//! prefers it (`--tunnel-cipher aes256gcm`) and has AES instructions, and a
//! session uses it only when both ends offer it.

use crate::aead::{Aead, Cipher};

/// Bit of the offer byte for AES-256-GCM. Other bits are ignored, so a later
/// version may offer more to this one. (The response's pick byte is the
/// AEAD's [`Aead::id`].)
const OFFER_AES256GCM: u8 = 1;

/// What a host offers, as the initiation carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer(u8);

impl Offer {
    /// ChaCha20-Poly1305 alone.
    pub const CHACHA_ONLY: Offer = Offer(0);

    /// This host's offer: AES-256-GCM too if it prefers it and has the
    /// instructions for it.
    pub fn local(preference: Cipher, aes_hardware: bool) -> Offer {
        if preference == Cipher::Aes256Gcm && aes_hardware {
            Offer(OFFER_AES256GCM)
        } else {
            Offer::CHACHA_ONLY
        }
    }

    pub fn from_byte(b: u8) -> Offer {
        Offer(b)
    }

    pub fn byte(self) -> u8 {
        self.0
    }

    pub fn aes256gcm(self) -> bool {
        self.0 & OFFER_AES256GCM != 0
    }
}

/// The responder's pick: AES-256-GCM if both offer it, else the fallback.
pub fn pick(initiator: Offer, responder: Offer) -> Aead {
    if initiator.aes256gcm() && responder.aes256gcm() {
        Aead::Aes256Gcm
    } else {
        Aead::ChaCha20Poly1305
    }
}

pub fn pick_byte(aead: Aead) -> u8 {
    aead.id()
}

/// The initiator reads the responder's pick: an AEAD it offered, or none
/// (the handshake fails).
pub fn read_pick(byte: u8, offered: Offer) -> Option<Aead> {
    match Aead::from_id(byte)? {
        Aead::Aes256Gcm if !offered.aes256gcm() => None,
        aead => Some(aead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_only_when_both_prefer_it_and_both_have_the_instructions() {
        use Cipher::{Aes256Gcm as Aes, Ring, RustCrypto};
        // (initiator preference, its hardware, responder's, its hardware) → pick.
        let table = [
            ((Aes, true), (Aes, true), Aead::Aes256Gcm),
            ((Aes, true), (Ring, true), Aead::ChaCha20Poly1305),
            ((Ring, true), (Aes, true), Aead::ChaCha20Poly1305),
            ((RustCrypto, true), (Aes, true), Aead::ChaCha20Poly1305),
            ((Aes, false), (Aes, true), Aead::ChaCha20Poly1305),
            ((Aes, true), (Aes, false), Aead::ChaCha20Poly1305),
            ((Aes, false), (Aes, false), Aead::ChaCha20Poly1305),
            ((Ring, true), (Ring, true), Aead::ChaCha20Poly1305),
        ];
        for ((ip, ih), (rp, rh), want) in table {
            let (i, r) = (Offer::local(ip, ih), Offer::local(rp, rh));
            let got = pick(Offer::from_byte(i.byte()), r);
            assert_eq!(got, want, "{ip:?}/{ih} → {rp:?}/{rh}");
            assert_eq!(read_pick(pick_byte(got), i), Some(want));
        }
    }

    #[test]
    fn the_initiator_refuses_a_pick_it_did_not_offer() {
        assert_eq!(
            read_pick(pick_byte(Aead::Aes256Gcm), Offer::CHACHA_ONLY),
            None
        );
        let aes = Offer::local(Cipher::Aes256Gcm, true);
        for unknown in 2..=255u8 {
            assert_eq!(read_pick(unknown, aes), None);
        }
        // A later version's extra offers are ignored, not refused.
        assert_eq!(pick(Offer::from_byte(0xfe), aes), Aead::ChaCha20Poly1305);
        assert_eq!(pick(Offer::from_byte(0xff), aes), Aead::Aes256Gcm);
    }
}
