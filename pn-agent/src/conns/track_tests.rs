use super::*;
use pn_common::{conn::PAYLOAD, ip4};

const C: Ip4 = ip4(10, 240, 0, 2);
const S: Ip4 = ip4(10, 240, 0, 3);
const MS: u64 = 1_000_000;

/// A segment as the client's interface sees it: `up` leaves the client.
fn seg(ts_ms: u64, up: bool, flags: u8, seq: u32, ack: u32, data: &[u8], len: u16) -> ConnEvent {
    let mut ev = ConnEvent {
        ts_ns: ts_ms * MS,
        seq,
        ack,
        flags,
        data_len: len,
        ..Default::default()
    };
    if up {
        (ev.src, ev.sport, ev.dst, ev.dport) = (C, 40000, S, 8080);
        ev.direction = Direction::FromContainer as u8;
    } else {
        (ev.src, ev.sport, ev.dst, ev.dport) = (S, 8080, C, 40000);
        ev.direction = Direction::ToContainer as u8;
    }
    let n = data.len().min(PAYLOAD);
    ev.payload[..n].copy_from_slice(&data[..n]);
    ev.copied = n as u8;
    ev
}

fn key() -> Key {
    Key {
        client: C,
        client_port: 40000,
        server: S,
        server_port: 8080,
    }
}

fn run(t: &mut Tracker, evs: &[ConnEvent]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for e in evs {
        t.feed(e, &mut out);
    }
    out
}

const SA: u8 = TCP_SYN | TCP_ACK;
const PA: u8 = TCP_ACK | 0x08;
const FA: u8 = TCP_FIN | TCP_ACK;

