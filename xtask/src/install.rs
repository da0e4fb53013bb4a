//! `cargo xtask install` and `uninstall`: the agent where the system looks
//! for programs, the CNI plugin where runtimes look for plugins, a systemd
//! unit and a default config file; and, to uninstall, all of that plus what
//! the running agent leaves in the kernel (its pins, the gateway interface
//! and its routes, the tunnel device, container interfaces, its nftables
//! table). With a destination directory (`--destdir`), only the files are
//! placed or removed under it (for packaging and tests).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use pn_api::DEFAULT_API_SOCKET;

/// Where each file goes, relative to the root.
pub const AGENT: &str = "usr/local/bin/pn-agent";
pub const PLUGIN: &str = "opt/cni/bin/pn";
pub const UNIT: &str = "etc/systemd/system/pn-agent.service";
pub const CONFIG: &str = "etc/pn-agent/config.toml";

const UNIT_TEXT: &str = include_str!("../../dist/pn-agent.service");
const CONFIG_TEXT: &str = include_str!("../../dist/config.toml");

/// The agent's defaults, for what the config file does not change.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/pn-agent";
const DEFAULT_STATE_DIR: &str = "/var/lib/pn-agent";

/// Copies an executable into place: a new file renamed over the old one,
/// so a running agent keeps its binary and a runtime never runs half a
/// plugin.
fn place_executable(from: &Path, to: &Path) -> anyhow::Result<()> {
    let dir = to.parent().context("a file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = to.with_extension("pn-new");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))
}

fn write_file(to: &Path, text: &str) -> anyhow::Result<()> {
    let dir = to.parent().context("a file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Puts the binaries, the unit and (if there is none) the config file
/// under `root`; an operator's config is never overwritten.
pub fn place(root: &Path, agent: &Path, plugin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    place_executable(agent, &root.join(AGENT))?;
    place_executable(plugin, &root.join(PLUGIN))?;
    write_file(&root.join(UNIT), UNIT_TEXT)?;
    let mut placed = vec![root.join(AGENT), root.join(PLUGIN), root.join(UNIT)];
    let config = root.join(CONFIG);
    if !config.exists() {
        write_file(&config, CONFIG_TEXT)?;
        placed.push(config);
    }
    Ok(placed)
}

/// Removes what [`place`] put under `root`; the files removed.
pub fn remove_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for f in [AGENT, PLUGIN, UNIT, CONFIG] {
        let path = root.join(f);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    // Only if nothing else is in it.
    let _ = std::fs::remove_dir(root.join("etc/pn-agent"));
    Ok(removed)
}

/// The agent's paths as its config file sets them (defaults otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct AgentPaths {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
}

pub fn agent_paths(config: &str) -> anyhow::Result<AgentPaths> {
    let t: toml::Table = config.parse().context("reading the config file")?;
    let path = |key: &str, default: &str| -> PathBuf {
        t.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .into()
    };
    Ok(AgentPaths {
        bpffs: path("bpffs", DEFAULT_BPFFS),
        state_dir: path("state-dir", DEFAULT_STATE_DIR),
        api_socket: path("api-socket", DEFAULT_API_SOCKET),
    })
}

/// Interfaces the agent makes: its gateway pair, its tunnel, the host ends
/// of container veths.
pub fn agent_interface(name: &str) -> bool {
    name == "pn-gw" || name == "pn-gw-peer" || name == "pn-tun" || name.starts_with("pnh")
}

fn systemd() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// After the files are in place on this system: systemd knows the unit,
/// and the agent runs.
pub fn activate() {
    if !systemd() {
        eprintln!("xtask: no systemd here: start the agent with `pn-agent run --config /{CONFIG}`");
        return;
    }
    let _ = quiet(Command::new("systemctl").arg("daemon-reload"));
    if quiet(Command::new("systemctl").args(["enable", "--now", "pn-agent"])) {
        eprintln!("xtask: pn-agent enabled and started (systemctl status pn-agent)");
    } else {
        eprintln!(
            "xtask: pn-agent did not start: see `journalctl -u pn-agent`, fix /{CONFIG}, then `systemctl restart pn-agent`"
        );
    }
}

/// Stops the agent and removes what it left in the kernel and in /run
/// (and with `purge`, its state: the store and the host key).
pub fn teardown(paths: &AgentPaths, purge: bool) -> anyhow::Result<()> {
    if systemd() {
        let _ = quiet(Command::new("systemctl").args(["disable", "--now", "pn-agent"]));
    }
    // An agent started by hand would put everything back.
    if std::os::unix::net::UnixStream::connect(&paths.api_socket).is_ok() {
        bail!(
            "an agent still answers on {}: stop it first",
            paths.api_socket.display()
        );
    }
    // Unpinning the links detaches the programs; the maps go with the pins.
    if paths.bpffs.exists() {
        std::fs::remove_dir_all(&paths.bpffs)
            .with_context(|| format!("removing the pins in {}", paths.bpffs.display()))?;
        eprintln!("xtask: removed the pins in {}", paths.bpffs.display());
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .context("running ip")?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        // "12: pnh3c95385eaac@if2: <…>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if agent_interface(name) && quiet(Command::new("ip").args(["link", "del", name])) {
            // Its addresses and routes go with it.
            eprintln!("xtask: removed interface {name}");
        }
    }
    if quiet(Command::new("nft").args(["list", "table", "inet", "pn"]))
        && quiet(Command::new("nft").args(["delete", "table", "inet", "pn"]))
    {
        eprintln!("xtask: removed the nftables table inet pn");
    }
    if let Some(dir) = paths.api_socket.parent() {
        let _ = std::fs::remove_file(&paths.api_socket);
        let _ = std::fs::remove_dir(dir);
    }
    if purge && paths.state_dir.exists() {
        std::fs::remove_dir_all(&paths.state_dir)
            .with_context(|| format!("removing {}", paths.state_dir.display()))?;
        eprintln!("xtask: removed {}", paths.state_dir.display());
    }
    if systemd() {
        let _ = quiet(Command::new("systemctl").arg("daemon-reload"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pn-xtask-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn install_places_everything_and_uninstall_removes_it() {
        let d = tempdir("install");
        let (agent, plugin) = (d.join("pn-agent.built"), d.join("pn.built"));
        std::fs::write(&agent, "agent v1").unwrap();
        std::fs::write(&plugin, "plugin v1").unwrap();
        let root = d.join("root");
        let placed = place(&root, &agent, &plugin).unwrap();
        assert_eq!(placed.len(), 4);
        for (f, mode) in [
            (AGENT, 0o755),
            (PLUGIN, 0o755),
            (UNIT, 0o644),
            (CONFIG, 0o644),
        ] {
            let m = std::fs::metadata(root.join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{f}");
        }
        let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
        assert!(unit.contains(&format!("ExecStart=/{AGENT} run --config /{CONFIG}")));
        // Again, with a newer build and an operator's config: the binaries
        // change, the config does not.
        std::fs::write(root.join(CONFIG), "host-id = \"mine\"\n").unwrap();
        std::fs::write(&agent, "agent v2").unwrap();
        assert_eq!(place(&root, &agent, &plugin).unwrap().len(), 3);
        assert_eq!(
            std::fs::read_to_string(root.join(AGENT)).unwrap(),
            "agent v2"
        );
        assert_eq!(
            std::fs::read_to_string(root.join(CONFIG)).unwrap(),
            "host-id = \"mine\"\n"
        );
        assert_eq!(remove_files(&root).unwrap().len(), 4);
        assert!(!root.join("etc/pn-agent").exists());
        assert!(remove_files(&root).unwrap().is_empty(), "twice is fine");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_agent_paths_come_from_the_config_or_the_defaults() {
        assert_eq!(
            agent_paths(CONFIG_TEXT).unwrap(),
            AgentPaths {
                bpffs: DEFAULT_BPFFS.into(),
                state_dir: DEFAULT_STATE_DIR.into(),
                api_socket: DEFAULT_API_SOCKET.into(),
            }
        );
        let p = agent_paths("bpffs = \"/sys/fs/bpf/other\"\nstate-dir = \"/srv/pn\"\n").unwrap();
        assert_eq!(p.bpffs, PathBuf::from("/sys/fs/bpf/other"));
        assert_eq!(p.state_dir, PathBuf::from("/srv/pn"));
        assert!(agent_paths("bpffs = ").is_err());
    }

    #[test]
    fn only_the_agents_interfaces_are_removed() {
        for ours in ["pn-gw", "pn-gw-peer", "pn-tun", "pnh3c95385eaac"] {
            assert!(agent_interface(ours), "{ours}");
        }
        for theirs in ["eth0", "lo", "pn0", "cni0", "podman0", "pn-gateway"] {
            assert!(!agent_interface(theirs), "{theirs}");
        }
    }
}
