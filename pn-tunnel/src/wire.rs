//! Byte layouts of the tunnel's messages. The data header's layout is shared
//! with the XDP guard through `pn_common::tunnel`. Parsing never panics: any
//! byte string is either a message or a [`WireError`].

pub use pn_common::tunnel::{
    AEAD_TAG_LEN, COUNTER_OFFSET, DATA_HEADER_LEN, FLAG_CSUM_PARTIAL, FLAGS_OFFSET, MSG_COOKIE,
    MSG_DATA, MSG_INITIATION, MSG_RESPONSE, OVERHEAD, RECEIVER_OFFSET, TAG_OFFSET,
};

/// Every initiation and response ends with mac1, keyed from the receiver's
/// static public key: who does not know it is dropped before any DH.
/// Initiations then carry mac2, keyed with a cookie from a responder under
/// load (zeros without one). See `cookie`.
pub const MAC_LEN: usize = 16;

/// Initiation: `type | reserved[3] | sender u32 LE | noise IK message 1 |
/// mac1 | mac2`.
pub const INIT_HEADER_LEN: usize = 8;
/// Noise IK message 1: ephemeral (32), encrypted static (32 + 16), encrypted
/// payload (an 8-byte timestamp, the AEADs offered in 1 byte, + 16).
pub const INIT_NOISE_LEN: usize = 32 + 48 + 9 + 16;
pub const INIT_MAC1_OFFSET: usize = INIT_HEADER_LEN + INIT_NOISE_LEN;
pub const INIT_MAC2_OFFSET: usize = INIT_MAC1_OFFSET + MAC_LEN;
pub const INIT_LEN: usize = INIT_MAC2_OFFSET + MAC_LEN;
/// Response: `type | reserved[3] | sender u32 LE | receiver u32 LE | noise
/// IK message 2 | mac1`. No mac2: a response is only read when it names an
/// initiation in flight, which a stranger off the path cannot know.
pub const RESP_HEADER_LEN: usize = 12;
/// Noise IK message 2: ephemeral (32), encrypted payload (the AEAD picked
/// in 1 byte, + 16).
pub const RESP_NOISE_LEN: usize = 32 + 1 + 16;
pub const RESP_MAC1_OFFSET: usize = RESP_HEADER_LEN + RESP_NOISE_LEN;
pub const RESP_LEN: usize = RESP_MAC1_OFFSET + MAC_LEN;
/// Cookie reply: `type | reserved[3] | receiver u32 LE | nonce[24] |
/// cookie (16) sealed with its tag (16)`.
pub const COOKIE_NONCE_OFFSET: usize = 8;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const COOKIE_SEALED_OFFSET: usize = COOKIE_NONCE_OFFSET + COOKIE_NONCE_LEN;
pub const COOKIE_SEALED_LEN: usize = 16 + AEAD_TAG_LEN;
pub const COOKIE_REPLY_LEN: usize = COOKIE_SEALED_OFFSET + COOKIE_SEALED_LEN;
/// Smallest data message: header and tag around an empty payload.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + AEAD_TAG_LEN;

/// The sizes README quotes (old and new agents do not pair).
const _: () = assert!(INIT_LEN == 145 && RESP_LEN == 77);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message of type {kind} has {len} bytes, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
}

/// A parsed message, borrowing the datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation {
        sender: u32,
        noise: &'a [u8],
    },
    Response {
        sender: u32,
        receiver: u32,
        noise: &'a [u8],
    },
    Data {
        flags: u8,
        tag: u32,
        receiver: u32,
        counter: u64,
    },
    Cookie {
        receiver: u32,
        nonce: &'a [u8; COOKIE_NONCE_LEN],
        sealed: &'a [u8; COOKIE_SEALED_LEN],
    },
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn parse(buf: &[u8]) -> Result<Message<'_>, WireError> {
    let kind = *buf.first().ok_or(WireError::Empty)?;
    let exact = |expected: usize| {
        if buf.len() == expected {
            Ok(())
        } else {
            Err(WireError::BadLength {
                kind,
                len: buf.len(),
                expected,
            })
        }
    };
    match kind {
        MSG_INITIATION => {
            exact(INIT_LEN)?;
            Ok(Message::Initiation {
                sender: u32_le(buf, 4),
                noise: &buf[INIT_HEADER_LEN..INIT_MAC1_OFFSET],
            })
        }
        MSG_RESPONSE => {
            exact(RESP_LEN)?;
            Ok(Message::Response {
                sender: u32_le(buf, 4),
                receiver: u32_le(buf, 8),
                noise: &buf[RESP_HEADER_LEN..RESP_MAC1_OFFSET],
            })
        }
        MSG_COOKIE => {
            exact(COOKIE_REPLY_LEN)?;
            let nonce = buf[COOKIE_NONCE_OFFSET..COOKIE_SEALED_OFFSET]
                .try_into()
                .expect("length checked");
            let sealed = buf[COOKIE_SEALED_OFFSET..]
                .try_into()
                .expect("length checked");
            Ok(Message::Cookie {
                receiver: u32_le(buf, 4),
                nonce,
                sealed,
            })
        }
        MSG_DATA => {
            if buf.len() < DATA_MIN_LEN {
                return Err(WireError::BadLength {
                    kind,
                    len: buf.len(),
                    expected: DATA_MIN_LEN,
                });
            }
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&buf[COUNTER_OFFSET..COUNTER_OFFSET + 8]);
            Ok(Message::Data {
                flags: buf[FLAGS_OFFSET],
                tag: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                receiver: u32_le(buf, RECEIVER_OFFSET),
                counter: u64::from_le_bytes(counter),
            })
        }
        other => Err(WireError::UnknownType(other)),
    }
}