#[test]
fn keep_alive_and_pipelined_requests_each_count() {
    let mut t = Tracker::new(3_000 * MS);
    let req = b"GET /a HTTP/1.1\r\nHost: s\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    let nf = b"HTTP/1.1 404 Not Found\r\n\r\n";
    let out = run(
        &mut t,
        &[
            seg(0, true, TCP_SYN, 1000, 0, b"", 0),
            seg(2, false, SA, 5000, 1001, b"", 0),
            // Two requests pipelined, then two responses.
            seg(3, true, PA, 1001, 5001, req, 30),
            seg(4, true, PA, 1031, 5001, b"POST /b HTTP/1.1\r\n", 40),
            seg(204, false, PA, 5001, 1071, ok, 50),
            seg(404, false, PA, 5051, 1071, nf, 25),
            // Keep-alive: a third request once the second response is read.
            seg(500, true, PA, 1071, 5076, req, 30),
            seg(510, false, PA, 5076, 1101, ok, 50),
            seg(600, true, FA, 1101, 5126, b"", 0),
            seg(601, false, FA, 5126, 1102, b"", 0),
        ],
    );
    assert_eq!(
        out[0],
        Outcome::Opened {
            key: key(),
            connect_ns: 2 * MS
        }
    );
    let responded: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Responded(r) => Some((r.method, r.status, r.duration_ns / MS)),
            _ => None,
        })
        .collect();
    assert_eq!(
        responded,
        [("GET", 200, 201), ("POST", 404, 400), ("GET", 200, 10)]
    );
    let logged: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Logged(r) => Some((r.path.as_str(), r.bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(
        logged,
        [("/a", Some(50)), ("/b", Some(25)), ("/a", Some(50))]
    );
    assert_eq!(
        out.last(),
        Some(&Outcome::Closed {
            key: key(),
            to_server: 100,
            to_client: 125
        })
    );
    assert!(t.is_empty());
}

#[test]
fn refused_timed_out_and_server_side_copies() {
    let mut t = Tracker::new(3_000 * MS);
    let out = run(
        &mut t,
        &[
            seg(0, true, TCP_SYN, 1, 0, b"", 0),
            seg(1, false, TCP_RST | TCP_ACK, 0, 2, b"", 0),
        ],
    );
    assert_eq!(out, [Outcome::Refused { key: key() }]);
    // The server's interface (SYN entering a container) opens nothing.
    let mut syn_in = seg(0, true, TCP_SYN, 1, 0, b"", 0);
    syn_in.direction = Direction::ToContainer as u8;
    assert!(run(&mut t, &[syn_in]).is_empty());
    assert!(t.is_empty());
    // A SYN, retransmitted, unanswered.
    let out = run(
        &mut t,
        &[
            seg(0, true, TCP_SYN, 1, 0, b"", 0),
            seg(1000, true, TCP_SYN, 1, 0, b"", 0),
        ],
    );
    assert!(out.is_empty());
    let mut out = Vec::new();
    t.expire(2_999 * MS, &mut out);
    assert!(out.is_empty());
    t.expire(3_000 * MS, &mut out);
    assert_eq!(out, [Outcome::TimedOut { key: key() }]);
    assert!(t.is_empty());
}

#[test]
fn bytes_from_boundaries_and_acks_and_reset() {
    let mut t = Tracker::new(3_000 * MS);
    let mut srv_copy = seg(3, false, SA, 7000, 11, b"", 0);
    // The same SYN-ACK leaving the server's interface (both ends local).
    srv_copy.direction = Direction::FromContainer as u8;
    let out = run(
        &mut t,
        &[
            seg(0, true, TCP_SYN, 10, 0, b"", 0),
            srv_copy,
            seg(4, false, SA, 7000, 11, b"", 0),
            // 1 MiB from the server, then the client resets.
            seg(50, true, TCP_RST, 11 + 100, 0, b"", 0),
        ],
    );
    assert!(matches!(out[0], Outcome::Opened { connect_ns, .. } if connect_ns == 4 * MS));
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[1],
        Outcome::Closed {
            key: key(),
            to_server: 100,
            to_client: 0
        }
    );
    let out = run(
        &mut t,
        &[
            seg(0, true, TCP_SYN, u32::MAX - 5, 0, b"", 0),
            seg(1, false, SA, 7000, u32::MAX - 4, b"", 0),
            seg(2, false, FA, 7001 + 1_048_576, u32::MAX - 4, b"", 0),
            // The client's FIN acknowledges the server's data and FIN.
            seg(3, true, FA, u32::MAX - 4, 7002 + 1_048_576, b"", 0),
        ],
    );
    assert_eq!(
        out.last(),
        Some(&Outcome::Closed {
            key: key(),
            to_server: 0,
            to_client: 1_048_576
        })
    );
}

