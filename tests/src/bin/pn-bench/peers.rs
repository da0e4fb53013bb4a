//! The tunnels an operator could pick instead of pn's, each between the same
//! two host namespaces over the same underlay: boringtun and wireguard-go
//! (userspace WireGuard, configured with `wg`) and nebula (cipher
//! chachapoly, its firewall open). Each runs as a child process and is
//! stopped when its [`Peer`] drops.

use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pn_tests::Namespace;

/// One tunnel up between host 1 and host 2.
pub struct Peer {
    pub name: &'static str,
    /// Host 2's address inside the tunnel.
    pub far: Ipv4Addr,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
            let _ = std::fs::remove_dir_all(f);
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

fn boringtun_binary() -> Option<PathBuf> {
    let home = std::env::var("HOME").ok()?;
    let p = Path::new(&home).join(".cargo/bin/boringtun-cli");
    p.exists().then_some(p).or_else(|| which("boringtun-cli"))
}

/// Starts `cmd` inside `ns`, output discarded.
fn spawn_in(ns: &Namespace, cmd: &[&str]) -> anyhow::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", cmd[0]))
}

/// Waits until host 1 reaches `far` through the tunnel (the first ping also
/// starts the handshake).
fn wait_reachable(ns: &Namespace, far: Ipv4Addr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let out = ns.exec(&["ping", "-c", "1", "-W", "1", &far.to_string()]);
        if out.status.success() {
            return Ok(());
        }
    }
    bail!("{what}: {far} not reachable through the tunnel")
}

/// WireGuard keys: (private, public), made by `wg`.
fn wg_keys() -> anyhow::Result<(String, String)> {
    let private = run(Command::new("wg").arg("genkey"))?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let public = String::from_utf8_lossy(&child.wait_with_output()?.stdout)
        .trim()
        .to_string();
    Ok((private, public))
}

