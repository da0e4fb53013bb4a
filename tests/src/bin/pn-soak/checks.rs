//! The invariants a soak checks after each fault: every attached container
//! reaches its network's other members (and no other network's), every
//! agent lists what the store holds, no address or port is given twice,
//! and no interface or pin outlives its container.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use pn_tests::{Host, fleet::Fleet};
use serde_json::Value;

use crate::{
    traffic::MARKER,
    world::{ECHO_PORT, World},
};

/// A container as the store or an agent describes it (what must agree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub network: String,
    pub ip: Ipv4Addr,
    pub host: String,
    pub host_ifname: String,
    pub published: Option<String>,
}

/// Containers by `APP/TYPE/INDEX`.
pub type Records = BTreeMap<String, Record>;

fn record(v: &Value) -> Option<(String, Record)> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let key = format!("{}/{}/{}", s("app")?, s("type")?, v["index"].as_u64()?);
    Some((
        key,
        Record {
            network: s("network")?,
            ip: s("ip")?.parse().ok()?,
            host: s("host")?,
            // The store's record and the API's answer name it differently.
            host_ifname: s("host_ifname").or_else(|| s("host_interface"))?,
            published: s("published"),
        },
    ))
}

/// The JSON values `etcdctl get --print-value-only` prints, one after the
/// other.
fn values(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .collect()
}

