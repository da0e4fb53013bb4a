//! The Noise IK handshake (`snow`, Noise_IK_25519_ChaChaPoly_BLAKE2s) that
//! pairs two hosts: the initiator knows the responder's static key from the
//! store; the responder learns the initiator's from the first message and
//! accepts it only if it is a known peer. The first message carries a
//! timestamp so a recorded initiation cannot be replayed, and the AEADs the
//! initiator offers; the response, the one the responder picked (see
//! `suite`). snow does the
//! handshake only: the transport keys it derives go to the data path's own
//! AEAD (no per-packet state machine of snow's).

use snow::{Builder, HandshakeState, params::NoiseParams};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::aead::Aead;
use super::suite::{self, Offer};
use super::wire::{
    INIT_HEADER_LEN, INIT_LEN, INIT_MAC1_OFFSET, INIT_NOISE_LEN, RESP_HEADER_LEN, RESP_LEN,
    RESP_MAC1_OFFSET, RESP_NOISE_LEN, write_init_header, write_resp_header,
};

const PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Binds both sides to this protocol and version (v2: the payloads carry
/// the AEAD's negotiation).
const PROLOGUE: &[u8] = b"pn tunnel v2";
/// Initiation payload: the timestamp (u64 LE) then the offer byte.
const INIT_PAYLOAD_LEN: usize = 9;
/// Response payload: the pick byte.
const RESP_PAYLOAD_LEN: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("handshake message has the wrong size")]
    Size,
    #[error("initiator key is not 32 bytes")]
    Key,
    #[error("the responder picked an AEAD this side did not offer")]
    Cipher,
}

fn params() -> NoiseParams {
    PARAMS.parse().expect("valid Noise parameters")
}

/// A host's static X25519 key pair.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticKeys {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl StaticKeys {
    pub fn generate() -> Result<StaticKeys, HandshakeError> {
        let kp = Builder::new(params()).generate_keypair()?;
        let mut k = StaticKeys {
            private: [0; 32],
            public: [0; 32],
        };
        k.private.copy_from_slice(&kp.private);
        k.public.copy_from_slice(&kp.public);
        Ok(k)
    }

    /// The pair of a stored private key (X25519: public = private × base point).
    pub fn from_private(private: [u8; 32]) -> Result<StaticKeys, HandshakeError> {
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .ok_or(HandshakeError::Key)?;
        dh.set(&private);
        let public: [u8; 32] = dh.pubkey().try_into().map_err(|_| HandshakeError::Key)?;
        Ok(StaticKeys { private, public })
    }
}

/// The two transport keys of a session, from this side's point of view.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

/// An initiation in flight.
pub struct Initiation {
    state: HandshakeState,
    pub local_index: u32,
    offer: Offer,
}

/// Writes an initiation to `out` (`INIT_LEN` bytes), but for its macs.
pub fn initiate(
    keys: &StaticKeys,
    remote_public: &[u8; 32],
    local_index: u32,
    timestamp: u64,
    offer: Offer,
    out: &mut [u8],
) -> Result<Initiation, HandshakeError> {
    if out.len() < INIT_LEN {
        return Err(HandshakeError::Size);
    }
    let mut state = Builder::new(params())
        .local_private_key(&keys.private)?
        .remote_public_key(remote_public)?
        .prologue(PROLOGUE)?
        .build_initiator()?;
    write_init_header(out, local_index);
    let mut payload = [0u8; INIT_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&timestamp.to_le_bytes());
    payload[8] = offer.byte();
    let n = state.write_message(&payload, &mut out[INIT_HEADER_LEN..INIT_MAC1_OFFSET])?;
    if n != INIT_NOISE_LEN {
        return Err(HandshakeError::Size);
    }
    Ok(Initiation {
        state,
        local_index,
        offer,
    })
}

/// A read initiation, before the caller decides to answer it.
pub struct ReadInitiation {
    state: HandshakeState,
    pub remote_static: [u8; 32],
    pub remote_index: u32,
    pub timestamp: u64,
    /// The AEADs the initiator offers.
    pub offer: Offer,
}

/// Reads the noise part of an initiation from `sender`.
pub fn read_initiation(
    keys: &StaticKeys,
    sender: u32,
    noise: &[u8],
) -> Result<ReadInitiation, HandshakeError> {
    let mut state = Builder::new(params())
        .local_private_key(&keys.private)?
        .prologue(PROLOGUE)?
        .build_responder()?;
    let mut payload = [0u8; 64];
    let n = state.read_message(noise, &mut payload)?;
    if n != INIT_PAYLOAD_LEN {
        return Err(HandshakeError::Size);
    }
    let remote_static: [u8; 32] = state
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::Key)?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[..8]);
    Ok(ReadInitiation {
        state,
        remote_static,
        remote_index: sender,
        timestamp: u64::from_le_bytes(ts),
        offer: Offer::from_byte(payload[8]),
    })
}

/// Answers an accepted initiation into `out` (`RESP_LEN` bytes), but for
/// its mac, with the AEAD picked for the session (see [`suite::pick`]).
pub fn respond(
    read: ReadInitiation,
    local_index: u32,
    aead: Aead,
    out: &mut [u8],
) -> Result<SessionKeys, HandshakeError> {
    if out.len() < RESP_LEN {
        return Err(HandshakeError::Size);
    }
    let mut state = read.state;
    write_resp_header(out, local_index, read.remote_index);
    let n = state.write_message(
        &[suite::pick_byte(aead)],
        &mut out[RESP_HEADER_LEN..RESP_MAC1_OFFSET],
    )?;
    if n != RESP_NOISE_LEN {
        return Err(HandshakeError::Size);
    }
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok(SessionKeys {
        send: r2i,
        recv: i2r,
    })
}

