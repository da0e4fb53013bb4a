//! The programs' per-CPU memo of `PN_IFACES` and `PN_ENDPOINTS` lookups
//! (`pn_common::memo`), from an attacker's side: a member that leaves or
//! moves to another network is judged by what the agent wrote from the very
//! next packet on, although the memo of the CPU carrying the traffic held
//! its old entries. (An address cannot go to a container of another
//! network: each network has subnets of its own.)
//! Every burst is sent from a thread pinned to CPU 0 (a veth carries a
//! packet through both hosts' programs on the sender's CPU), so the memo
//! it warms is the one the next burst reads.
//! The memo is off unless `--tc-memo true`: these agents turn it on, but
//! the last test, which checks that the default leaves it unused.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use pn_tests::{Host, Namespace, eventually, net, scenario::Member, unique_prefix};

const LONG: Duration = Duration::from_secs(10);
const PORT: u16 = 9999;
const BURST: u64 = 20;

/// The bytes of a pinned map's entry (`None`: no such key); of CPU 0's
/// element for a per-CPU map.
fn lookup(map: &std::path::Path, key: &[u8]) -> Option<Vec<u8>> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(map)
        .arg("key")
        .args(key.iter().map(u8::to_string))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = if v["values"].is_array() {
        v["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cpu"] == 0)?["value"]
            .clone()
    } else {
        v["value"].clone()
    };
    Some(
        value
            .as_array()?
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect(),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Whether CPU 0's memo holds, under the current generation, the entry of
/// interface `ifindex` and that of endpoint `addr`.
fn memo_hot(host: &Host, ifindex: u32, addr: Ipv4Addr) -> bool {
    use pn_common::memo::{SLOTS, slot, stamp};
    let g = lookup(&host.pinned_map("PN_MEMO_GEN"), &[0; 4]).expect("PN_MEMO_GEN");
    let Some(s) = stamp(u64_at(&g, 0)) else {
        return false;
    };
    let m = lookup(&host.pinned_map("PN_MEMO"), &[0; 4]).expect("PN_MEMO");
    let i = slot(ifindex) * 48;
    let key = u32::from_ne_bytes(addr.octets());
    let e = SLOTS * 48 + slot(key) * 32;
    u64_at(&m, i) == s
        && u32_at(&m, i + 8) == ifindex
        && u32_at(&m, i + 12) == 1
        && u64_at(&m, e) == s
        && u32_at(&m, e + 8) == key
        && u32_at(&m, e + 12) == 1
}

/// Sends `BURST` UDP datagrams from `src` to `dst` inside `ns`, from a
/// thread pinned to CPU 0 (raw, so a source the container no longer holds
/// can be sent too).
fn burst(ns: &Namespace, src: Ipv4Addr, dst: Ipv4Addr, tag: &'static [u8]) {
    let packet = net::udp_packet(src, 40000, dst, PORT, tag);
    ns.run(move || {
        let mut cpu0 = nix::sched::CpuSet::new();
        cpu0.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).unwrap();
        // SAFETY: plain socket syscalls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket");
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            for _ in 0..BURST {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
            }
            libc::close(fd);
        }
    })
}

/// The host-side interface index of a member.
fn host_ifindex(host: &Host, m: &Member) -> u32 {
    let name = m.attached["host_interface"].as_str().unwrap();
    let link: serde_json::Value =
        serde_json::from_str(&host.ns.ip(&["-j", "link", "show", name])).unwrap();
    link[0]["ifindex"].as_u64().unwrap() as u32
}

/// c1 sends to c2 (both of network A) until CPU 0's memo holds c1's
/// interface and c2's endpoint, c2 receiving every burst.
fn warm(host: &Host, c1: &Member, c2: &Member, rx: &net::UdpCollector) {
    let idx1 = host_ifindex(host, c1);
    assert!(
        eventually(LONG, || {
            burst(&c1.ns, c1.addr, c2.addr, b"warm");
            memo_hot(host, idx1, c2.addr)
        }),
        "CPU 0's memo never held c1's interface and c2's endpoint"
    );
    assert!(!rx.received(Duration::from_millis(300)).is_empty());
}

struct Fixture {
    host: Host,
    net_b: String,
    app_a1: String,
    app_a2: String,
    c1: Member,
    c2: Member,
}

fn fixture() -> Fixture {
    fixture_with(&["--tc-memo", "true"])
}

fn fixture_with(flags: &[&str]) -> Fixture {
    let host = Host::start_with(&unique_prefix(), "h1", flags);
    let net_a = host.create_network(&[]);
    let net_b = host.create_network(&[]);
    let app_a1 = host.create_app(&net_a);
    let app_a2 = host.create_app(&net_a);
    Fixture {
        c1: host.member(&app_a1, "worker", "c1"),
        c2: host.member(&app_a2, "worker", "c2"),
        host,
        net_b,
        app_a1,
        app_a2,
    }
}

fn detach(host: &Host, app: &str) {
    host.cli_ok(&[
        "container",
        "detach",
        "--app",
        app,
        "--type",
        "worker",
        "--index",
        "1",
    ]);
}

