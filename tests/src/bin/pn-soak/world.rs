//! The fleet a soak runs on: three hosts on an etcd cluster (the fleet
//! harness), three networks, two apps whose members never move (the
//! streams run between them), and two churning apps whose containers come,
//! go and move between networks. Every member answers UDP echo (the
//! reachability probe) and TCP echo (the connection churn).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use pn_tests::{
    Host, Namespace,
    fleet::Fleet,
    net::{self, Server},
    scenario::Member,
};

/// UDP echo on every member: what the reachability probes ask.
pub const ECHO_PORT: u16 = 7;
/// TCP echo on every member: what the connection churn opens.
pub const TCP_PORT: u16 = 7100;
/// Where the published ports' routers are (the underlay's own address).
pub const ROUTER: &str = "192.168.100.254/32";
pub const HOSTS: usize = 3;

/// A container of the soak, with its servers (stopped before its
/// namespace goes: fields drop in order).
pub struct Node {
    _udp: Server,
    _tcp: Server,
    pub member: Member,
    pub host: usize,
    pub app: String,
    pub ctype: String,
    pub index: u32,
}

impl Node {
    fn attach(h: &Host, host: usize, app: &str, ctype: &str, name: &str) -> Node {
        let member = h.member(app, ctype, name);
        let index = member.attached["index"].as_u64().expect("an index") as u32;
        Node {
            _udp: net::udp_echo_server(&member, ECHO_PORT),
            _tcp: net::tcp_echo_server(&member, TCP_PORT),
            member,
            host,
            app: app.into(),
            ctype: ctype.into(),
            index,
        }
    }

    /// `APP/TYPE/INDEX`, as the store names it.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.app, self.ctype, self.index)
    }

    pub fn ns(&self) -> &Namespace {
        &self.member.ns
    }
}

pub struct World {
    pub churn: Vec<Node>,
    pub stable: Vec<Node>,
    pub churn_apps: Vec<String>,
    pub nets: Vec<String>,
    pub fleet: Fleet,
    named: u32,
}

impl World {
    pub fn build(prefix: &str, etcd_members: usize) -> World {
        let fleet = Fleet::cluster(prefix, HOSTS, etcd_members, &["--router-cidr", ROUTER]);
        // Hosts route everything else to the underlay, as real ones do:
        // that is where a member's packet would leak in clear text.
        for h in &fleet.hosts {
            h.ns.ip(&["route", "replace", "default", "via", "192.168.100.254"]);
        }
        let h0 = &fleet.hosts[0];
        let nets: Vec<String> = (0..3).map(|_| h0.create_network(&[])).collect();
        let mut stable = Vec::new();
        // Two networks of four: two members on h1 (web and worker), one on
        // each other host.
        for (k, net) in nets.iter().take(2).enumerate() {
            let app = h0.create_app(net);
            let spots = [(0, "web"), (0, "worker"), (1, "worker"), (2, "worker")];
            for (i, (host, ctype)) in spots.into_iter().enumerate() {
                let name = format!("s{k}{i}");
                stable.push(Node::attach(&fleet.hosts[host], host, &app, ctype, &name));
            }
        }
        let churn_apps = (0..2).map(|i| h0.create_app(&nets[2 - i])).collect();
        let mut w = World {
            churn: Vec::new(),
            stable,
            churn_apps,
            nets,
            fleet,
            named: 0,
        };
        for (i, host) in [(0usize, 1usize), (1, 2)] {
            w.attach(i, host);
        }
        w.fleet.wait_for_peers(Duration::from_secs(30));
        w
    }

    /// A new container of churning app `app` on host `host`.
    pub fn attach(&mut self, app: usize, host: usize) -> &Node {
        self.named += 1;
        let name = format!("c{}", self.named);
        let node = Node::attach(
            &self.fleet.hosts[host],
            host,
            &self.churn_apps[app].clone(),
            if self.named.is_multiple_of(2) {
                "web"
            } else {
                "worker"
            },
            &name,
        );
        self.churn.push(node);
        self.churn.last().expect("just pushed")
    }

    /// Detaches churning container `i` through its host and removes it.
    pub fn detach(&mut self, i: usize) {
        let node = self.churn.remove(i);
        let index = node.index.to_string();
        self.fleet.hosts[node.host].cli_ok(&[
            "container",
            "detach",
            "--app",
            &node.app,
            "--type",
            &node.ctype,
            "--index",
            &index,
        ]);
    }

    /// Every container the soak attached, by store key.
    pub fn nodes(&self) -> BTreeMap<String, &Node> {
        self.stable
            .iter()
            .chain(&self.churn)
            .map(|n| (n.key(), n))
            .collect()
    }

    /// The stable network `k`'s members (h1 web, h1 worker, h2, h3).
    pub fn stable_of(&self, k: usize) -> &[Node] {
        &self.stable[k * 4..k * 4 + 4]
    }

    /// `stable_of(k)`'s TCP echo servers but the first (the churn's client).
    pub fn tcp_peers(&self, k: usize) -> Vec<SocketAddr> {
        self.stable_of(k)[1..]
            .iter()
            .map(|n| SocketAddr::from((n.member.addr, TCP_PORT)))
            .collect()
    }

    /// Detaches every container (churning ones first), as an operator
    /// emptying the fleet would.
    pub fn detach_all(&mut self) {
        while !self.churn.is_empty() {
            self.detach(0);
        }
        for n in std::mem::take(&mut self.stable) {
            let index = n.index.to_string();
            self.fleet.hosts[n.host].cli_ok(&[
                "container",
                "detach",
                "--app",
                &n.app,
                "--type",
                &n.ctype,
                "--index",
                &index,
            ]);
        }
    }
}
