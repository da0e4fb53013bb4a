//! The tunnel's rules on inner packets (contract, "Encrypted tunnel between
//! hosts"): the tag must be the network of both inner addresses, and the
//! sending host must be the one that hosts the inner source. Declared from
//! `policy.rs` (which would pass 600 lines with them) and re-exported there.

use crate::Reason;

/// An inner address as the tunnel's rules see it: the tag of its network,
/// and the peer host that hosts it (`None`: a container of this host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelMember {
    pub tag: u32,
    pub peer: Option<u32>,
}

/// A packet from a local container into the tunnel: to which peer, with
/// which tag. The TC programs check this first; the tunnel does not trust
/// them.
pub fn tunnel_outgoing(
    src: Option<TunnelMember>,
    dst: Option<TunnelMember>,
) -> Result<(u32, u32), Reason> {
    let (d, peer) = match dst {
        Some(d @ TunnelMember { peer: Some(p), .. }) => (d, p),
        _ => return Err(Reason::NoRoute),
    };
    match src {
        Some(s) if s.peer.is_none() && s.tag == d.tag => Ok((peer, d.tag)),
        Some(s) if s.peer.is_none() => Err(Reason::TagMismatch),
        _ => Err(Reason::WrongHost),
    }
}

/// A decrypted packet from peer `from` under `tag`: its source must live on
/// that peer, its destination here, both in the network the tag names.
pub fn tunnel_incoming(
    src: Option<TunnelMember>,
    dst: Option<TunnelMember>,
    tag: u32,
    from: u32,
) -> Result<(), Reason> {
    let s = src.ok_or(Reason::WrongHost)?;
    if s.peer != Some(from) {
        return Err(Reason::WrongHost);
    }
    let d = dst.ok_or(Reason::NoRoute)?;
    if d.peer.is_some() {
        return Err(Reason::NoRoute);
    }
    if s.tag != tag || d.tag != tag {
        return Err(Reason::TagMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Option<u32> = None;

    fn m(tag: u32, peer: Option<u32>) -> Option<TunnelMember> {
        Some(TunnelMember { tag, peer })
    }

    #[test]
    fn outgoing_goes_to_the_peer_hosting_the_destination_under_its_tag() {
        assert_eq!(tunnel_outgoing(m(7, LOCAL), m(7, Some(2))), Ok((2, 7)));
        // Another network, or a destination not hosted elsewhere.
        assert_eq!(
            tunnel_outgoing(m(8, LOCAL), m(7, Some(2))),
            Err(Reason::TagMismatch)
        );
        assert_eq!(
            tunnel_outgoing(m(7, LOCAL), m(7, LOCAL)),
            Err(Reason::NoRoute)
        );
        assert_eq!(tunnel_outgoing(m(7, LOCAL), None), Err(Reason::NoRoute));
        // A source this host does not host.
        assert_eq!(
            tunnel_outgoing(m(7, Some(3)), m(7, Some(2))),
            Err(Reason::WrongHost)
        );
        assert_eq!(tunnel_outgoing(None, m(7, Some(2))), Err(Reason::WrongHost));
    }

    #[test]
    fn incoming_needs_the_sender_to_host_the_source_and_one_network() {
        assert_eq!(tunnel_incoming(m(7, Some(2)), m(7, LOCAL), 7, 2), Ok(()));
        // Source hosted by another peer, by us, or unknown.
        for src in [m(7, Some(3)), m(7, LOCAL), None] {
            assert_eq!(
                tunnel_incoming(src, m(7, LOCAL), 7, 2),
                Err(Reason::WrongHost)
            );
        }
        // Destination not here.
        assert_eq!(
            tunnel_incoming(m(7, Some(2)), m(7, Some(3)), 7, 2),
            Err(Reason::NoRoute)
        );
        assert_eq!(
            tunnel_incoming(m(7, Some(2)), None, 7, 2),
            Err(Reason::NoRoute)
        );
        // The tag must name both addresses' network.
        assert_eq!(
            tunnel_incoming(m(7, Some(2)), m(8, LOCAL), 7, 2),
            Err(Reason::TagMismatch)
        );
        assert_eq!(
            tunnel_incoming(m(7, Some(2)), m(7, LOCAL), 8, 2),
            Err(Reason::TagMismatch)
        );
    }
}
