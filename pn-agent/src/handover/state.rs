//! What an agent hands its successor, as bytes: the tunnel's sessions
//! (`pn_tunnel::carry`) and the member tables its per-packet checks use
//! (IPv4 and IPv6), so a successor can run the tunnel before it has read
//! the store. Held in wiped buffers; never written to a file.
//!
//! Envelope versions: 1 carries the IPv4 member table only (agents from
//! before IPv6 was handed over); 2 adds the IPv6 one after it. An agent
//! reads both and writes either: a successor of version 1 gets version 1,
//! and from a predecessor of version 1 a successor gets no IPv6 member
//! (its tunnel drops their packets until its first converge, as before).

use std::net::{Ipv4Addr, Ipv6Addr};

use pn_tunnel::{
    Member,
    carry::{self, Carried, CarryError},
};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"PNAS";
/// The envelope this agent writes by default…
const ENVELOPE: u32 = 2;
/// …and the oldest it reads and writes (IPv4 members only).
const ENVELOPE_V4_ONLY: u32 = 1;
const MAX_MEMBERS: usize = 1 << 20;
/// An IPv4 entry: address, tag, peer.
const ENTRY4: usize = 12;
/// An IPv6 entry: address, tag, peer.
const ENTRY6: usize = 24;

/// The version a successor must read: this envelope's and the tunnel's.
pub fn version() -> u32 {
    at(ENVELOPE)
}

fn at(envelope: u32) -> u32 {
    (envelope << 16) | carry::VERSION
}

/// Whether this agent reads (and can write) a state of version `v`.
pub fn readable(v: u32) -> bool {
    v & 0xffff == carry::VERSION && (ENVELOPE_V4_ONLY..=ENVELOPE).contains(&(v >> 16))
}

/// The version to hand a successor that reads `successor`: its own when
/// this agent can write it (an older successor gets the older envelope),
/// else this agent's (the successor decides whether it reads it).
pub fn version_for(successor: u32) -> u32 {
    if readable(successor) {
        successor
    } else {
        version()
    }
}

/// A member: its address, network tag and peer (`None`: this host).
pub type MemberEntry = (Ipv4Addr, Member);
/// An IPv6 member.
pub type MemberEntry6 = (Ipv6Addr, Member);

pub struct AgentState {
    pub members: Vec<MemberEntry>,
    /// Empty from a predecessor of envelope 1.
    pub members6: Vec<MemberEntry6>,
    pub tunnel: Carried,
}

fn put_member(w: &mut Vec<u8>, m: &Member) {
    w.extend_from_slice(&m.tag.to_be_bytes());
    w.extend_from_slice(&m.peer.unwrap_or(0).to_be_bytes());
}

fn member_at(c: &[u8]) -> Member {
    let tag = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
    let peer = u32::from_be_bytes(c[4..8].try_into().expect("4 bytes"));
    Member {
        tag,
        peer: (peer != 0).then_some(peer),
    }
}

/// A count and the `size`-byte entries after it, from `at`; returns the
/// entries and where they end.
fn entries(b: &[u8], at: usize, size: usize) -> Result<(&[u8], usize), CarryError> {
    let n = b.get(at..at + 4).ok_or(CarryError::Malformed)?;
    let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
    if n > MAX_MEMBERS {
        return Err(CarryError::Malformed);
    }
    let end = at + 4 + n * size;
    Ok((b.get(at + 4..end).ok_or(CarryError::Malformed)?, end))
}

impl AgentState {
    /// In this agent's version.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        self.encode_as(version())
    }

    /// In `version` (one [`readable`]; any other is written as this
    /// agent's): version 1 leaves the IPv6 members out.
    pub fn encode_as(&self, version: u32) -> Zeroizing<Vec<u8>> {
        let version = version_for(version);
        let with6 = version >> 16 >= 2;
        let tunnel = self.tunnel.encode();
        let mut w = Zeroizing::new(Vec::with_capacity(
            20 + self.members.len() * ENTRY4 + self.members6.len() * ENTRY6 + tunnel.len(),
        ));
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&version.to_be_bytes());
        w.extend_from_slice(&(self.members.len() as u32).to_be_bytes());
        for (ip, m) in &self.members {
            w.extend_from_slice(&ip.octets());
            put_member(&mut w, m);
        }
        if with6 {
            w.extend_from_slice(&(self.members6.len() as u32).to_be_bytes());
            for (ip, m) in &self.members6 {
                w.extend_from_slice(&ip.octets());
                put_member(&mut w, m);
            }
        }
        w.extend_from_slice(&tunnel);
        w
    }

    pub fn decode(b: &[u8]) -> Result<AgentState, CarryError> {
        let head = b.get(..8).ok_or(CarryError::Malformed)?;
        if &head[..4] != MAGIC {
            return Err(CarryError::Magic);
        }
        let v = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        if !readable(v) {
            return Err(CarryError::Version(v));
        }
        let (list, mut end) = entries(b, 8, ENTRY4)?;
        let members = list
            .chunks_exact(ENTRY4)
            .map(|c| (Ipv4Addr::new(c[0], c[1], c[2], c[3]), member_at(&c[4..])))
            .collect();
        let mut members6 = Vec::new();
        if v >> 16 >= 2 {
            let (list, end6) = entries(b, end, ENTRY6)?;
            end = end6;
            members6 = list
                .chunks_exact(ENTRY6)
                .map(|c| {
                    let ip: [u8; 16] = c[..16].try_into().expect("16 bytes");
                    (Ipv6Addr::from(ip), member_at(&c[16..]))
                })
                .collect();
        }
        Ok(AgentState {
            members,
            members6,
            tunnel: Carried::decode(&b[end..])?,
        })
    }
}

#[cfg(test)]
mod tests;
