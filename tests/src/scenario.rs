//! The scenarios tests start from, built one way: a network with an app,
//! containers (a namespace each) attached to it, on one host or across a
//! fleet.

use std::{net::Ipv4Addr, ops::Deref, time::Duration};

use crate::{Host, Namespace, eventually, fleet::Fleet, metric_value};

/// A container: its namespace and what `container attach` answered.
pub struct Member {
    pub ns: Namespace,
    pub addr: Ipv4Addr,
    pub attached: serde_json::Value,
}

impl Member {
    /// Its IPv6 address (from the attach answer); panics without one.
    pub fn addr6(&self) -> std::net::Ipv6Addr {
        self.attached["ip6"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no IPv6 address in {}", self.attached))
    }
}

impl Deref for Member {
    type Target = Namespace;
    fn deref(&self) -> &Namespace {
        &self.ns
    }
}

/// The address in an attach answer.
pub fn ip_of(attached: &serde_json::Value) -> Ipv4Addr {
    attached["ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no address in {attached}"))
}

impl Host {
    /// `network create EXTRA…`: the network id.
    pub fn create_network(&self, extra: &[&str]) -> String {
        let mut args = vec!["network", "create"];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_string()
    }

    pub fn create_app(&self, network: &str) -> String {
        self.create_app_with(network, &[])
    }

    /// `app create --network NETWORK EXTRA…`: the app id.
    pub fn create_app_with(&self, network: &str, extra: &[&str]) -> String {
        let mut args = vec!["app", "create", "--network", network];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_string()
    }

    /// A network (`network create EXTRA…`) and one app in it.
    pub fn network_and_app(&self, extra: &[&str]) -> (String, String) {
        let net = self.create_network(extra);
        let app = self.create_app(&net);
        (net, app)
    }

    /// Attaches `ns` as a container and returns the attach JSON.
    pub fn attach(&self, app: &str, ctype: &str, ns: &Namespace) -> serde_json::Value {
        let out = self.cli_ok(&[
            "container",
            "attach",
            "--app",
            app,
            "--type",
            ctype,
            "--netns",
            &ns.name,
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad attach JSON {e}: {out}"))
    }

    /// A new namespace `PREFIX-NAME` attached as a `ctype` container of `app`.
    pub fn member(&self, app: &str, ctype: &str, name: &str) -> Member {
        let ns = Namespace::new(&format!("{}-{name}", self.prefix));
        let attached = self.attach(app, ctype, &ns);
        Member {
            addr: ip_of(&attached),
            ns,
            attached,
        }
    }

    /// A namespace `PREFIX-NAME` plugged into the host by a plain veth (no
    /// pn): `host_if` in the host (`192.168.SUBNET.1/24`), `eth0` in the
    /// namespace (`.2`), which routes `route` through the host.
    pub fn plug(&self, name: &str, host_if: &str, subnet: u8, route: &str) -> Namespace {
        let n = Namespace::new(&format!("{}-{name}", self.prefix));
        let ip = |last: u8| format!("192.168.{subnet}.{last}");
        self.ns.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &n.name,
        ]);
        self.ns
            .ip(&["addr", "add", &format!("{}/24", ip(1)), "dev", host_if]);
        self.ns.ip(&["link", "set", host_if, "up"]);
        n.ip(&["addr", "add", &format!("{}/24", ip(2)), "dev", "eth0"]);
        n.ip(&["link", "set", "eth0", "up"]);
        n.ip(&["route", "add", route, "via", &ip(1)]);
        n
    }

    /// [`Host::plug`] on the host's L2: a namespace `PREFIX-x` behind `ul0`
    /// (MTU 1500). Before `launch`, so the agent can take `ul0` as its
    /// underlay.
    pub fn neighbour(&self, subnet: u8, route: &str) -> Namespace {
        self.plug("x", "ul0", subnet, route)
    }

    /// Starts the agent guarding the underlay `ul0` (see [`Host::neighbour`])
    /// and advertising its tunnel there (`192.168.SUBNET.1:51871`).
    pub fn launch_on_underlay(&mut self, subnet: u8) {
        let advertise = format!("192.168.{subnet}.1:51871");
        self.launch(&["--underlay-iface", "ul0", "--advertise", &advertise]);
    }

    /// How many containers this agent lists.
    pub fn container_count(&self) -> usize {
        self.json(&["container", "list"])
            .as_array()
            .expect("a list")
            .len()
    }

    /// Remote members in this agent's datapath.
    pub fn remote_endpoints(&self) -> u64 {
        metric_value(&self.metrics(), "pn_endpoints", &[("scope", "remote")])
    }
}

/// One network, one app, two containers: `c1` (`types[0]`) attached on
/// `h1`, then `c2` (`types[1]`) on `h2`, the same host or two of a fleet.
pub struct OneApp {
    pub net: String,
    pub app: String,
    pub c1: Member,
    pub c2: Member,
}

impl OneApp {
    pub fn new(h1: &Host, h2: &Host, types: [&str; 2]) -> OneApp {
        let (net, app) = h1.network_and_app(&[]);
        let c1 = h1.member(&app, types[0], "c1");
        let c2 = h2.member(&app, types[1], "c2");
        OneApp { net, app, c1, c2 }
    }
}

impl Fleet {
    /// Waits until every agent has a remote member in its datapath.
    pub fn wait_for_peers(&self, timeout: Duration) {
        for h in &self.hosts {
            assert!(
                eventually(timeout, || h.remote_endpoints() >= 1),
                "{} has no remote member",
                h.id
            );
        }
    }
}
