//! The Ethernet and IP numbers and the header summaries every parser of the
//! policy ends in, apart from the rules in `policy` so that the parsers
//! (`arp`, `family`, `ipv6`) do not import the rules that use them.

use crate::{Ip4, Ip6};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Bytes of the IPv4 header the programs load at once (the fixed part).
pub const IPV4_MIN_HLEN: usize = 20;

/// An IP header of either family (`A`: [`Ip4`] or [`Ip6`]), as far as the
/// policy cares: both parsers end here, so what follows them does not ask
/// which family it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader<A> {
    /// Where L4 starts, relative to the IP header: IPv4's header length,
    /// or IPv6's fixed header and the extension headers walked.
    pub header_len: usize,
    /// The transport protocol (IPv6: the last header's next header).
    pub proto: u8,
    pub src: A,
    pub dst: A,
    /// A non-first fragment carries no L4 header.
    pub later_fragment: bool,
}

/// A packet of either family reduced to what the rules look at. Ports in
/// host order, 0 when the packet has none (ICMP, later fragments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary<A> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

pub type Ipv4Summary = PacketSummary<Ip4>;
pub type Ipv6Summary = PacketSummary<Ip6>;

impl<A: Copy> IpHeader<A> {
    /// The summary of this packet, with the ports read after the header
    /// (0, 0 when it has none).
    pub const fn summary(&self, sport: u16, dport: u16) -> PacketSummary<A> {
        PacketSummary {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport,
            dport,
        }
    }
}
