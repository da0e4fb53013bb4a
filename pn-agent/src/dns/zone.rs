//! Answers from the zone `private-network.internal.`: what one query of a
//! known member gets, computed without any I/O (the pipeline sends it, the
//! fuzz target drives it with arbitrary bytes).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, SOA},
    },
};
use pn_common::{
    ids::NetworkId,
    names::{self, RecordQuery, ZoneName},
};

use super::stats::{DnsStats, bump};

/// Largest UDP answer when the client did not say (RFC 1035), and the most
/// we offer with EDNS (the DNS flag day 2020 recommendation).
pub const PLAIN_UDP_MAX: usize = 512;
pub const EDNS_UDP_MAX: u16 = 1232;
/// Rotation state is per name; forget it all past this many names.
const ROTATION_NAMES: usize = 65_536;

/// What the server needs to know of the membership.
pub trait Directory: Send + Sync + 'static {
    /// The attached container that owns this address, if any.
    fn member(&self, client: Ipv4Addr) -> Option<Member>;
    /// The IPv4 address of the attached container that owns this IPv6
    /// address, if any: it names the container over both families.
    fn by_ip6(&self, _client: Ipv6Addr) -> Option<Ipv4Addr> {
        None
    }
    /// Appends the addresses of both families a record query designates;
    /// false when none (the name does not exist).
    fn resolve(&self, q: &RecordQuery, out: &mut Vec<IpAddr>) -> bool;
}

/// Who asks: an attached container, and what its network allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub network: NetworkId,
    /// Its network is sealed (`--egress deny`): names of the world get
    /// REFUSED, since a resolver recursing for it would carry data out of a
    /// network whose packets to the world are dropped (DNS tunnelling).
    pub sealed: bool,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Vec<u8>),
    /// A name outside the zone, to relay upstream; an answer over UDP must
    /// fit in `udp_limit` bytes.
    Forward {
        udp_limit: usize,
    },
    Drop,
}

/// The UDP size a request allows its answer (RFC 6891: at least 512).
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(PLAIN_UDP_MAX as u16, EDNS_UDP_MAX)),
        None => PLAIN_UDP_MAX,
    }
}

/// How an answer is shaped for the one who asked.
#[derive(Clone, Copy)]
struct Asker {
    /// Over UDP: the answer must fit the client's datagram.
    udp: bool,
    /// Names of the world are relayed for it (RA).
    recursion: bool,
}

pub struct Responder {
    dir: Arc<dyn Directory>,
    stats: Arc<DnsStats>,
    ttl: u32,
    recursion: bool,
    /// Per name and family (A and AAAA asked side by side, as stub
    /// resolvers do, must each rotate).
    rotation: Mutex<HashMap<(RecordQuery, bool), u32>>,
    soa: Record,
}

impl Responder {
    /// A zone answering with records of `ttl`; `recursion` when names of
    /// the world are relayed upstream (there are upstreams).
    pub fn new(
        ttl: u32,
        recursion: bool,
        dir: Arc<dyn Directory>,
        stats: Arc<DnsStats>,
    ) -> Responder {
        let zone = Name::from_ascii(format!("{}.", names::ZONE)).expect("valid zone name");
        let soa = SOA::new(
            Name::from_ascii(format!("ns.{}.", names::ZONE)).expect("valid name"),
            Name::from_ascii(format!("hostmaster.{}.", names::ZONE)).expect("valid name"),
            1,
            60,
            60,
            60,
            // Negative answers are cached for the TTL, like positive ones.
            ttl,
        );
        Responder {
            dir,
            stats,
            ttl,
            recursion,
            rotation: Mutex::new(HashMap::new()),
            soa: Record::from_rdata(zone, ttl, RData::SOA(soa)),
        }
    }

    /// Whether names of the world are relayed (there are upstreams).
    pub fn relays(&self) -> bool {
        self.recursion
    }

    /// Next rotation offset for this name's addresses of one family.
    fn rotate(&self, q: &RecordQuery, v6: bool) -> usize {
        let mut r = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let key = (q.clone(), v6);
        if r.len() >= ROTATION_NAMES && !r.contains_key(&key) {
            r.clear();
        }
        let n = r.entry(key).or_insert(0);
        let out = *n;
        *n = n.wrapping_add(1);
        out as usize
    }

