//! Packets through the tunnel: a local packet in, a datagram out
//! ([`Tunnel::encapsulate`]), and a datagram in, a packet or a handshake
//! step out ([`Tunnel::decapsulate`]). Both have a "deferred" form that
//! leaves the cipher work to the caller, outside the tunnel's lock.

use std::{net::SocketAddr, sync::Arc};

use pn_common::Reason;

use crate::{
    aead::Key,
    config::Clock,
    peer_id::PeerId,
    session::Session,
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
    pub(crate) fn seal_into(
        s: &mut Session,
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
            Message::Data {
                flags,
                tag,
                receiver,
                counter,
            } => self.prepare_open(clock, from, flags, tag, receiver, counter),
        }
    }

    /// Finds the session a data datagram names and checks its counter.
    fn prepare_open(
        &mut self,
        clock: Clock,
        from: SocketAddr,
        flags: u8,
        tag: u32,
        receiver: u32,
        counter: u64,
    ) -> Result<Opener, Decap> {
        let reject = self.cfg.reject_after_time;
        let Some(&id) = self.by_index.get(&receiver) else {
            // A peer sending on a session we do not know has lost ours (we
            // restarted): pair again now rather than when its rekey timer
            // fires. One handshake in flight at most.
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
}
