//! What an agent hands its successor, as bytes: the tunnel's sessions
//! (`pn_tunnel::carry`) and the member table its per-packet checks use, so
//! a successor can run the tunnel before it has read the store. Held in
//! wiped buffers; never written to a file.

use std::net::Ipv4Addr;

use pn_tunnel::{
    Member,
    carry::{self, Carried, CarryError},
};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"PNAS";
/// Version of this envelope.
const VERSION: u32 = 1;
const MAX_MEMBERS: usize = 1 << 20;

/// The version a successor must read: this envelope's and the tunnel's.
pub fn version() -> u32 {
    (VERSION << 16) | carry::VERSION
}

/// A member: its address, network tag and peer (`None`: this host).
pub type MemberEntry = (Ipv4Addr, Member);

pub struct AgentState {
    pub members: Vec<MemberEntry>,
    pub tunnel: Carried,
}

impl AgentState {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let tunnel = self.tunnel.encode();
        let mut w = Zeroizing::new(Vec::with_capacity(
            16 + self.members.len() * 12 + tunnel.len(),
        ));
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&version().to_be_bytes());
        w.extend_from_slice(&(self.members.len() as u32).to_be_bytes());
        for (ip, m) in &self.members {
            w.extend_from_slice(&ip.octets());
            w.extend_from_slice(&m.tag.to_be_bytes());
            w.extend_from_slice(&m.peer.unwrap_or(0).to_be_bytes());
        }
        w.extend_from_slice(&tunnel);
        w
    }

    pub fn decode(b: &[u8]) -> Result<AgentState, CarryError> {
        let head = b.get(..12).ok_or(CarryError::Malformed)?;
        if &head[..4] != MAGIC {
            return Err(CarryError::Magic);
        }
        let v = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        if v != version() {
            return Err(CarryError::Version(v));
        }
        let n = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
        if n > MAX_MEMBERS {
            return Err(CarryError::Malformed);
        }
        let end = 12 + n * 12;
        let list = b.get(12..end).ok_or(CarryError::Malformed)?;
        let members = list
            .chunks_exact(12)
            .map(|c| {
                let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                let tag = u32::from_be_bytes(c[4..8].try_into().expect("4 bytes"));
                let peer = u32::from_be_bytes(c[8..12].try_into().expect("4 bytes"));
                (
                    ip,
                    Member {
                        tag,
                        peer: (peer != 0).then_some(peer),
                    },
                )
            })
            .collect();
        Ok(AgentState {
            members,
            tunnel: Carried::decode(&b[end..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_round_trips_and_refuses_damage() {
        let s = AgentState {
            members: vec![
                (Ipv4Addr::new(10, 240, 0, 2), Member { tag: 3, peer: None }),
                (
                    Ipv4Addr::new(10, 240, 0, 9),
                    Member {
                        tag: 3,
                        peer: Some(7),
                    },
                ),
            ],
            tunnel: Carried::default(),
        };
        let b = s.encode();
        let back = AgentState::decode(&b).unwrap();
        assert_eq!(back.members, s.members);
        for cut in 0..b.len() {
            assert!(AgentState::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = b.to_vec();
        other[7] ^= 1;
        assert!(matches!(
            AgentState::decode(&other),
            Err(CarryError::Version(_))
        ));
    }
}
