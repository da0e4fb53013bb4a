//! Pairing with a peer: sending initiations, answering them, and completing
//! ours with the response (the Noise messages themselves are `handshake`'s,
//! the macs and cookies that keep floods cheap `cookie`'s, the choice of
//! the session's AEAD `suite`'s).

use std::{net::SocketAddr, time::Instant};

use pn_common::Reason;

use crate::{
    Clock, Decap, PeerId, Tunnel,
    aead::Aead,
    handshake,
    session::Session,
    suite::{self, Offer},
    wire::{
        COOKIE_NONCE_LEN, COOKIE_SEALED_LEN, DATA_MIN_LEN, INIT_LEN, INIT_MAC1_OFFSET, RESP_LEN,
        RESP_MAC1_OFFSET,
    },
};

impl Tunnel {
    /// The AEADs this host offers.
    fn offer(&self) -> Offer {
        Offer::local(self.cfg.cipher, self.cfg.aes_hardware)
    }

    /// A new session on `aead`, counted.
    fn session(
        &mut self,
        aead: Aead,
        keys: handshake::SessionKeys,
        local_index: u32,
        remote_index: u32,
        clock: Clock,
        initiator: bool,
    ) -> Session {
        match aead {
            Aead::ChaCha20Poly1305 => self.stats.sessions_chacha20poly1305 += 1,
            Aead::Aes256Gcm => self.stats.sessions_aes256gcm += 1,
        }
        let cipher = self.cfg.cipher.for_aead(aead);
        Session::new(
            cipher,
            keys,
            local_index,
            remote_index,
            clock.now,
            initiator,
        )
    }

