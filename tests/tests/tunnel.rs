//! The encrypted tunnel between hosts, two hosts joined by an underlay and a
//! real etcd: traffic crosses only encrypted, strangers and replays change
//! nothing, rekeys and restarts lose nothing.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pn_tests::{
    Host, eventually,
    fleet::Fleet,
    metric_value, net,
    scenario::{Member, OneApp},
    unique_prefix,
};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(800);

fn tunnel_drops(h: &Host, reason: &str) -> u64 {
    metric_value(&h.metrics(), "pn_tunnel_drops_total", &[("reason", reason)])
}

struct Two {
    f: Fleet,
    a: String,
    b: String,
    c1: Member,
    c2: Member,
    c3: Member,
}

/// Network A: c1 on h1, c2 on h2; network B: c3 on h2.
fn two_hosts(extra: &[&str]) -> Two {
    let f = Fleet::with_flags(&unique_prefix(), 2, extra);
    let (h1, h2) = (&f.hosts[0], &f.hosts[1]);
    let OneApp { app: a, c1, c2, .. } = OneApp::new(h1, h2, ["web", "worker"]);
    let (_, b) = h1.network_and_app(&[]);
    let c3 = h2.member(&b, "web", "c3");
    f.wait_for_peers(LONG);
    Two {
        f,
        a,
        b,
        c1,
        c2,
        c3,
    }
}

#[test]
fn containers_talk_across_hosts_and_other_networks_do_not() {
    let t = two_hosts(&[]);
    let _s2 = net::tcp_echo_server(&t.c2, 4000);
    let _s1 = net::tcp_echo_server(&t.c1, 4001);
    assert_eq!(
        net::tcp_echo(
            &t.c1,
            SocketAddr::from((t.c2.addr, 4000)),
            b"h1 to h2",
            LONG
        )
        .unwrap(),
        b"h1 to h2"
    );
    assert_eq!(
        net::tcp_echo(
            &t.c2,
            SocketAddr::from((t.c1.addr, 4001)),
            b"h2 to h1",
            LONG
        )
        .unwrap(),
        b"h2 to h1"
    );
    let _u2 = net::udp_echo_server(&t.c2, 4002);
    let _u1 = net::udp_echo_server(&t.c1, 4003);
    assert_eq!(
        net::udp_echo(&t.c1, SocketAddr::from((t.c2.addr, 4002)), b"udp", LONG).unwrap(),
        b"udp"
    );
    assert_eq!(
        net::udp_echo(&t.c2, SocketAddr::from((t.c1.addr, 4003)), b"udp", LONG).unwrap(),
        b"udp"
    );
    assert!(
        t.c1.exec(&["ping", "-c", "1", "-W", "2", &t.c2.addr.to_string()])
            .status
            .success()
    );
    // Network B on h2 cannot reach A on h1, and A cannot reach B.
    assert!(net::tcp_echo(&t.c3, SocketAddr::from((t.c1.addr, 4001)), b"x", SHORT).is_err());
    let _s3 = net::tcp_echo_server(&t.c3, 4004);
    assert!(net::tcp_echo(&t.c1, SocketAddr::from((t.c3.addr, 4004)), b"x", SHORT).is_err());
    assert!(t.f.hosts[1].packets(&t.b, "web-1", "policy_denied") >= 1);
    assert!(t.f.hosts[0].packets(&t.a, "web-1", "policy_denied") >= 1);
    for h in &t.f.hosts {
        let m = h.metrics();
        assert!(
            metric_value(&m, "pn_tunnel_packets_total", &[("direction", "tx")]) > 0,
            "{m}"
        );
        assert!(
            metric_value(&m, "pn_tunnel_handshakes_total", &[("event", "completed")])
                + metric_value(&m, "pn_tunnel_handshakes_total", &[("event", "answered")])
                >= 1
        );
        let status = h.json(&["status"]);
        assert!(
            status["peers"][0]["tunnel"]
                .as_str()
                .unwrap()
                .starts_with("established"),
            "{status}"
        );
    }
    // Path MTU: the container MTU leaves room for the tunnel; a container
    // that sends bigger with DF set gets "fragmentation needed" back.
    let hif = t.f.hosts[0].json(&["container", "list", "--app", &t.a]);
    let hif = hif
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "h1")
        .unwrap()["host_interface"]
        .as_str()
        .unwrap()
        .to_string();
    // A container (and host side) misconfigured with a bigger MTU: the host
    // answers "fragmentation needed" when the packet meets the tunnel.
    t.c1.ip(&["link", "set", "pn0", "mtu", "1500"]);
    t.f.hosts[0].ns.ip(&["link", "set", &hif, "mtu", "1500"]);
    let out = t.c1.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1460",
        &t.c2.addr.to_string(),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1436") || text.contains("Message too long"),
        "{text}"
    );
}

