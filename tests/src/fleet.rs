//! Several hosts joined by an underlay, sharing one etcd: an "underlay"
//! namespace holds a Linux bridge, each host namespace joins it with a veth
//! (`ul0`, 192.168.100.N/24), and etcd listens on the bridge's addresses,
//! in plain text or (`Fleet::tls`) over TLS with client certificates. etcd
//! is a cluster of [`etcd_members`] members (.254, .253, .252), and every
//! agent is given all of them.

use std::{net::Ipv4Addr, process::Output};

use pn_agent::testing::{etcd::ServerTls, etcd_cluster::EtcdCluster};

use crate::{
    Host, Namespace,
    pki::{Pair, Pki},
};

pub const UNDERLAY_NET: &str = "192.168.100";
/// The underlay of [`Fleet::ipv6_underlay`]: `2001:db8:100::N/64` (the
/// documentation range), the underlay namespace's bridge at `::fe`.
pub const UNDERLAY6_NET: &str = "2001:db8:100::";
/// The first etcd member's client address.
pub const ETCD_ADDR: &str = "192.168.100.254:2379";

/// How many members a fleet's etcd has: `PN_TEST_ETCD_MEMBERS`, else
/// [`DEFAULT_ETCD_MEMBERS`].
pub fn etcd_members() -> usize {
    std::env::var("PN_TEST_ETCD_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| (1..=5).contains(&n))
        .unwrap_or(DEFAULT_ETCD_MEMBERS)
}

pub const DEFAULT_ETCD_MEMBERS: usize = 3;

/// The members' addresses on the underlay, the first one [`ETCD_ADDR`]'s.
pub fn etcd_ips(members: usize) -> Vec<Ipv4Addr> {
    (0..members as u8)
        .map(|i| Ipv4Addr::new(192, 168, 100, 254 - i))
        .collect()
}

/// The certificates of a TLS fleet: one CA for etcd and the hosts.
pub struct FleetPki {
    pub ca: Pair,
    /// `h1…hn`'s certificates (CN = host id), index 0 for h1.
    pub hosts: Vec<Pair>,
    /// The administrator's (CN = root, etcd's root user once auth is on).
    pub root: Pair,
    /// The operator's (CN = pn-operator): networks, apps, admissions.
    pub operator: Pair,
    pub pki: Pki,
}

impl FleetPki {
    /// `etcdctl` over TLS as the holder of `pair`, from the underlay.
    pub fn etcdctl(&self, underlay: &Namespace, pair: &Pair, args: &[&str]) -> Output {
        let endpoint = format!("https://{ETCD_ADDR}");
        let mut cmd = vec![
            "etcdctl",
            "--endpoints",
            &endpoint,
            "--cacert",
            self.ca.crt(),
            "--cert",
            pair.crt(),
            "--key",
            pair.key(),
        ];
        cmd.extend_from_slice(args);
        underlay.exec(&cmd)
    }

    /// `pn-agent fleet ARGS` over TLS as the holder of `pair` (`root` or
    /// the operator), from the underlay.
    pub fn fleet(&self, underlay: &Namespace, pair: &Pair, args: &[&str]) -> Output {
        let bin = crate::agent_bin();
        let store = format!("etcds://{ETCD_ADDR}");
        let mut cmd = vec![
            bin.to_str().expect("UTF-8 path"),
            "fleet",
            "--store",
            &store,
            "--etcd-cacert",
            self.ca.crt(),
            "--etcd-cert",
            pair.crt(),
            "--etcd-key",
            pair.key(),
        ];
        cmd.extend_from_slice(args);
        underlay.exec(&cmd)
    }

    /// etcd authentication on, with the operator's role and a role per
    /// host, as README's "etcd: TLS and roles" does it: `pn-agent fleet
    /// setup` as etcd's root (which also admits each host to the apps it
    /// runs, and enforces admissions from then on).
    fn grant_roles(&self, underlay: &Namespace, n: usize) {
        let hosts: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
        let mut args = vec!["setup"];
        for h in &hosts {
            args.extend(["--host", h.as_str()]);
        }
        let out = self.fleet(underlay, &self.root, &args);
        assert!(
            out.status.success(),
            "fleet setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub struct Fleet {
    // Dropped in field order: agents first, then etcd, then the underlay.
    pub hosts: Vec<Host>,
    pub etcd: EtcdCluster,
    pub underlay: Namespace,
    pub pki: Option<FleetPki>,
}

impl Fleet {
    /// `n` hosts `h1…hn`, each running an agent on the shared etcd, with its
    /// underlay interface guarded and advertised for the tunnel.
    pub fn new(prefix: &str, n: usize) -> Fleet {
        Fleet::with_flags(prefix, n, &[])
    }

    pub fn with_flags(prefix: &str, n: usize, extra: &[&str]) -> Fleet {
        Fleet::build(prefix, n, extra, false)
    }

    /// As `with_flags`, on hosts that forwarded IPv4 before their agents
    /// started (as most container hosts do: Docker, podman, Kubernetes).
    pub fn forwarding_before(prefix: &str, n: usize, extra: &[&str]) -> Fleet {
        Fleet::build_with(prefix, n, extra, false, |h| {
            h.ns.sysctl("net.ipv4.ip_forward=1")
        })
    }

    /// As `new`, with etcd serving TLS only and accepting clients whose
    /// certificate its CA signed; each host has its own certificate.
    pub fn tls(prefix: &str, n: usize) -> Fleet {
        Fleet::build(prefix, n, &[], true)
    }

    /// A TLS fleet whose `before_roles` runs (networks, apps, containers
    /// made by the hosts themselves, as an older release's fleet would),
    /// then locked down by `pn-agent fleet setup`: the operator's role and
    /// one per host, authentication on, admissions enforced.
    pub fn tls_with_roles<T>(
        prefix: &str,
        n: usize,
        before_roles: impl FnOnce(&Fleet) -> T,
    ) -> (Fleet, T) {
        let f = Fleet::build(prefix, n, &[], true);
        let made = before_roles(&f);
        let p = f.pki.as_ref().expect("a TLS fleet");
        p.grant_roles(&f.underlay, n);
        (f, made)
    }

    /// As `with_flags`, on an etcd cluster of `members` members whatever
    /// the default.
    pub fn cluster(prefix: &str, n: usize, members: usize, extra: &[&str]) -> Fleet {
        Fleet::build_on(prefix, n, extra, false, members, |_| {})
    }

    /// `pn-agent fleet ARGS` as the operator (admissions, migration).
    pub fn operator(&self, args: &[&str]) -> Output {
        let p = self.pki.as_ref().expect("a TLS fleet");
        p.fleet(&self.underlay, &p.operator, args)
    }

    fn build(prefix: &str, n: usize, extra: &[&str], tls: bool) -> Fleet {
        Fleet::build_with(prefix, n, extra, tls, |_| {})
    }

    /// `before_launch` runs on each host once plumbed, before its agent.
    fn build_with(
        prefix: &str,
        n: usize,
        extra: &[&str],
        tls: bool,
        before_launch: impl Fn(&Host),
    ) -> Fleet {
        Fleet::build_on(prefix, n, extra, tls, etcd_members(), before_launch)
    }

    fn build_on(
        prefix: &str,
        n: usize,
        extra: &[&str],
        tls: bool,
        members: usize,
        before_launch: impl Fn(&Host),
    ) -> Fleet {
        let underlay = Namespace::new(&format!("{prefix}-ul"));
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        // A bridge without an address of its own takes its lowest port's,
        // and changes it as ports come (the edge tests' world, router and
        // stranger): the hosts' ARP entries for etcd and the gateway then
        // point nowhere for seconds.
        underlay.ip(&["link", "set", "br0", "address", "02:00:00:00:64:fe"]);
        let ips = etcd_ips(members);
        for ip in &ips {
            underlay.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"]);
        }
        underlay.ip(&["link", "set", "br0", "up"]);
        let pki = tls.then(|| {
            let pki = Pki::in_dir(
                &std::env::temp_dir().join(format!("pn-test-{}-pki-{prefix}", std::process::id())),
            );
            let ca = pki.ca("pn-etcd-ca");
            let hosts = (1..=n)
                .map(|i| pki.issue(&ca, &format!("h{i}"), &[]))
                .collect();
            let root = pki.issue(&ca, "root", &[]);
            let operator = pki.issue(&ca, "pn-operator", &[]);
            FleetPki {
                ca,
                hosts,
                root,
                operator,
                pki,
            }
        });
        let names: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let etcd_tls = pki.as_ref().map(|p| ServerTls {
            server: p.pki.issue(&p.ca, "etcd", &names),
            client_ca: p.ca.clone(),
        });
        let etcd = EtcdCluster::in_netns(&underlay.name, &ips, etcd_tls);
        let mut fleet = Fleet {
            hosts: Vec::new(),
            etcd,
            underlay,
            pki,
        };
        for i in 1..=n {
            let mut host = fleet.plumb(prefix, i);
            before_launch(&host);
            let flags = fleet.flags(i, extra);
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            host.launch(&refs);
            fleet.hosts.push(host);
        }
        fleet
    }

    /// `n` hosts whose underlay link has IPv6 addresses only: `ul0`
    /// (`2001:db8:100::i/64`) on a bridge of its own (`br6`, ports `p<i>`),
    /// advertised as `[2001:db8:100::i]:51871`. The store is reached over
    /// another link, `st0` (192.168.100.i on `br0`, ports `s<i>`), as a
    /// management network would carry it.
    pub fn ipv6_underlay(prefix: &str, n: usize, extra: &[&str]) -> Fleet {
        Fleet::mixed_underlay(prefix, &vec![true; n], extra)
    }

    /// A fleet that mixes underlay families: host `i` as in
    /// [`Fleet::ipv6_underlay`] where `v6[i - 1]`, else as in
    /// [`Fleet::new`] (`ul0`, 192.168.100.i on `br0`, advertised over IPv4).
    /// An IPv6 host's `st0` shares `br0` with the IPv4 hosts: the two
    /// families could reach each other, only the tunnel keeps them apart.
    pub fn mixed_underlay(prefix: &str, v6: &[bool], extra: &[&str]) -> Fleet {
        let n = v6.len();
        let mut fleet = Fleet::build_on(prefix, 0, &[], false, etcd_members(), |_| {});
        let ul = &fleet.underlay;
        ul.ip(&["link", "add", "br6", "type", "bridge"]);
        ul.ip(&["link", "set", "br6", "address", "02:00:00:00:66:fe"]);
        let bridge6 = format!("{UNDERLAY6_NET}fe/64");
        ul.ip(&["addr", "add", &bridge6, "dev", "br6", "nodad"]);
        ul.ip(&["link", "set", "br6", "up"]);
        for i in 1..=n {
            if !v6[i - 1] {
                let mut host = fleet.plumb(prefix, i);
                let flags = fleet.flags(i, extra);
                let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
                host.launch(&refs);
                fleet.hosts.push(host);
                continue;
            }
            let mut host = Host::create(prefix, &format!("h{i}"));
            for (ifname, port, bridge, addr) in [
                (
                    "st0",
                    format!("s{i}"),
                    "br0",
                    format!("{UNDERLAY_NET}.{i}/24"),
                ),
                (
                    "ul0",
                    format!("p{i}"),
                    "br6",
                    format!("{UNDERLAY6_NET}{i:x}/64"),
                ),
            ] {
                host.ns.ip(&[
                    "link",
                    "add",
                    ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &fleet.underlay.name,
                ]);
                let mut add = vec!["addr", "add", &addr, "dev", ifname];
                if ifname == "ul0" {
                    // Usable at once, not tentative for DAD's second.
                    add.push("nodad");
                }
                host.ns.ip(&add);
                host.ns.ip(&["link", "set", ifname, "up"]);
                fleet
                    .underlay
                    .ip(&["link", "set", &port, "master", bridge, "up"]);
            }
            let mut flags = fleet.flags(i, extra);
            let at = flags
                .iter()
                .position(|f| f == "--advertise")
                .expect("advertised");
            flags[at + 1] = format!("[{UNDERLAY6_NET}{i:x}]:51871");
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            host.launch(&refs);
            fleet.hosts.push(host);
        }
        fleet
    }

    /// Host `h<i>`'s namespace joined to the underlay (`ul0`,
    /// 192.168.100.i), with no agent yet.
    pub fn plumb(&self, prefix: &str, i: usize) -> Host {
        let host = Host::create(prefix, &format!("h{i}"));
        let port = format!("p{i}");
        host.ns.ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.underlay.name,
        ]);
        host.ns.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_NET}.{i}/24"),
            "dev",
            "ul0",
        ]);
        host.ns.ip(&["link", "set", "ul0", "up"]);
        self.underlay
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        host
    }

    /// The tunnel flags of host `i` (advertise, underlay).
    pub fn tunnel_flags(i: usize) -> Vec<String> {
        vec![
            "--advertise".into(),
            format!("{UNDERLAY_NET}.{i}:51871"),
            "--underlay-iface".into(),
            "ul0".into(),
        ]
    }

    /// The `run` flags of host `i`: the store (with its certificate on a TLS
    /// fleet), the tunnel, then `extra`.
    pub fn flags(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let endpoints = self.etcd.endpoint_list();
        let mut flags: Vec<String> = match &self.pki {
            // A test bed: plain text to the fleet's etcd on the underlay.
            None => vec![
                "--store".into(),
                format!("etcd://{endpoints}"),
                "--store-insecure".into(),
            ],
            Some(p) => vec![
                "--store".into(),
                format!("etcds://{endpoints}"),
                "--etcd-cacert".into(),
                p.ca.crt().into(),
                "--etcd-cert".into(),
                p.hosts[i - 1].crt().into(),
                "--etcd-key".into(),
                p.hosts[i - 1].key().into(),
            ],
        };
        flags.extend(Self::tunnel_flags(i));
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// `etcdctl ARGS` against the plain-text etcd, from the underlay (as
    /// anyone who reaches the etcd port could).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let endpoints = self.etcd.endpoint_list();
        let mut cmd = vec!["etcdctl", "--endpoints", &endpoints];
        cmd.extend_from_slice(args);
        self.underlay.exec(&cmd)
    }

    /// Restarts every agent with other extra flags.
    pub fn relaunch(&mut self, extra: &[&str]) {
        let flags: Vec<Vec<String>> = (1..=self.hosts.len())
            .map(|i| self.flags(i, extra))
            .collect();
        for (h, flags) in self.hosts.iter_mut().zip(flags) {
            h.stop();
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            h.launch(&refs);
        }
    }
}
