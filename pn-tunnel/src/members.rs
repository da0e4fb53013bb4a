//! The inner packets' addresses against membership: which peer and tag a
//! local packet goes with, and whether a decrypted one may be delivered.
//! The rules themselves are pure, in `pn_common::policy`. The inner family
//! is the packet's own (its version nibble, as the TUN device reads it):
//! the wire carries no family of its own to disagree with the packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pn_common::{Reason, ip4_octets, policy};

use crate::peer_id::PeerId;

/// A member as the tunnel's checks need it: its network's tag and the peer
/// hosting it (`None` for a container of this host).
pub use pn_common::policy::TunnelMember as Member;

/// Where the I/O loop finds members (the agent's view), by address family.
pub trait Members {
    fn member(&self, ip: Ipv4Addr) -> Option<Member>;
    fn member6(&self, ip: Ipv6Addr) -> Option<Member>;
}

/// An inner packet's source and destination; `None`: neither a whole IPv4
/// nor a whole IPv6 header.
fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let h: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
            let ip = policy::parse_ipv4(h)?;
            Some((
                Ipv4Addr::from(ip4_octets(ip.src)).into(),
                Ipv4Addr::from(ip4_octets(ip.dst)).into(),
            ))
        }
        6 => {
            let h: &[u8; 40] = packet.get(..policy::IPV6_HLEN)?.try_into().ok()?;
            let src: [u8; 16] = h[8..24].try_into().ok()?;
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        _ => None,
    }
}

fn member(members: &dyn Members, ip: IpAddr) -> Option<Member> {
    match ip {
        IpAddr::V4(a) => members.member(a),
        IpAddr::V6(a) => members.member6(a),
    }
}

/// Where a packet from a local container goes: its peer and network tag.
pub fn route_outgoing(packet: &[u8], members: &dyn Members) -> Result<(PeerId, u32), Reason> {
    let (src, dst) = addresses(packet).ok_or(Reason::Malformed)?;
    policy::tunnel_outgoing(member(members, src), member(members, dst))
}

/// Checks a decrypted packet from peer `from` under `tag`.
pub fn check_incoming(
    packet: &[u8],
    tag: u32,
    from: PeerId,
    members: &dyn Members,
) -> Result<(), Reason> {
    let (src, dst) = addresses(packet).ok_or(Reason::Malformed)?;
    policy::tunnel_incoming(member(members, src), member(members, dst), tag, from)
}
