//! Several hosts joined by an underlay, sharing one etcd: an "underlay"
//! namespace holds a Linux bridge, each host namespace joins it with a veth
//! (`ul0`, 192.168.100.N/24), and etcd listens on the bridge address.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Host, Namespace};

pub const UNDERLAY_NET: &str = "192.168.100";
pub const ETCD_ADDR: &str = "192.168.100.254:2379";

/// Debian's etcd in the underlay namespace; `stop`/`start` keep its data.
pub struct Etcd {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    fn new(ns: &Namespace) -> Etcd {
        let dir =
            std::env::temp_dir().join(format!("pn-test-{}-etcd-{}", std::process::id(), ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = Etcd {
            ns: ns.name.clone(),
            dir,
            child: None,
        };
        e.start();
        e
    }

    pub fn start(&mut self) {
        let peer = format!("http://{UNDERLAY_NET}.254:2380");
        let client = format!("http://{ETCD_ADDR}");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "etcd",
                "--name",
                "pn",
                "--data-dir",
            ])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("pn={peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = crate::run_in(&self.ns, move || {
            loop {
                if std::net::TcpStream::connect_timeout(
                    &ETCD_ADDR.parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        assert!(up, "etcd did not start");
    }

    /// Kills etcd (as a crash would); the data stays for `start`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Fleet {
    // Dropped in field order: agents first, then etcd, then the underlay.
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub underlay: Namespace,
}

impl Fleet {
    /// `n` hosts `h1…hn`, each running an agent on the shared etcd, with its
    /// underlay interface guarded and advertised for the tunnel.
    pub fn new(prefix: &str, n: usize) -> Fleet {
        Fleet::with_flags(prefix, n, &[])
    }

    pub fn with_flags(prefix: &str, n: usize, extra: &[&str]) -> Fleet {
        let underlay = Namespace::new(&format!("{prefix}-ul"));
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_NET}.254/24"),
            "dev",
            "br0",
        ]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let etcd = Etcd::new(&underlay);
        let mut hosts = Vec::new();
        for i in 1..=n {
            let id = format!("h{i}");
            let mut host = Host::create(prefix, &id);
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
                &underlay.name,
            ]);
            host.ns.ip(&[
                "addr",
                "add",
                &format!("{UNDERLAY_NET}.{i}/24"),
                "dev",
                "ul0",
            ]);
            host.ns.ip(&["link", "set", "ul0", "up"]);
            underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
            let flags = Self::flags(i, extra);
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            host.launch(&refs);
            hosts.push(host);
        }
        Fleet {
            hosts,
            etcd,
            underlay,
        }
    }

    fn flags(i: usize, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = vec![
            "--store".into(),
            format!("etcd://{ETCD_ADDR}"),
            "--advertise".into(),
            format!("{UNDERLAY_NET}.{i}:51871"),
        ];
        flags.extend(["--underlay-iface".into(), "ul0".into()]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// Restarts every agent with other extra flags.
    pub fn relaunch(&mut self, extra: &[&str]) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            h.stop();
            let flags = Self::flags(i + 1, extra);
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            h.launch(&refs);
        }
    }
}
