//! The encrypted tunnel between hosts, "sans I/O" (as boringtun's `noise`):
//! [`Tunnel`] takes datagrams and packets in and says what to send, with no
//! socket, device or clock inside — time comes in as a [`Clock`]. The agent's
//! `device` module owns the I/O loop around it.

pub mod aead;
pub mod device;
pub mod handshake;
pub mod keyfile;
pub mod offload;
pub mod replay;
pub mod session;
pub mod wire;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use pn_common::{Reason, ip4_octets, policy};

use self::{
    aead::{Cipher, Key},
    handshake::StaticKeys,
    session::{Peer, Session},
    wire::{AEAD_TAG_LEN, DATA_HEADER_LEN, DATA_MIN_LEN, INIT_LEN, Message, RESP_LEN},
};

/// The agent's own number for a peer host.
pub type PeerId = u32;

#[derive(Clone, Debug)]
pub struct Config {
    pub cipher: Cipher,
    /// An initiator starts a new handshake once its session is this old…
    pub rekey_after_time: Duration,
    /// …and nobody uses a session older than this.
    pub reject_after_time: Duration,
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
    /// An unanswered initiation is sent again after this long…
    pub handshake_retry: Duration,
    /// …until this long has passed, then queued packets are dropped.
    pub handshake_give_up: Duration,
    /// Packets kept per peer while a handshake is in flight.
    pub max_queued: usize,
    /// Initiations answered per source address and second (burst: 2×).
    pub handshakes_per_sec: f64,
}

impl Default for Config {
    /// WireGuard's timers and limits.
    fn default() -> Config {
        Config {
            cipher: Cipher::Ring,
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            reject_after_messages: u64::MAX - (1 << 13),
            handshake_retry: Duration::from_secs(5),
            handshake_give_up: Duration::from_secs(90),
            max_queued: 256,
            handshakes_per_sec: 20.0,
        }
    }
}

/// Time as the tunnel sees it: a monotonic instant for timers, and wall
/// time (ns since the epoch) for the initiation timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub wall_ns: u64,
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            now: Instant::now(),
            wall_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }
}

/// What to do with a packet from a local container.
#[derive(Debug, PartialEq, Eq)]
pub enum Encap {
    /// Send `out[..len]` to `to`.
    Send {
        to: SocketAddr,
        len: usize,
    },
    /// The packet is queued; send the initiation in `out[..len]` to `to`.
    Handshake {
        to: SocketAddr,
        len: usize,
    },
    /// Queued behind a handshake already in flight.
    Queued,
    Drop(Reason),
}

/// What to do with a datagram from the underlay.
#[derive(Debug, PartialEq, Eq)]
pub enum Decap {
    /// A packet for a local container: `datagram[start..end]`, with its tag
    /// and header flags. Empty for a keepalive (nothing to deliver).
    Packet {
        flags: u8,
        peer: PeerId,
        tag: u32,
        start: usize,
        end: usize,
    },
    /// Send `out[..len]` back to `to` (a handshake response).
    Reply {
        to: SocketAddr,
        len: usize,
    },
    /// Our handshake completed: send these (queued packets, sealed).
    Established {
        peer: PeerId,
        flush: Vec<(SocketAddr, Vec<u8>)>,
    },
    Drop(Reason),
}

/// A data packet written (header, clear body, room for the tag) but not yet
/// sealed. Sealing needs no tunnel state, so the I/O loop does it outside
/// the tunnel's lock: the other direction never waits behind the cipher.
pub struct Sealer {
    key: Arc<Key>,
    counter: u64,
}

impl Sealer {
    /// Seals the datagram the tunnel wrote (`out[..len]` of its `Send`).
    pub fn seal(&self, datagram: &mut [u8]) {
        let body_end = datagram.len() - AEAD_TAG_LEN;
        let (header, rest) = datagram.split_at_mut(DATA_HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_end - DATA_HEADER_LEN);
        tag.copy_from_slice(&self.key.seal(self.counter, header, body));
    }
}

