use super::*;
use crate::policy::IpHeader;
use crate::policy::ipv6::IPPROTO_ICMPV6;

const OWN: Ip6 = [0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5];
const OTHER: Ip6 = [0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 6];
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ALL_NODES: Ip6 = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const LL: Ip6 = container_link_local(&OWN);

fn iface() -> Iface {
    Iface {
        tag: 1,
        addr6: OWN,
        ..Default::default()
    }
}

fn ip(src: Ip6, dst: Ip6) -> Ipv6Packet {
    Ipv6Packet {
        ip: IpHeader {
            header_len: 40,
            proto: IPPROTO_ICMPV6,
            src,
            dst,
            later_fragment: false,
        },
        end: 64,
        hop_limit: 255,
        fragmented: false,
    }
}

/// An ND message on the wire: header, target for NS/NA, then `opt` (a
/// link-layer option of `opt_type`) if given.
fn wire(icmp_type: u8, target: Ip6, opt: Option<(u8, [u8; 6])>) -> Vec<u8> {
    let mut b = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
    match icmp_type {
        ICMP6_NEIGHBOR_SOLICIT | ICMP6_NEIGHBOR_ADVERT => b.extend_from_slice(&target),
        ICMP6_ROUTER_ADVERT => b.resize(16, 0),
        ICMP6_REDIRECT => b.resize(40, 0),
        _ => {}
    }
    if let Some((t, mac)) = opt {
        b.extend_from_slice(&[t, 1]);
        b.extend_from_slice(&mac);
    }
    b
}

fn parse(b: &[u8]) -> Option<NdMessage> {
    parse_nd(b.len(), |at| b.get(at..at + ND_PEEK)?.try_into().ok())
}

fn from(src: Ip6, dst: Ip6, icmp_type: u8, target: Ip6, opt: Option<(u8, [u8; 6])>) -> Reason {
    let m = parse(&wire(icmp_type, target, opt));
    nd_from_container(&ip(src, dst), m.as_ref(), MAC, Some(&iface()))
}

fn to(ingress: u32, src: Ip6, dst: Ip6, icmp_type: u8, target: Ip6) -> Reason {
    let opt = if icmp_type == NA { 2 } else { 1 };
    let m = parse(&wire(icmp_type, target, Some((opt, [2, 0, 0, 0, 0, 9]))));
    nd_to_container(&ip(src, dst), m.as_ref(), ingress, Some(&iface()))
}

const NS: u8 = ICMP6_NEIGHBOR_SOLICIT;
const NA: u8 = ICMP6_NEIGHBOR_ADVERT;
const RS: u8 = ICMP6_ROUTER_SOLICIT;
const SLLA: Option<(u8, [u8; 6])> = Some((1, MAC));
const TLLA: Option<(u8, [u8; 6])> = Some((2, MAC));
const NONE: Ip6 = IP6_UNSPECIFIED;

