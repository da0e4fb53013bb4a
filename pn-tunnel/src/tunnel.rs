//! The [`Tunnel`] itself: its peers and their sessions, the local indexes
//! that route datagrams to them, and the timers. Sending and receiving are
//! in `data`, pairing in `pairing`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    aead::Aead,
    carry::{Carried, CarriedPeer, CarriedSession},
    config::{Clock, Config},
    cookie::CookieChecker,
    handshake::StaticKeys,
    limiter::{Load, RateLimiter},
    peer_id::PeerId,
    session::{Peer, Session},
    wire::INIT_LEN,
};

/// Counters of the handshake side; data drops are reported per packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub initiations_sent: u64,
    pub handshakes_completed: u64,
    pub initiations_answered: u64,
    pub sessions_expired: u64,
    pub queue_dropped: u64,
    /// Initiations that reached the Noise handshake (each costs DHs).
    pub initiations_processed: u64,
    /// Cookie replies sent (under load) and accepted (from a peer).
    pub cookies_sent: u64,
    pub cookies_received: u64,
    /// Sessions started (either side of the handshake), per AEAD.
    pub sessions_chacha20poly1305: u64,
    pub sessions_aes256gcm: u64,
}

/// What `status` shows of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub established: bool,
    pub session_age: Option<Duration>,
    pub handshake_in_flight: bool,
    pub queued: usize,
    /// The AEAD of the session we send on.
    pub aead: Option<Aead>,
}

pub struct Tunnel {
    pub(crate) cfg: Config,
    pub(crate) keys: StaticKeys,
    pub(crate) peers: HashMap<PeerId, Peer>,
    pub(crate) by_public: HashMap<[u8; 32], PeerId>,
    pub(crate) by_index: HashMap<u32, PeerId>,
    index_state: u64,
    /// Initiation timestamps only grow, even if the wall clock steps back
    /// (the responder rejects anything not newer than the last one).
    pub(crate) last_timestamp_sent: u64,
    pub(crate) limiter: RateLimiter,
    pub(crate) load: Load,
    pub(crate) cookies: CookieChecker,
    pub stats: Stats,
}