#[test]
fn unknown_protocols_and_stray_segments_are_only_connections() {
    let mut t = Tracker::new(3_000 * MS);
    let out = run(
        &mut t,
        &[
            // Stray data of an untracked connection.
            seg(0, false, PA, 1, 1, b"HTTP/1.1 200 OK\r\n", 20),
            seg(0, true, TCP_SYN, 1, 0, b"", 0),
            seg(1, false, SA, 1, 2, b"", 0),
            // A TLS client hello, then a response with no request.
            seg(2, true, PA, 2, 2, b"\x16\x03\x01\x02\x00", 300),
            seg(3, false, PA, 2, 302, b"HTTP/1.1 200 OK\r\n", 20),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let mut out = Vec::new();
    t.expire(IDLE_NS + 10 * MS, &mut out);
    assert!(out.is_empty() && t.is_empty());
}

/// Both ends local: the datapath sends each segment once, leaving its
/// sender, so the server's segments come from the server's interface.
#[test]
fn both_local_segments_come_once_from_their_sender() {
    let mut t = Tracker::new(3_000 * MS);
    let leaving = |mut ev: ConnEvent| {
        ev.direction = Direction::FromContainer as u8;
        ev.both_local = 1;
        ev
    };
    let req = b"GET /a HTTP/1.1\r\nHost: s\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    let out = run(
        &mut t,
        &[
            leaving(seg(0, true, TCP_SYN, 1000, 0, b"", 0)),
            leaving(seg(2, false, SA, 5000, 1001, b"", 0)),
            leaving(seg(3, true, PA, 1001, 5001, req, 30)),
            leaving(seg(5, false, PA, 5001, 1031, ok, 50)),
            leaving(seg(6, true, FA, 1031, 5051, b"", 0)),
            leaving(seg(7, false, FA, 5051, 1032, b"", 0)),
        ],
    );
    assert_eq!(
        out[0],
        Outcome::Opened {
            key: key(),
            connect_ns: 2 * MS
        }
    );
    assert!(
        out.iter().any(
            |o| matches!(o, Outcome::Responded(r) if r.status == 200 && r.duration_ns == 2 * MS)
        ),
        "{out:?}"
    );
    assert_eq!(
        out.last(),
        Some(&Outcome::Closed {
            key: key(),
            to_server: 30,
            to_client: 50
        })
    );
    assert!(t.is_empty());
}

/// IPv6 (a table of its own): the same events with 16-byte addresses give
/// the same outcomes, keyed by the IPv6 ends.
#[test]
fn ipv6_connections_and_requests_as_ipv4() {
    const C6: Ip6 = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
    const S6: Ip6 = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3];
    let v6 = |ev: ConnEvent| {
        let swap = |a| if a == C { C6 } else { S6 };
        ConnEvent::<Ip6> {
            ts_ns: ev.ts_ns,
            src: swap(ev.src),
            dst: swap(ev.dst),
            seq: ev.seq,
            ack: ev.ack,
            ifindex: ev.ifindex,
            sport: ev.sport,
            dport: ev.dport,
            data_len: ev.data_len,
            copied: ev.copied,
            flags: ev.flags,
            direction: ev.direction,
            both_local: ev.both_local,
            _pad: ev._pad,
            payload: ev.payload,
        }
    };
    let req = b"GET /v6 HTTP/1.1\r\nHost: s\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    let evs = [
        seg(0, true, TCP_SYN, 1000, 0, b"", 0),
        seg(2, false, SA, 5000, 1001, b"", 0),
        seg(3, true, PA, 1001, 5001, req, 31),
        seg(5, false, PA, 5001, 1032, ok, 50),
        seg(6, true, PA, 1032, 5051, req, 31),
        seg(9, false, PA, 5051, 1063, ok, 50),
        seg(10, true, FA, 1063, 5101, b"", 0),
        seg(11, false, FA, 5101, 1064, b"", 0),
    ];
    let mut t4 = Tracker::new(3_000 * MS);
    let out4 = run(&mut t4, &evs);
    let mut t6: Tracker<Ip6> = Tracker::new(3_000 * MS);
    let mut out6 = Vec::new();
    for e in evs {
        t6.feed(&v6(e), &mut out6);
    }
    let key6 = Key {
        client: C6,
        client_port: 40000,
        server: S6,
        server_port: 8080,
    };
    assert_eq!(out6.len(), out4.len(), "{out6:?}");
    assert_eq!(
        out6[0],
        Outcome::Opened {
            key: key6,
            connect_ns: 2 * MS
        }
    );
    let logged: Vec<_> = out6
        .iter()
        .filter_map(|o| match o {
            Outcome::Logged(r) => Some((r.key, r.method, r.path.as_str(), r.status, r.bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(
        logged,
        [
            (key6, "GET", "/v6", 200, Some(50)),
            (key6, "GET", "/v6", 200, Some(50))
        ]
    );
    assert_eq!(
        out6.last(),
        Some(&Outcome::Closed {
            key: key6,
            to_server: 62,
            to_client: 100
        })
    );
    assert_eq!(
        key6.client.ip(),
        "fd00:0:0:1::2".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        key().server.ip(),
        "10.240.0.3".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(t6.is_empty());
}
