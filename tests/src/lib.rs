//! Test harness: simulated hosts and containers as network namespaces, veth
//! pairs between them, the real `pn-agent` binary, real sockets.
//!
//! Everything a test creates carries a unique prefix `pt<pid><n>` and is
//! removed on drop, even when the test fails; leftovers of test processes
//! that died are removed by the next run. Nothing touches the root
//! namespace's network settings: agents run inside host namespaces.

pub mod bulk;
pub mod cni;
pub mod edge;
pub mod fleet;
pub mod flood;
mod namespace;
pub mod net;
pub mod nginx;
pub mod restarts;
mod run;
pub mod scenario;
pub mod service;
pub mod stream;
mod sysctls;

pub use namespace::Namespace;
pub use pn_agent::testing::pki;
pub use run::{run, run_in, run_ok};

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix (interface names have 15 bytes).
pub fn unique_prefix() -> String {
    cleanup_stale_once();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pt{:06x}{:02x}", std::process::id() & 0xff_ffff, n & 0xff)
}

fn cleanup_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = owner_pid(name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            }
        }
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = name
                    .strip_prefix("pn-test-")
                    .and_then(|r| r.split('-').next())
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = nix::mount::umount2(
                        &e.path().join("bpffs"),
                        nix::mount::MntFlags::MNT_DETACH,
                    );
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

fn owner_pid(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("pt")?.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

/// Path of the CNI plugin under test (`pn`).
pub fn cni_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PN_CNI_BIN") {
        return p.into();
    }
    agent_bin().with_file_name("pn")
}

/// Path of the agent binary under test.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PN_AGENT_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    root.join("target/debug/pn-agent")
}

