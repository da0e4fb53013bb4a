//! What a running tunnel hands its successor (an agent restarting or being
//! upgraded): every live session with its keys, counters and replay window,
//! and the handshake replay guards, as bytes in a versioned format. The
//! bytes hold keys: they live in wiped buffers and go only over a local
//! socket (or into the service manager's memory), never to a file.
//!
//! Nonces are never used twice: the predecessor stops its I/O before it
//! exports, and each session's send counter is carried [`COUNTER_MARGIN`]
//! past the last one it took.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{
    aead::{Aead, Cipher},
    handshake::SessionKeys,
    peer_id::PeerId,
    replay::{ReplayWindow, WORDS},
    session::{HARD_MAX_SESSIONS, Session},
};

/// Version of the byte format; a successor that reads another one starts
/// afresh (new handshakes) instead of guessing. 2: each session's AEAD.
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 4] = b"PNTS";
/// How far past the predecessor's last send counter the successor starts.
/// Smaller than the replay window, so a datagram the predecessor sent just
/// before the hand-over and that arrives after the successor's first is
/// still accepted by the peer.
pub const COUNTER_MARGIN: u64 = 1024;
const _: () = assert!(COUNTER_MARGIN < crate::replay::WINDOW / 2);
/// Bounds on what a decoder accepts (no allocation driven by a length).
const MAX_PEERS: usize = 1 << 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CarryError {
    #[error("not a tunnel state")]
    Magic,
    #[error("tunnel state version {0}, this agent reads version {VERSION}")]
    Version(u32),
    #[error("tunnel state truncated or malformed")]
    Malformed,
}

/// One session of a peer, as carried.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CarriedSession {
    pub local_index: u32,
    pub remote_index: u32,
    /// Send key then receive key.
    pub keys: Zeroizing<[u8; 64]>,
    /// The AEAD the handshake settled on (the successor keeps it, whatever
    /// its own preference).
    #[zeroize(skip)]
    pub aead: Aead,
    /// The next counter the successor sends with.
    pub send_counter: u64,
    #[zeroize(skip)]
    pub age: Duration,
    pub initiator: bool,
    pub replay_next: u64,
    pub replay_bitmap: [u64; WORDS],
}

impl CarriedSession {
    /// `s` as a successor takes it over: its send counter moved `margin`
    /// past the last one taken here, so no nonce is used twice even if a
    /// datagram sealed here were still on its way out.
    pub fn of(s: &Session, now: Instant, margin: u64) -> CarriedSession {
        let replay = s.replay();
        let (replay_next, replay_bitmap) = replay.parts();
        CarriedSession {
            local_index: s.local_index,
            remote_index: s.remote_index,
            keys: s.raw_keys().clone(),
            aead: s.aead,
            send_counter: s.sent().saturating_add(margin),
            age: now.saturating_duration_since(s.created),
            initiator: s.initiator,
            replay_next,
            replay_bitmap: *replay_bitmap,
        }
    }

    /// The session again, with `cipher`'s implementation of its AEAD.
    pub fn restore(&self, cipher: Cipher, now: Instant) -> Session {
        let mut keys = SessionKeys {
            send: [0; 32],
            recv: [0; 32],
        };
        keys.send.copy_from_slice(&self.keys[..32]);
        keys.recv.copy_from_slice(&self.keys[32..]);
        let mut s = Session::new(
            cipher.for_aead(self.aead),
            keys,
            self.local_index,
            self.remote_index,
            now.checked_sub(self.age).unwrap_or(now),
            self.initiator,
        );
        s.resume(
            self.send_counter,
            ReplayWindow::from_parts(self.replay_next, self.replay_bitmap),
        );
        s
    }
}

/// A peer's sessions and replay guards.
#[derive(Clone)]
pub struct CarriedPeer {
    pub id: PeerId,
    pub public: [u8; 32],
    pub endpoint: SocketAddr,
    /// Newest initiation timestamp accepted from it.
    pub last_timestamp: u64,
    pub sending: Option<u32>,
    pub last_received: Option<u32>,
    pub sessions: Vec<CarriedSession>,
}

