//! What the agent's nftables rules tell the programs about a packet, through
//! its mark.
//!
//! A published port is translated (DNAT) by the kernel's NAT before the
//! packet reaches the container's veth, where `pn_to_container` sees only
//! the translated addresses: a router's packet through a published port and
//! a router's packet sent straight to the container's address look alike.
//! The DNAT rule therefore writes who the source is into the connection's
//! conntrack mark, and a filter rule after the NAT copies it into every
//! packet's mark (`skb->mark`) in the connection's original direction, which
//! the TC program reads. Only the bits of [`MARK_MASK`] are touched, so other
//! users of marks on the host keep theirs.
//!
//! The bits are chosen clear of the marks known to be used by other software
//! on container hosts: kube-proxy (0x4000, 0x8000), Cilium (0x0f00 and the
//! upper 16 bits), Calico (upper 16 bits), Tailscale (0xff0000).
//!
//! Both bits together ([`MARK_GATEWAY`]) are never written by the NAT rules
//! (one bit per connection): the agent sets that value on its own DNS
//! sockets (`SO_MARK`), so that its answers can be told from anything else
//! the host sends from the gateway's address.

/// The bits pn owns in the packet mark and in the conntrack mark.
pub const MARK_MASK: u32 = 0x0000_3000;
/// Translated to a published container from a `--router-cidr` source.
pub const MARK_ROUTER: u32 = 0x0000_1000;
/// Translated to a published container from any other source: to be dropped
/// and counted at the container (`not_router`).
pub const MARK_OTHER: u32 = 0x0000_2000;

/// Set by the agent on its own DNS sockets (`SO_MARK`, which needs
/// `CAP_NET_ADMIN`): a DNS answer from the gateway's address is admitted into
/// a container only with it.
pub const MARK_GATEWAY: u32 = MARK_ROUTER | MARK_OTHER;

/// The mark is the agent's own DNS sockets'.
pub const fn from_agent(mark: u32) -> bool {
    mark & MARK_MASK == MARK_GATEWAY
}

/// What the mark says about a packet entering a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// Not translated by a publication.
    No,
    /// Through a published port, from a router.
    Router,
    /// Through a published port, from a source that is not a router.
    Other,
}

pub const fn marked(mark: u32) -> Marked {
    match mark & MARK_MASK {
        MARK_ROUTER => Marked::Router,
        MARK_OTHER => Marked::Other,
        // Both bits: the agent's own DNS answers, not a publication.
        _ => Marked::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pn_bits_count() {
        assert_eq!(marked(0), Marked::No);
        assert_eq!(marked(MARK_ROUTER), Marked::Router);
        assert_eq!(marked(0xffff_0000 | MARK_ROUTER | 0x4000), Marked::Router);
        assert_eq!(marked(MARK_OTHER | 0x0f00), Marked::Other);
        assert_eq!(marked(MARK_MASK), Marked::No);
        assert_eq!(marked(!MARK_MASK), Marked::No);
    }

    #[test]
    fn the_agents_mark_is_both_bits_and_nothing_the_nat_writes() {
        assert!(from_agent(MARK_GATEWAY));
        assert!(from_agent(MARK_GATEWAY | 0xffff_0000 | 0x4000));
        for m in [0, MARK_ROUTER, MARK_OTHER, !MARK_MASK] {
            assert!(!from_agent(m), "{m:#x}");
        }
        assert_eq!(marked(MARK_GATEWAY), Marked::No);
    }
}