#[test]
fn parses_the_five_kinds_and_their_link_address() {
    let m = parse(&wire(NS, GATEWAY6, SLLA)).unwrap();
    assert_eq!(
        m,
        NdMessage {
            kind: NdKind::NeighborSolicitation,
            code: 0,
            target: GATEWAY6,
            lla: LinkAddr::mac(MAC),
        }
    );
    assert_eq!(parse(&wire(NA, OWN, None)).unwrap().lla, LinkAddr::ABSENT);
    // The wrong kind of link-layer option, or more than one option.
    assert_eq!(
        parse(&wire(NA, OWN, SLLA)).unwrap().lla,
        LinkAddr::UNEXPECTED
    );
    let mut two = wire(NS, GATEWAY6, SLLA);
    two.extend_from_slice(&[14, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse(&two).unwrap().lla, LinkAddr::UNEXPECTED);
    let rs = parse(&wire(RS, NONE, SLLA)).unwrap();
    assert_eq!(
        (rs.kind, rs.target, rs.lla),
        (NdKind::RouterSolicitation, NONE, LinkAddr::mac(MAC))
    );
    // Shorter than its kind, or not ND at all.
    assert_eq!(parse(&wire(NS, GATEWAY6, None)[..20]), None);
    assert_eq!(parse(&wire(128, NONE, None)), None);
    for t in 133..=137 {
        assert!(is_nd(t));
    }
    assert!(!is_nd(128) && !is_nd(138) && !is_nd(143));
}

#[test]
fn names_on_the_link() {
    assert_eq!(LL, [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    assert_eq!(
        solicited_node(&GATEWAY6),
        [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1]
    );
    assert_eq!(solicited_node(&OWN), solicited_node(&LL));
}

#[test]
fn a_container_solicits_and_answers_its_gateway_under_its_own_names() {
    for src in [OWN, LL] {
        assert_eq!(from(src, GATEWAY6, NS, GATEWAY6, SLLA), Reason::Nd);
        assert_eq!(
            from(src, solicited_node(&GATEWAY6), NS, GATEWAY6, SLLA),
            Reason::Nd
        );
        assert_eq!(from(src, GATEWAY6, NA, src, TLLA), Reason::Nd);
        assert_eq!(from(src, GATEWAY6, NA, OWN, None), Reason::Nd);
        assert_eq!(from(src, GATEWAY6, RS, NONE, SLLA), Reason::Nd);
        assert_eq!(from(src, ALL_ROUTERS, RS, NONE, None), Reason::Nd);
    }
    // Before it has an address, a router solicitation without its MAC.
    assert_eq!(from(NONE, ALL_ROUTERS, RS, NONE, None), Reason::Nd);
    assert_eq!(from(NONE, ALL_ROUTERS, RS, NONE, SLLA), Reason::NdDenied);
}

#[test]
fn posing_probing_and_announcing_are_denied() {
    // Another member's address as source or target.
    assert_eq!(from(OTHER, GATEWAY6, NS, GATEWAY6, SLLA), Reason::NdDenied);
    assert_eq!(from(OWN, GATEWAY6, NA, OTHER, TLLA), Reason::NdDenied);
    // Posing as the gateway.
    assert_eq!(from(OWN, GATEWAY6, NA, GATEWAY6, TLLA), Reason::NdDenied);
    assert_eq!(
        from(GATEWAY6, ALL_NODES, NA, GATEWAY6, TLLA),
        Reason::NdDenied
    );
    // Duplicate-address probe and unsolicited announcement.
    assert_eq!(
        from(NONE, solicited_node(&OWN), NS, OWN, None),
        Reason::NdDenied
    );
    assert_eq!(from(OWN, ALL_NODES, NA, OWN, TLLA), Reason::NdDenied);
    // Asking about anything but the gateway, or elsewhere than to it.
    assert_eq!(from(OWN, GATEWAY6, NS, OTHER, SLLA), Reason::NdDenied);
    assert_eq!(
        from(OWN, solicited_node(&OTHER), NS, GATEWAY6, SLLA),
        Reason::NdDenied
    );
    // A link-layer address that is not the frame's.
    let other_mac = Some((1, [2, 0, 0, 0, 0, 7]));
    assert_eq!(
        from(OWN, GATEWAY6, NS, GATEWAY6, other_mac),
        Reason::NdDenied
    );
    // Router advertisements and redirects are the host's business.
    assert_eq!(
        from(LL, ALL_NODES, ICMP6_ROUTER_ADVERT, NONE, None),
        Reason::NdDenied
    );
    assert_eq!(
        from(LL, GATEWAY6, ICMP6_REDIRECT, NONE, None),
        Reason::NdDenied
    );
}

#[test]
fn only_link_built_whole_messages() {
    let m = parse(&wire(NS, GATEWAY6, SLLA)).unwrap();
    let ok = ip(OWN, GATEWAY6);
    let judge = |p: &Ipv6Packet, m: &NdMessage| nd_from_container(p, Some(m), MAC, Some(&iface()));
    assert_eq!(judge(&ok, &m), Reason::Nd);
    assert_eq!(
        judge(
            &Ipv6Packet {
                hop_limit: 64,
                ..ok
            },
            &m
        ),
        Reason::NdDenied
    );
    assert_eq!(
        judge(
            &Ipv6Packet {
                fragmented: true,
                ..ok
            },
            &m
        ),
        Reason::NdDenied
    );
    assert_eq!(judge(&ok, &NdMessage { code: 1, ..m }), Reason::NdDenied);
    // A container without an IPv6 address has no names to use.
    let bare = Iface {
        addr6: NONE,
        ..iface()
    };
    assert_eq!(
        nd_from_container(&ok, Some(&m), MAC, Some(&bare)),
        Reason::NdDenied
    );
    let gw = ip(GATEWAY6, OWN);
    let ns = parse(&wire(NS, NONE, None)).unwrap();
    assert_eq!(
        nd_to_container(&gw, Some(&ns), 0, Some(&bare)),
        Reason::NdDenied
    );
}

#[test]
fn toward_a_container_only_the_host_as_its_gateway() {
    for dst in [OWN, LL, solicited_node(&OWN)] {
        assert_eq!(to(0, GATEWAY6, dst, NS, OWN), Reason::Nd);
    }
    assert_eq!(to(0, GATEWAY6, LL, NS, LL), Reason::Nd);
    assert_eq!(to(0, GATEWAY6, OWN, NA, GATEWAY6), Reason::Nd);
    assert_eq!(to(0, GATEWAY6, LL, NA, GATEWAY6), Reason::Nd);
    // Forwarded from elsewhere (another veth, the underlay, the tunnel).
    assert_eq!(to(7, GATEWAY6, OWN, NS, OWN), Reason::NdDenied);
    assert_eq!(to(7, GATEWAY6, OWN, NA, GATEWAY6), Reason::NdDenied);
    // Another sender, or about or to another address.
    assert_eq!(to(0, OTHER, OWN, NS, OWN), Reason::NdDenied);
    assert_eq!(to(0, GATEWAY6, OWN, NS, OTHER), Reason::NdDenied);
    assert_eq!(
        to(0, GATEWAY6, solicited_node(&OTHER), NS, OWN),
        Reason::NdDenied
    );
    assert_eq!(to(0, GATEWAY6, OWN, NA, OTHER), Reason::NdDenied);
    assert_eq!(to(0, GATEWAY6, ALL_NODES, NA, GATEWAY6), Reason::NdDenied);
    // No router advertisements, no redirects, not even from the host.
    assert_eq!(
        to(0, GATEWAY6, ALL_NODES, ICMP6_ROUTER_ADVERT, NONE),
        Reason::NdDenied
    );
    assert_eq!(to(0, GATEWAY6, OWN, ICMP6_REDIRECT, NONE), Reason::NdDenied);
    assert_eq!(to(0, GATEWAY6, GATEWAY6, RS, NONE), Reason::NdDenied);
}

#[test]
fn an_address_ending_in_1_does_not_make_the_gateway_its_own() {
    let mut one = OWN;
    one[15] = 1;
    let i = Iface {
        addr6: one,
        ..iface()
    };
    let na = parse(&wire(NA, GATEWAY6, TLLA)).unwrap();
    let from_ll = nd_from_container(&ip(GATEWAY6, GATEWAY6), Some(&na), MAC, Some(&i));
    assert_eq!(from_ll, Reason::NdDenied);
    let own = parse(&wire(NA, one, TLLA)).unwrap();
    assert_eq!(
        nd_from_container(&ip(one, GATEWAY6), Some(&own), MAC, Some(&i)),
        Reason::Nd
    );
}

#[test]
fn unknown_interfaces_and_garbage() {
    let m = parse(&wire(NS, GATEWAY6, SLLA));
    let p = ip(OWN, GATEWAY6);
    assert_eq!(
        nd_from_container(&p, m.as_ref(), MAC, None),
        Reason::UnknownInterface
    );
    assert_eq!(
        nd_to_container(&p, m.as_ref(), 0, None),
        Reason::UnknownInterface
    );
    assert_eq!(
        nd_from_container(&p, None, MAC, Some(&iface())),
        Reason::Malformed
    );
    assert_eq!(
        nd_to_container(&p, None, 0, Some(&iface())),
        Reason::Malformed
    );
}

#[test]
fn listener_reports_only_from_own_names_to_the_link() {
    let report = |src: Ip6, dst: Ip6, hop_limit: u8| {
        let mut p = ip(src, dst);
        p.hop_limit = hop_limit;
        mld_from_container(&p, Some(&iface()))
    };
    let mldv2_routers: Ip6 = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    assert!(is_mld(143) && is_mld(131) && !is_mld(133) && !is_mld(128));
    assert_eq!(report(LL, mldv2_routers, 1), Reason::Nd);
    assert_eq!(report(NONE, mldv2_routers, 1), Reason::Nd);
    assert_eq!(report(OWN, ALL_NODES, 1), Reason::Nd);
    // Another's name, the gateway's, a routed group, a hop limit to cross routers.
    assert_eq!(report(OTHER, mldv2_routers, 1), Reason::NdDenied);
    assert_eq!(report(GATEWAY6, mldv2_routers, 1), Reason::NdDenied);
    let site: Ip6 = [0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    assert_eq!(report(LL, site, 1), Reason::NdDenied);
    assert_eq!(report(LL, mldv2_routers, 2), Reason::NdDenied);
    // A container without IPv6 has no names.
    let mut none = iface();
    none.addr6 = NONE;
    assert_eq!(
        mld_from_container(&ip(LL, mldv2_routers), Some(&none)),
        Reason::NdDenied
    );
}