/// A whole tunnel's state, as carried.
#[derive(Clone, Default)]
pub struct Carried {
    /// Our newest initiation timestamp (they only grow).
    pub last_timestamp_sent: u64,
    pub peers: Vec<CarriedPeer>,
}

impl Carried {
    pub fn sessions(&self) -> usize {
        self.peers.iter().map(|p| p.sessions.len()).sum()
    }

    /// The bytes, in a buffer wiped on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Zeroizing::new(Vec::with_capacity(
            64 + self.peers.len() * 64 + self.sessions() * (1100),
        ));
        w.extend_from_slice(MAGIC);
        put_u32(&mut w, VERSION);
        put_u64(&mut w, self.last_timestamp_sent);
        put_u32(&mut w, self.peers.len() as u32);
        for p in &self.peers {
            put_u32(&mut w, p.id);
            w.extend_from_slice(&p.public);
            match p.endpoint.ip() {
                IpAddr::V4(a) => {
                    w.push(4);
                    w.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    w.push(6);
                    w.extend_from_slice(&a.octets());
                }
            }
            put_u16(&mut w, p.endpoint.port());
            put_u64(&mut w, p.last_timestamp);
            put_u32(&mut w, p.sending.unwrap_or(0));
            put_u32(&mut w, p.last_received.unwrap_or(0));
            w.push(p.sessions.len() as u8);
            for s in &p.sessions {
                put_u32(&mut w, s.local_index);
                put_u32(&mut w, s.remote_index);
                w.extend_from_slice(&s.keys[..]);
                w.push(s.aead.id());
                put_u64(&mut w, s.send_counter);
                put_u64(&mut w, s.age.as_millis() as u64);
                w.push(u8::from(s.initiator));
                put_u64(&mut w, s.replay_next);
                for word in &s.replay_bitmap {
                    put_u64(&mut w, *word);
                }
            }
        }
        w
    }

    /// Reads what [`Carried::encode`] wrote; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Carried, CarryError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(CarryError::Magic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(CarryError::Version(version));
        }
        let last_timestamp_sent = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_PEERS {
            return Err(CarryError::Malformed);
        }
        let mut peers = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let id = r.u32()?;
            let public: [u8; 32] = r.array()?;
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                _ => return Err(CarryError::Malformed),
            };
            let endpoint = SocketAddr::new(ip, r.u16()?);
            let last_timestamp = r.u64()?;
            let sending = Some(r.u32()?).filter(|i| *i != 0);
            let last_received = Some(r.u32()?).filter(|i| *i != 0);
            let count = r.u8()? as usize;
            if count > HARD_MAX_SESSIONS {
                return Err(CarryError::Malformed);
            }
            let mut sessions = Vec::with_capacity(count);
            for _ in 0..count {
                let local_index = r.u32()?;
                let remote_index = r.u32()?;
                let mut keys = Zeroizing::new([0u8; 64]);
                keys.copy_from_slice(r.take(64)?);
                let aead = Aead::from_id(r.u8()?).ok_or(CarryError::Malformed)?;
                let send_counter = r.u64()?;
                let age = Duration::from_millis(r.u64()?);
                let initiator = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(CarryError::Malformed),
                };
                let replay_next = r.u64()?;
                let mut replay_bitmap = [0u64; WORDS];
                for word in &mut replay_bitmap {
                    *word = r.u64()?;
                }
                if local_index == 0 {
                    return Err(CarryError::Malformed);
                }
                sessions.push(CarriedSession {
                    local_index,
                    remote_index,
                    keys,
                    aead,
                    send_counter,
                    age,
                    initiator,
                    replay_next,
                    replay_bitmap,
                });
            }
            peers.push(CarriedPeer {
                id,
                public,
                endpoint,
                last_timestamp,
                sending,
                last_received,
                sessions,
            });
        }
        if !r.0.is_empty() {
            return Err(CarryError::Malformed);
        }
        Ok(Carried {
            last_timestamp_sent,
            peers,
        })
    }
}

fn put_u16(w: &mut Vec<u8>, v: u16) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CarryError> {
        if self.0.len() < n {
            return Err(CarryError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CarryError> {
        self.take(N)?.try_into().map_err(|_| CarryError::Malformed)
    }

    fn u8(&mut self) -> Result<u8, CarryError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CarryError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CarryError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CarryError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}