#[test]
fn the_underlay_never_sees_clear_text_and_replays_are_dropped() {
    let t = two_hosts(&[]);
    let _s2 = net::tcp_echo_server(&t.c2, 5000);
    // h1's port of the bridge sees all of h1's underlay traffic.
    let cap = net::Capture::start(&t.f.underlay, "p1", "udp or tcp port 5000");
    let marker = b"PN-SECRET-MARKER-4f1c9a";
    for _ in 0..5 {
        net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 5000)), marker, LONG).unwrap();
    }
    let frames = cap.finish();
    assert!(!frames.is_empty(), "the capture saw the tunnel");
    for f in &frames {
        assert!(
            !f.windows(marker.len()).any(|w| w == marker),
            "payload marker in clear on the underlay"
        );
        assert!(
            !f.windows(4).any(|w| w == t.c2.addr.octets()),
            "inner address in clear on the underlay"
        );
    }
    // Replay the captured data packets from h1's address: counted, dropped.
    let datagrams: Vec<_> = net::udp_payloads(&frames)
        .into_iter()
        .filter(|(src, dst, p)| {
            src.ip() == Ipv4Addr::new(192, 168, 100, 1)
                && dst.port() == 51871
                && p.first() == Some(&4)
        })
        .collect();
    assert!(
        datagrams.len() >= 5,
        "{} tunnel data packets captured",
        datagrams.len()
    );
    let before = tunnel_drops(&t.f.hosts[1], "replayed");
    for (src, dst, payload) in &datagrams {
        let SocketAddr::V4(s) = src else { continue };
        let SocketAddr::V4(d) = dst else { continue };
        net::send_raw_ipv4(
            &t.f.underlay,
            net::udp_packet(*s.ip(), s.port(), *d.ip(), d.port(), payload),
        )
        .unwrap();
    }
    assert!(
        eventually(LONG, || tunnel_drops(&t.f.hosts[1], "replayed")
            >= before + datagrams.len() as u64),
        "replayed datagrams are dropped and counted"
    );
    // And the real traffic goes on.
    net::tcp_echo(
        &t.c1,
        SocketAddr::from((t.c2.addr, 5000)),
        b"still fine",
        LONG,
    )
    .unwrap();
}

#[test]
fn strangers_on_the_underlay_change_nothing() {
    let t = two_hosts(&[]);
    let _s2 = net::tcp_echo_server(&t.c2, 6000);
    net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 6000)), b"before", LONG).unwrap();
    let h2 = Ipv4Addr::new(192, 168, 100, 2);
    let stranger = Ipv4Addr::new(192, 168, 100, 254);
    let peer_h1 = Ipv4Addr::new(192, 168, 100, 1);
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Random datagrams from a stranger: dropped in XDP before the agent.
    for i in 0..200 {
        let len = (rand() % 200) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        if let Some(b) = d.first_mut() {
            *b = (i % 5) as u8;
        }
        net::send_raw_ipv4(
            &t.f.underlay,
            net::udp_packet(stranger, 40000, h2, 51871, &d),
        )
        .unwrap();
    }
    assert!(eventually(LONG, || metric_value(
        &t.f.hosts[1].metrics(),
        "pn_packets_total",
        &[("container", ""), ("reason", "unknown_peer")]
    ) >= 200));
    // Forged datagrams claiming to come from the peer: dropped by the agent
    // (wrong tag in XDP, unknown session or failed authentication after).
    let tag_a = t.f.hosts[1].json(&["network", "list"])[0]["tag"]
        .as_u64()
        .unwrap() as u32;
    for _ in 0..100 {
        let mut d = vec![4u8, 0, 0, 0];
        d.extend_from_slice(&tag_a.to_be_bytes());
        d.extend((0..100).map(|_| rand() as u8));
        net::send_raw_ipv4(
            &t.f.underlay,
            net::udp_packet(peer_h1, 51871, h2, 51871, &d),
        )
        .unwrap();
    }
    let mut bad_tag = vec![4u8, 0, 0, 0];
    bad_tag.extend_from_slice(&0x00ff_ffffu32.to_be_bytes());
    bad_tag.extend_from_slice(&[0u8; 40]);
    net::send_raw_ipv4(
        &t.f.underlay,
        net::udp_packet(peer_h1, 51871, h2, 51871, &bad_tag),
    )
    .unwrap();
    assert!(eventually(LONG, || tunnel_drops(
        &t.f.hosts[1],
        "unknown_session"
    ) + tunnel_drops(
        &t.f.hosts[1],
        "decrypt_failed"
    ) >= 100));
    assert!(eventually(LONG, || metric_value(
        &t.f.hosts[1].metrics(),
        "pn_packets_total",
        &[("container", ""), ("reason", "unknown_tag")]
    ) >= 1));
    net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 6000)), b"after", LONG)
        .expect("the tunnel still works");
}