/// A userspace WireGuard between the hosts on `10.99.<net>.1 ↔ .2`: `cmd`
/// starts the daemon for an interface name (it serves `wg`'s socket).
fn wireguard(
    name: &'static str,
    cmd: impl Fn(&str) -> Vec<String>,
    net: u8,
    hosts: [&Namespace; 2],
    underlay: [Ipv4Addr; 2],
) -> anyhow::Result<Peer> {
    let keys = [wg_keys()?, wg_keys()?];
    let port = 51900 + net as u16;
    let mut peer = Peer {
        name,
        far: Ipv4Addr::new(10, 99, net, 2),
        children: Vec::new(),
        files: Vec::new(),
    };
    for i in 0..2 {
        let ifname = format!("wg{net}x{}{i}", std::process::id() % 10000);
        let argv = cmd(&ifname);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        peer.children.push(spawn_in(hosts[i], &argv)?);
        let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        peer.files.push(sock.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("{name} did not create {}", sock.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = std::env::temp_dir().join(format!("pn-bench-wg-{ifname}"));
        std::fs::write(&key_file, &keys[i].0)?;
        let other = 1 - i;
        let set = run(Command::new("ip")
            .args(["netns", "exec", &hosts[i].name, "wg", "set", &ifname])
            .arg("private-key")
            .arg(&key_file)
            .args([
                "listen-port",
                &port.to_string(),
                "peer",
                &keys[other].1,
                "allowed-ips",
                &format!("10.99.{net}.{}/32", other + 1),
                "endpoint",
                &format!("{}:{port}", underlay[other]),
            ]));
        let _ = std::fs::remove_file(&key_file);
        set?;
        hosts[i].ip(&[
            "addr",
            "add",
            &format!("10.99.{net}.{}/24", i + 1),
            "dev",
            &ifname,
        ]);
        hosts[i].ip(&["link", "set", &ifname, "mtu", "1420", "up"]);
    }
    wait_reachable(hosts[0], peer.far, name)?;
    Ok(peer)
}

/// nebula between the hosts on `10.99.<net>.1 ↔ .2`: a CA of its own, one
/// certificate per host, each host in the other's static host map, no
/// lighthouse, the firewall open both ways, cipher chachapoly, and the same
/// inner MTU as WireGuard's.
fn nebula(net: u8, hosts: [&Namespace; 2], underlay: [Ipv4Addr; 2]) -> anyhow::Result<Peer> {
    let dir = std::env::temp_dir().join(format!("pn-bench-nebula-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut peer = Peer {
        name: "nebula",
        far: Ipv4Addr::new(10, 99, net, 2),
        children: Vec::new(),
        files: vec![dir.clone()],
    };
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run(Command::new("nebula-cert").args([
        "ca",
        "-name",
        "pn-bench",
        "-out-crt",
        &p("ca.crt"),
        "-out-key",
        &p("ca.key"),
    ]))?;
    for (i, host) in hosts.iter().enumerate() {
        let h = format!("h{}", i + 1);
        run(Command::new("nebula-cert").args([
            "sign",
            "-ca-crt",
            &p("ca.crt"),
            "-ca-key",
            &p("ca.key"),
            "-name",
            &h,
            "-ip",
            &format!("10.99.{net}.{}/24", i + 1),
            "-out-crt",
            &p(&format!("{h}.crt")),
            "-out-key",
            &p(&format!("{h}.key")),
        ]))?;
        let other = 1 - i;
        let config = format!(
            "pki:\n  ca: {ca}\n  cert: {crt}\n  key: {key}\n\
             static_host_map:\n  \"10.99.{net}.{o}\": [\"{ul}:4242\"]\n\
             lighthouse:\n  am_lighthouse: false\n  hosts: []\n\
             listen:\n  host: 0.0.0.0\n  port: 4242\n\
             punchy:\n  punch: false\n\
             cipher: chachapoly\n\
             tun:\n  dev: neb{pid}x{i}\n  mtu: 1420\n\
             logging:\n  level: warning\n\
             firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  \
             inbound:\n    - port: any\n      proto: any\n      host: any\n",
            ca = p("ca.crt"),
            crt = p(&format!("{h}.crt")),
            key = p(&format!("{h}.key")),
            o = other + 1,
            ul = underlay[other],
            pid = std::process::id() % 10000,
        );
        let path = p(&format!("{h}.yml"));
        std::fs::write(&path, config)?;
        peer.children
            .push(spawn_in(host, &["nebula", "-config", &path])?);
    }
    wait_reachable(hosts[0], peer.far, "nebula")?;
    Ok(peer)
}

/// Every peer whose program is installed, each up between `hosts`; and a
/// note for each that is missing or did not come up.
pub fn start_all(hosts: [&Namespace; 2], underlay: [Ipv4Addr; 2]) -> (Vec<Peer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut notes = Vec::new();
    let mut add = |r: anyhow::Result<Peer>, what: &str| match r {
        Ok(p) => peers.push(p),
        Err(e) => notes.push(format!("{what}: not in this run ({e:#}).")),
    };
    match boringtun_binary() {
        Some(bin) => {
            let bin = bin.to_string_lossy().into_owned();
            add(
                wireguard(
                    "boringtun",
                    |ifname| {
                        [
                            bin.as_str(),
                            "--foreground",
                            "--disable-drop-privileges",
                            ifname,
                        ]
                        .map(String::from)
                        .to_vec()
                    },
                    0,
                    hosts,
                    underlay,
                ),
                "boringtun",
            )
        }
        None => add(
            Err(anyhow::anyhow!(
                "boringtun-cli is not installed (`cargo install boringtun-cli`)"
            )),
            "boringtun",
        ),
    }
    match which("wireguard-go") {
        Some(_) => add(
            wireguard(
                "wireguard-go",
                |ifname| ["wireguard-go", "-f", ifname].map(String::from).to_vec(),
                1,
                hosts,
                underlay,
            ),
            "wireguard-go",
        ),
        None => add(
            Err(anyhow::anyhow!(
                "wireguard-go is not installed (Debian package wireguard-go)"
            )),
            "wireguard-go",
        ),
    }
    match which("nebula").zip(which("nebula-cert")) {
        Some(_) => add(nebula(2, hosts, underlay), "nebula"),
        None => add(
            Err(anyhow::anyhow!(
                "nebula is not installed (Debian package nebula)"
            )),
            "nebula",
        ),
    }
    (peers, notes)
}
