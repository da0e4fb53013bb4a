//! ARP on a container's veth. Both ends hold a permanent neighbour entry
//! for the other (set at attach), so traffic needs no ARP at all; what is
//! left is a container asking for its gateway (after flushing its entry) and
//! the host answering. Anything else — a gratuitous announcement, another
//! member's address, a question about the host's other addresses — is a
//! container probing or posing, and is dropped.

use crate::{GATEWAY, Ip4, Reason, maps::Iface};

/// Bytes of an ARP message for IPv4 over Ethernet (after the Ethernet header).
pub const ARP_LEN: usize = 28;

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// An ARP message for IPv4 over Ethernet, as far as the rules look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpMessage {
    pub op: u16,
    /// Sender hardware (MAC) and protocol (IPv4) addresses.
    pub sha: [u8; 6],
    pub spa: Ip4,
    /// Target protocol address.
    pub tpa: Ip4,
}

impl ArpMessage {
    const fn is_request_or_reply(&self) -> bool {
        self.op == ARP_OP_REQUEST || self.op == ARP_OP_REPLY
    }
}

/// `None` when the message is not IPv4 over Ethernet.
pub fn parse_arp(b: &[u8; ARP_LEN]) -> Option<ArpMessage> {
    let htype = u16::from_be_bytes([b[0], b[1]]);
    let ptype = u16::from_be_bytes([b[2], b[3]]);
    if htype != ARP_HTYPE_ETHERNET || ptype != super::header::ETH_P_IP || b[4] != 6 || b[5] != 4 {
        return None;
    }
    Some(ArpMessage {
        op: u16::from_be_bytes([b[6], b[7]]),
        sha: [b[8], b[9], b[10], b[11], b[12], b[13]],
        spa: u32::from_ne_bytes([b[14], b[15], b[16], b[17]]),
        tpa: u32::from_ne_bytes([b[24], b[25], b[26], b[27]]),
    })
}

/// ARP leaving a container (host-side ingress of its veth): a request or
/// reply toward the gateway, under the container's own address, whose
/// sender MAC is the frame's own source (`eth_src`).
pub fn arp_from_container(
    msg: Option<&ArpMessage>,
    eth_src: [u8; 6],
    iface: Option<&Iface>,
) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    let Some(m) = msg else {
        return Reason::Malformed;
    };
    if m.is_request_or_reply() && m.spa == iface.addr && m.tpa == GATEWAY && m.sha == eth_src {
        Reason::Arp
    } else {
        Reason::ArpDenied
    }
}

/// ARP entering a container (host-side egress of its veth): only the host
/// itself (`ingress` 0), as the gateway, about the container's own address.
pub fn arp_to_container(msg: Option<&ArpMessage>, ingress: u32, iface: Option<&Iface>) -> Reason {
    let Some(iface) = iface else {
        return Reason::UnknownInterface;
    };
    let Some(m) = msg else {
        return Reason::Malformed;
    };
    if ingress == 0 && m.is_request_or_reply() && m.spa == GATEWAY && m.tpa == iface.addr {
        Reason::Arp
    } else {
        Reason::ArpDenied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip4;

    const OWN: Ip4 = ip4(10, 240, 0, 1);
    const OTHER: Ip4 = ip4(10, 240, 0, 2);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn iface() -> Iface {
        Iface {
            addr: OWN,
            tag: 1,
            ..Default::default()
        }
    }

    fn wire(op: u16, sha: [u8; 6], spa: Ip4, tpa: Ip4) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        b[8..14].copy_from_slice(&sha);
        b[14..18].copy_from_slice(&spa.to_ne_bytes());
        b[24..28].copy_from_slice(&tpa.to_ne_bytes());
        b
    }

    fn from(op: u16, sha: [u8; 6], spa: Ip4, tpa: Ip4) -> Reason {
        let m = parse_arp(&wire(op, sha, spa, tpa));
        arp_from_container(m.as_ref(), MAC, Some(&iface()))
    }

    fn to(ingress: u32, op: u16, spa: Ip4, tpa: Ip4) -> Reason {
        let m = parse_arp(&wire(op, [2, 0, 0, 0, 0, 9], spa, tpa));
        arp_to_container(m.as_ref(), ingress, Some(&iface()))
    }

    #[test]
    fn parses_ipv4_over_ethernet_only() {
        let m = parse_arp(&wire(1, MAC, OWN, GATEWAY)).unwrap();
        assert_eq!((m.op, m.sha, m.spa, m.tpa), (1, MAC, OWN, GATEWAY));
        for (i, bad) in [(1, 6u8), (3, 0xdd), (4, 8), (5, 16)] {
            let mut b = wire(1, MAC, OWN, GATEWAY);
            b[i] = bad;
            assert_eq!(parse_arp(&b), None, "byte {i} = {bad}");
        }
    }

    #[test]
    fn a_container_asks_and_answers_its_gateway_under_its_own_names() {
        assert_eq!(from(1, MAC, OWN, GATEWAY), Reason::Arp);
        assert_eq!(from(2, MAC, OWN, GATEWAY), Reason::Arp);
    }

    #[test]
    fn posing_probing_and_announcing_are_denied() {
        // Another member's address, or none (a probe).
        assert_eq!(from(1, MAC, OTHER, GATEWAY), Reason::ArpDenied);
        assert_eq!(from(1, MAC, 0, GATEWAY), Reason::ArpDenied);
        // Gratuitous: its own address as the target.
        assert_eq!(from(1, MAC, OWN, OWN), Reason::ArpDenied);
        assert_eq!(from(2, MAC, OWN, OWN), Reason::ArpDenied);
        // Asking about anything but the gateway (the host's other addresses).
        assert_eq!(from(1, MAC, OWN, ip4(192, 0, 2, 1)), Reason::ArpDenied);
        // A sender MAC that is not the frame's.
        assert_eq!(from(1, [2, 0, 0, 0, 0, 7], OWN, GATEWAY), Reason::ArpDenied);
        // Neither request nor reply (RARP, InARP).
        assert_eq!(from(3, MAC, OWN, GATEWAY), Reason::ArpDenied);
    }

    #[test]
    fn toward_a_container_only_the_host_as_its_gateway() {
        assert_eq!(to(0, 2, GATEWAY, OWN), Reason::Arp);
        assert_eq!(to(0, 1, GATEWAY, OWN), Reason::Arp);
        // Forwarded from elsewhere (another veth, the underlay).
        assert_eq!(to(7, 2, GATEWAY, OWN), Reason::ArpDenied);
        // Another sender, or about another address.
        assert_eq!(to(0, 2, OTHER, OWN), Reason::ArpDenied);
        assert_eq!(to(0, 1, GATEWAY, OTHER), Reason::ArpDenied);
        assert_eq!(to(0, 4, GATEWAY, OWN), Reason::ArpDenied);
    }

    #[test]
    fn unknown_interfaces_and_garbage() {
        let m = parse_arp(&wire(1, MAC, OWN, GATEWAY));
        assert_eq!(
            arp_from_container(m.as_ref(), MAC, None),
            Reason::UnknownInterface
        );
        assert_eq!(
            arp_to_container(m.as_ref(), 0, None),
            Reason::UnknownInterface
        );
        assert_eq!(
            arp_from_container(None, MAC, Some(&iface())),
            Reason::Malformed
        );
        assert_eq!(arp_to_container(None, 0, Some(&iface())), Reason::Malformed);
    }
}