#[test]
fn rekeys_under_continuous_traffic_lose_no_packet() {
    let t = two_hosts(&[
        "--tunnel-rekey-after-messages",
        "150",
        "--tunnel-rekey-after-secs",
        "2",
    ]);
    let _u2 = net::udp_echo_server(&t.c2, 7000);
    let dst = SocketAddr::from((t.c2.addr, 7000));
    // Each datagram waits for its echo: a lost packet shows as a timeout.
    let lost = t.c1.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut lost = 0;
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        let mut i = 0u32;
        while std::time::Instant::now() < deadline {
            let msg = i.to_be_bytes();
            s.send_to(&msg, dst).unwrap();
            match s.recv(&mut buf) {
                Ok(4) if buf[..4] == msg => {}
                _ => lost += 1,
            }
            i += 1;
        }
        (lost, i)
    });
    let drops: Vec<String> =
        t.f.hosts
            .iter()
            .map(|h| {
                h.metrics()
                    .lines()
                    .filter(|l| {
                        l.starts_with("pn_tunnel_drops_total")
                            || l.starts_with("pn_tunnel_handshakes_total")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
    assert_eq!(
        lost.0, 0,
        "{} of {} packets lost; {drops:?}",
        lost.0, lost.1
    );
    let m = t.f.hosts[0].metrics();
    let rekeys = metric_value(&m, "pn_tunnel_handshakes_total", &[("event", "completed")])
        + metric_value(&m, "pn_tunnel_handshakes_total", &[("event", "answered")]);
    assert!(
        rekeys >= 5,
        "{} handshakes over {} packets: {m}",
        rekeys,
        lost.1
    );
}

#[test]
fn a_restarted_agent_reestablishes_the_tunnel_by_itself() {
    let mut t = two_hosts(&[]);
    let _s2 = net::tcp_echo_server(&t.c2, 8000);
    let _u2 = net::udp_echo_server(&t.c2, 8001);
    net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 8000)), b"before", LONG).unwrap();
    t.f.hosts[1].restart();
    assert!(
        eventually(Duration::from_secs(15), || net::udp_echo(
            &t.c1,
            SocketAddr::from((t.c2.addr, 8001)),
            b"u",
            Duration::from_millis(500)
        )
        .is_ok()),
        "the tunnel came back"
    );
    net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 8000)), b"after", LONG).unwrap();
    t.f.hosts[0].restart();
    let _s1 = net::tcp_echo_server(&t.c1, 8002);
    assert!(
        eventually(Duration::from_secs(15), || {
            net::tcp_echo(
                &t.c2,
                SocketAddr::from((t.c1.addr, 8002)),
                b"x",
                Duration::from_millis(500),
            )
            .is_ok()
        }),
        "h2 reaches h1 after h1 restarted"
    );
}