/// Completes an initiation with the responder's answer: the session's keys
/// and AEAD.
pub fn complete(init: Initiation, noise: &[u8]) -> Result<(SessionKeys, Aead), HandshakeError> {
    let mut state = init.state;
    let mut payload = [0u8; 64];
    let n = state.read_message(noise, &mut payload)?;
    if n != RESP_PAYLOAD_LEN {
        return Err(HandshakeError::Size);
    }
    let aead = suite::read_pick(payload[0], init.offer).ok_or(HandshakeError::Cipher)?;
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok((
        SessionKeys {
            send: i2r,
            recv: r2i,
        },
        aead,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, parse};

    fn offer(aes: bool) -> Offer {
        Offer::local(crate::aead::Cipher::Aes256Gcm, aes)
    }

    /// An initiation from a fresh `a` to `b`, read by `b`.
    fn initiation(
        a: &StaticKeys,
        b: &StaticKeys,
        offered: Offer,
    ) -> (Initiation, ReadInitiation, [u8; INIT_LEN]) {
        let mut m1 = [0u8; INIT_LEN];
        let init = initiate(a, &b.public, 11, 1234, offered, &mut m1).unwrap();
        let Ok(Message::Initiation { sender, noise }) = parse(&m1) else {
            panic!("not an initiation")
        };
        let read = read_initiation(b, sender, noise).unwrap();
        (init, read, m1)
    }

    #[test]
    fn both_sides_derive_mirrored_keys() {
        let a = StaticKeys::generate().unwrap();
        let b = StaticKeys::generate().unwrap();
        for (offered, picked) in [
            (offer(true), Aead::Aes256Gcm),
            (offer(true), Aead::ChaCha20Poly1305),
            (offer(false), Aead::ChaCha20Poly1305),
        ] {
            let (init, read, _) = initiation(&a, &b, offered);
            assert_eq!(read.remote_static, a.public);
            assert_eq!((read.remote_index, read.timestamp), (11, 1234));
            assert_eq!(read.offer, offered);
            let mut m2 = [0u8; RESP_LEN];
            let kb = respond(read, 22, picked, &mut m2).unwrap();
            let Ok(Message::Response {
                sender: 22,
                receiver: 11,
                noise,
            }) = parse(&m2)
            else {
                panic!("not a response")
            };
            let (ka, aead) = complete(init, noise).unwrap();
            assert_eq!(aead, picked);
            assert_eq!(ka.send, kb.recv);
            assert_eq!(ka.recv, kb.send);
            assert_ne!(ka.send, ka.recv);
        }
    }

    #[test]
    fn the_aead_fields_cannot_be_changed_on_the_way() {
        let a = StaticKeys::generate().unwrap();
        let b = StaticKeys::generate().unwrap();
        // The offer byte's ciphertext, in the initiation: after the
        // ephemeral, the encrypted static and the timestamp.
        let at = INIT_HEADER_LEN + 32 + 48 + 8;
        let (_, _, m1) = initiation(&a, &b, offer(false));
        for bit in 0..8 {
            let mut m = m1;
            m[at] ^= 1 << bit;
            assert!(read_initiation(&b, 11, &m[INIT_HEADER_LEN..INIT_MAC1_OFFSET]).is_err());
        }
        // The pick byte's ciphertext, in the response: after the ephemeral.
        for bit in 0..8 {
            let (init, read, _) = initiation(&a, &b, offer(true));
            let mut m2 = [0u8; RESP_LEN];
            respond(read, 22, Aead::Aes256Gcm, &mut m2).unwrap();
            m2[RESP_HEADER_LEN + 32] ^= 1 << bit;
            assert!(complete(init, &m2[RESP_HEADER_LEN..RESP_MAC1_OFFSET]).is_err());
        }
    }

    #[test]
    fn a_pick_that_was_not_offered_fails_the_handshake() {
        let a = StaticKeys::generate().unwrap();
        let b = StaticKeys::generate().unwrap();
        let (init, read, _) = initiation(&a, &b, offer(false));
        let mut m2 = [0u8; RESP_LEN];
        respond(read, 22, Aead::Aes256Gcm, &mut m2).unwrap();
        assert!(matches!(
            complete(init, &m2[RESP_HEADER_LEN..RESP_MAC1_OFFSET]),
            Err(HandshakeError::Cipher)
        ));
    }

    #[test]
    fn a_responder_with_another_key_cannot_read_it() {
        let a = StaticKeys::generate().unwrap();
        let b = StaticKeys::generate().unwrap();
        let c = StaticKeys::generate().unwrap();
        let mut m1 = [0u8; INIT_LEN];
        initiate(&a, &b.public, 1, 1, Offer::CHACHA_ONLY, &mut m1).unwrap();
        assert!(read_initiation(&c, 1, &m1[INIT_HEADER_LEN..INIT_MAC1_OFFSET]).is_err());
        let mut tampered = m1;
        tampered[40] ^= 1;
        assert!(read_initiation(&b, 1, &tampered[INIT_HEADER_LEN..INIT_MAC1_OFFSET]).is_err());
    }

    #[test]
    fn public_keys_derive_from_private_ones() {
        let k = StaticKeys::generate().unwrap();
        let again = StaticKeys::from_private(k.private).unwrap();
        assert_eq!(again.public, k.public);
    }
}
