//! The inner packets' addresses against membership: which peer and tag a
//! local packet goes with, and whether a decrypted one may be delivered.
//! The rules themselves are pure, in `pn_common::policy`.

use std::net::Ipv4Addr;

use pn_common::{Reason, ip4_octets, policy};

use crate::peer_id::PeerId;

/// A member as the tunnel's checks need it: its network's tag and the peer
/// hosting it (`None` for a container of this host).
pub use pn_common::policy::TunnelMember as Member;

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
    policy::tunnel_outgoing(members.member(src), members.member(dst))
}

/// Checks a decrypted packet from peer `from` under `tag`.
pub fn check_incoming(
    packet: &[u8],
    tag: u32,
    from: PeerId,
    members: &dyn Members,
) -> Result<(), Reason> {
    let (src, dst) = addresses(packet).ok_or(Reason::Malformed)?;
    policy::tunnel_incoming(members.member(src), members.member(dst), tag, from)
}
