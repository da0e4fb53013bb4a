//! The executor: does what a planned fault says to the world, and returns
//! once the fault is over (the agent answers again, the cut is mended, the
//! flood has stopped). What the fleet does about it is for the checks.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use pn_tests::{flood, net};

use crate::{
    checks::Store,
    schedule::{Fault, Kind},
    world::{HOSTS, World},
};

/// Tunnel port every host advertises.
const TUNNEL_PORT: u16 = 51871;
/// The address of host `i` on the underlay.
fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, i as u8 + 1)
}

/// Keeps the churning apps' containers between these (a detach with
/// none left, or an attach with this many, does the other instead).
const CHURN_MAX: usize = 6;

/// What the executor did (a detach with nothing to detach is an attach).
pub fn execute(w: &mut World, f: &Fault) -> Result<String, String> {
    let h = f.host;
    match f.kind {
        Kind::AgentTerm => w.fleet.hosts[h].restart(),
        Kind::AgentKill => w.fleet.hosts[h].crash_and_restart(),
        Kind::AgentHandOver => w.fleet.hosts[h].hand_over(None),
        Kind::EtcdKill | Kind::EtcdLeaderKill => {
            let i = match f.kind {
                Kind::EtcdLeaderKill => w.fleet.etcd.leader().unwrap_or(f.member),
                _ => f.member,
            };
            w.fleet.etcd.kill_member(i);
            std::thread::sleep(f.hold);
            w.fleet.etcd.restart_member(i);
            return Ok(format!("{f}: member {} killed", i + 1));
        }
        Kind::HostCut => cut(w, h, f.hold)?,
        Kind::LinkFlap => {
            let ns = &w.fleet.hosts[h].ns;
            ns.ip(&["link", "set", "ul0", "down"]);
            std::thread::sleep(f.hold);
            ns.ip(&["link", "set", "ul0", "up"]);
        }
        Kind::Attach | Kind::Detach => return churn(w, f),
        Kind::AppMove => return move_app(w, f),
        Kind::DnsFlood => return dns_flood(w, f),
        Kind::HandshakeFlood => return handshake_flood(w, f),
    }
    Ok(f.to_string())
}

/// Host `h` loses etcd for `hold`: its packets to etcd's client port are
/// dropped (a table of the soak's own beside the agent's).
fn cut(w: &World, h: usize, hold: Duration) -> Result<(), String> {
    let ns = &w.fleet.hosts[h].ns;
    let nft = |cmd: &str| {
        let out = ns.exec(&["nft", cmd]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft {cmd}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    nft("add table ip pnsoak")?;
    nft("add chain ip pnsoak out { type filter hook output priority 0 ; }")?;
    nft("add rule ip pnsoak out tcp dport 2379 drop")?;
    std::thread::sleep(hold);
    nft("delete table ip pnsoak")
}

fn churn(w: &mut World, f: &Fault) -> Result<String, String> {
    let attach = match f.kind {
        Kind::Detach => w.churn.is_empty(),
        _ => w.churn.len() < CHURN_MAX,
    };
    if attach {
        let app = f.pick as usize % w.churn_apps.len();
        let n = w.attach(app, f.host);
        Ok(format!("attach {} on h{}", n.key(), f.host + 1))
    } else {
        let i = f.pick as usize % w.churn.len();
        let key = w.churn[i].key();
        w.detach(i);
        Ok(format!("detach {key}"))
    }
}

fn move_app(w: &mut World, f: &Fault) -> Result<String, String> {
    let app = w.churn_apps[f.pick as usize % w.churn_apps.len()].clone();
    let store = Store::read(&w.fleet)?;
    let now = store
        .apps
        .get(&app)
        .ok_or("the churning app is not in the store")?;
    let at = w.nets.iter().position(|n| n == now).unwrap_or(0);
    let to = w.nets[(at + 1 + (f.pick as usize / 2) % 2) % w.nets.len()].clone();
    let out = w.fleet.hosts[f.host].cli(&["app", "move", &app, "--network", &to]);
    if out.code != 0 {
        return Err(format!("app move {app} to {to}: {}", out.stderr.trim()));
    }
    Ok(format!("move {app} to {to} through h{}", f.host + 1))
}

/// A stable member sends DNS queries to its gateway as fast as it can
/// (half for names of its zone, half for the world's), without reading
/// the answers.
fn dns_flood(w: &World, f: &Fault) -> Result<String, String> {
    let node = &w.stable[f.pick as usize % w.stable.len()];
    let hold = f.hold;
    let sent = node.ns().run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let dst = SocketAddr::from(([169, 254, 1, 1], 53));
        let (start, mut sent, mut id) = (Instant::now(), 0u64, 0u16);
        while start.elapsed() < hold {
            id = id.wrapping_add(1);
            let name = if id.is_multiple_of(2) {
                format!("{id}.web.private-network.internal")
            } else {
                format!("soak-{id}.example.com")
            };
            if s.send_to(&flood::dns_query(id, &name), dst).is_ok() {
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok::<u64, String>(sent)
    })?;
    Ok(format!("{f}: {sent} queries from {}", node.key()))
}

/// Forged initiations toward host `h`'s tunnel port, spoofed from another
/// host's address on random ports (so the underlay's guard lets them in):
/// half with random bytes, half with a right mac1 (the host's key is
/// public), at 2 000 a second.
fn handshake_flood(w: &World, f: &Fault) -> Result<String, String> {
    use pn_tunnel::{cookie::PeerCookie, keyfile::decode_key, wire};
    let target = &w.fleet.hosts[f.host];
    let key = target
        .json(&["host", "list"])
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["id"] == target.id.as_str())
        .and_then(|x| x["public_key"].as_str().map(str::to_string))
        .ok_or("no public key published")?;
    let key = decode_key(&key).ok_or("the published key does not decode")?;
    let from = underlay_ip((f.host + 1) % HOSTS);
    let mut rng = fastrand::Rng::with_seed(u64::from(f.pick));
    let now = Instant::now();
    let count = (f.hold.as_secs_f64() * 2_000.0) as usize;
    let packets = (0..count)
        .map(|i| {
            let mut m: Vec<u8> = (0..wire::INIT_LEN).map(|_| rng.u8(..)).collect();
            wire::write_init_header(&mut m, rng.u32(..));
            if i % 2 == 1 {
                PeerCookie::new(&key).seal_initiation(&mut m, now);
            }
            let sport = rng.u16(1024..);
            net::udp_packet(from, sport, underlay_ip(f.host), TUNNEL_PORT, &m)
        })
        .collect();
    let sent = flood::flood_raw(&w.fleet.underlay.name, packets, f.hold)
        .join()
        .map_err(|_| "the flood's thread panicked")?;
    Ok(format!("{f}: {sent} initiations"))
}
