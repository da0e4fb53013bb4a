//! Packets through the tunnel: a local packet in, a datagram out
//! ([`Tunnel::encapsulate`]), and a datagram in, a packet or a handshake
//! step out ([`Tunnel::decapsulate`]). Both have a "deferred" form that
//! leaves the cipher work to the caller, outside the tunnel's lock.

use std::{net::SocketAddr, sync::Arc};

use pn_common::Reason;

use crate::{
    aead::Key,
    config::{Clock, Config},
    peer_id::PeerId,
    session::{Peer, Session},
    tunnel::Tunnel,
    wire::{self, AEAD_TAG_LEN, DATA_HEADER_LEN, DATA_MIN_LEN, INIT_LEN, Message},
};

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
    /// Under load, an initiation without a valid cookie is refused (count
    /// it as [`Reason::CookieRequired`]): send the cookie reply in
    /// `out[..len]` back to `to`.
    Cookie {
        to: SocketAddr,
        len: usize,
    },
    /// Taken in, nothing to send or deliver (a peer's cookie).
    Done,
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

impl Tunnel {
    /// Writes `packet` for `s`'s peer into `out`, ready to seal; returns
    /// the datagram's length.
    fn write_data(
        s: &Session,
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
    pub(crate) fn seal_into(
        s: &Session,
        flags: u8,
        tag: u32,
        packet: &[u8],
        out: &mut [u8],
    ) -> usize {
        let (len, sealer) = Self::write_data(s, flags, tag, packet, out);
        sealer.seal(&mut out[..len]);
        len
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
        if let Some(done) = self.encapsulate_shared(clock, peer, tag, flags, packet, out) {
            return done;
        }
        let now = |e: Encap| (e, None);
        let Some(p) = self.peers.get_mut(&peer) else {
            return now(Encap::Drop(Reason::NoRoute));
        };
        if usable_sending(&self.cfg, clock, p).is_some() {
            // Only the renewal had to be asked for; then as any packet.
            p.rekey_wanted = true;
            return self
                .encapsulate_shared(clock, peer, tag, flags, packet, out)
                .unwrap_or(now(Encap::Drop(Reason::NoRoute)));
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

    /// The packet path as several workers take it at once, under the
    /// tunnel's shared lock: a live session takes the packet (its counter
    /// is atomic). `None`: the tunnel must change first (no session yet, a
    /// renewal to ask for): [`Tunnel::encapsulate_deferred`] under the
    /// exclusive lock.
    pub fn encapsulate_shared(
        &self,
        clock: Clock,
        peer: PeerId,
        tag: u32,
        flags: u8,
        packet: &[u8],
        out: &mut [u8],
    ) -> Option<(Encap, Option<Sealer>)> {
        if out.len() < packet.len() + DATA_MIN_LEN || out.len() < INIT_LEN {
            return Some((Encap::Drop(Reason::Malformed), None));
        }
        let Some(p) = self.peers.get(&peer) else {
            return Some((Encap::Drop(Reason::NoRoute), None));
        };
        let (s, due) = usable_sending(&self.cfg, clock, p)?;
        if due && p.handshake.is_none() && !p.rekey_wanted {
            return None;
        }
        let (len, sealer) = Self::write_data(s, flags, tag, packet, out);
        Some((
            Encap::Send {
                to: p.endpoint,
                len,
            },
            Some(sealer),
        ))
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
                Err(self.answer_initiation(clock, from, datagram, sender, noise, out))
            }
            Message::Response {
                sender,
                receiver,
                noise,
            } => Err(self.complete_handshake(clock, datagram, sender, receiver, noise)),
            Message::Cookie {
                receiver,
                nonce,
                sealed,
            } => Err(self.accept_cookie(clock, receiver, nonce, sealed)),
            Message::Data { receiver, .. } => self
                .prepare_open(clock, datagram)
                .unwrap_or_else(|| Err(self.unknown_session(clock, from, receiver))),
        }
    }

    /// The receiving path as several workers take it at once, under the
    /// tunnel's shared lock: a data datagram for a live session. `None`:
    /// anything else (a handshake, an unknown session), for
    /// [`Tunnel::decapsulate_deferred`] under the exclusive lock.
    pub fn decapsulate_shared(
        &self,
        clock: Clock,
        datagram: &[u8],
    ) -> Option<Result<Opener, Decap>> {
        match wire::parse(datagram) {
            Err(_) => Some(Err(Decap::Drop(Reason::Malformed))),
            Ok(Message::Data { .. }) => self.prepare_open(clock, datagram),
            Ok(_) => None,
        }
    }

    /// A peer sending on a session we do not know may have lost ours (we
    /// restarted): pair again now rather than when its rekey timer fires.
    /// Anyone can send such a datagram under a peer's address, so it is
    /// believed only while we hold no usable session with that peer (after a
    /// restart, none) and no handshake is in flight: indexes sprayed by a
    /// stranger start nothing while the pair is whole, and otherwise no
    /// more than one attempt (retried on its timer) that our own traffic
    /// would have started anyway.
    fn unknown_session(&mut self, clock: Clock, from: SocketAddr, receiver: u32) -> Decap {
        if !self.by_index.contains_key(&receiver)
            && let Some(p) = self
                .peers
                .values_mut()
                .find(|p| p.endpoint.ip() == from.ip())
            && p.handshake.is_none()
            && usable_sending(&self.cfg, clock, p).is_none()
        {
            p.rekey_wanted = true;
        }
        Decap::Drop(Reason::UnknownSession)
    }

    /// Finds the session a data datagram names and checks its counter;
    /// `None` when no session has its index.
    fn prepare_open(&self, clock: Clock, datagram: &[u8]) -> Option<Result<Opener, Decap>> {
        let Ok(Message::Data {
            flags,
            tag,
            receiver,
            counter,
        }) = wire::parse(datagram)
        else {
            return Some(Err(Decap::Drop(Reason::Malformed)));
        };
        let &id = self.by_index.get(&receiver)?;
        let gone = || Some(Err(Decap::Drop(Reason::UnknownSession)));
        let Some(s) = self.peers.get(&id).and_then(|p| p.session(receiver)) else {
            return gone();
        };
        if clock.now.saturating_duration_since(s.created) >= self.cfg.reject_after_time {
            return gone();
        }
        if !s.fresh(counter) {
            return Some(Err(Decap::Drop(Reason::Replayed)));
        }
        Some(Ok(Opener {
            key: s.recv_key(),
            peer: id,
            receiver,
            counter,
            flags,
            tag,
        }))
    }

    /// Records a datagram its [`Opener`] authenticated: the replay window
    /// (again: another copy may have been opened meanwhile) and the session
    /// the peer now uses.
    pub fn opened(&mut self, o: &Opener, datagram_len: usize) -> Decap {
        if let Some(p) = self.peers.get_mut(&o.peer)
            && let Some(s) = p.session(o.receiver)
        {
            if !s.record(o.counter) {
                return Decap::Drop(Reason::Replayed);
            }
            p.received_on(o.receiver);
        }
        o.packet(datagram_len)
    }

    /// [`Tunnel::opened`] under the shared lock, when the peer's sessions
    /// stay as they are (the steady state); `None`: call `opened`.
    pub fn opened_shared(&self, o: &Opener, datagram_len: usize) -> Option<Decap> {
        if let Some(p) = self.peers.get(&o.peer)
            && let Some(s) = p.session(o.receiver)
        {
            if p.receiving_changes(o.receiver) {
                return None;
            }
            if !s.record(o.counter) {
                return Some(Decap::Drop(Reason::Replayed));
            }
        }
        Some(o.packet(datagram_len))
    }
}

impl Opener {
    /// A session evicted since the opening took its window along; the
    /// datagram is authentic, and any copy of it now finds no session.
    fn packet(&self, datagram_len: usize) -> Decap {
        Decap::Packet {
            flags: self.flags,
            peer: self.peer,
            tag: self.tag,
            start: DATA_HEADER_LEN,
            end: datagram_len - AEAD_TAG_LEN,
        }
    }
}

/// The session `p` sends on when it may still be used, and whether its
/// renewal is due: the initiator of a session renews it; the responder too
/// if the initiator seems not to (later, so both do not start at once).
fn usable_sending<'a>(cfg: &Config, clock: Clock, p: &'a Peer) -> Option<(&'a Session, bool)> {
    let s = p.sending()?;
    let age = clock.now.saturating_duration_since(s.created);
    if age >= cfg.reject_after_time || s.sent() >= cfg.reject_after_messages {
        return None;
    }
    let (rekey_time, rekey_msgs, reject_time) = (
        cfg.rekey_after_time,
        cfg.rekey_after_messages,
        cfg.reject_after_time,
    );
    let (due, due_msgs) = if s.initiator {
        (rekey_time, rekey_msgs)
    } else {
        (
            rekey_time + (reject_time - rekey_time) / 2,
            rekey_msgs.saturating_add(rekey_msgs / 2),
        )
    };
    Some((s, age >= due || s.sent() >= due_msgs))
}