/// Result of one CLI invocation.
#[derive(Debug)]
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Cli {
    fn from(out: Output) -> Cli {
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Cli {
    /// The error contract for a refused command: the exit code of its kind
    /// and one line on stderr.
    pub fn assert_error(&self, kind: pn_agent::error::ErrorKind, contains: &str) {
        self.assert_one_line_error(contains);
        assert_eq!(
            self.code,
            kind.exit_code(),
            "expected a {kind} error (exit {}), got {self:?}",
            kind.exit_code()
        );
    }

    /// The error contract: a non-zero exit and exactly one line on stderr.
    pub fn assert_one_line_error(&self, contains: &str) {
        assert_ne!(self.code, 0, "expected a failure, got {self:?}");
        let lines: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got {:?}",
            self.stderr
        );
        assert!(
            self.stderr.contains(contains),
            "stderr {:?} does not mention {contains:?}",
            self.stderr
        );
    }
}

/// A simulated host: a namespace with a running agent.
pub struct Host {
    pub ns: Namespace,
    pub id: String,
    /// The test's prefix, which the namespaces of its containers carry.
    pub prefix: String,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// The agent binary, when not [`agent_bin`] (an upgrade).
    bin: Option<PathBuf>,
    /// A stand-in for systemd (notify socket, fd store), when asked for.
    pub manager: Option<service::ServiceManager>,
    /// The agent pins under its default `--bpffs`, in the private /sys that
    /// `ip netns exec` gives it (see [`Host::pins_die_with_agent`]).
    private_bpffs: bool,
}

impl Host {
    pub fn start(prefix: &str, id: &str) -> Host {
        Host::start_with(prefix, id, &[])
    }

    pub fn start_with(prefix: &str, id: &str, extra: &[&str]) -> Host {
        let mut host = Host::create(prefix, id);
        host.launch(extra);
        host
    }

    /// The host's namespace and directories, with no agent yet (to plumb
    /// interfaces the agent needs at start, such as its underlay).
    pub fn create(prefix: &str, id: &str) -> Host {
        let ns = Namespace::new(&format!("{prefix}-{id}"));
        let dir =
            std::env::temp_dir().join(format!("pn-test-{}-{}-{id}", std::process::id(), prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bpffs")).unwrap();
        // A bpffs of the test's own, outside /sys: `ip netns exec` gives the
        // agent a private /sys, and pins there would die with each agent.
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.join("bpffs"))
            .status();
        Host {
            ns,
            id: id.into(),
            prefix: prefix.into(),
            dir,
            child: None,
            extra: Vec::new(),
            bin: None,
            manager: None,
            private_bpffs: false,
        }
    }

    /// From now on, the agent runs as a systemd service would: with a
    /// notify socket and a file descriptor store kept across its restarts.
    pub fn with_service_manager(&mut self) {
        self.manager = Some(service::ServiceManager::new(&self.dir.join("notify.sock")));
    }

    /// From now on the agent runs as an operator starts it by hand with
    /// `ip netns exec` and the default `--bpffs`: its pins live in the
    /// private /sys of that command and die with each agent (its programs
    /// come off its interfaces; the next agent starts from empty maps).
    /// The pins in the test's own bpffs are removed first (its mount lives
    /// on in the mount namespaces of other `ip netns exec` commands), so
    /// nothing of the earlier agent remains.
    pub fn pins_die_with_agent(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.bpffs()).expect("removing the agent's pins");
        self.private_bpffs = true;
        self.spawn();
    }

    /// Starts the agent with extra `run` flags (kept for restarts).
    pub fn launch(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs/pn")
    }

    /// A map the agent pinned (`BPFFS/maps-<layout>/NAME`).
    pub fn pinned_map(&self, name: &str) -> PathBuf {
        std::fs::read_dir(self.bpffs())
            .expect("the agent's bpffs")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .is_some_and(|n| n.starts_with("maps-") && !n.ends_with("-new"))
            })
            .expect("a pin directory")
            .join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn spawn(&mut self) {
        self.spawn_child();
        self.wait_ready();
    }

    fn spawn_child(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(self.bin.clone().unwrap_or_else(agent_bin))
            .arg("--api-socket")
            .arg(self.api_socket())
            .args(["run", "--host-id", &self.id])
            .arg("--state-dir")
            .arg(self.dir.join("state"));
        if !self.private_bpffs {
            cmd.arg("--bpffs").arg(self.bpffs());
        }
        cmd.args(&self.extra).env("RUST_LOG", "info");
        if let Some(m) = &self.manager {
            cmd = m.command(&cmd);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("starting pn-agent"));
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["status"]);
            if out.code == 0 {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("agent exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the agent with `flags` (no other flags kept) until it exits by
    /// itself, for agents that must refuse to start; one that is still up
    /// after `timeout` is stopped and reported with code -1. Logs below
    /// errors are off, so stderr holds what an operator is told.
    pub fn run_to_exit(&self, flags: &[&str], timeout: Duration) -> Cli {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(agent_bin())
            .arg("--api-socket")
            .arg(self.api_socket())
            .args(["run", "--host-id", &self.id])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(self.bpffs())
            .args(flags)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pn-agent");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("agent output").into();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let mut out: Cli = child.wait_with_output().expect("agent output").into();
        out.code = -1;
        out
    }

    /// Stops the agent with SIGTERM (as systemd would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the agent: the child pid is the agent.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the agent with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A crash and a restart.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a successor (with `bin`, or the same binary) while the agent
    /// runs, as an upgrade does: it takes over, and the predecessor exits.
    /// Returns once the predecessor is gone and the successor answers.
    pub fn hand_over(&mut self, bin: Option<&Path>) {
        let mut old = self.child.take();
        if let Some(b) = bin {
            self.bin = Some(b.to_path_buf());
        }
        self.spawn_child();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(child) = old.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if let Some(new) = self.child.as_mut()
                && let Ok(Some(status)) = new.try_wait()
            {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the successor exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the predecessor did not hand over:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_ready();
    }

    /// Starts the agent again after `stop` or `kill`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `pn-agent --api-socket … ARGS`.
    pub fn cli(&self, args: &[&str]) -> Cli {
        let out = Command::new(agent_bin())
            .arg("--api-socket")
            .arg(self.api_socket())
            .args(args)
            .output()
            .expect("running pn-agent");
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A CLI command that must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code,
            0,
            "pn-agent {args:?} failed: {}\nagent log:\n{}",
            out.stderr,
            self.log()
        );
        out.stdout
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.cli_ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {out}"))
    }

    /// The agent's /metrics body (fetched from inside its namespace).
    pub fn metrics(&self) -> String {
        self.ns
            .run(|| net::http_get("127.0.0.1:9464", "/metrics").expect("metrics endpoint"))
    }

    /// Packets counted for a container (`type-index` of `app`) and reason.
    pub fn packets(&self, app: &str, container: &str, reason: &str) -> u64 {
        metric_value(
            &self.metrics(),
            "pn_packets_total",
            &[("app", app), ("container", container), ("reason", reason)],
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.id, self.log());
        }
        let _ = nix::mount::umount2(&self.dir.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_value(body: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
