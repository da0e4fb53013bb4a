//! Sessions (one pair of transport keys, counters, replay window) and the
//! per-peer rotation of sessions that lets a rekey happen under traffic with
//! no loss: the old session keeps receiving until the new one has carried
//! traffic, and a responder starts sending on a new session only once the
//! initiator has used it.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use zeroize::Zeroizing;

use super::{
    aead::{Aead, Cipher, Key},
    cookie::PeerCookie,
    handshake::{Initiation, SessionKeys},
    replay::ReplayWindow,
};

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    // Shared with the I/O threads, which seal and open outside the tunnel's
    // lock (the keys never change; the counters and window stay here).
    send: Arc<Key>,
    recv: Arc<Key>,
    /// The AEAD the handshake settled on.
    pub aead: Aead,
    /// The two keys' bytes (send, then receive), kept only so a successor
    /// agent can take the session over (wiped on drop; they leave the
    /// process only toward that successor, never to a file).
    raw: Zeroizing<[u8; 64]>,
    /// Several workers seal on one session at once: each takes its
    /// counters from here, so no two datagrams share a nonce.
    send_counter: AtomicU64,
    /// …and open on it at once: the window has its own lock (per session,
    /// not the tunnel's), and tolerates the reordering between workers.
    replay: Mutex<ReplayWindow>,
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
        let mut raw = Zeroizing::new([0u8; 64]);
        raw[..32].copy_from_slice(&keys.send);
        raw[32..].copy_from_slice(&keys.recv);
        Session {
            local_index,
            remote_index,
            send: Arc::new(Key::new(cipher, &mut keys.send)),
            recv: Arc::new(Key::new(cipher, &mut keys.recv)),
            aead: cipher.aead(),
            raw,
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::default()),
            created,
            initiator,
        }
    }

    /// The two keys' bytes (send, then receive), for a successor only.
    pub(crate) fn raw_keys(&self) -> &Zeroizing<[u8; 64]> {
        &self.raw
    }

    /// A copy of the replay window (for a successor).
    pub(crate) fn replay(&self) -> ReplayWindow {
        self.window().clone()
    }

    /// A panic elsewhere leaves the window consistent: it changes in one
    /// call.
    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Goes on from where a predecessor agent's session stopped: its send
    /// counter and replay window.
    pub(crate) fn resume(&mut self, send_counter: u64, replay: ReplayWindow) {
        *self.send_counter.get_mut() = send_counter;
        *self.replay.get_mut().unwrap_or_else(|p| p.into_inner()) = replay;
    }

    pub fn sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Takes the next send counter (unique whichever worker asks: the
    /// nonce of a datagram is its counter).
    pub fn next_counter(&self) -> u64 {
        self.send_counter.fetch_add(1, Ordering::Relaxed)
    }

    pub fn send_key(&self) -> Arc<Key> {
        self.send.clone()
    }

    pub fn recv_key(&self) -> Arc<Key> {
        self.recv.clone()
    }

    /// Whether `counter` may still arrive (not seen, not too old). Checked
    /// before opening, to spend nothing on replays, and again with
    /// [`Session::record`] after.
    pub fn fresh(&self, counter: u64) -> bool {
        self.window().check(counter)
    }

    /// Records an authenticated counter; false if it was seen meanwhile
    /// (by this worker or another).
    pub fn record(&self, counter: u64) -> bool {
        self.window().record(counter)
    }
}

/// A packet waiting for a session: its header flags, network tag and bytes.
pub type Queued = (u8, u32, Vec<u8>);

/// Sessions kept per peer: enough for a rekey from each side at once…
pub const MAX_SESSIONS: usize = 4;
/// …and never more than this, whatever the peer does.
pub const HARD_MAX_SESSIONS: usize = 8;

pub struct Peer {
    pub public: [u8; 32],
    pub endpoint: SocketAddr,
    /// Every session that can still receive, oldest first.
    pub sessions: Vec<Session>,
    /// Local index of the session we send on.
    pub sending: Option<u32>,
    /// Local index of the session the peer last sent on (never evicted).
    pub last_received: Option<u32>,
    pub handshake: Option<(Initiation, Instant)>,
    /// When the first initiation of the current attempt went out.
    pub attempt_started: Option<Instant>,
    /// Newest initiation timestamp accepted from this peer (replay guard).
    pub last_timestamp: u64,
    pub queue: VecDeque<Queued>,
    /// A rekey is due: the next tick sends an initiation.
    pub rekey_wanted: bool,
    /// The macs of our handshake messages to it, and its cookie.
    pub cookie: PeerCookie,
}