/// A data datagram addressed to a live session, with a counter not seen
/// yet, not opened yet: as [`Sealer`], the opening happens outside the lock,
/// then [`Tunnel::opened`] records it.
pub struct Opener {
    key: Arc<Key>,
    peer: PeerId,
    receiver: u32,
    counter: u64,
    flags: u8,
    tag: u32,
}

impl Opener {
    /// Authenticates and decrypts `datagram` in place.
    pub fn open(&self, datagram: &mut [u8]) -> bool {
        // The datagram it was made from is at least this long; another is not.
        if datagram.len() < DATA_MIN_LEN {
            return false;
        }
        let end = datagram.len() - AEAD_TAG_LEN;
        let (head, rest) = datagram.split_at_mut(DATA_HEADER_LEN);
        let (body, tag_bytes) = rest.split_at_mut(end - DATA_HEADER_LEN);
        let mut t = [0u8; AEAD_TAG_LEN];
        t.copy_from_slice(tag_bytes);
        self.key.open(self.counter, head, body, &t).is_ok()
    }
}

/// Counters of the handshake side; data drops are reported per packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub initiations_sent: u64,
    pub handshakes_completed: u64,
    pub initiations_answered: u64,
    pub sessions_expired: u64,
    pub queue_dropped: u64,
}

/// What `status` shows of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub established: bool,
    pub session_age: Option<Duration>,
    pub handshake_in_flight: bool,
    pub queued: usize,
}

/// Token bucket per source address, so a flood of initiations costs little.
struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    const MAX_SOURCES: usize = 4096;

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= Self::MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let burst = self.rate * 2.0;
        let (tokens, last) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Tunnel {
    cfg: Config,
    keys: StaticKeys,
    peers: HashMap<PeerId, Peer>,
    by_public: HashMap<[u8; 32], PeerId>,
    by_index: HashMap<u32, PeerId>,
    index_state: u64,
    /// Initiation timestamps only grow, even if the wall clock steps back
    /// (the responder rejects anything not newer than the last one).
    last_timestamp_sent: u64,
    limiter: RateLimiter,
    pub stats: Stats,
}

impl Tunnel {
    pub fn new(cfg: Config, keys: StaticKeys, seed: u64) -> Tunnel {
        Tunnel {
            limiter: RateLimiter {
                rate: cfg.handshakes_per_sec,
                buckets: HashMap::new(),
            },
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
    fn new_index(&mut self) -> u32 {
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
        })
    }

