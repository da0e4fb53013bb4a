//! Scale of membership: time for N containers registered by other hosts to
//! be in an agent's maps and answered by its DNS, the agent's resident
//! memory per endpoint, and the cost per packet of the programs as N grows
//! (it must stay flat: hash lookups).

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use pn_agent::{
    model::{AddressLease, Container, ContainerKey, Host},
    store::{Backend, Membership, Op, etcd::Etcd, keys::Key},
};
use pn_tests::{Namespace, fleet::Fleet, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

/// Containers per etcd transaction (two keys each; etcd allows 128 ops).
const BATCH: usize = 50;

/// Far hosts registering at once: a fleet of 100 000 containers is spread
/// over many hosts, each writing its own, so the store sees their writes
/// side by side (one writer alone needs several seconds for 100 000).
const FAR_HOSTS: usize = 8;

/// The target of the largest size: every endpoint in the maps and in DNS
/// this soon after the first write.
const TARGET_S: f64 = 1.5;
const TARGET_N: usize = 100_000;

/// Resident memory per endpoint the agent may use (Cilium publishes 10.5
/// KiB per pod).
const TARGET_KIB: f64 = 2.0;

fn far_host(h: usize) -> String {
    format!("bench-far-{h}")
}

fn etcd() -> Arc<dyn Backend> {
    Arc::new(Etcd::new(
        vec![pn_tests::fleet::ETCD_ADDR.into()],
        "/pn/".into(),
    ))
}

/// Registers the far hosts as their agents would be (each gets a peer id).
fn register_hosts(fleet: &Fleet) -> anyhow::Result<()> {
    fleet.underlay.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let m = Membership::new(etcd());
            for h in 0..FAR_HOSTS {
                m.register_host(&Host {
                    id: far_host(h).parse()?,
                    advertise: None,
                    public_key: None,
                    started_at: 0,
                    peer_id: 0,
                })
                .await?;
            }
            Ok(())
        })
    })
}

/// Registers containers `from..to` of `app` as the far hosts would (container
/// `n` is host `n % FAR_HOSTS`'s), straight into etcd (from inside the
/// underlay namespace, where etcd listens), all hosts at once; the time
/// until the last write is answered.
fn register(
    fleet: &Fleet,
    net: pn_common::ids::NetworkId,
    app: pn_common::ids::AppId,
    base: u32,
    from: usize,
    to: usize,
) -> anyhow::Result<Duration> {
    fleet.underlay.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let kv = etcd();
            let mut writers = tokio::task::JoinSet::new();
            let t = Instant::now();
            for h in 0..FAR_HOSTS {
                let kv = kv.clone();
                writers.spawn(async move {
                    let host: pn_common::ids::HostId = far_host(h).parse()?;
                    let mine: Vec<usize> = (from..to).filter(|n| n % FAR_HOSTS == h).collect();
                    for chunk in mine.chunks(BATCH) {
                        let mut ops = Vec::new();
                        for &n in chunk {
                            let key = ContainerKey {
                                app,
                                ctype: "worker".parse()?,
                                index: n as u32 + 1,
                            };
                            let ip = Ipv4Addr::from(base + n as u32 + 1);
                            let c = Container {
                                key: key.clone(),
                                network: net,
                                ip,
                                ip6: None,
                                host: host.clone(),
                                netns: "far".into(),
                                ifname: "pn0".into(),
                                host_ifname: key.host_ifname(),
                                created_at: 0,
                                runtime: None,
                                unhealthy: false,
                                published: None,
                            };
                            let lease = AddressLease {
                                owner: key.clone(),
                                host: host.clone(),
                                service: false,
                            };
                            ops.push(Op::Put(
                                Key::HostIp(host.clone(), net, ip.into()).into(),
                                serde_json::to_string(&lease)?,
                            ));
                            ops.push(Op::Put(
                                Key::Container(host.clone(), key).into(),
                                serde_json::to_string(&c)?,
                            ));
                        }
                        kv.txn(vec![], ops).await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = writers.join_next().await {
                done??;
            }
            Ok(t.elapsed())
        })
    })
}