fn etcdctl(fleet: &Fleet, args: &[&str]) -> Result<String, String> {
    let out = fleet.etcdctl(args);
    if !out.status.success() {
        return Err(format!(
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the store holds: containers, apps (id → network), address leases.
pub struct Store {
    pub containers: Records,
    pub apps: BTreeMap<String, String>,
    pub leases: BTreeSet<(String, Ipv4Addr)>,
}

impl Store {
    pub fn read(fleet: &Fleet) -> Result<Store, String> {
        let containers = values(&etcdctl(
            fleet,
            // Container records live under their host (`on/<host>/containers/…`).
            &["get", "--prefix", "--print-value-only", "/pn/on/"],
        )?)
        .iter()
        .filter_map(record)
        .collect();
        let apps = values(&etcdctl(
            fleet,
            &["get", "--prefix", "--print-value-only", "/pn/apps/"],
        )?)
        .iter()
        .filter_map(|a| Some((a["id"].as_str()?.into(), a["network"].as_str()?.into())))
        .collect();
        // Leases are in their hosts' ranges (`on/<host>/ips/…`), or shared
        // (`ips/…`) as an older release wrote them.
        let leases = etcdctl(fleet, &["get", "--prefix", "--keys-only", "/pn/"])?
            .lines()
            .filter_map(|k| {
                let k = k.strip_prefix("/pn/")?;
                let rest = match k.strip_prefix("on/") {
                    Some(r) => r.split_once('/')?.1.strip_prefix("ips/")?,
                    None => k.strip_prefix("ips/")?,
                };
                let (net, ip) = rest.split_once('/')?;
                Some((net.to_string(), ip.parse().ok()?))
            })
            .collect();
        Ok(Store {
            containers,
            apps,
            leases,
        })
    }
}

fn agent_json(h: &Host, args: &[&str]) -> Result<Value, String> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = h.cli(&full);
    if out.code != 0 {
        return Err(format!("{}: {args:?}: {}", h.id, out.stderr.trim()));
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("{}: {args:?}: {e}", h.id))
}

/// Each agent's lists equal the store's, and the store holds exactly the
/// containers the soak attached.
pub fn views(w: &World, store: &Store) -> Result<(), String> {
    let expected: BTreeSet<String> = w.nodes().into_keys().collect();
    let stored: BTreeSet<String> = store.containers.keys().cloned().collect();
    if expected != stored {
        return Err(format!(
            "the store's containers differ from the attached ones: missing {:?}, extra {:?}",
            expected.difference(&stored).collect::<Vec<_>>(),
            stored.difference(&expected).collect::<Vec<_>>()
        ));
    }
    for h in &w.fleet.hosts {
        let listed: Records = agent_json(h, &["container", "list"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(record)
            .collect();
        if listed != store.containers {
            let differ: Vec<&String> = listed
                .keys()
                .chain(store.containers.keys())
                .filter(|k| listed.get(*k) != store.containers.get(*k))
                .collect();
            return Err(format!(
                "{}'s containers differ from the store's: {differ:?}",
                h.id
            ));
        }
        let apps: BTreeMap<String, String> = agent_json(h, &["app", "list"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["id"].as_str()?.into(), a["network"].as_str()?.into())))
            .collect();
        if apps != store.apps {
            return Err(format!(
                "{}'s apps differ from the store's: {apps:?} vs {:?}",
                h.id, store.apps
            ));
        }
    }
    Ok(())
}

/// No address or published port held twice, and the address leases are
/// exactly the containers' addresses.
pub fn unique(store: &Store) -> Vec<String> {
    let mut bad = Vec::new();
    let mut ips = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for (k, c) in &store.containers {
        if let Some(other) = ips.insert(c.ip, k) {
            bad.push(format!("address {} given to {other} and {k}", c.ip));
        }
        if let Some(p) = &c.published
            && let Some(other) = ports.insert(p.clone(), k)
        {
            bad.push(format!("published port {p} given to {other} and {k}"));
        }
    }
    let held: BTreeSet<(String, Ipv4Addr)> = store
        .containers
        .values()
        .map(|c| (c.network.clone(), c.ip))
        .collect();
    if held != store.leases {
        bad.push(format!(
            "address leases differ from the containers' addresses: leaked {:?}, unleased {:?}",
            store.leases.difference(&held).collect::<Vec<_>>(),
            held.difference(&store.leases).collect::<Vec<_>>()
        ));
    }
    bad
}

/// The host-side veths (`pnh…`) in a host's namespace.
pub fn host_links(h: &Host) -> BTreeSet<String> {
    let out = h.ns.ip(&["-j", "link", "show"]);
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n.starts_with(pn_api::key::HOST_IF_PREFIX))
        .collect()
}

/// The interfaces that have pinned links (`links/IFNAME_HOOK`), container
/// veths only.
pub fn link_pins(h: &Host) -> BTreeSet<String> {
    std::fs::read_dir(h.bpffs().join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (ifname, _) = name.rsplit_once('_')?;
            ifname
                .starts_with(pn_api::key::HOST_IF_PREFIX)
                .then(|| ifname.to_string())
        })
        .collect()
}

/// Each host has an interface and pinned links for its containers, and
/// for nothing else.
pub fn leaks(w: &World, store: &Store) -> Vec<String> {
    let mut bad = Vec::new();
    for h in &w.fleet.hosts {
        let own: BTreeSet<String> = store
            .containers
            .values()
            .filter(|c| c.host == h.id)
            .map(|c| c.host_ifname.clone())
            .collect();
        let links = host_links(h);
        if links != own {
            bad.push(format!(
                "{}: interfaces {:?} without a container, containers {:?} without an interface",
                h.id,
                links.difference(&own).collect::<Vec<_>>(),
                own.difference(&links).collect::<Vec<_>>()
            ));
        }
        let pins = link_pins(h);
        if !pins.is_subset(&own) || !own.is_subset(&pins) {
            bad.push(format!(
                "{}: pinned links {:?} without a container, containers {:?} without one",
                h.id,
                pins.difference(&own).collect::<Vec<_>>(),
                own.difference(&pins).collect::<Vec<_>>()
            ));
        }
    }
    bad
}

/// Sends one probe to each of `to` from namespace `ns` and waits up to
/// `timeout` for the echoes: which answered.
fn probe_from(ns: &str, to: Vec<SocketAddr>, timeout: Duration) -> Vec<bool> {
    pn_tests::run_in(ns, move || {
        let mut got = vec![false; to.len()];
        let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
            return got;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        for (i, d) in to.iter().enumerate() {
            let _ = s.send_to(&[&(i as u32).to_be_bytes()[..], MARKER].concat(), d);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline && got.iter().any(|g| !g) {
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && n >= 4
            {
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if to.get(i) == Some(&from) {
                    got[i] = true;
                }
            }
        }
        got
    })
}

/// Pairs (from, to) of namespaces and addresses: `same` network or not.
fn pairs(w: &World, store: &Store, same: bool) -> Vec<(String, String, SocketAddr)> {
    let nodes = w.nodes();
    let mut out = Vec::new();
    for (ka, a) in &store.containers {
        for (kb, b) in &store.containers {
            if ka == kb || (a.network == b.network) != same {
                continue;
            }
            if let (Some(na), Some(_)) = (nodes.get(ka), nodes.get(kb)) {
                out.push((
                    na.ns().name.clone(),
                    kb.clone(),
                    SocketAddr::from((b.ip, ECHO_PORT)),
                ));
            }
        }
    }
    out
}

/// Probes every pair of the same network until each answered once, or
/// `bound` passed: how long it took, or the pairs that never answered.
pub fn reach(w: &World, store: &Store, bound: Duration) -> Result<Duration, Vec<String>> {
    let start = Instant::now();
    let mut left = pairs(w, store, true);
    while !left.is_empty() {
        let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (ns, _, _)) in left.iter().enumerate() {
            by_source.entry(ns.clone()).or_default().push(i);
        }
        let answered: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = by_source
                .iter()
                .map(|(ns, idx)| {
                    let to = idx.iter().map(|&i| left[i].2).collect();
                    (
                        idx,
                        s.spawn(move || probe_from(ns, to, Duration::from_millis(300))),
                    )
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(idx, h)| {
                    let got = h.join().unwrap_or_default();
                    idx.iter()
                        .zip(got)
                        .filter(|(_, g)| *g)
                        .map(|(i, _)| *i)
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        let mut i = 0;
        left.retain(|_| {
            i += 1;
            !answered.contains(&(i - 1))
        });
        if left.is_empty() {
            break;
        }
        if start.elapsed() > bound {
            return Err(left
                .iter()
                .map(|(ns, to, a)| format!("{ns} -> {to} ({a})"))
                .collect());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(start.elapsed())
}

/// Probes pairs of different networks: none may answer.
pub fn isolated(w: &World, store: &Store) -> Vec<String> {
    let all = pairs(w, store, false);
    let mut by_source: BTreeMap<String, Vec<(String, SocketAddr)>> = BTreeMap::new();
    for (ns, to, a) in all {
        by_source.entry(ns).or_default().push((to, a));
    }
    let mut bad = Vec::new();
    for (ns, targets) in by_source {
        let to = targets.iter().map(|(_, a)| *a).collect();
        for ((key, a), got) in targets
            .iter()
            .zip(probe_from(&ns, to, Duration::from_millis(200)))
        {
            if got {
                bad.push(format!("{ns} reached {key} ({a}) in another network"));
            }
        }
    }
    bad
}