    fn usable(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.created) < self.cfg.reject_after_time
            && s.sent() < self.cfg.reject_after_messages
    }

    /// Writes `packet` for `s`'s peer into `out`, ready to seal; returns
    /// the datagram's length.
    fn write_data(
        s: &mut Session,
        flags: u8,
        tag: u32,
        packet: &[u8],
        out: &mut [u8],
    ) -> (usize, Sealer) {
        let len = DATA_HEADER_LEN + packet.len() + AEAD_TAG_LEN;
        let counter = s.next_counter();
        let (header, rest) = out.split_at_mut(DATA_HEADER_LEN);
        wire::write_data_header(header, flags, tag, s.remote_index, counter);
        rest[..packet.len()].copy_from_slice(packet);
        let sealer = Sealer {
            key: s.send_key(),
            counter,
        };
        (len, sealer)
    }

    /// Seals `packet` for `s`'s peer into `out`.
    fn seal_into(s: &mut Session, flags: u8, tag: u32, packet: &[u8], out: &mut [u8]) -> usize {
        let (len, sealer) = Self::write_data(s, flags, tag, packet, out);
        sealer.seal(&mut out[..len]);
        len
    }

    fn start_initiation(
        &mut self,
        id: PeerId,
        clock: Clock,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let index = self.new_index();
        let timestamp = clock.wall_ns.max(self.last_timestamp_sent + 1);
        let peer = self.peers.get_mut(&id)?;
        let init = handshake::initiate(&self.keys, &peer.public, index, timestamp, out).ok()?;
        self.last_timestamp_sent = timestamp;
        if let Some((old, _)) = peer.handshake.replace((init, clock.now)) {
            self.by_index.remove(&old.local_index);
        }
        peer.attempt_started.get_or_insert(clock.now);
        peer.rekey_wanted = false;
        let to = peer.endpoint;
        self.by_index.insert(index, id);
        self.stats.initiations_sent += 1;
        Some((to, INIT_LEN))
    }

    /// A packet from a local container for `peer`'s network `tag`. `out`
    /// must hold the packet plus [`wire::OVERHEAD`].
    pub fn encapsulate(
        &mut self,
        clock: Clock,
        peer: PeerId,
        tag: u32,
        flags: u8,
        packet: &[u8],
        out: &mut [u8],
    ) -> Encap {
        let (encap, sealer) = self.encapsulate_deferred(clock, peer, tag, flags, packet, out);
        if let (Encap::Send { len, .. }, Some(sealer)) = (&encap, sealer) {
            sealer.seal(&mut out[..*len]);
        }
        encap
    }

    /// [`Tunnel::encapsulate`] but for the sealing: a `Send` comes with the
    /// [`Sealer`] that must seal `out[..len]` before it leaves.
    pub fn encapsulate_deferred(
        &mut self,
        clock: Clock,
        peer: PeerId,
        tag: u32,
        flags: u8,
        packet: &[u8],
        out: &mut [u8],
    ) -> (Encap, Option<Sealer>) {
        let now = |e: Encap| (e, None);
        if out.len() < packet.len() + DATA_MIN_LEN || out.len() < INIT_LEN {
            return now(Encap::Drop(Reason::Malformed));
        }
        let (rekey_time, rekey_msgs, reject_time, reject_msgs) = (
            self.cfg.rekey_after_time,
            self.cfg.rekey_after_messages,
            self.cfg.reject_after_time,
            self.cfg.reject_after_messages,
        );
        let Some(p) = self.peers.get_mut(&peer) else {
            return now(Encap::Drop(Reason::NoRoute));
        };
        if let Some(s) = p.sending_mut() {
            let age = clock.now.saturating_duration_since(s.created);
            if age < reject_time && s.sent() < reject_msgs {
                let (len, sealer) = Self::write_data(s, flags, tag, packet, out);
                // The initiator of a session renews it; the responder does
                // too if the initiator seems not to (later, so both do not
                // start at once).
                let (due, due_msgs) = if s.initiator {
                    (rekey_time, rekey_msgs)
                } else {
                    (
                        rekey_time + (reject_time - rekey_time) / 2,
                        rekey_msgs.saturating_add(rekey_msgs / 2),
                    )
                };
                if (age >= due || s.sent() >= due_msgs) && p.handshake.is_none() {
                    p.rekey_wanted = true;
                }
                return (
                    Encap::Send {
                        to: p.endpoint,
                        len,
                    },
                    Some(sealer),
                );
            }
        }
        if p.queue.len() >= self.cfg.max_queued {
            return now(Encap::Drop(Reason::QueueFull));
        }
        p.queue.push_back((flags, tag, packet.to_vec()));
        if p.handshake.is_some() {
            return now(Encap::Queued);
        }
        now(match self.start_initiation(peer, clock, out) {
            Some((to, len)) => Encap::Handshake { to, len },
            None => Encap::Queued,
        })
    }

    /// A datagram from the underlay, decrypted in place. `out` receives a
    /// handshake response when there is one to send.
    pub fn decapsulate(
        &mut self,
        clock: Clock,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
    ) -> Decap {
        match self.decapsulate_deferred(clock, from, datagram, out) {
            Err(done) => done,
            Ok(opener) if opener.open(datagram) => self.opened(&opener, datagram.len()),
            Ok(_) => Decap::Drop(Reason::DecryptFailed),
        }
    }

    /// [`Tunnel::decapsulate`] but for the opening of data datagrams: those
    /// come back as an [`Opener`] (then [`Opener::open`], then
    /// [`Tunnel::opened`]); everything else is done.
    /// Records a datagram its [`Opener`] authenticated: the replay window
    /// (again: another copy may have been opened meanwhile) and the session
    /// the peer now uses.
    pub fn opened(&mut self, o: &Opener, datagram_len: usize) -> Decap {
        if let Some(p) = self.peers.get_mut(&o.peer)
            && let Some(s) = p.session_mut(o.receiver)
        {
            if !s.record(o.counter) {
                return Decap::Drop(Reason::Replayed);
            }
            p.received_on(o.receiver);
        }
        // A session evicted since the opening took its window along; the
        // datagram is authentic, and any copy of it now finds no session.
        Decap::Packet {
            flags: o.flags,
            peer: o.peer,
            tag: o.tag,
            start: DATA_HEADER_LEN,
            end: datagram_len - AEAD_TAG_LEN,
        }
    }

    pub fn decapsulate_deferred(
        &mut self,
        clock: Clock,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Opener, Decap> {
        let msg = match wire::parse(datagram) {
            Ok(m) => m,
            Err(_) => return Err(Decap::Drop(Reason::Malformed)),
        };
        match msg {
            Message::Initiation { sender, noise } => {
                if !self.limiter.allow(from.ip(), clock.now) {
                    return Err(Decap::Drop(Reason::RateLimited));
                }
                let Ok(read) = handshake::read_initiation(&self.keys, sender, noise) else {
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                };
                let Some(&id) = self.by_public.get(&read.remote_static) else {
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                };
                let index = self.new_index();
                let Some(p) = self.peers.get_mut(&id) else {
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                };
                if read.timestamp <= p.last_timestamp {
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                }
                let remote_index = read.remote_index;
                let timestamp = read.timestamp;
                let Ok(keys) = handshake::respond(read, index, out) else {
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                };
                p.last_timestamp = timestamp;
                let s = Session::new(self.cfg.cipher, keys, index, remote_index, clock.now, false);
                self.by_index.insert(index, id);
                for gone in p.add(s, false) {
                    self.by_index.remove(&gone);
                }
                self.stats.initiations_answered += 1;
                Err(Decap::Reply {
                    to: from,
                    len: RESP_LEN,
                })
            }
            Message::Response {
                sender,
                receiver,
                noise,
            } => {
                let Some(&id) = self.by_index.get(&receiver) else {
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                let Some(p) = self.peers.get_mut(&id) else {
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                if p.handshake
                    .as_ref()
                    .is_none_or(|(h, _)| h.local_index != receiver)
                {
                    return Err(Decap::Drop(Reason::UnknownSession));
                }
                let Some((init, _)) = p.handshake.take() else {
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                let Ok(keys) = handshake::complete(init, noise) else {
                    // Forged or corrupted: the attempt goes on with a retry.
                    self.by_index.remove(&receiver);
                    return Err(Decap::Drop(Reason::HandshakeRejected));
                };
                let mut s = Session::new(self.cfg.cipher, keys, receiver, sender, clock.now, true);
                let mut flush = Vec::with_capacity(p.queue.len());
                for (flags, tag, pkt) in p.queue.drain(..) {
                    let mut buf = vec![0u8; pkt.len() + DATA_MIN_LEN];
                    let n = Self::seal_into(&mut s, flags, tag, &pkt, &mut buf);
                    buf.truncate(n);
                    flush.push((p.endpoint, buf));
                }
                if flush.is_empty() {
                    // An empty data packet (keepalive) confirms the session,
                    // so the responder can start sending on it at once.
                    let mut buf = vec![0u8; DATA_MIN_LEN];
                    Self::seal_into(&mut s, 0, 0, &[], &mut buf);
                    flush.push((p.endpoint, buf));
                }
                for gone in p.add(s, true) {
                    self.by_index.remove(&gone);
                }
                p.attempt_started = None;
                p.rekey_wanted = false;
                self.stats.handshakes_completed += 1;
                Err(Decap::Established { peer: id, flush })
            }
            Message::Data {
                flags,
                tag,
                receiver,
                counter,
            } => {
                let reject = self.cfg.reject_after_time;
                let Some(&id) = self.by_index.get(&receiver) else {
                    // A peer sending on a session we do not know has lost
                    // ours (we restarted): pair again now rather than when
                    // its rekey timer fires. One handshake in flight at most.
                    if let Some(p) = self
                        .peers
                        .values_mut()
                        .find(|p| p.endpoint.ip() == from.ip())
                        && p.handshake.is_none()
                    {
                        p.rekey_wanted = true;
                    }
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                let Some(p) = self.peers.get_mut(&id) else {
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                let Some(s) = p.session_mut(receiver) else {
                    return Err(Decap::Drop(Reason::UnknownSession));
                };
                if clock.now.saturating_duration_since(s.created) >= reject {
                    return Err(Decap::Drop(Reason::UnknownSession));
                }
                if !s.fresh(counter) {
                    return Err(Decap::Drop(Reason::Replayed));
                }
                Ok(Opener {
                    key: s.recv_key(),
                    peer: id,
                    receiver,
                    counter,
                    flags,
                    tag,
                })
            }
        }
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
                let retry = p.handshake.as_ref().is_some_and(|(_, sent)| {
                    clock.now.saturating_duration_since(*sent) >= self.cfg.handshake_retry
                });
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

/// A member as the tunnel's checks need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub tag: u32,
    /// The peer hosting it; `None` for a container of this host.
    pub peer: Option<PeerId>,
}

/// Where the I/O loop finds members (the agent's view).
pub trait Members {
    fn member(&self, ip: Ipv4Addr) -> Option<Member>;
}

fn addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let h: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
    let ip = policy::parse_ipv4(h)?;
    Some((
        Ipv4Addr::from(ip4_octets(ip.src)),
        Ipv4Addr::from(ip4_octets(ip.dst)),
    ))
}

/// Where a packet from a local container goes: its peer and network tag.
pub fn route_outgoing(packet: &[u8], members: &dyn Members) -> Result<(PeerId, u32), Reason> {
    let (src, dst) = addresses(packet).ok_or(Reason::Malformed)?;
    let d = members.member(dst).ok_or(Reason::NoRoute)?;
    let peer = d.peer.ok_or(Reason::NoRoute)?;
    // The TC programs already checked this; the tunnel does not trust it.
    match members.member(src) {
        Some(s) if s.peer.is_none() && s.tag == d.tag => Ok((peer, d.tag)),
        Some(s) if s.peer.is_none() => Err(Reason::TagMismatch),
        _ => Err(Reason::WrongHost),
    }
}

/// Checks a decrypted packet: its source must live on the sending peer, its
/// destination here, both in the network the tag names.
pub fn check_incoming(
    packet: &[u8],
    tag: u32,
    from: PeerId,
    members: &dyn Members,
) -> Result<(), Reason> {
    let (src, dst) = addresses(packet).ok_or(Reason::Malformed)?;
    let s = members.member(src).ok_or(Reason::WrongHost)?;
    if s.peer != Some(from) {
        return Err(Reason::WrongHost);
    }
    let d = members.member(dst).ok_or(Reason::NoRoute)?;
    if d.peer.is_some() {
        return Err(Reason::NoRoute);
    }
    if s.tag != tag || d.tag != tag {
        return Err(Reason::TagMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
