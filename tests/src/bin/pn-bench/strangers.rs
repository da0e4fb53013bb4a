//! Dropping strangers: how many packets a stranger can throw at a member
//! while pn drops them, and the CPU it costs, against nftables doing the same
//! job with a set of members, as an operator would write it.

use std::net::{Ipv4Addr, SocketAddr};

use pn_tests::{Host, Namespace, metric_value, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

struct Run {
    drops_per_s: f64,
    cpu_ns_per_drop: f64,
}

fn flood(
    from: &Namespace,
    to: Ipv4Addr,
    seconds: u64,
    dropped: impl Fn() -> u64,
) -> anyhow::Result<Run> {
    let before = dropped();
    let cpu0 = tools::cpu_busy_seconds();
    let t = std::time::Instant::now();
    tools::udp_flood(from, SocketAddr::from((to, 9)), seconds)?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = tools::cpu_busy_seconds() - cpu0;
    let drops = dropped().saturating_sub(before) as f64;
    Ok(Run {
        drops_per_s: drops / secs,
        cpu_ns_per_drop: if drops > 0.0 {
            cpu * 1e9 / drops
        } else {
            f64::NAN
        },
    })
}

fn nft(host: &Host, script: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("pn-bench-nft-{}", host.ns.name));
    std::fs::write(&path, script)?;
    let out = host
        .ns
        .exec(&["nft", "-f", path.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn nft_drops(host: &Host) -> u64 {
    let out = host
        .ns
        .exec(&["nft", "-j", "list", "counter", "inet", "pnbench", "drops"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .unwrap_or(0)
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    // A stranger behind a plain routed veth (TC judges it at the member's
    // veth), another on the underlay (XDP judges it on arrival).
    let out = Namespace::new(&format!("{p}-out"));
    let ul = Namespace::new(&format!("{p}-ul"));
    for (ns, hif, net) in [(&out, "strg0", "192.168.77"), (&ul, "ul0", "192.168.90")] {
        host.ns.ip(&[
            "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        host.ns
            .ip(&["addr", "add", &format!("{net}.1/24"), "dev", hif]);
        host.ns.ip(&["link", "set", hif, "up"]);
        ns.ip(&["addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "10.240.0.0/12", "via", &format!("{net}.1")]);
    }
    host.launch(&[
        "--underlay-iface",
        "ul0",
        "--advertise",
        "192.168.90.1:51871",
    ]);
    let net = host.create_network(&[]);
    let app = host.create_app(&net);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let ip1: Ipv4Addr = host.attach(&app, "web", &c1)["ip"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let counter = |reason: &'static str| {
        let host = &host;
        let app = app.clone();
        move || {
            metric_value(
                &host.metrics(),
                "pn_packets_total",
                &[("app", &app), ("reason", reason)],
            )
        }
    };
    let (mut tc, mut xdp, mut nft_tc, mut nft_ul) = (vec![], vec![], vec![], vec![]);
    for _ in 0..effort.runs {
        tc.push(flood(&out, ip1, effort.seconds, counter("not_member"))?);
        xdp.push(flood(
            &ul,
            ip1,
            effort.seconds,
            counter("cleartext_to_member"),
        )?);
    }
    tools::detach_programs(&host)?;
    nft(
        &host,
        &format!(
            "table inet pnbench {{\n  counter drops {{}}\n  set members {{ type ipv4_addr; elements = {{ {ip1} }} }}\n  \
             chain forward {{ type filter hook forward priority filter; policy accept;\n    \
             ip daddr @members ip saddr != @members counter name drops drop\n  }}\n}}\n"
        ),
    )?;
    for _ in 0..effort.runs {
        nft_tc.push(flood(&out, ip1, effort.seconds, || nft_drops(&host))?);
        nft_ul.push(flood(&ul, ip1, effort.seconds, || nft_drops(&host))?);
    }
    let _ = host.ns.exec(&["nft", "delete", "table", "inet", "pnbench"]);
    tools::reattach_programs(&mut host);
    let m = |runs: &[Run], f: fn(&Run) -> f64, unit: &str, higher: bool| {
        Measurement::new(unit, higher, runs.iter().map(f).collect())
    };
    let rate = |r: &Run| r.drops_per_s;
    let cost = |r: &Run| r.cpu_ns_per_drop;
    Ok(Scenario {
        name: "strangers".into(),
        title: "Dropping strangers".into(),
        setup: "One sender core floods a member with 64-byte UDP datagrams from outside every network, \
                over a routed veth (pn drops them in TC at the member's veth: not_member) and over the \
                underlay (pn drops them in XDP on arrival: cleartext_to_member). Baseline: pn's programs \
                detached and an nftables forward-chain rule with a set of members \
                (`ip daddr @members ip saddr != @members drop`). CPU is the whole machine's busy time \
                (sender included, the same in both) per drop."
            .into(),
        rows: vec![
            Row::versus("drops/s, routed veth (TC)", m(&tc, rate, "drops/s", true), "nftables", m(&nft_tc, rate, "drops/s", true)),
            Row::versus("CPU per drop, routed veth (TC)", m(&tc, cost, "ns", false), "nftables", m(&nft_tc, cost, "ns", false)),
            Row::versus("drops/s, underlay (XDP)", m(&xdp, rate, "drops/s", true), "nftables", m(&nft_ul, rate, "drops/s", true)),
            Row::versus("CPU per drop, underlay (XDP)", m(&xdp, cost, "ns", false), "nftables", m(&nft_ul, cost, "ns", false)),
        ],
        notes: vec![
            "The sender is one core of the same 2-core machine: drops/s is bounded by how fast it sends; \
             the CPU per drop is where the cost of dropping shows."
                .into(),
        ],
    })
}