    /// Writes an initiation to `id` into `out`: where to send it, how long.
    pub(crate) fn start_initiation(
        &mut self,
        id: PeerId,
        clock: Clock,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let index = self.new_index();
        let timestamp = clock.wall_ns.max(self.last_timestamp_sent + 1);
        let offer = self.offer();
        let peer = self.peers.get_mut(&id)?;
        let init =
            handshake::initiate(&self.keys, &peer.public, index, timestamp, offer, out).ok()?;
        peer.cookie.seal_initiation(out, clock.now);
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

    /// An initiation (`datagram`) from `from`: a known peer with a newer
    /// timestamp gets a response in `out` and a new session (used once it
    /// sends on it). Before any DH: mac1 must be right, and under load mac2
    /// too (else a cookie reply goes back), within the source's rate.
    pub(crate) fn answer_initiation(
        &mut self,
        clock: Clock,
        from: SocketAddr,
        datagram: &[u8],
        sender: u32,
        noise: &[u8],
        out: &mut [u8],
    ) -> Decap {
        if !self.cookies.keys().mac1_ok(datagram, INIT_MAC1_OFFSET) {
            return Decap::Drop(Reason::BadMac);
        }
        // Within the budget, nobody's address is trusted, nor needs to be:
        // the budget bounds the work. Beyond it, only a cookie proves the
        // address, and only proven addresses reach their rate limit (so a
        // flood spoofing a peer's address cannot spend that peer's).
        if !self.load.admit(clock.now) {
            if !self.cookies.mac2_ok(datagram, from, clock.now) {
                self.load.refused(clock.now);
                return match self.cookies.reply(datagram, sender, from, clock.now, out) {
                    Some(len) => {
                        self.stats.cookies_sent += 1;
                        Decap::Cookie { to: from, len }
                    }
                    None => Decap::Drop(Reason::CookieRequired),
                };
            }
            if !self.limiter.allow(from.ip(), clock.now) {
                return Decap::Drop(Reason::RateLimited);
            }
        }
        self.stats.initiations_processed += 1;
        // The one clock read inside the tunnel: what the DHs cost is what
        // the load budget is about, and it depends on the machine.
        let started = Instant::now();
        let answer = self.process_initiation(clock, from, sender, noise, out);
        self.load.spent(started.elapsed());
        answer
    }

    /// The Noise part of answering an initiation (the DHs).
    fn process_initiation(
        &mut self,
        clock: Clock,
        from: SocketAddr,
        sender: u32,
        noise: &[u8],
        out: &mut [u8],
    ) -> Decap {
        let Ok(read) = handshake::read_initiation(&self.keys, sender, noise) else {
            return Decap::Drop(Reason::HandshakeRejected);
        };
        let Some(&id) = self.by_public.get(&read.remote_static) else {
            return Decap::Drop(Reason::HandshakeRejected);
        };
        if self
            .peers
            .get(&id)
            .is_none_or(|p| read.timestamp <= p.last_timestamp)
        {
            return Decap::Drop(Reason::HandshakeRejected);
        }
        let index = self.new_index();
        let remote_index = read.remote_index;
        let timestamp = read.timestamp;
        let aead = suite::pick(read.offer, self.offer());
        let Ok(keys) = handshake::respond(read, index, aead, out) else {
            return Decap::Drop(Reason::HandshakeRejected);
        };
        let s = self.session(aead, keys, index, remote_index, clock, false);
        let Some(p) = self.peers.get_mut(&id) else {
            return Decap::Drop(Reason::HandshakeRejected);
        };
        p.cookie.seal_response(out);
        p.last_timestamp = timestamp;
        self.by_index.insert(index, id);
        for gone in p.add(s, false) {
            self.by_index.remove(&gone);
        }
        self.stats.initiations_answered += 1;
        Decap::Reply {
            to: from,
            len: RESP_LEN,
        }
    }

    /// A response to our initiation `receiver`: the session starts, and the
    /// packets queued meanwhile leave on it.
    pub(crate) fn complete_handshake(
        &mut self,
        clock: Clock,
        datagram: &[u8],
        sender: u32,
        receiver: u32,
        noise: &[u8],
    ) -> Decap {
        if !self.cookies.keys().mac1_ok(datagram, RESP_MAC1_OFFSET) {
            return Decap::Drop(Reason::BadMac);
        }
        let Some(&id) = self.by_index.get(&receiver) else {
            return Decap::Drop(Reason::UnknownSession);
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return Decap::Drop(Reason::UnknownSession);
        };
        if p.handshake
            .as_ref()
            .is_none_or(|(h, _)| h.local_index != receiver)
        {
            return Decap::Drop(Reason::UnknownSession);
        }
        let Some((init, _)) = p.handshake.take() else {
            return Decap::Drop(Reason::UnknownSession);
        };
        let Ok((keys, aead)) = handshake::complete(init, noise) else {
            // Forged or corrupted: the attempt goes on with a retry.
            self.by_index.remove(&receiver);
            return Decap::Drop(Reason::HandshakeRejected);
        };
        let s = self.session(aead, keys, receiver, sender, clock, true);
        let Some(p) = self.peers.get_mut(&id) else {
            return Decap::Drop(Reason::UnknownSession);
        };
        let mut flush = Vec::with_capacity(p.queue.len());
        for (flags, tag, pkt) in p.queue.drain(..) {
            let mut buf = vec![0u8; pkt.len() + DATA_MIN_LEN];
            let n = Self::seal_into(&s, flags, tag, &pkt, &mut buf);
            buf.truncate(n);
            flush.push((p.endpoint, buf));
        }
        if flush.is_empty() {
            // An empty data packet (keepalive) confirms the session, so the
            // responder can start sending on it at once.
            let mut buf = vec![0u8; DATA_MIN_LEN];
            Self::seal_into(&s, 0, 0, &[], &mut buf);
            flush.push((p.endpoint, buf));
        }
        for gone in p.add(s, true) {
            self.by_index.remove(&gone);
        }
        p.attempt_started = None;
        p.rekey_wanted = false;
        self.stats.handshakes_completed += 1;
        Decap::Established { peer: id, flush }
    }

    /// A cookie reply to our initiation `receiver`: its peer is under load;
    /// the next initiation carries the cookie (and goes at once).
    pub(crate) fn accept_cookie(
        &mut self,
        clock: Clock,
        receiver: u32,
        nonce: &[u8; COOKIE_NONCE_LEN],
        sealed: &[u8; COOKIE_SEALED_LEN],
    ) -> Decap {
        let Some(p) = self
            .by_index
            .get(&receiver)
            .and_then(|id| self.peers.get_mut(id))
        else {
            return Decap::Drop(Reason::UnknownSession);
        };
        if p.handshake
            .as_ref()
            .is_none_or(|(h, _)| h.local_index != receiver)
        {
            return Decap::Drop(Reason::UnknownSession);
        }
        if !p.cookie.accept(nonce, sealed, clock.now) {
            return Decap::Drop(Reason::BadMac);
        }
        self.stats.cookies_received += 1;
        Decap::Done
    }
}
