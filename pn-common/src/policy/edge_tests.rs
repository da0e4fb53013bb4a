//! The edge: the world and the routers.

use super::{tests::*, *};
use crate::{GATEWAY, ip4};

const POOL_CFG_ADDR: Ip4 = ip4(10, 240, 0, 0);
const WORLD: Ip4 = ip4(203, 0, 113, 10);
const ROUTER: Ip4 = ip4(192, 0, 2, 7);
const METADATA: Ip4 = ip4(169, 254, 169, 254);

fn edge_cfg() -> Config {
    Config {
        pool_addr: POOL_CFG_ADDR,
        pool_mask: ip4(255, 240, 0, 0),
        ..cfg()
    }
}

/// The edge's maps as a test sets them.
#[derive(Default)]
struct Edge {
    conn: Option<ConnKind>,
    denied: Vec<Ip4>,
    mark: u32,
    looked_up_conn: bool,
    quoted: Option<Ip4>,
}

impl EdgeLookup for Edge {
    fn conn(&mut self) -> Option<ConnKind> {
        self.looked_up_conn = true;
        self.conn
    }
    fn egress_denied(&mut self, dst: Ip4) -> bool {
        self.denied.contains(&dst)
    }
    fn mark(&mut self) -> u32 {
        self.mark
    }
    fn quoted_src(&mut self) -> Option<Ip4> {
        self.quoted
    }
}

fn sealed() -> Iface {
    Iface {
        flags: Iface::FLAG_EGRESS_DENY,
        ..iface_a1()
    }
}

fn published(web_port: u16) -> Iface {
    Iface {
        flags: Iface::FLAG_PUBLISHED,
        web_port,
        ..iface_a1()
    }
}

fn out(pkt: &Ipv4Summary, iface: &Iface, edge: &mut Edge) -> Reason {
    from_container(pkt, Some(iface), None, &edge_cfg(), edge)
}

fn into(pkt: &Ipv4Summary, iface: &Iface, edge: &mut Edge) -> Reason {
    to_container(pkt, 0, Some(iface), None, &edge_cfg(), edge)
}

#[test]
fn the_world_is_reached_and_counted_as_egress() {
    for (proto, dport) in [(IPPROTO_TCP, 443), (IPPROTO_UDP, 53), (IPPROTO_ICMP, 0)] {
        let p = pkt(A1, WORLD, proto, 40000, dport);
        assert_eq!(out(&p, &iface_a1(), &mut Edge::default()), Reason::Egress);
    }
}

#[test]
fn what_is_never_the_world_is_egress_denied() {
    let mut edge = Edge {
        denied: vec![METADATA, ip4(127, 0, 0, 1), ip4(192, 168, 50, 1)],
        ..Default::default()
    };
    for dst in [METADATA, ip4(127, 0, 0, 1), ip4(192, 168, 50, 1)] {
        let p = pkt(A1, dst, IPPROTO_TCP, 40000, 80);
        assert_eq!(out(&p, &iface_a1(), &mut edge), Reason::EgressDenied);
    }
    // The gateway's DNS and ICMP stay reachable (link-local, yet not denied).
    let p = pkt(A1, GATEWAY, IPPROTO_UDP, 40000, 53);
    assert_eq!(out(&p, &iface_a1(), &mut edge), Reason::Gateway);
}

#[test]
fn a_sealed_network_reaches_nothing_outside() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP] {
        let p = pkt(A1, WORLD, proto, 40000, 443);
        assert_eq!(
            out(&p, &sealed(), &mut Edge::default()),
            Reason::EgressDenied
        );
    }
    // Its members and its gateway stay reachable.
    let p = pkt(A1, A2, IPPROTO_TCP, 1, 2);
    assert_eq!(
        from_container(
            &p,
            Some(&sealed()),
            Some(&ep(NET_A)),
            &edge_cfg(),
            &mut Untouched
        ),
        Reason::Forwarded
    );
}

#[test]
fn other_networks_and_unassigned_pool_addresses_stay_policy_denied() {
    let p = pkt(A1, B1, IPPROTO_TCP, 1, 2);
    assert_eq!(
        from_container(
            &p,
            Some(&iface_a1()),
            Some(&ep(NET_B)),
            &edge_cfg(),
            &mut Untouched
        ),
        Reason::PolicyDenied
    );
    // In the pool but nobody's: not the world either.
    let p = pkt(A1, ip4(10, 250, 3, 3), IPPROTO_TCP, 1, 2);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &edge_cfg(), &mut Untouched),
        Reason::PolicyDenied
    );
}

