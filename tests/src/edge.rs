//! "The outside" of a host for the edge's tests: an underlay bridge with a
//! gateway to "the world", a router and a stranger on it (around one host,
//! or around a [`Fleet`]'s underlay); and the hidden `pn-agent edge-apply`
//! that loads an edge table into a namespace.
//!
//! ```text
//!                lan (bridge 192.168.50.0/24)
//!   host .1 ─────┼───── gw .254 ── world 203.0.113.10
//!                ├───── router .7
//!                └───── stranger .66   (routes the world through the host)
//! ```

use std::{
    io::Write,
    process::{Command, Stdio},
};

use pn_agent::edge::EdgeConfig;

use crate::{
    Host, Namespace, agent_bin,
    fleet::{Fleet, UNDERLAY_NET},
};

pub const HOST: &str = "192.168.50.1";
pub const ROUTER: &str = "192.168.50.7";
pub const STRANGER: &str = "192.168.50.66";
pub const WORLD: &str = "203.0.113.10";
pub const UNDERLAY: &str = "192.168.50.0/24";

pub struct Outside {
    pub lan: Namespace,
    pub gw: Namespace,
    pub world: Namespace,
    pub router: Namespace,
    pub stranger: Namespace,
}

pub fn sysctl(ns: &Namespace, kv: &str) {
    ns.sysctl(kv);
}

impl Outside {
    /// Plugs `host` into a new underlay (as .1, default route through the
    /// gateway) with the world, a router and a stranger around it.
    pub fn around(prefix: &str, host: &Namespace) -> Outside {
        let ns = |n: &str| Namespace::new(&format!("{prefix}-{n}"));
        let o = Outside {
            lan: ns("lan"),
            gw: ns("gw"),
            world: ns("world"),
            router: ns("rtr"),
            stranger: ns("str"),
        };
        o.lan.ip(&["link", "add", "br0", "type", "bridge"]);
        o.lan.ip(&["link", "set", "br0", "up"]);
        for (i, (member, last)) in [(host, 1), (&o.gw, 254), (&o.router, 7), (&o.stranger, 66)]
            .into_iter()
            .enumerate()
        {
            let port = format!("p{i}");
            o.lan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &member.name,
            ]);
            o.lan.ip(&["link", "set", &port, "master", "br0", "up"]);
            member.ip(&[
                "addr",
                "add",
                &format!("192.168.50.{last}/24"),
                "dev",
                "up0",
            ]);
            member.ip(&["link", "set", "up0", "up"]);
        }
        o.gw.ip(&[
            "link",
            "add",
            "w0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &o.world.name,
        ]);
        o.gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "w0"]);
        o.gw.ip(&["link", "set", "w0", "up"]);
        sysctl(&o.gw, "net.ipv4.ip_forward=1");
        o.world
            .ip(&["addr", "add", &format!("{WORLD}/24"), "dev", "eth0"]);
        o.world.ip(&["link", "set", "eth0", "up"]);
        o.world
            .ip(&["route", "add", "default", "via", "203.0.113.1"]);
        host.ip(&["route", "add", "default", "via", "192.168.50.254"]);
        o.stranger
            .ip(&["route", "add", "203.0.113.0/24", "via", HOST]);
        o
    }
}

/// The world, a router and a stranger around a [`Fleet`]: the underlay's
/// namespace (its bridge at `.254`) is the hosts' gateway to the world.
///
/// ```text
///            underlay (bridge 192.168.100.0/24, .254, etcd)
///   h1 .1 ───┼──── w0 203.0.113.1 ── world 203.0.113.10
///   h2 .2 ───┤
///            ├──── router .7
///            └──── stranger .66   (routes the world through h1)
/// ```
pub struct FleetOutside {
    pub world: Namespace,
    pub router: Namespace,
    pub stranger: Namespace,
}

pub const FLEET_ROUTER: &str = "192.168.100.7";
pub const FLEET_STRANGER: &str = "192.168.100.66";

impl FleetOutside {
    pub fn around(prefix: &str, fleet: &Fleet) -> FleetOutside {
        let ns = |n: &str| Namespace::new(&format!("{prefix}-{n}"));
        let o = FleetOutside {
            world: ns("world"),
            router: ns("rtr"),
            stranger: ns("str"),
        };
        let ul = &fleet.underlay;
        for (i, (member, last)) in [(&o.router, 7), (&o.stranger, 66)].into_iter().enumerate() {
            let port = format!("o{i}");
            ul.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &member.name,
            ]);
            ul.ip(&["link", "set", &port, "master", "br0", "up"]);
            member.ip(&[
                "addr",
                "add",
                &format!("{UNDERLAY_NET}.{last}/24"),
                "dev",
                "up0",
            ]);
            member.ip(&["link", "set", "up0", "up"]);
        }
        ul.ip(&[
            "link",
            "add",
            "w0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &o.world.name,
        ]);
        ul.ip(&["addr", "add", "203.0.113.1/24", "dev", "w0"]);
        ul.ip(&["link", "set", "w0", "up"]);
        sysctl(ul, "net.ipv4.ip_forward=1");
        o.world
            .ip(&["addr", "add", &format!("{WORLD}/24"), "dev", "eth0"]);
        o.world.ip(&["link", "set", "eth0", "up"]);
        o.world
            .ip(&["route", "add", "default", "via", "203.0.113.1"]);
        for h in &fleet.hosts {
            h.ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("{UNDERLAY_NET}.254"),
            ]);
        }
        o.stranger.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &format!("{UNDERLAY_NET}.1"),
        ]);
        o
    }
}

/// Where `attach` says a container is published (`None`: `null`).
pub fn published(attach: &serde_json::Value) -> Option<std::net::SocketAddr> {
    attach["published"]
        .as_str()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("published {s:?}: {e}")))
}

/// `container list` JSON of `host`, by container id (`ap-…/web-1`).
pub fn listed(host: &Host) -> std::collections::BTreeMap<String, serde_json::Value> {
    host.json(&["container", "list"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

/// `pn-agent edge-apply` in `ns`.
pub fn apply(ns: &Namespace, cfg: &EdgeConfig) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(agent_bin())
        .arg("edge-apply")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running pn-agent edge-apply");
    let json = serde_json::to_vec(cfg).unwrap();
    child.stdin.take().unwrap().write_all(&json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "edge-apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pn-agent edge-apply --clear` in `ns`.
pub fn clear(ns: &Namespace) {
    let out = ns.exec(&[agent_bin().to_str().unwrap(), "edge-apply", "--clear"]);
    assert!(out.status.success(), "edge-apply --clear: {out:?}");
}

/// Packets of a named counter in table `inet TABLE` of `ns`.
pub fn nft_counter(ns: &Namespace, table: &str, name: &str) -> u64 {
    let out = ns.exec(&["nft", "-j", "list", "counter", "inet", table, name]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("counter")?.get("packets")?.as_u64())
        .unwrap_or(0)
}