    /// The answer to `raw` from member `from` (the caller has checked
    /// membership: strangers never get this far).
    pub fn answer(&self, from: Member, raw: &[u8], udp: bool) -> Action {
        let own = from.network;
        let to = Asker {
            udp,
            recursion: self.recursion && !from.sealed,
        };
        let req = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(_) => {
                bump(&self.stats.malformed);
                // Answer FORMERR when there is at least a header to answer to.
                if raw.len() >= 12 && raw[2] & 0x80 == 0 {
                    let id = u16::from_be_bytes([raw[0], raw[1]]);
                    let op = OpCode::from_u8((raw[2] >> 3) & 0x0f);
                    let resp = Message::error_msg(id, op, ResponseCode::FormErr);
                    return resp.to_vec().map_or(Action::Drop, Action::Reply);
                }
                return Action::Drop;
            }
        };
        if req.metadata.message_type != MessageType::Query {
            // Never answer a response: that is how reflection loops start.
            bump(&self.stats.malformed);
            return Action::Drop;
        }
        if req.metadata.op_code != OpCode::Query {
            bump(&self.stats.not_implemented);
            return self.reply(&req, to, ResponseCode::NotImp, Vec::new(), false);
        }
        let [query] = req.queries.as_slice() else {
            bump(&self.stats.malformed);
            return self.reply(&req, to, ResponseCode::FormErr, Vec::new(), false);
        };
        let refuse = |counter| {
            bump(counter);
            self.reply(&req, to, ResponseCode::Refused, Vec::new(), false)
        };
        let refused = &self.stats.refused;
        let qtype = query.query_type();
        match names::parse_labels(query.name().iter()) {
            ZoneName::Outside if !self.recursion => refuse(refused),
            ZoneName::Outside if from.sealed => refuse(&self.stats.sealed),
            ZoneName::Outside => Action::Forward {
                udp_limit: udp_limit(&req),
            },
            ZoneName::Apex => {
                let answers = if qtype == RecordType::SOA {
                    vec![self.soa.clone()]
                } else {
                    Vec::new()
                };
                bump(if answers.is_empty() {
                    &self.stats.nodata
                } else {
                    &self.stats.answered
                });
                self.reply(&req, to, ResponseCode::NoError, answers, true)
            }
            ZoneName::Network(net) if net != own => refuse(refused),
            ZoneName::Network(_) => {
                bump(&self.stats.nodata);
                self.reply(&req, to, ResponseCode::NoError, Vec::new(), true)
            }
            ZoneName::Invalid { network } if network != Some(own) => refuse(refused),
            ZoneName::Invalid { .. } => {
                bump(&self.stats.nxdomain);
                self.reply(&req, to, ResponseCode::NXDomain, Vec::new(), true)
            }
            ZoneName::Record(q) if q.network != own => refuse(refused),
            ZoneName::Record(q) => {
                let mut ips = Vec::new();
                if !self.dir.resolve(&q, &mut ips) || ips.is_empty() {
                    bump(&self.stats.nxdomain);
                    return self.reply(&req, to, ResponseCode::NXDomain, Vec::new(), true);
                }
                let v6 = qtype == RecordType::AAAA;
                ips.retain(|ip| qtype == RecordType::A && ip.is_ipv4() || v6 && ip.is_ipv6());
                if ips.is_empty() {
                    // The name exists (it has addresses), not of this type.
                    bump(&self.stats.nodata);
                    return self.reply(&req, to, ResponseCode::NoError, Vec::new(), true);
                }
                ips.sort_unstable();
                let n = ips.len();
                ips.rotate_left(self.rotate(&q, v6) % n);
                let name = query.name().clone();
                let answers = ips
                    .into_iter()
                    .map(|ip| {
                        let rdata = match ip {
                            IpAddr::V4(ip) => RData::A(A(ip)),
                            IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
                        };
                        Record::from_rdata(name.clone(), self.ttl, rdata)
                    })
                    .collect();
                bump(&self.stats.answered);
                self.reply(&req, to, ResponseCode::NoError, answers, true)
            }
        }
    }

    fn reply(
        &self,
        req: &Message,
        to: Asker,
        code: ResponseCode,
        answers: Vec<Record>,
        authoritative: bool,
    ) -> Action {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.response_code = code;
        resp.metadata.authoritative = authoritative;
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = to.recursion;
        resp.add_queries(req.queries.iter().cloned());
        let negative = authoritative && answers.is_empty();
        resp.add_answers(answers);
        if negative {
            resp.add_authority(self.soa.clone());
        }
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_UDP_MAX);
            resp.set_edns(edns);
        }
        let Ok(bytes) = resp.to_vec() else {
            return Action::Drop;
        };
        // Too many addresses for a datagram: the client retries over TCP;
        // more than TCP's 16-bit length can frame: TC rather than a broken frame.
        let limit = if to.udp {
            udp_limit(req)
        } else {
            usize::from(u16::MAX)
        };
        if bytes.len() > limit {
            let mut cut = resp.truncate();
            match cut.to_vec() {
                Ok(b) if b.len() <= limit => return Action::Reply(b),
                Ok(_) => {}
                Err(_) => return Action::Drop,
            }
            // Even the questions do not fit (a request of many, refused as
            // FORMERR): the header alone, never more than the client's size.
            cut.queries.clear();
            return cut.to_vec().map_or(Action::Drop, Action::Reply);
        }
        Action::Reply(bytes)
    }
}