/// c2 leaves: c1's very next datagrams to its address are dropped where
/// they leave (`policy_denied`), none forwarded.
#[test]
fn a_member_that_leaves_is_no_destination_from_the_next_packet() {
    let f = fixture();
    assert!(f.host.log().contains("tc memo on"), "{}", f.host.log());
    // The programs' verifier counts, for the record.
    for l in f
        .host
        .log()
        .lines()
        .filter(|l| l.contains("instructions verified"))
    {
        eprintln!("{l}");
    }
    let rx = net::udp_collector(&f.c2.ns, PORT);
    warm(&f.host, &f.c1, &f.c2, &rx);
    let endpoints = f.host.pinned_map("PN_ENDPOINTS");
    let key = f.c2.addr.octets();
    detach(&f.host, &f.app_a2);
    assert!(eventually(LONG, || lookup(&endpoints, &key).is_none()));
    // The agent's batch ends with the new generation right after its writes.
    std::thread::sleep(Duration::from_millis(200));
    let denied = f.host.packets(&f.app_a1, "worker-1", "policy_denied");
    let forwarded = f.host.packets(&f.app_a1, "worker-1", "forwarded");
    burst(&f.c1.ns, f.c1.addr, f.c2.addr, b"after");
    assert!(
        eventually(LONG, || f.host.packets(
            &f.app_a1,
            "worker-1",
            "policy_denied"
        ) >= denied + BURST),
        "the burst after the leave was not dropped as policy_denied"
    );
    assert_eq!(
        f.host.packets(&f.app_a1, "worker-1", "forwarded"),
        forwarded,
        "forwarded toward a member that left"
    );
}

/// c2's app moves to network B: c2's old source (its interface's entry
/// and its endpoint, both memoised on CPU 0 by its traffic to c1) is
/// refused from the next packet on, and c1 receives nothing of it.
#[test]
fn a_member_moved_to_another_network_loses_its_old_source_at_once() {
    let f = fixture();
    let rx1 = net::udp_collector(&f.c1.ns, PORT);
    let idx2 = host_ifindex(&f.host, &f.c2);
    let old = f.c2.addr;
    assert!(
        eventually(LONG, || {
            burst(&f.c2.ns, old, f.c1.addr, b"warm");
            memo_hot(&f.host, idx2, f.c1.addr)
        }),
        "CPU 0's memo never held c2's interface and c1's endpoint"
    );
    assert!(!rx1.received(Duration::from_millis(300)).is_empty());
    let ifaces = f.host.pinned_map("PN_IFACES");
    let was = lookup(&ifaces, &idx2.to_ne_bytes()).expect("c2's interface");
    f.host
        .cli_ok(&["app", "move", &f.app_a2, "--network", &f.net_b]);
    assert!(eventually(LONG, || lookup(&ifaces, &idx2.to_ne_bytes())
        .is_some_and(|now| now[..8] != was[..8])));
    std::thread::sleep(Duration::from_millis(200));
    let spoofed = f.host.packets(&f.app_a2, "worker-1", "spoofed_source");
    burst(&f.c2.ns, old, f.c1.addr, b"old source");
    assert!(
        eventually(LONG, || f.host.packets(
            &f.app_a2,
            "worker-1",
            "spoofed_source"
        ) >= spoofed + BURST),
        "the old source was not refused as spoofed_source"
    );
    let got = rx1.received(Duration::from_millis(500));
    assert!(
        !got.iter().any(|p| p == b"old source"),
        "c1 received c2's old source after the move"
    );
}

/// The generation, odd while the memo is off.
fn generation(host: &Host) -> u64 {
    u64_at(
        &lookup(&host.pinned_map("PN_MEMO_GEN"), &[0; 4]).expect("PN_MEMO_GEN"),
        0,
    )
}

/// Without `--tc-memo` the generation is odd from the start and stays so
/// through the agent's writes: the programs never fill CPU 0's memo
/// however much c1 sends to c2 (delivered all the same), and the leave is
/// enforced from the maps.
#[test]
fn by_default_the_memo_is_off_and_never_filled() {
    let f = fixture_with(&[]);
    assert!(f.host.log().contains("tc memo off"), "{}", f.host.log());
    let g = generation(&f.host);
    assert_eq!(g % 2, 1, "PN_MEMO_GEN {g} with the memo off");
    let rx = net::udp_collector(&f.c2.ns, PORT);
    let idx1 = host_ifindex(&f.host, &f.c1);
    for _ in 0..5 {
        burst(&f.c1.ns, f.c1.addr, f.c2.addr, b"cold");
    }
    assert!(!rx.received(Duration::from_millis(300)).is_empty());
    assert!(!memo_hot(&f.host, idx1, f.c2.addr));
    let m = lookup(&f.host.pinned_map("PN_MEMO"), &[0; 4]).expect("PN_MEMO");
    assert!(m.iter().all(|b| *b == 0), "CPU 0's memo was filled");
    let endpoints = f.host.pinned_map("PN_ENDPOINTS");
    let key = f.c2.addr.octets();
    detach(&f.host, &f.app_a2);
    assert!(eventually(LONG, || lookup(&endpoints, &key).is_none()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(generation(&f.host), g, "an apply settled the generation");
    let denied = f.host.packets(&f.app_a1, "worker-1", "policy_denied");
    burst(&f.c1.ns, f.c1.addr, f.c2.addr, b"after");
    assert!(
        eventually(LONG, || f.host.packets(
            &f.app_a1,
            "worker-1",
            "policy_denied"
        ) >= denied + BURST),
        "the burst after the leave was not dropped as policy_denied"
    );
}