/// Writes a data header into `out[..DATA_HEADER_LEN]`.
pub fn write_data_header(out: &mut [u8], flags: u8, tag: u32, receiver: u32, counter: u64) {
    out[0] = MSG_DATA;
    out[FLAGS_OFFSET] = flags;
    out[2..4].fill(0);
    out[TAG_OFFSET..TAG_OFFSET + 4].copy_from_slice(&tag.to_be_bytes());
    out[RECEIVER_OFFSET..RECEIVER_OFFSET + 4].copy_from_slice(&receiver.to_le_bytes());
    out[COUNTER_OFFSET..COUNTER_OFFSET + 8].copy_from_slice(&counter.to_le_bytes());
}

pub fn write_init_header(out: &mut [u8], sender: u32) {
    out[0] = MSG_INITIATION;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&sender.to_le_bytes());
}

pub fn write_resp_header(out: &mut [u8], sender: u32, receiver: u32) {
    out[0] = MSG_RESPONSE;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&sender.to_le_bytes());
    out[8..12].copy_from_slice(&receiver.to_le_bytes());
}

pub fn write_cookie_header(out: &mut [u8], receiver: u32) {
    out[0] = MSG_COOKIE;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_header_round_trip() {
        let mut b = vec![0u8; DATA_MIN_LEN + 10];
        write_data_header(&mut b, FLAG_CSUM_PARTIAL, 0x0102_0304, 77, u64::MAX - 1);
        assert_eq!(
            &b[4..8],
            &[1, 2, 3, 4],
            "tag big-endian where the XDP guard reads it"
        );
        assert_eq!(
            parse(&b),
            Ok(Message::Data {
                flags: FLAG_CSUM_PARTIAL,
                tag: 0x0102_0304,
                receiver: 77,
                counter: u64::MAX - 1
            })
        );
    }

    #[test]
    fn handshake_headers_round_trip() {
        let mut b = vec![0u8; INIT_LEN];
        write_init_header(&mut b, 9);
        assert!(
            matches!(parse(&b), Ok(Message::Initiation { sender: 9, noise }) if noise.len() == INIT_NOISE_LEN)
        );
        let mut b = vec![0u8; RESP_LEN];
        write_resp_header(&mut b, 5, 6);
        assert!(matches!(
            parse(&b),
            Ok(Message::Response {
                sender: 5,
                receiver: 6,
                noise,
            }) if noise.len() == RESP_NOISE_LEN
        ));
        let mut b = vec![7u8; COOKIE_REPLY_LEN];
        write_cookie_header(&mut b, 8);
        assert!(matches!(
            parse(&b),
            Ok(Message::Cookie { receiver: 8, nonce, sealed }) if nonce[0] == 7 && sealed[31] == 7
        ));
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        assert_eq!(parse(&[]), Err(WireError::Empty));
        assert_eq!(parse(&[9, 0, 0]), Err(WireError::UnknownType(9)));
        assert!(parse(&[MSG_DATA; DATA_MIN_LEN - 1]).is_err());
        assert!(parse(&[MSG_INITIATION; INIT_LEN + 1]).is_err());
        assert!(parse(&[MSG_RESPONSE; 3]).is_err());
        assert!(parse(&[MSG_COOKIE; COOKIE_REPLY_LEN - 1]).is_err());
        for len in 0..200 {
            for first in [0u8, 1, 2, 3, 4, 5, 255] {
                let mut b = vec![0xa5u8; len];
                if let Some(x) = b.first_mut() {
                    *x = first;
                }
                let _ = parse(&b);
            }
        }
    }
}
