//! Network namespaces: the simulated hosts and containers.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::run::{run, run_in, run_ok};

/// A network namespace (a simulated host or container), deleted on drop
/// unless it is someone else's.
pub struct Namespace {
    pub name: String,
    owned: bool,
}

impl Namespace {
    pub fn new(name: &str) -> Namespace {
        run_ok("ip", &["netns", "add", name]);
        let ns = Namespace {
            name: name.into(),
            owned: true,
        };
        crate::sysctls::set_baseline(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `sysctl -w KEY=VALUE` inside the namespace (never the root's).
    pub fn sysctl(&self, kv: &str) {
        let out = self.exec(&["sysctl", "-qw", kv]);
        assert!(
            out.status.success(),
            "sysctl {kv} in {}: {out:?}",
            self.name
        );
    }

    /// The value of a sysctl inside the namespace.
    pub fn sysctl_value(&self, key: &str) -> String {
        let out = self.exec(&["sysctl", "-n", key]);
        assert!(
            out.status.success(),
            "sysctl {key} in {}: {out:?}",
            self.name
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A namespace under /run/netns that someone else made (a container
    /// runtime) and removes: used, never deleted.
    pub fn borrowed(name: &str) -> Namespace {
        Namespace {
            name: name.into(),
            owned: false,
        }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME …`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.name, f)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}
