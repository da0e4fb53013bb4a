//! One query, whatever the transport: admit → cache → zone → forwarding
//! slot → resolve. The UDP and TCP loops only frame what comes in and goes
//! out, and keep their own bounds; what a client gets, and what is counted,
//! is decided here once.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use super::{
    cache,
    forward::{Forwarder, Via, servfail},
    limits::{Limits, Rate, Refusal, Slot, Slots},
    stats::{DnsStats, bump},
    zone::{Action, Directory, Member, Responder},
};

/// What both server loops share.
pub struct Server {
    pub limits: Limits,
    pub stats: Arc<DnsStats>,
    dir: Arc<dyn Directory>,
    responder: Responder,
    forwarder: Forwarder,
    rate: Rate,
    forwards: Arc<Slots>,
    /// Where IPv6 queries must be addressed (see `v6`).
    gateway6: Option<Ipv6Addr>,
}

/// The transport a query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a query gets.
pub enum Answer {
    /// Nothing at all: a stranger, a client over its rate, what deserves no
    /// answer (TCP closes the connection).
    Silence,
    Now(Vec<u8>),
    /// A name of the world to ask upstream. UDP resolves it in a task of
    /// its own so the loop goes on; TCP waits for it.
    Later(Pending),
}

/// A forward holding its client's slot for as long as it lives.
pub struct Pending {
    _slot: Slot,
    query: Vec<u8>,
    via: Via,
}

impl Server {
    /// A server answering with records of `ttl`, relaying names of the
    /// world to `upstreams` (refused when there are none), and IPv6
    /// queries addressed to `gateway6`.
    pub fn new(
        limits: Limits,
        ttl: u32,
        upstreams: Vec<SocketAddr>,
        gateway6: Option<Ipv6Addr>,
        dir: Arc<dyn Directory>,
        stats: Arc<DnsStats>,
    ) -> Server {
        Server {
            responder: Responder::new(ttl, !upstreams.is_empty(), dir.clone(), stats.clone()),
            forwarder: Forwarder::new(upstreams, &limits, stats.clone()),
            rate: Rate::new(limits.queries_per_sec, limits.query_burst),
            forwards: Slots::new(limits.forwards_per_client, limits.forwards_total),
            limits,
            stats,
            dir,
            gateway6,
        }
    }

    /// The attached container asking from `from` (to `to`), named by its
    /// IPv4 address whatever the family: its budgets and its network are
    /// the same over both. Over IPv6, only a query addressed to the
    /// gateway, from a container's own address. Anyone else is counted.
    pub fn client(&self, from: IpAddr, to: IpAddr) -> Option<Ipv4Addr> {
        let ip = match (from, to) {
            (IpAddr::V4(ip), _) => Some(ip),
            (IpAddr::V6(ip), IpAddr::V6(to)) if Some(to) == self.gateway6 => self.dir.by_ip6(ip),
            (IpAddr::V6(_), _) => None,
        };
        let known = ip.filter(|ip| self.dir.member(*ip).is_some());
        if known.is_none() {
            bump(&self.stats.not_member);
        }
        known
    }

    /// The answer to `msg` from `client`. Membership and rate are checked
    /// at every query, so a container detached meanwhile (even on an open
    /// TCP connection) gets nothing more.
    pub fn answer(&self, client: Ipv4Addr, msg: &[u8], over: Transport) -> Answer {
        let Some(from) = self.admit(client) else {
            return Answer::Silence;
        };
        // A name of the world asked again: answered straight from the cache,
        // before the zone parses the message. Never for a sealed network:
        // the zone refuses it the world.
        if !from.sealed
            && let Some(q) = cache::question(msg)
        {
            if let Some(r) = self.forwarder.cached(&q, msg, over.via(q.udp_limit)) {
                return Answer::Now(r);
            }
            // Not there yet: a plain query of a name outside the zone is
            // forwarded without the zone parsing it again, as the zone
            // would (it relays names outside itself when there are
            // upstreams, unless the network is sealed).
            if self.responder.relays() && q.key.outside_zone() {
                return self.forward(client, msg, over.via(q.udp_limit));
            }
        }
        match self.responder.answer(from, msg, over == Transport::Udp) {
            Action::Reply(r) => Answer::Now(r),
            Action::Drop => Answer::Silence,
            Action::Forward { udp_limit } => self.forward(client, msg, over.via(udp_limit)),
        }
    }

    /// A forward of `msg` for `client`, holding one of its slots; SERVFAIL
    /// at once when it has none left.
    fn forward(&self, client: Ipv4Addr, msg: &[u8], via: Via) -> Answer {
        let Some(slot) = self.forward_slot(client) else {
            return servfail(msg).map_or(Answer::Silence, Answer::Now);
        };
        Answer::Later(Pending {
            _slot: slot,
            query: msg.to_vec(),
            via,
        })
    }

    /// A client to answer now: an attached container within its query
    /// rate. Anyone else gets nothing, counted.
    fn admit(&self, client: Ipv4Addr) -> Option<Member> {
        let Some(member) = self.dir.member(client) else {
            bump(&self.stats.not_member);
            return None;
        };
        if !self.rate.allow(client, Instant::now()) {
            bump(&self.stats.limited.query_rate);
            return None;
        }
        Some(member)
    }

    /// A forwarding slot for `client`; None when it must get SERVFAIL at
    /// once (its share, or every slot, in flight), counted.
    fn forward_slot(&self, client: Ipv4Addr) -> Option<Slot> {
        match self.forwards.try_take(client) {
            Ok(s) => Some(s),
            Err(r) => {
                bump(&self.stats.forward_failed);
                bump(match r {
                    Refusal::Client => &self.stats.limited.forward_client,
                    Refusal::Global => &self.stats.limited.forward_global,
                });
                None
            }
        }
    }
}

impl Transport {
    /// How an answer of the world goes back: over UDP, within `udp_limit`.
    fn via(self, udp_limit: usize) -> Via {
        match self {
            Transport::Udp => Via::Udp(udp_limit),
            Transport::Tcp => Via::Tcp,
        }
    }
}

impl Pending {
    /// The upstream's answer (or SERVFAIL); None when nothing can be sent.
    /// The slot is held until the pending forward is dropped.
    pub async fn resolve(&self, srv: &Server) -> Option<Vec<u8>> {
        srv.forwarder.resolve(&self.query, self.via).await
    }
}
