//! The inner packets' addresses against membership, for both families:
//! the family is the packet's own version nibble.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use pn_common::Reason;

use super::{A, B};
use crate::{Member, Members, check_incoming, route_outgoing};

struct Fixed(HashMap<IpAddr, Member>);

impl Members for Fixed {
    fn member(&self, ip: Ipv4Addr) -> Option<Member> {
        self.0.get(&IpAddr::V4(ip)).copied()
    }
    fn member6(&self, ip: Ipv6Addr) -> Option<Member> {
        self.0.get(&IpAddr::V6(ip)).copied()
    }
}

fn ip_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[test]
fn inner_addresses_are_checked_against_membership() {
    let local = [10, 240, 0, 1];
    let remote = [10, 240, 0, 2];
    let remote_other_net = [10, 240, 4, 2];
    let members = Fixed(HashMap::from([
        (IpAddr::from(local), Member { tag: 1, peer: None }),
        (
            IpAddr::from(remote),
            Member {
                tag: 1,
                peer: Some(B),
            },
        ),
        (
            IpAddr::from(remote_other_net),
            Member {
                tag: 2,
                peer: Some(B),
            },
        ),
    ]));
    assert_eq!(
        route_outgoing(&ip_packet(local, remote), &members),
        Ok((B, 1))
    );
    assert_eq!(
        route_outgoing(&ip_packet(local, remote_other_net), &members),
        Err(Reason::TagMismatch)
    );
    assert_eq!(
        route_outgoing(&ip_packet(local, [8, 8, 8, 8]), &members),
        Err(Reason::NoRoute)
    );
    assert_eq!(
        route_outgoing(&ip_packet(remote, remote), &members),
        Err(Reason::WrongHost)
    );
    assert_eq!(route_outgoing(&[0x45, 0], &members), Err(Reason::Malformed));
    assert_eq!(
        check_incoming(&ip_packet(remote, local), 1, B, &members),
        Ok(())
    );
    assert_eq!(
        check_incoming(&ip_packet(remote, local), 1, A, &members),
        Err(Reason::WrongHost),
        "sent by another host"
    );
    assert_eq!(
        check_incoming(&ip_packet(remote, local), 2, B, &members),
        Err(Reason::TagMismatch)
    );
    assert_eq!(
        check_incoming(&ip_packet(remote_other_net, local), 2, B, &members),
        Err(Reason::TagMismatch)
    );
    assert_eq!(
        check_incoming(&ip_packet([1, 2, 3, 4], local), 1, B, &members),
        Err(Reason::WrongHost)
    );
    assert_eq!(
        check_incoming(&ip_packet(remote, remote), 1, B, &members),
        Err(Reason::NoRoute)
    );
}

fn ip6_packet(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p
}

const fn ula(subnet: u8, host: u8) -> [u8; 16] {
    [
        0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, subnet, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

#[test]
fn inner_ipv6_addresses_are_checked_against_membership() {
    let (local, remote, remote_other_net) = (ula(1, 1), ula(1, 2), ula(2, 2));
    let m = |tag, peer| Member { tag, peer };
    let members = Fixed(HashMap::from([
        (IpAddr::from(local), m(1, None)),
        (IpAddr::from(remote), m(1, Some(B))),
        (IpAddr::from(remote_other_net), m(2, Some(B))),
        // The IPv4 twin of `remote` must not answer for an IPv6 packet.
        (IpAddr::from([10, 240, 0, 2]), m(1, Some(B))),
    ]));
    let out = |s, d| route_outgoing(&ip6_packet(s, d), &members);
    assert_eq!(out(local, remote), Ok((B, 1)));
    assert_eq!(out(local, remote_other_net), Err(Reason::TagMismatch));
    assert_eq!(out(local, ula(9, 9)), Err(Reason::NoRoute));
    assert_eq!(out(remote, remote), Err(Reason::WrongHost));
    assert_eq!(
        route_outgoing(&ip6_packet(local, remote)[..39], &members),
        Err(Reason::Malformed),
        "shorter than its header"
    );
    let mut v5 = ip6_packet(local, remote);
    v5[0] = 0x50;
    assert_eq!(route_outgoing(&v5, &members), Err(Reason::Malformed));
    let inn = |s, d, tag, from| check_incoming(&ip6_packet(s, d), tag, from, &members);
    assert_eq!(inn(remote, local, 1, B), Ok(()));
    assert_eq!(
        inn(remote, local, 1, A),
        Err(Reason::WrongHost),
        "sent by a host that does not host the source"
    );
    assert_eq!(
        inn(ula(1, 7), local, 1, B),
        Err(Reason::WrongHost),
        "a source nobody hosts"
    );
    assert_eq!(inn(remote, local, 2, B), Err(Reason::TagMismatch));
    assert_eq!(inn(remote_other_net, local, 2, B), Err(Reason::TagMismatch));
    assert_eq!(
        inn(remote, remote, 1, B),
        Err(Reason::NoRoute),
        "not for this host"
    );
}