impl Peer {
    pub fn new(public: [u8; 32], endpoint: SocketAddr) -> Peer {
        Peer {
            public,
            endpoint,
            sessions: Vec::new(),
            sending: None,
            last_received: None,
            handshake: None,
            attempt_started: None,
            last_timestamp: 0,
            queue: VecDeque::new(),
            rekey_wanted: false,
            cookie: PeerCookie::new(&public),
        }
    }

    /// Local indexes of every session and handshake this peer holds.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.sessions
            .iter()
            .map(|s| s.local_index)
            .chain(self.handshake.as_ref().map(|(h, _)| h.local_index))
    }

    pub fn session(&self, local_index: u32) -> Option<&Session> {
        self.sessions.iter().find(|s| s.local_index == local_index)
    }

    pub fn session_mut(&mut self, local_index: u32) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .find(|s| s.local_index == local_index)
    }

    pub fn sending(&self) -> Option<&Session> {
        self.session(self.sending?)
    }

    /// Adds a session (sending on it at once if we initiated it); returns
    /// the local indexes of sessions evicted to stay within
    /// [`MAX_SESSIONS`]: only sessions older than the one the peer last sent
    /// on (it moved past them), never the one we send on. When nothing can
    /// go, the peer keeps more for a while, up to [`HARD_MAX_SESSIONS`].
    pub fn add(&mut self, s: Session, send_now: bool) -> Vec<u32> {
        if send_now {
            self.sending = Some(s.local_index);
        }
        self.sessions.push(s);
        let mut evicted = Vec::new();
        while self.sessions.len() > MAX_SESSIONS {
            let horizon = self
                .last_received
                .and_then(|i| self.sessions.iter().find(|s| s.local_index == i))
                .map(|s| s.created);
            let over_hard = self.sessions.len() > HARD_MAX_SESSIONS;
            let Some(pos) = self.sessions.iter().position(|s| {
                Some(s.local_index) != self.sending
                    && (over_hard || horizon.is_some_and(|h| s.created < h))
            }) else {
                break;
            };
            evicted.push(self.sessions.remove(pos).local_index);
        }
        evicted
    }

    /// A packet arrived on `local_index`. When it is a session newer than
    /// the one we send on (we answered its handshake and the initiator now
    /// uses it), we switch to it: that is how a responder starts sending on
    /// a new session without losing anything in flight.
    pub fn received_on(&mut self, local_index: u32) {
        self.last_received = Some(local_index);
        if self.switches_to(local_index) {
            self.sending = Some(local_index);
        }
    }

    /// Whether [`Peer::received_on`] would change anything: the workers
    /// record a packet under the tunnel's shared lock when it would not
    /// (the steady state), and take the exclusive one when it would.
    pub fn receiving_changes(&self, local_index: u32) -> bool {
        self.last_received != Some(local_index) || self.switches_to(local_index)
    }

    fn switches_to(&self, local_index: u32) -> bool {
        if self.sending == Some(local_index) {
            return false;
        }
        let created = |i: u32| self.session(i).map(|s| s.created);
        match (created(local_index), self.sending.and_then(created)) {
            (Some(new), Some(cur)) => new > cur,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Drops sessions older than `max_age`; returns their local indexes.
    pub fn expire(&mut self, now: Instant, max_age: std::time::Duration) -> Vec<u32> {
        let mut gone = Vec::new();
        self.sessions.retain(|s| {
            let keep = now.saturating_duration_since(s.created) < max_age;
            if !keep {
                gone.push(s.local_index);
            }
            keep
        });
        if self.sending.is_some_and(|i| gone.contains(&i)) {
            self.sending = None;
        }
        if self.last_received.is_some_and(|i| gone.contains(&i)) {
            self.last_received = None;
        }
        gone
    }
}