/// The agent's resident memory (VmRSS), in KiB.
fn rss_kib(h: &pn_tests::Host) -> anyhow::Result<f64> {
    let pid = h
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn endpoints_in_maps(h: &pn_tests::Host) -> u64 {
    h.json(&["status"])["endpoints"]["in_maps"]
        .as_u64()
        .unwrap_or(0)
}

fn answered(ns: &Namespace, name: &str) -> bool {
    let out = ns.exec(&["dig", "+short", "+time=1", "+tries=1", name]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The agent's own sender-side program (other agents of the machine run
/// programs of the same name, and come and go during the run).
fn from_container_ids(h: &pn_tests::Host) -> Vec<u64> {
    tools::pinned_prog_ids(h)
        .into_iter()
        .filter(|id| {
            std::process::Command::new("bpftool")
                .args(["-j", "prog", "show", "id", &id.to_string()])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .is_some_and(|v| v["name"] == "pn_from_container")
        })
        .collect()
}

/// Nanoseconds per run of the sender-side program under a request/response load.
fn cost_per_packet(
    ids: &[u64],
    c1: &Namespace,
    c2: &Namespace,
    ip2: Ipv4Addr,
    seconds: u64,
) -> anyhow::Result<f64> {
    let (t0, n0) = tools::prog_stats_ids(ids);
    tools::tcp_rr(c1, c2, ip2, seconds)?;
    let (t1, n1) = tools::prog_stats_ids(ids);
    anyhow::ensure!(n1 > n0, "the program did not run");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    // The far hosts run N / FAR_HOSTS containers each: over the default
    // quota of containers per host at the largest N.
    let quota = (TARGET_N / FAR_HOSTS + 1024).to_string();
    let mut fleet = Fleet::with_flags(&p, 1, &["--host-quota", &quota]);
    let h = &fleet.hosts[0];
    // A range big enough for the largest N (inside the pool: agents refuse
    // networks outside it).
    let (net_s, app_s) = h.network_and_app(&["--cidr", "10.254.0.0/15"]);
    let net: pn_common::ids::NetworkId = net_s.parse()?;
    let app: pn_common::ids::AppId = app_s.parse()?;
    let c1 = h.member(&app_s, "web", "c1");
    let c2 = h.member(&app_s, "web", "c2");
    let ip2 = c2.addr;
    // Far containers start after the local ones.
    let base = u32::from(Ipv4Addr::new(10, 254, 1, 0));
    let _stats = tools::BpfStats::enable()?;
    let ids = from_container_ids(h);
    anyhow::ensure!(
        !ids.is_empty(),
        "no pn_from_container behind the agent's pinned links"
    );
    let mut rows = Vec::new();
    let cost0: Vec<f64> = (0..effort.runs)
        .map(|_| cost_per_packet(&ids, &c1, &c2, ip2, effort.seconds))
        .collect::<Result<_, _>>()?;
    register_hosts(&fleet)?;
    // The same agent with no remote endpoint: what each size adds is theirs.
    let rss0 = rss_kib(h)?;
    let mut have = 0;
    let mut notes = Vec::new();
    for &n in effort.sizes {
        let t = Instant::now();
        let write = register(&fleet, net, app, base, have, n)?;
        have = n;
        let want = (n + 2) as u64;
        let mut maps = None;
        let mut dns = None;
        let last = format!("{n}.worker.{app_s}.{net_s}.private-network.internal");
        let deadline = Instant::now() + Duration::from_secs(600);
        while (maps.is_none() || dns.is_none()) && Instant::now() < deadline {
            if maps.is_none() && endpoints_in_maps(h) >= want {
                maps = Some(t.elapsed());
            }
            if dns.is_none() && answered(&c1, &last) {
                dns = Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log_tail = || {
            let log = h.log();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let maps = maps.ok_or_else(|| {
            anyhow::anyhow!(
                "{n} endpoints never reached the maps (have {}); agent log:\n{}",
                endpoints_in_maps(h),
                log_tail()
            )
        })?;
        let dns = dns
            .ok_or_else(|| anyhow::anyhow!("{last} never resolved; agent log:\n{}", log_tail()))?;
        let secs = |d: Duration| Measurement::new("s", false, vec![d.as_secs_f64()]);
        let timed = |row: Row, d: Duration| {
            if n == TARGET_N {
                row.with_target(
                    &format!("< {TARGET_S} s from the first write"),
                    d.as_secs_f64() < TARGET_S,
                )
            } else {
                row
            }
        };
        rows.push(Row::alone(
            &format!("N={n}: registered in etcd"),
            secs(write),
        ));
        rows.push(timed(
            Row::alone(&format!("N={n}: all in the agent's maps"), secs(maps)),
            maps,
        ));
        rows.push(timed(
            Row::alone(&format!("N={n}: last one answered by DNS"), secs(dns)),
            dns,
        ));
        if n == TARGET_N && write.as_secs_f64() >= TARGET_S {
            notes.push(format!(
                "N={n}: the writes alone took {:.2} s ({FAR_HOSTS} writers on this machine's etcd), \
                 more than the target allows from the first write; the agent's maps were {:.3} s \
                 and its DNS {:.3} s behind the last write.",
                write.as_secs_f64(),
                maps.saturating_sub(write).as_secs_f64(),
                dns.saturating_sub(write).as_secs_f64(),
            ));
        }
        rows.push(Row::alone(
            &format!("N={n}: maps behind the last write"),
            secs(maps.saturating_sub(write)),
        ));
        let cost: Vec<f64> = (0..effort.runs)
            .map(|_| cost_per_packet(&ids, &c1, &c2, ip2, effort.seconds))
            .collect::<Result<_, _>>()?;
        let row = Row::versus(
            &format!("N={n}: program run time per packet"),
            Measurement::new("ns", false, cost),
            "N=2",
            Measurement::new("ns", false, cost0.clone()),
        );
        let flat = row.ratio().unwrap_or(f64::INFINITY) <= 1.25;
        rows.push(row.with_target("flat (≤ 1.25× of N=2)", flat));
        // Read once the registration has settled (and the load above ran).
        let per = (rss_kib(h)? - rss0) / n as f64;
        rows.push(
            Row::alone(
                &format!("N={n}: agent resident memory per endpoint"),
                Measurement::new("KiB", false, vec![per]),
            )
            .with_target(
                &format!("≤ {TARGET_KIB} KiB (Cilium publishes 10.5 KiB per pod)"),
                per <= TARGET_KIB,
            ),
        );
    }
    // The biggest burst of all: a restarted agent lists every record at
    // once (keys and values of the whole store beside the view it builds).
    if let Some(&n) = effort.sizes.last() {
        fleet.hosts[0].restart();
        let h = &fleet.hosts[0];
        let want = (n + 2) as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while endpoints_in_maps(h) < want {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{n} endpoints never reached the maps after a restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Settled: the listing's memory goes back once the view and the
        // maps hold it.
        std::thread::sleep(Duration::from_secs(2));
        let per = (rss_kib(h)? - rss0) / n as f64;
        rows.push(
            Row::alone(
                &format!("N={n}: agent resident memory per endpoint after a restart"),
                Measurement::new("KiB", false, vec![per]),
            )
            .with_target(
                &format!("≤ {TARGET_KIB} KiB (Cilium publishes 10.5 KiB per pod)"),
                per <= TARGET_KIB,
            ),
        );
    }
    Ok(Scenario {
        name: "scale".into(),
        title: "Scale of membership".into(),
        setup: format!(
            "One agent on etcd; N containers of its network are registered by {FAR_HOSTS} far hosts \
             writing at once (each its share, straight into etcd in transactions of 50, as their \
             agents would). Times run from the first write until the agent's maps hold all N \
             (`status` endpoints in maps, polled every 20 ms) and until its DNS answers the last \
             container's name; \"behind the last write\" is the first of these minus the time the \
             writes took. Memory: the agent's VmRSS once all N are in, minus its VmRSS before the \
             first write (2 local containers), divided by N; once more after a restart of the agent \
             at the largest N (it lists the whole store at once). Program cost: kernel BPF statistics \
             (`kernel.bpf_stats_enabled`) of pn_from_container under a TCP ping-pong between two \
             local containers, with N remote endpoints in the map versus only the 2 local ones."
        ),
        rows,
        notes,
    })
}