/// The public key the fleet publishes for host `id`, as `h` sees it.
fn published_key(h: &Host, id: &str) -> String {
    h.json(&["host", "list"])
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["id"] == id)
        .and_then(|x| x["public_key"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A host whose key changes is cut off: h1 forgets every session of the old
/// key and no longer answers it, and pairs with the new key by itself.
#[test]
fn a_host_whose_key_changes_is_cut_off_and_pairs_again_with_the_new_one() {
    use pn_tunnel::{Clock, Config, Encap, Tunnel, keyfile::host_key};
    let mut t = two_hosts(&[]);
    let _s2 = net::tcp_echo_server(&t.c2, 8100);
    net::tcp_echo(&t.c1, SocketAddr::from((t.c2.addr, 8100)), b"before", LONG).unwrap();
    let h2_id = t.f.hosts[1].id.clone();
    let old_key = published_key(&t.f.hosts[0], &h2_id);
    // Keep h2's old private key aside, then give h2 a new one.
    let state = t.f.hosts[1].dir.join("state");
    let aside = t.f.hosts[1].dir.join("old-key");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::rename(state.join("host.key"), aside.join("host.key")).unwrap();
    t.f.hosts[1].restart();
    assert!(
        eventually(LONG, || {
            let k = published_key(&t.f.hosts[0], &h2_id);
            !k.is_empty() && k != old_key
        }),
        "h1 learns h2's new key"
    );
    assert!(
        eventually(Duration::from_secs(15), || net::tcp_echo(
            &t.c1,
            SocketAddr::from((t.c2.addr, 8100)),
            b"after",
            Duration::from_millis(500)
        )
        .is_ok()),
        "h1 and h2 pair again with the new key"
    );
    // Whoever holds the old key, from h2's own address, gets nothing.
    let old = host_key(&aside).unwrap();
    let h1_keys = host_key(&t.f.hosts[0].dir.join("state")).unwrap();
    let h1 = SocketAddr::from(([192, 168, 100, 1], 51871));
    let mut impostor = Tunnel::new(Config::default(), old, 7);
    impostor.set_peer(1, h1_keys.public, h1);
    let mut out = vec![0u8; 2048];
    let Encap::Handshake { len, .. } =
        impostor.encapsulate(Clock::system(), 1, 0, 0, &[0x45; 40], &mut out)
    else {
        panic!("a first packet starts a handshake")
    };
    let rejected = tunnel_drops(&t.f.hosts[0], "handshake_rejected");
    net::send_raw_ipv4(
        &t.f.underlay,
        net::udp_packet(
            Ipv4Addr::new(192, 168, 100, 2),
            51871,
            Ipv4Addr::new(192, 168, 100, 1),
            51871,
            &out[..len],
        ),
    )
    .unwrap();
    assert!(
        eventually(LONG, || tunnel_drops(&t.f.hosts[0], "handshake_rejected")
            > rejected),
        "the old key's initiation is rejected"
    );
}

/// Issue 12 finding 5: 20 000 initiations over 2 s from spoofed sources
/// (h1's address on random ports, so the XDP guard lets them through), half
/// without a right mac1 and half with one (h2's key is public), while c1
/// and c2 exchange datagrams and h1 and h2 rekey every second. h2 does no
/// DH beyond its budget, strangers get cookies or nothing, and the honest
/// hosts re-pair through cookies without losing a packet.
#[test]
fn an_initiation_flood_from_spoofed_sources_leaves_honest_hosts_paired() {
    use pn_tunnel::{cookie::PeerCookie, keyfile::decode_key, wire};
    let t = two_hosts(&["--tunnel-rekey-after-secs", "1"]);
    let _u2 = net::udp_echo_server(&t.c2, 7100);
    let dst = SocketAddr::from((t.c2.addr, 7100));
    net::udp_echo(&t.c1, dst, b"before", LONG).unwrap();
    let h2_key = decode_key(&published_key(&t.f.hosts[0], &t.f.hosts[1].id)).unwrap();
    let (h1, h2) = (
        Ipv4Addr::new(192, 168, 100, 1),
        Ipv4Addr::new(192, 168, 100, 2),
    );
    let mut x = 0x0bad_cafe_f00d_d00du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let now = std::time::Instant::now();
    let packets: Vec<Vec<u8>> = (0..20_000)
        .map(|i| {
            let mut m: Vec<u8> = (0..wire::INIT_LEN).map(|_| rand() as u8).collect();
            wire::write_init_header(&mut m, rand() as u32);
            if i % 2 == 1 {
                PeerCookie::new(&h2_key).seal_initiation(&mut m, now);
            }
            let sport = 1024 + (rand() % 50_000) as u16;
            net::udp_packet(h1, sport, h2, 51871, &m)
        })
        .collect();
    let m2 = t.f.hosts[1].metrics();
    let h2_events =
        |m: &str, e: &str| metric_value(m, "pn_tunnel_handshakes_total", &[("event", e)]);
    let processed_before = h2_events(&m2, "processed");
    let rejected_before = tunnel_drops(&t.f.hosts[1], "handshake_rejected");
    let h1_pairings_before = {
        let m = t.f.hosts[0].metrics();
        h2_events(&m, "completed") + h2_events(&m, "answered")
    };
    let flood = pn_tests::flood::flood_raw(&t.f.underlay.name, packets, Duration::from_secs(2));
    // Each datagram waits for its echo: a lost packet shows as a timeout
    // (generous: a debug agent works through the flood's queue slowly).
    let (lost, exchanged) = t.c1.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        let (mut lost, mut i) = (0, 0u32);
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let msg = i.to_be_bytes();
            s.send_to(&msg, dst).unwrap();
            match s.recv(&mut buf) {
                Ok(4) if buf[..4] == msg => {}
                _ => lost += 1,
            }
            i += 1;
        }
        (lost, i)
    });
    let sent = flood.join().unwrap();
    assert_eq!(sent, 20_000);
    let (m1, m2) = (t.f.hosts[0].metrics(), t.f.hosts[1].metrics());
    let report = format!(
        "{exchanged} exchanged, {lost} lost; h1:\n{}\nh2:\n{}",
        m1.lines()
            .filter(|l| l.starts_with("pn_tunnel_handshakes") || l.starts_with("pn_tunnel_drops"))
            .collect::<Vec<_>>()
            .join("\n"),
        m2.lines()
            .filter(|l| l.starts_with("pn_tunnel_handshakes") || l.starts_with("pn_tunnel_drops"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    eprintln!("{report}");
    // Nothing the honest hosts sent was lost. How many round trips fit in
    // the 3 s depends on how fast a debug agent works through the flood on
    // a loaded machine: at least one, then traffic flows freely again.
    assert_eq!(lost, 0, "{report}");
    assert!(exchanged >= 1, "{report}");
    // Every forged mac1 dropped before any DH; the others refused with a
    // cookie once the budget (200 a second) was spent.
    // (A loaded machine drops part of the flood before the agent sees it:
    // the counts are bounded below loosely; the bound that matters is the
    // DH work below.)
    assert!(
        eventually(LONG, || tunnel_drops(&t.f.hosts[1], "bad_mac") >= 1_000),
        "{report}"
    );
    assert!(
        tunnel_drops(&t.f.hosts[1], "cookie_required") >= 1_000,
        "{report}"
    );
    let processed = h2_events(&m2, "processed") - processed_before;
    let rejected = tunnel_drops(&t.f.hosts[1], "handshake_rejected") - rejected_before;
    assert!(
        processed <= 200 + 50 && rejected <= 200,
        "{processed} DHs, {rejected} rejected: {report}"
    );
    // The honest hosts re-paired through the flood, with a cookie, and go
    // on re-pairing (every second) once it is over. (How many rekeys fit in
    // the flood's seconds depends on how fast a debug agent works through
    // its queue beside the other tests: one, on a loaded 2-core machine.)
    let pairings = |m: &str| h2_events(m, "completed") + h2_events(m, "answered");
    assert!(pairings(&m1) - h1_pairings_before >= 1, "{report}");
    assert!(h2_events(&m1, "cookie_received") >= 1, "{report}");
    net::udp_echo(&t.c1, dst, b"after", LONG).expect("the tunnel still works");
    assert!(
        eventually(LONG, || {
            let _ = net::udp_echo(&t.c1, dst, b"rekey", Duration::from_secs(1));
            pairings(&t.f.hosts[0].metrics()) - h1_pairings_before >= 2
        }),
        "no rekey after the flood: {report}"
    );
}
