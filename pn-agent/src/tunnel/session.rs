//! Sessions (one pair of transport keys, counters, replay window) and the
//! per-peer rotation of sessions that lets a rekey happen under traffic with
//! no loss: the old session keeps receiving until the new one has carried
//! traffic, and a responder starts sending on a new session only once the
//! initiator has used it.

use std::{collections::VecDeque, net::SocketAddr, time::Instant};

use super::{
    aead::{AuthError, Cipher, Key},
    handshake::{Initiation, SessionKeys},
    replay::ReplayWindow,
};

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    send: Key,
    recv: Key,
    send_counter: u64,
    replay: ReplayWindow,
    pub created: Instant,
    /// This side sent the initiation.
    pub initiator: bool,
}

impl Session {
    pub fn new(
        cipher: Cipher,
        mut keys: SessionKeys,
        local_index: u32,
        remote_index: u32,
        created: Instant,
        initiator: bool,
    ) -> Session {
        Session {
            local_index,
            remote_index,
            send: Key::new(cipher, &mut keys.send),
            recv: Key::new(cipher, &mut keys.recv),
            send_counter: 0,
            replay: ReplayWindow::default(),
            created,
            initiator,
        }
    }

    pub fn sent(&self) -> u64 {
        self.send_counter
    }

    /// Takes the next send counter.
    pub fn next_counter(&mut self) -> u64 {
        let c = self.send_counter;
        self.send_counter += 1;
        c
    }

    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.send.seal(counter, aad, buf)
    }

    /// Replay check, authentication, then recording of the counter.
    pub fn open(
        &mut self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), OpenError> {
        if !self.replay.check(counter) {
            return Err(OpenError::Replayed);
        }
        self.recv
            .open(counter, aad, buf, tag)
            .map_err(|AuthError| OpenError::Auth)?;
        // Checked above and nothing else touched the window since.
        self.replay.record(counter);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    Replayed,
    Auth,
}

/// A packet waiting for a session: its network tag and bytes.
pub type Queued = (u32, Vec<u8>);

pub struct Peer {
    pub public: [u8; 32],
    pub endpoint: SocketAddr,
    /// Sends with this one.
    pub current: Option<Session>,
    /// Still receives on the one before a rekey.
    pub previous: Option<Session>,
    /// Responder side: established, waiting for the initiator's first packet.
    pub next: Option<Session>,
    pub handshake: Option<(Initiation, Instant)>,
    /// When the first initiation of the current attempt went out.
    pub attempt_started: Option<Instant>,
    /// Newest initiation timestamp accepted from this peer (replay guard).
    pub last_timestamp: u64,
    pub queue: VecDeque<Queued>,
    /// A rekey is due: the next tick sends an initiation.
    pub rekey_wanted: bool,
}

impl Peer {
    pub fn new(public: [u8; 32], endpoint: SocketAddr) -> Peer {
        Peer {
            public,
            endpoint,
            current: None,
            previous: None,
            next: None,
            handshake: None,
            attempt_started: None,
            last_timestamp: 0,
            queue: VecDeque::new(),
            rekey_wanted: false,
        }
    }

    /// Local indexes of every session and handshake this peer holds.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .filter_map(|s| s.as_ref().map(|s| s.local_index))
            .chain(self.handshake.as_ref().map(|(h, _)| h.local_index))
    }

    /// The session with this local index, if any.
    pub fn session_mut(&mut self, local_index: u32) -> Option<(&mut Session, Slot)> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.local_index == local_index)
        {
            return self.current.as_mut().map(|s| (s, Slot::Current));
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|s| s.local_index == local_index)
        {
            return self.previous.as_mut().map(|s| (s, Slot::Previous));
        }
        if self
            .next
            .as_ref()
            .is_some_and(|s| s.local_index == local_index)
        {
            return self.next.as_mut().map(|s| (s, Slot::Next));
        }
        None
    }

    /// The initiator used the session we answered: it becomes the one we send
    /// on. Returns the local index of a session that goes away.
    pub fn promote_next(&mut self) -> Option<u32> {
        let next = self.next.take()?;
        let dropped = self.previous.take().map(|s| s.local_index);
        self.previous = self.current.replace(next);
        dropped
    }

    /// Our initiation was answered: the new session sends from now on.
    /// Returns the local indexes of sessions that go away.
    pub fn install_initiated(&mut self, s: Session) -> Vec<u32> {
        let mut dropped: Vec<u32> = self
            .previous
            .take()
            .map(|s| s.local_index)
            .into_iter()
            .collect();
        // A responder session never used is superseded by ours.
        dropped.extend(self.next.take().map(|s| s.local_index));
        self.previous = self.current.replace(s);
        dropped
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Current,
    Previous,
    Next,
}