impl Tunnel {
    pub fn new(cfg: Config, keys: StaticKeys, seed: u64) -> Tunnel {
        Tunnel {
            limiter: RateLimiter::new(cfg.handshakes_per_sec),
            load: Load::new(cfg.handshake_load_per_sec, cfg.handshake_cpu_per_sec),
            cookies: CookieChecker::new(&keys.public),
            cfg,
            keys,
            peers: HashMap::new(),
            by_public: HashMap::new(),
            by_index: HashMap::new(),
            index_state: seed | 1,
            last_timestamp_sent: 0,
            stats: Stats::default(),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.keys.public
    }

    /// A fresh, unused, non-zero local index (xorshift: unpredictable enough
    /// for an index, which is no secret; uniqueness is checked).
    pub(crate) fn new_index(&mut self) -> u32 {
        loop {
            let mut x = self.index_state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.index_state = x;
            let i = (x >> 16) as u32;
            if i != 0 && !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// Adds or updates a peer. A changed key drops everything it had.
    pub fn set_peer(&mut self, id: PeerId, public: [u8; 32], endpoint: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&id)
            && p.public == public
        {
            p.endpoint = endpoint;
            return;
        }
        self.remove_peer(id);
        self.by_public.insert(public, id);
        self.peers.insert(id, Peer::new(public, endpoint));
    }

    /// Forgets a peer (left the fleet, or its key changed): its sessions die.
    pub fn remove_peer(&mut self, id: PeerId) {
        if let Some(p) = self.peers.remove(&id) {
            self.by_public.remove(&p.public);
            for i in p.indexes().collect::<Vec<_>>() {
                self.by_index.remove(&i);
            }
        }
    }

    /// Everything a successor needs to go on with the live sessions: see
    /// [`crate::carry`]. The caller has stopped all sealing first.
    pub fn export(&self, now: Instant, margin: u64) -> Carried {
        let mut peers: Vec<CarriedPeer> = self
            .peers
            .iter()
            .map(|(id, p)| CarriedPeer {
                id: *id,
                public: p.public,
                endpoint: p.endpoint,
                last_timestamp: p.last_timestamp,
                sending: p.sending,
                last_received: p.last_received,
                sessions: p
                    .sessions
                    .iter()
                    .map(|s| CarriedSession::of(s, now, margin))
                    .collect(),
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        Carried {
            last_timestamp_sent: self.last_timestamp_sent,
            peers,
        }
    }

    /// Takes over a predecessor's sessions for the peers this tunnel
    /// already has with the same key (others left the fleet or changed
    /// key: their sessions are dropped). Returns the sessions taken.
    pub fn import(&mut self, carried: &Carried, now: Instant) -> usize {
        self.last_timestamp_sent = self.last_timestamp_sent.max(carried.last_timestamp_sent);
        let mut taken = 0;
        for c in &carried.peers {
            let Some(p) = self.peers.get_mut(&c.id) else {
                continue;
            };
            if p.public != c.public {
                continue;
            }
            p.last_timestamp = p.last_timestamp.max(c.last_timestamp);
            for cs in &c.sessions {
                if self.by_index.contains_key(&cs.local_index) {
                    continue;
                }
                let s = cs.restore(self.cfg.cipher, now);
                self.by_index.insert(s.local_index, c.id);
                p.sessions.push(s);
                taken += 1;
            }
            let have =
                |i: &Option<u32>| i.filter(|i| p.sessions.iter().any(|s| s.local_index == *i));
            if p.sending.is_none() {
                p.sending = have(&c.sending);
            }
            if p.last_received.is_none() {
                p.last_received = have(&c.last_received);
            }
        }
        taken
    }

    /// A peer's key and endpoint.
    pub fn peer(&self, id: PeerId) -> Option<([u8; 32], SocketAddr)> {
        self.peers.get(&id).map(|p| (p.public, p.endpoint))
    }

    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    pub fn peer_state(&self, id: PeerId, now: Instant) -> Option<PeerState> {
        let p = self.peers.get(&id)?;
        Some(PeerState {
            established: p.sending().is_some_and(|s| self.usable(s, now)),
            session_age: p
                .sending()
                .map(|s| now.saturating_duration_since(s.created)),
            handshake_in_flight: p.handshake.is_some(),
            queued: p.queue.len(),
            aead: p.sending().map(|s| s.aead),
        })
    }

    fn usable(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.created) < self.cfg.reject_after_time
            && s.sent() < self.cfg.reject_after_messages
    }

    /// Timers: initiations to (re)send, sessions to expire, queues to give up.
    pub fn tick(&mut self, clock: Clock, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let reject = self.cfg.reject_after_time;
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let mut expired = Vec::new();
            let mut initiate = false;
            if let Some(p) = self.peers.get_mut(&id) {
                expired.extend(p.expire(clock.now, reject));
                if let Some(started) = p.attempt_started
                    && clock.now.saturating_duration_since(started) >= self.cfg.handshake_give_up
                {
                    self.stats.queue_dropped += p.queue.len() as u64;
                    p.queue.clear();
                    expired.extend(p.handshake.take().map(|(h, _)| h.local_index));
                    p.attempt_started = None;
                }
                // Again after the retry time, or at once when the peer,
                // under load, answered with a cookie.
                let retry = p.handshake.as_ref().is_some_and(|(_, sent)| {
                    clock.now.saturating_duration_since(*sent) >= self.cfg.handshake_retry
                }) || (p.handshake.is_some() && p.cookie.take_retry());
                let idle_wanted = p.handshake.is_none()
                    && (p.rekey_wanted || (!p.queue.is_empty() && p.sending.is_none()));
                initiate = retry || idle_wanted;
            }
            self.stats.sessions_expired += expired.len() as u64;
            for i in expired {
                self.by_index.remove(&i);
            }
            if initiate {
                let mut buf = vec![0u8; INIT_LEN];
                if let Some((to, len)) = self.start_initiation(id, clock, &mut buf) {
                    buf.truncate(len);
                    out.push((to, buf));
                }
            }
        }
    }
}
