//! Container runtimes: the `pn` CNI plugin run by hand (as a runtime runs
//! it), and Debian's podman with its CNI backend, confined to a test
//! directory (its own storage, run and temp dirs, CNI configuration and
//! plugin directories) and run inside a test host's network namespace, so
//! nothing leaks onto the machine. Containers run from a busybox root
//! filesystem; no image registry is involved.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{Host, cni_bin};

/// One run of the plugin: its exit code and what it printed.
#[derive(Debug)]
pub struct PluginRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// The printed JSON (the result, or the error object).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin printed no JSON ({e}): {self:?}"))
    }

    /// The CNI error code of a failed run (checking the error object's shape).
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure: {self:?}");
        let v = self.json();
        assert!(v["msg"].is_string(), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        assert!(!v["msg"].as_str().unwrap().contains('\n'), "{v}");
        v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
    }
}

/// Runs the plugin with `CNI_COMMAND=cmd`, the other `CNI_*` variables
/// from `env`, and `stdin` as its network configuration.
pub fn run_plugin(cmd: &str, env: &[(&str, &str)], stdin: &str) -> PluginRun {
    let mut child = Command::new(cni_bin())
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_PATH", cni_bin().parent().unwrap())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the pn plugin (cargo build -p pn-cni)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The single-plugin configuration a runtime hands the plugin, from a
/// configuration list (`cni-config`'s output): the list's version and name
/// with its one plugin's keys, as libcni does.
pub fn plugin_conf(list: &serde_json::Value) -> String {
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf.to_string()
}

/// Applets linked in the containers' root filesystem.
const APPLETS: &[&str] = &[
    "sh", "ip", "wget", "nc", "httpd", "nslookup", "sleep", "cat", "awk", "tail", "ping", "echo",
    "printf", "true",
];

/// Podman confined to a test directory, run in a test host's namespace.
pub struct Podman {
    pub dir: PathBuf,
    host_ns: String,
    containers_conf: PathBuf,
}

impl Podman {
    /// Podman for containers on `host`, with the `pn` plugin in its plugin
    /// directory.
    pub fn new(host: &Host) -> Podman {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is missing: `cargo xtask bootstrap` installs it"
        );
        let dir = host.dir.join("podman");
        for d in [
            "conf",
            "bin",
            "root",
            "runroot",
            "tmp",
            "rootfs/bin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let rootfs = dir.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox (Debian busybox-static): `cargo xtask bootstrap` installs it");
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        for d in ["etc", "proc", "sys", "dev", "tmp", "run"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), "hello from pn\n").unwrap();
        std::os::unix::fs::symlink(cni_bin(), dir.join("bin/pn")).unwrap();
        let containers_conf = dir.join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\n[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
                dir.join("bin").display(),
                dir.join("conf").display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            host_ns: host.ns.name.clone(),
            containers_conf,
        }
    }

    /// Writes `cni-config`'s list for (app, type) as network `name`.
    pub fn add_network(&self, host: &Host, name: &str, app: &str, ctype: &str) {
        let list = host.cli_ok(&["cni-config", "--app", app, "--type", ctype, "--name", name]);
        std::fs::write(self.dir.join(format!("conf/{name}.conflist")), list).unwrap();
    }

    /// Replaces the plugin by one that does ADD, then is killed before the
    /// runtime can read its answer (every other command runs the real one).
    pub fn crash_plugin_after_add(&self) {
        let path = self.dir.join("bin/pn");
        std::fs::remove_file(&path).unwrap();
        let real = cni_bin();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  {0} > /dev/null\n  kill -9 $$\nfi\nexec {0}\n",
                real.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Puts the real plugin back.
    pub fn restore_plugin(&self) {
        let path = self.dir.join("bin/pn");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(cni_bin(), path).unwrap();
    }

    /// `podman ARGS`, inside the host's network namespace (only that one:
    /// the namespaces podman mounts must be visible to the agent, which
    /// shares the machine's mounts).
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", &self.containers_conf)
            .stdin(Stdio::null())
            .output()
            .expect("running podman")
    }

    /// `podman ARGS` that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The arguments of `podman run` for the busybox root filesystem on
    /// `network` (the descriptor and process limits this kind of machine
    /// needs), followed by `cmd`.
    pub fn run_args<'a>(
        &'a self,
        network: &'a str,
        extra: &[&'a str],
        cmd: &[&'a str],
    ) -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=1000:1000",
            "--network",
            network,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("--rootfs".into());
        v.push(self.dir.join("rootfs").display().to_string());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// Starts a detached container `name` on `network` running `cmd`.
    pub fn start(&self, name: &str, network: &str, cmd: &[&str]) {
        let args = self.run_args(network, &["-d", "--name", name], cmd);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs);
    }

    /// `sh -c script` inside a running container.
    pub fn exec(&self, name: &str, script: &str) -> Output {
        self.cmd(&["exec", name, "/bin/sh", "-c", script])
    }

    /// The network namespace of a running container, as the tests'
    /// namespace helpers take it (a name under /run/netns).
    pub fn netns(&self, name: &str) -> crate::Namespace {
        let key = self.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name]);
        let key = key.trim();
        let ns = Path::new(key)
            .strip_prefix("/run/netns")
            .unwrap_or_else(|_| panic!("sandbox {key} is not under /run/netns"));
        crate::Namespace::borrowed(&ns.to_string_lossy())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their namespaces and mounts go with them), then
        // the storage.
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
