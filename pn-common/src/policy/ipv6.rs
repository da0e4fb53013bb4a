//! IPv6 headers, walked to the transport header as the rules need it.
//!
//! IPv4 says where L4 starts in one field; IPv6 chains extension headers,
//! each naming the next, as many as the sender likes. The walk follows the
//! ones a host may meet (hop-by-hop options, routing, destination options,
//! fragment) at most [`MAX_EXT_HEADERS`] deep — a fixed loop bound, so the
//! verifier sees a bounded program, and a chain crafted to hide the
//! transport header past what the programs read gets `malformed`, not a
//! pass. The first header it does not walk is the transport protocol, as
//! IPv4's protocol field is: anything but TCP, UDP and ICMPv6 (AH, ESP, "no
//! next header", SCTP...) then meets the same `proto_denied` as for IPv4.
//! A fragment other than the first carries no transport header: it ends the
//! walk with `later_fragment`, the way IPv4's fragment offset does.

use super::header::IpHeader;
use crate::Ip6;

pub const ETH_P_IPV6: u16 = 0x86dd;
/// The fixed IPv6 header, which the programs load at once.
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before the packet is `malformed`. Ordinary
/// traffic has none, a fragment one, and RFC 8200's recommended order
/// (hop-by-hop, destination options, routing, fragment) four.
pub const MAX_EXT_HEADERS: usize = 4;
/// Bytes of an extension header the walk reads: the next header, the
/// length, and the fragment header's offset field.
pub const EXT_PEEK: usize = 8;
/// The furthest the transport header can start, relative to the IP header:
/// an extension header is at most 2048 bytes. The programs mask offsets
/// with [`L4_OFFSET_MASK`] so the verifier knows this bound too.
pub const MAX_L4_OFFSET: usize = IPV6_HLEN + MAX_EXT_HEADERS * 2048;
pub const L4_OFFSET_MASK: usize = 0x3fff;
const _: () = assert!(MAX_L4_OFFSET <= L4_OFFSET_MASK);

/// The IPv6 header as far as the policy cares (see [`IpHeader`]).
pub type Ipv6Header = IpHeader<Ip6>;

/// What the fixed header says beside the addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet {
    pub ip: Ipv6Header,
    /// Where the payload ends, relative to the IP header (the fixed header
    /// and the payload length): with `ip.header_len`, the transport
    /// message's length (a TCP segment's, an ND message's).
    pub end: usize,
    /// Neighbour discovery is only believed at 255: a packet that crossed
    /// a router has less (RFC 4861 §7.1).
    pub hop_limit: u8,
    /// The packet carries a fragment header, first fragment or not:
    /// neighbour discovery never does (RFC 6980).
    pub fragmented: bool,
}

/// Walks an IPv6 packet from its fixed header (`h`) to its transport
/// header. `peek(offset)` returns the [`EXT_PEEK`] bytes at `offset` from
/// the IP header's start, or `None` past the packet's end. `None` means
/// malformed: not version 6, a chain longer than the bound, a hop-by-hop
/// header anywhere but first, two fragment headers, headers beyond the
/// payload length or the packet.
pub fn parse_ipv6(
    h: &[u8; IPV6_HLEN],
    mut peek: impl FnMut(usize) -> Option<[u8; EXT_PEEK]>,
) -> Option<Ipv6Packet> {
    if h[0] >> 4 != 6 {
        return None;
    }
    let end = IPV6_HLEN + usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next = h[6];
    let mut at = IPV6_HLEN;
    let mut fragmented = false;
    let mut later_fragment = false;
    // One more round than headers walked: the last may only find the
    // transport protocol.
    for i in 0..=MAX_EXT_HEADERS {
        if later_fragment {
            break;
        }
        match next {
            // RFC 8200 §4.1: only right after the fixed header.
            IPPROTO_HOPOPTS if i != 0 => return None,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {}
            _ => break,
        }
        if i == MAX_EXT_HEADERS {
            return None;
        }
        let b = peek(at)?;
        if next == IPPROTO_FRAGMENT {
            if fragmented {
                return None;
            }
            fragmented = true;
            later_fragment = u16::from_be_bytes([b[2], b[3]]) >> 3 != 0;
            at += 8;
        } else {
            at += (usize::from(b[1]) + 1) * 8;
        }
        next = b[0];
    }
    if at > end {
        return None;
    }
    Some(Ipv6Packet {
        ip: IpHeader {
            header_len: at,
            proto: next,
            src: addr(&h[8..24]),
            dst: addr(&h[24..40]),
            later_fragment,
        },
        end,
        hop_limit: h[7],
        fragmented,
    })
}

/// By zip, not `copy_from_slice`: no length check that could panic (the
/// programs have no unwinding).
fn addr(b: &[u8]) -> Ip6 {
    let mut a = [0u8; 16];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    a
}

pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAMETER_PROBLEM: u8 = 4;

/// ICMPv6's twin of [`super::icmp_is_error`]: the types that quote the
/// packet they are about, after the same 8 bytes.
pub const fn icmp6_is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAMETER_PROBLEM
    )
}

/// The IPv6 policy's protocols: ICMPv6 in place of ICMP.
pub const fn allowed_proto6(proto: u8) -> bool {
    matches!(
        proto,
        super::header::IPPROTO_TCP | super::header::IPPROTO_UDP | IPPROTO_ICMPV6
    )
}

#[cfg(test)]
mod tests;
