use super::*;
use crate::policy::{IPPROTO_TCP, IPPROTO_UDP, Ipv6Summary};

const SRC: Ip6 = [0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
const DST: Ip6 = [0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

/// A packet: the fixed header, then `ext` as (kind, body) where the body
/// fills the header after its next-header byte, then 8 bytes of "L4".
fn packet(ext: &[(u8, &[u8])], proto: u8) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 0, 255];
    p.extend_from_slice(&SRC);
    p.extend_from_slice(&DST);
    let kinds: Vec<u8> = ext.iter().map(|(k, _)| *k).skip(1).chain([proto]).collect();
    p[6] = ext.first().map_or(proto, |(k, _)| *k);
    for ((_, body), next) in ext.iter().zip(kinds) {
        p.push(next);
        p.extend_from_slice(body);
    }
    p.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 0]);
    let payload = (p.len() - IPV6_HLEN) as u16;
    p[4..6].copy_from_slice(&payload.to_be_bytes());
    p
}

fn parse(p: &[u8]) -> Option<Ipv6Packet> {
    let h: [u8; IPV6_HLEN] = p[..IPV6_HLEN].try_into().unwrap();
    parse_ipv6(&h, |at| p.get(at..at + EXT_PEEK)?.try_into().ok())
}

/// An options header (hop-by-hop, destination) of `8 * (len + 1)` bytes.
fn opts(len: u8) -> Vec<u8> {
    let mut b = vec![len];
    b.resize(8 * (usize::from(len) + 1) - 1, 0);
    b
}

/// A fragment header's body: reserved, offset (in 8-byte units) and M.
fn frag(offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut b = vec![0];
    b.extend_from_slice(&field.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 7]);
    b
}

#[test]
fn a_plain_packet_is_its_fixed_header() {
    let p = parse(&packet(&[], IPPROTO_TCP)).unwrap();
    assert_eq!(
        p.ip,
        IpHeader {
            header_len: IPV6_HLEN,
            proto: IPPROTO_TCP,
            src: SRC,
            dst: DST,
            later_fragment: false,
        }
    );
    assert_eq!((p.hop_limit, p.fragmented), (255, false));
    // The transport message: the 8 bytes after the header.
    assert_eq!(p.end - p.ip.header_len, 8);
    // The summary is the IPv4 path's, for the same rules.
    let s: Ipv6Summary = p.ip.summary(12345, 80);
    assert_eq!(
        (s.src, s.dst, s.proto, s.sport, s.dport),
        (SRC, DST, 6, 12345, 80)
    );
}

#[test]
fn extension_headers_are_walked_to_the_transport_header() {
    let (hop, dst) = (opts(0), opts(2));
    let routing = opts(1);
    let first = frag(0, true);
    let p = packet(
        &[
            (IPPROTO_HOPOPTS, &hop),
            (IPPROTO_DSTOPTS, &dst),
            (IPPROTO_ROUTING, &routing),
            (IPPROTO_FRAGMENT, &first),
        ],
        IPPROTO_UDP,
    );
    let p = parse(&p).unwrap();
    assert_eq!(p.ip.header_len, IPV6_HLEN + 8 + 24 + 16 + 8);
    assert_eq!(p.ip.proto, IPPROTO_UDP);
    // The first fragment has its ports; it is a fragment all the same.
    assert!(!p.ip.later_fragment);
    assert!(p.fragmented);
}

#[test]
fn a_later_fragment_ends_the_walk_without_ports() {
    let later = frag(185, false);
    let p = parse(&packet(&[(IPPROTO_FRAGMENT, &later)], IPPROTO_TCP)).unwrap();
    assert_eq!(p.ip.header_len, IPV6_HLEN + 8);
    assert_eq!(p.ip.proto, IPPROTO_TCP);
    assert!(p.ip.later_fragment && p.fragmented);
    // What follows a later fragment's header is not walked: its next header
    // is only the protocol, judged by the policy (`proto_denied`).
    let p = parse(&packet(
        &[(IPPROTO_FRAGMENT, &later), (IPPROTO_DSTOPTS, &opts(0))],
        IPPROTO_TCP,
    ))
    .unwrap();
    assert_eq!(p.ip.proto, IPPROTO_DSTOPTS);
    assert!(!allowed_proto6(p.ip.proto));
}

#[test]
fn headers_not_walked_are_the_protocol() {
    // AH, ESP, no next header, SCTP: the policy's protocol rule drops them
    // as it drops them over IPv4.
    for proto in [51, 50, 59, 132] {
        let p = parse(&packet(&[], proto)).unwrap();
        assert_eq!(p.ip.proto, proto);
        assert!(!allowed_proto6(proto), "{proto}");
    }
    let p = parse(&packet(&[(IPPROTO_DSTOPTS, &opts(0))], 51)).unwrap();
    assert_eq!((p.ip.proto, p.ip.header_len), (51, IPV6_HLEN + 8));
    for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6] {
        assert!(allowed_proto6(proto));
    }
}

#[test]
fn the_walk_is_bounded() {
    let o = opts(0);
    let four: Vec<(u8, &[u8])> = vec![(IPPROTO_DSTOPTS, &o); MAX_EXT_HEADERS];
    let p = parse(&packet(&four, IPPROTO_TCP)).unwrap();
    assert_eq!(p.ip.header_len, IPV6_HLEN + 8 * MAX_EXT_HEADERS);
    let five: Vec<(u8, &[u8])> = vec![(IPPROTO_DSTOPTS, &o); MAX_EXT_HEADERS + 1];
    assert_eq!(parse(&packet(&five, IPPROTO_TCP)), None);
    // The longest chain still starts its transport header within the mask.
    let big = opts(255);
    let longest: Vec<(u8, &[u8])> = vec![(IPPROTO_DSTOPTS, &big); MAX_EXT_HEADERS];
    let p = parse(&packet(&longest, IPPROTO_TCP)).unwrap();
    assert_eq!(p.ip.header_len, MAX_L4_OFFSET);
    assert_eq!(p.ip.header_len & L4_OFFSET_MASK, p.ip.header_len);
}

#[test]
fn malformed_chains() {
    let o = opts(0);
    // Not version 6.
    let mut p = packet(&[], IPPROTO_TCP);
    p[0] = 0x45;
    assert_eq!(parse(&p), None);
    // Hop-by-hop after another header.
    let p = packet(&[(IPPROTO_DSTOPTS, &o), (IPPROTO_HOPOPTS, &o)], IPPROTO_TCP);
    assert_eq!(parse(&p), None);
    // Two fragment headers.
    let f = frag(0, true);
    let p = packet(
        &[(IPPROTO_FRAGMENT, &f), (IPPROTO_FRAGMENT, &f)],
        IPPROTO_TCP,
    );
    assert_eq!(parse(&p), None);
    // A header running past the packet.
    let mut p = packet(&[(IPPROTO_DSTOPTS, &o)], IPPROTO_TCP);
    p.truncate(IPV6_HLEN + 4);
    assert_eq!(parse(&p), None);
    // Headers past the payload length (the rest is link padding).
    let mut p = packet(&[(IPPROTO_DSTOPTS, &opts(1))], IPPROTO_TCP);
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(parse(&p), None);
}

#[test]
fn icmp6_errors_quote_their_packet() {
    for t in 1..=4 {
        assert!(icmp6_is_error(t));
    }
    for t in [0, 5, 128, 129, 133, 135, 136] {
        assert!(!icmp6_is_error(t), "{t}");
    }
}