#[test]
fn without_a_pool_nothing_is_the_world() {
    // An agent that has not set the pool keeps the old behaviour.
    let p = pkt(A1, WORLD, IPPROTO_TCP, 1, 443);
    assert_eq!(
        from_container(&p, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::PolicyDenied
    );
    let p = pkt(WORLD, A1, IPPROTO_TCP, 443, 1);
    assert_eq!(
        to_container(&p, 0, Some(&iface_a1()), None, &cfg(), &mut Untouched),
        Reason::NotMember
    );
}

#[test]
fn replies_of_egress_flows_come_back_and_nothing_else_does() {
    let reply = pkt(WORLD, A1, IPPROTO_TCP, 443, 40000);
    let mut edge = Edge {
        conn: Some(ConnKind::Egress),
        ..Default::default()
    };
    assert_eq!(into(&reply, &iface_a1(), &mut edge), Reason::Egress);
    // Unsolicited: no connection.
    assert_eq!(
        into(&reply, &iface_a1(), &mut Edge::default()),
        Reason::NotMember
    );
}

#[test]
fn routers_reach_the_web_port_of_a_published_container_only_through_the_host() {
    let syn = pkt(ROUTER, A1, IPPROTO_TCP, 51000, 8080);
    let through_port = || Edge {
        mark: crate::edge::MARK_ROUTER,
        ..Default::default()
    };
    let mut edge = through_port();
    assert_eq!(into(&syn, &published(8080), &mut edge), Reason::Published);
    assert!(!edge.looked_up_conn, "the mark decides, no lookup");
    // The container must be published, and only on its web port.
    assert_eq!(
        into(&syn, &iface_a1(), &mut through_port()),
        Reason::NotMember
    );
    assert_eq!(
        into(&syn, &published(9090), &mut through_port()),
        Reason::NotMember
    );
    let udp = pkt(ROUTER, A1, IPPROTO_UDP, 51000, 8080);
    assert_eq!(
        into(&udp, &published(8080), &mut through_port()),
        Reason::NotMember
    );
    // Straight to the container's address: no mark, no connection.
    assert_eq!(
        into(&syn, &published(8080), &mut Edge::default()),
        Reason::NotMember
    );
    // Even when it reuses the tuple of its translated connection.
    let mut reuse = Edge {
        conn: Some(ConnKind::Published),
        ..Default::default()
    };
    assert_eq!(into(&syn, &published(8080), &mut reuse), Reason::NotMember);
    // A stranger through the published port.
    let stranger = pkt(ip4(198, 51, 100, 9), A1, IPPROTO_TCP, 51000, 8080);
    let mut other = Edge {
        mark: crate::edge::MARK_OTHER,
        ..Default::default()
    };
    assert_eq!(
        into(&stranger, &published(8080), &mut other),
        Reason::NotRouter
    );
}

#[test]
fn marks_from_elsewhere_do_not_admit() {
    let syn = pkt(ROUTER, A1, IPPROTO_TCP, 51000, 8080);
    for mark in [crate::edge::MARK_MASK, 0x4000, 0xffff_0000] {
        let mut edge = Edge {
            mark,
            ..Default::default()
        };
        assert_eq!(into(&syn, &published(8080), &mut edge), Reason::NotMember);
    }
    // A member's packet is judged by membership, whatever its mark.
    let p = pkt(B1, A1, IPPROTO_TCP, 1, 8080);
    assert_eq!(
        to_container(
            &p,
            7,
            Some(&published(8080)),
            Some(&ep(NET_B)),
            &edge_cfg(),
            &mut Untouched
        ),
        Reason::NotMember
    );
}

#[test]
fn replies_to_routers_leave_even_sealed_networks_and_toward_denied_ranges() {
    let reply = pkt(A1, ROUTER, IPPROTO_TCP, 8080, 51000);
    let mut edge = Edge {
        conn: Some(ConnKind::Published),
        denied: vec![ROUTER],
        ..Default::default()
    };
    assert_eq!(out(&reply, &sealed(), &mut edge), Reason::Published);
    // Without the router's connection, the same packet is egress, denied.
    let mut edge = Edge {
        denied: vec![ROUTER],
        ..Default::default()
    };
    assert_eq!(out(&reply, &iface_a1(), &mut edge), Reason::EgressDenied);
    assert_eq!(
        out(&reply, &sealed(), &mut Edge::default()),
        Reason::EgressDenied
    );
}

#[test]
fn icmp_errors_about_edge_connections_come_back() {
    let frag_needed = pkt(ip4(203, 0, 113, 1), A1, IPPROTO_ICMP, 0, 0);
    for (kind, want) in [
        (ConnKind::Egress, Reason::Egress),
        (ConnKind::Published, Reason::Published),
    ] {
        let mut edge = Edge {
            conn: Some(kind),
            ..Default::default()
        };
        assert_eq!(into(&frag_needed, &iface_a1(), &mut edge), want);
    }
    assert!(icmp_is_error(ICMP_DEST_UNREACH));
    assert!(icmp_is_error(ICMP_TIME_EXCEEDED));
    assert!(!icmp_is_error(0), "echo reply");
    assert!(!icmp_is_error(8), "echo request");
}

#[test]
fn an_icmp_error_counts_only_when_it_quotes_the_receiver() {
    let frag_needed = pkt(WORLD, A1, IPPROTO_ICMP, 0, 0);
    // The quoted packet left A1: its connection admits the error.
    let mut edge = Edge {
        conn: Some(ConnKind::Egress),
        quoted: Some(A1),
        ..Default::default()
    };
    assert_eq!(into(&frag_needed, &iface_a1(), &mut edge), Reason::Egress);
    // It quotes A2's connection (which the program would find): refused
    // before any connection is looked up.
    for kind in [ConnKind::Egress, ConnKind::Published] {
        let mut edge = Edge {
            conn: Some(kind),
            quoted: Some(A2),
            ..Default::default()
        };
        assert_eq!(
            into(&frag_needed, &iface_a1(), &mut edge),
            Reason::NotMember
        );
        assert!(!edge.looked_up_conn);
    }
}

#[test]
fn connections_with_the_outside_idle_out() {
    let entry = |kind: ConnKind, at: u64| ConnState {
        last_seen_ns: at,
        kind: kind as u8,
        ..ConnState::default()
    };
    let t0 = 1_000_000_000;
    for kind in [ConnKind::Egress, ConnKind::Published] {
        let e = entry(kind, t0);
        assert_eq!(conn_live(&e, IPPROTO_UDP, t0), Some(kind));
        assert_eq!(
            conn_live(&e, IPPROTO_UDP, t0 + CONN_IDLE_OTHER_NS - 1),
            Some(kind)
        );
        assert_eq!(conn_live(&e, IPPROTO_UDP, t0 + CONN_IDLE_OTHER_NS), None);
        assert_eq!(conn_live(&e, IPPROTO_ICMP, t0 + CONN_IDLE_OTHER_NS), None);
        // TCP lives longer: an idle connection with keepalives survives.
        assert_eq!(
            conn_live(&e, IPPROTO_TCP, t0 + CONN_IDLE_OTHER_NS),
            Some(kind)
        );
        assert_eq!(conn_live(&e, IPPROTO_TCP, t0 + CONN_IDLE_TCP_NS), None);
        // A stamp from the future (another CPU's) is not an age.
        assert_eq!(conn_live(&e, IPPROTO_UDP, t0 - 5), Some(kind));
    }
    assert_eq!(conn_live(&ConnState::default(), IPPROTO_TCP, t0), None);
}

#[test]
fn a_closing_tcp_connection_idles_out_sooner() {
    let t0 = 1_000_000_000;
    let closing = ConnState {
        last_seen_ns: t0,
        kind: ConnKind::Egress as u8,
        closing: 1,
        ..ConnState::default()
    };
    let e = Some(ConnKind::Egress);
    assert_eq!(
        conn_live(&closing, IPPROTO_TCP, t0 + CONN_IDLE_CLOSING_NS - 1),
        e
    );
    assert_eq!(
        conn_live(&closing, IPPROTO_TCP, t0 + CONN_IDLE_CLOSING_NS),
        None
    );
    // Only TCP closes; the flag means nothing to UDP.
    assert_eq!(
        conn_live(&closing, IPPROTO_UDP, t0 + CONN_IDLE_CLOSING_NS),
        e
    );
    // The opener's FIN or reset sets it, its SYN clears it, the rest keeps it.
    assert_eq!(conn_closing(0, TCP_FIN | TCP_ACK), 1);
    assert_eq!(conn_closing(0, TCP_RST), 1);
    assert_eq!(conn_closing(0, TCP_ACK), 0);
    assert_eq!(conn_closing(1, TCP_ACK), 1);
    assert_eq!(conn_closing(1, TCP_SYN), 0);
    assert_eq!(conn_closing(1, 0), 1);
}

#[test]
fn both_directions_of_a_connection_share_a_key() {
    let leaving = pkt(A1, WORLD, IPPROTO_TCP, 40000, 443);
    let entering = pkt(WORLD, A1, IPPROTO_TCP, 443, 40000);
    assert_eq!(ConnKey::leaving(&leaving), ConnKey::entering(&entering));
    let k = ConnKey::leaving(&leaving);
    assert_eq!((k.container, k.remote), (A1, WORLD));
    assert_eq!((k.container_port, k.remote_port), (40000, 443));
    assert_ne!(
        ConnKey::leaving(&leaving),
        ConnKey::leaving(&pkt(A1, WORLD, IPPROTO_UDP, 40000, 443))
    );
}

#[test]
fn pool_membership() {
    let c = edge_cfg();
    assert!(c.in_pool(A1));
    assert!(c.in_pool(ip4(10, 255, 255, 255)));
    assert!(!c.in_pool(ip4(10, 239, 255, 255)));
    assert!(!c.in_pool(WORLD));
}
