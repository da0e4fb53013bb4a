//! `pn-agent run` settings: flags, optionally a TOML file (`--config`), then
//! defaults. A flag beats the file; the file beats the default.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use pn_common::ids::HostId;
use serde::Deserialize;

use pn_api::DEFAULT_API_SOCKET;

mod edge;
mod fleet_store;
mod tunnel;

pub use self::edge::{ForwardGuard, PortRange};
use self::{
    edge::{EdgeFlags, edge_ranges},
    fleet_store::{needs_tunnel, plain_text_allowed},
    tunnel::{advertise_endpoint, device_options, tunnel_config},
};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/pn-agent";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/pn-agent";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
pub const DEFAULT_DNS_TTL: u32 = 5;
pub const DEFAULT_DNS_QUERY_RATE: u32 = 1000;
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DROP_EVENTS_PER_SEC: u32 = 200;
/// `--conn-share`: an eighth of `PN_CONNS` (131 072): one container cannot
/// take more than that from the others, and a container opening 100
/// connections a second (each closed, held 2 min after) stays under it.
pub const DEFAULT_CONN_SHARE: u32 = 16_384;

/// The settings a flag or the file can give; `None` means "not given here".
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunSettings {
    /// This host's id in the fleet ([a-z0-9-]{1,63}; default: the hostname).
    #[arg(long)]
    pub host_id: Option<String>,
    /// Embedded store and host key [default: /var/lib/pn-agent].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// `embedded`; for a fleet `etcds://HOST:PORT[,HOST:PORT…]` (TLS with a client
    /// certificate), or `etcd://…` (plain text, development only) [default: embedded].
    #[arg(long)]
    pub store: Option<String>,
    /// Allow `--store etcd://…` (plain text) to a store off this host: test beds only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub store_insecure: Option<bool>,
    /// CA certificate (PEM) that signed etcd's server certificate (etcds://).
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// This host's client certificate (PEM) for etcd (etcds://).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert (etcds://).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// Pin directory on a bpffs (mounted if needed) [default: /sys/fs/bpf/pn-agent].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Interface toward the other hosts (tunnel and XDP guard).
    #[arg(long)]
    pub underlay_iface: Option<String>,
    /// Encrypted tunnel endpoint published to peers, IPv4:PORT or
    /// [IPv6]:PORT (the tunnel pairs with the hosts that advertise the same
    /// family).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// DNS server address; containers reach it through their gateway [default: 169.254.1.1:53].
    #[arg(long)]
    pub dns_listen: Option<SocketAddrV4>,
    /// Prometheus endpoint [default: 127.0.0.1:9464].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// TTL of DNS answers, seconds [default: 5].
    #[arg(long)]
    pub dns_ttl: Option<u32>,
    /// Resolvers for names outside the private zone, IP:PORT[,…] [default: the host's resolv.conf].
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Option<Vec<SocketAddr>>,
    /// DNS queries per second one container may send, sustained (twice that in a burst) [default: 1000].
    #[arg(long)]
    pub dns_query_rate: Option<u32>,
    /// Fleet-wide address pool networks are carved from [default: 10.240.0.0/12].
    #[arg(long)]
    pub pool: Option<Ipv4Net>,
    /// The fleet's IPv6 pool (unique local, fc00::/7), taken when this agent is
    /// the first to give the fleet one [default: a random /48 of fd00::/8, RFC 4193].
    #[arg(long)]
    pub pool6: Option<Ipv6Net>,
    /// IPv6 for this host's containers: `on` (an address each, AAAA answers) or
    /// `off` (IPv4 only) [default: on].
    #[arg(long)]
    pub ipv6: Option<Switch>,
    /// Prefix length of a network's range when none is given [default: 22].
    #[arg(long)]
    pub network_prefix: Option<u8>,
    /// MTU of container interfaces [default: underlay MTU − tunnel overhead, or 1500 without underlay].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Drop events per second and CPU sent to `flows`, and as many new-flow events (the rest is only counted) [default: 200].
    #[arg(long)]
    pub drop_events_per_sec: Option<u32>,
    /// Connections with the world (and published ones) each container may hold, and balanced connections apart; a new one over it is dropped as conn_quota, so one container cannot crowd out the others' (0: no share) [default: 16384].
    #[arg(long)]
    pub conn_share: Option<u32>,
    /// What the datapath tracks between members: off, conns (connections) or http (connections and HTTP/1.x requests) [default: http].
    #[arg(long)]
    pub track: Option<String>,
    /// The tunnel AEAD this host prefers: chacha20poly1305 or aes256gcm (a
    /// session uses AES-256-GCM only when both hosts prefer it and have AES
    /// instructions; rustcrypto: ChaCha20-Poly1305 in portable Rust, to
    /// compare) [default: chacha20poly1305].
    #[arg(long)]
    pub tunnel_cipher: Option<String>,
    /// Rekey a tunnel session after this many seconds [default: 120].
    #[arg(long)]
    pub tunnel_rekey_after_secs: Option<u64>,
    /// Rekey a tunnel session after this many packets [default: 2^60].
    #[arg(long)]
    pub tunnel_rekey_after_messages: Option<u64>,
    /// Tunnel workers, each a TUN queue, a UDP socket and a thread each way
    /// (1 to 64) [default: one per CPU the agent may run on].
    #[arg(long)]
    pub tunnel_workers: Option<usize>,
    /// The tunnel offloads to use, comma-separated: tso (TCP super-packets
    /// from the TUN device), gso (UDP segmentation), gro (UDP coalescing),
    /// coalesce (super-packets to the TUN device), or none [default: all].
    #[arg(long)]
    pub tunnel_offloads: Option<String>,
    /// Microseconds a tunnel loop that just had traffic polls before it sleeps
    /// (a wake-up saved per round trip, for CPU; never when idle), 0 to 1000 [default: 0].
    #[arg(long)]
    pub tunnel_spin_us: Option<u64>,
    /// Keep each tunnel worker on its own CPU, its socket receiving what
    /// that CPU received [default: true].
    #[arg(long)]
    pub tunnel_pin: Option<bool>,
    /// With pinning, keep each worker's receiving thread on its CPU too
    /// (false: the scheduler places it; its socket still gets what that
    /// CPU received) [default: true].
    #[arg(long)]
    pub tunnel_pin_rx: Option<bool>,
    /// Keep the tunnel's UDP datagrams with the other hosts out of
    /// connection tracking (nftables `notrack` at raw priority): less work
    /// per datagram, but an input policy that accepts `ct state
    /// established,related` only must then accept the tunnel's port by name
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub tunnel_notrack: Option<bool>,
    /// Let the IPv4 TC programs memoise their interface and endpoint
    /// lookups per CPU (`PN_MEMO`): anything writing `PN_IFACES` or
    /// `PN_ENDPOINTS` behind the agent's back must then bump
    /// `PN_MEMO_GEN`, and it is safe on x86 only (strongly ordered)
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub tc_memo: Option<bool>,
    /// Key prefix in etcd [default: /pn/].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// Destinations containers never reach as the world, CIDR[,…] (IPv4 or
    /// IPv6), on top of the built-in list (host, loopback, link-local,
    /// multicast, underlay, store).
    #[arg(long, value_delimiter = ',')]
    pub egress_deny: Option<Vec<IpNet>>,
    /// Sources that may use published ports (the platform's front routers),
    /// CIDR[,…]; with none, nothing is published.
    #[arg(long, value_delimiter = ',')]
    pub router_cidr: Option<Vec<Ipv4Net>>,
    /// IPv6 sources that may use published ports on the host's IPv6
    /// addresses, CIDR[,…]; with none, those ports answer routers over
    /// IPv4 only.
    #[arg(long, value_delimiter = ',')]
    pub router_cidr6: Option<Vec<Ipv6Net>>,
    /// Host ports published for `web` containers, LO-HI [default: 30000-32767].
    #[arg(long)]
    pub publish_ports: Option<PortRange>,
    /// Drop forwarded traffic that is not pn's: `auto` (only if pn is the one
    /// that turned IPv4 forwarding on), `on` (even if the host forwarded
    /// before: it routes nothing but pn's), `off` (never) [default: auto].
    #[arg(long)]
    pub forward_guard: Option<ForwardGuard>,
    /// The API socket (also the global `--api-socket`).
    #[arg(skip)]
    pub api_socket: Option<PathBuf>,
    /// Containers one host may run: every agent refuses a host's records beyond it [default: 4096].
    #[arg(long)]
    pub host_quota: Option<usize>,
}

/// The certificate files of an `etcds://` store (read and checked by
/// `store::etcd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that signed etcd's server certificate.
    pub cacert: PathBuf,
    /// This host's client certificate (its CN is the etcd user when etcd
    /// authentication is on).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded,
    /// `etcd://`: plain text, anyone reaching the port reads and writes the
    /// membership. For development and tests.
    Etcd(Vec<String>),
    /// `etcds://`: TLS, the server checked against a CA and this host
    /// authenticated by its certificate.
    EtcdTls(Vec<String>, TlsFiles),
}

impl StoreSpec {
    /// `--store` with the certificate flags; they belong together: TLS
    /// without all three files, or files given to a store that would not
    /// use them (a silent downgrade to plain text), is refused.
    pub fn parse(
        s: &str,
        cacert: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> anyhow::Result<StoreSpec> {
        let given: Vec<&str> = [
            (cacert.is_some(), "--etcd-cacert"),
            (cert.is_some(), "--etcd-cert"),
            (key.is_some(), "--etcd-key"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, flag)| *flag)
        .collect();
        let (tls, rest) = if let Some(rest) = s.strip_prefix("etcds://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("etcd://") {
            (false, rest)
        } else if s == "embedded" {
            if !given.is_empty() {
                bail!(
                    "{} given but --store is embedded: certificates are for --store etcds://…",
                    given.join(", ")
                );
            }
            return Ok(StoreSpec::Embedded);
        } else {
            bail!(
                "invalid --store {s:?}: expected `embedded`, etcds://HOST:PORT[,HOST:PORT…] (TLS) \
                 or etcd://HOST:PORT[,…] (plain text)"
            );
        };
        let endpoints: Vec<String> = rest.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("invalid etcd endpoint {e:?} in --store: expected HOST:PORT");
            }
        }
        if !tls {
            if !given.is_empty() {
                bail!(
                    "{} given but --store etcd://… is plain text: use etcds://… for TLS",
                    given.join(", ")
                );
            }
            return Ok(StoreSpec::Etcd(endpoints));
        }
        match (cacert, cert, key) {
            (Some(cacert), Some(cert), Some(key)) => Ok(StoreSpec::EtcdTls(
                endpoints,
                TlsFiles { cacert, cert, key },
            )),
            (cacert, cert, key) => {
                let missing: Vec<&str> = [
                    (cacert.is_none(), "--etcd-cacert"),
                    (cert.is_none(), "--etcd-cert"),
                    (key.is_none(), "--etcd-key"),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, flag)| *flag)
                .collect();
                bail!(
                    "--store etcds://… needs --etcd-cacert, --etcd-cert and --etcd-key (missing {})",
                    missing.join(", ")
                )
            }
        }
    }

    /// The etcd endpoints of a fleet store.
    pub fn endpoints(&self) -> Option<&[String]> {
        match self {
            StoreSpec::Embedded => None,
            StoreSpec::Etcd(e) | StoreSpec::EtcdTls(e, _) => Some(e),
        }
    }
}

/// Fully resolved settings of a running agent.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub host_id: HostId,
    pub state_dir: PathBuf,
    pub store: StoreSpec,
    pub bpffs: PathBuf,
    pub underlay_iface: Option<String>,
    pub advertise: Option<SocketAddr>,
    pub dns_listen: SocketAddrV4,
    pub metrics_listen: SocketAddr,
    pub dns_ttl: u32,
    /// `None`: read the host's /etc/resolv.conf at start.
    pub dns_upstream: Option<Vec<SocketAddr>>,
    pub dns_query_rate: u32,
    pub pool: Ipv4Net,
    pub network_prefix: u8,
    /// `--ipv6` and `--pool6`.
    pub ipv6: crate::ipam::Ipv6Mode,
    /// Explicit container MTU; `None`: derived from the underlay.
    pub mtu: Option<u32>,
    pub drop_events_per_sec: u32,
    /// `--conn-share` (`pn_common::maps::Config::conn_share`).
    pub conn_share: u32,
    /// `pn_common::conn::TRACK_*` bits.
    pub track: u32,
    pub etcd_prefix: String,
    pub api_socket: PathBuf,
    pub host_quota: usize,
    pub tunnel: pn_tunnel::Config,
    /// `--tunnel-workers`, `--tunnel-offloads`, `--tunnel-spin-us`,
    /// `--tunnel-pin`, `--tunnel-pin-rx`, `--tunnel-notrack` (the edge's, said with the rest).
    pub tunnel_io: pn_tunnel::device::Options,
    /// `--egress-deny`'s IPv4 ranges, network addresses outside the pool.
    pub egress_deny: Vec<Ipv4Net>,
    /// `--egress-deny`'s IPv6 ranges, network addresses (outside `--pool6`).
    pub egress_deny6: Vec<Ipv6Net>,
    /// `--router-cidr`, network addresses outside the pool.
    pub router_cidrs: Vec<Ipv4Net>,
    /// `--router-cidr6`, network addresses.
    pub router_cidrs6: Vec<Ipv6Net>,
    pub publish_ports: PortRange,
    pub forward_guard: ForwardGuard,
    /// `--tc-memo` (`pn_common::memo`; off unless given).
    pub tc_memo: bool,
}

/// `--ipv6` and `--pool6` (taken only with IPv6 on).
fn ipv6_mode(ipv6: Switch, pool6: Option<Ipv6Net>) -> anyhow::Result<crate::ipam::Ipv6Mode> {
    if let Some(p) = &pool6
        && let Err(e) = crate::ipam::check_pool6(p)
    {
        bail!("invalid --pool6: {e}");
    }
    Ok(match ipv6 {
        Switch::On => crate::ipam::Ipv6Mode::On { pool6 },
        Switch::Off => crate::ipam::Ipv6Mode::Off,
    })
}

/// `--track` as `pn_common::conn::TRACK_*` bits.
fn track_bits(track: &str) -> anyhow::Result<u32> {
    Ok(match track {
        "off" => 0,
        "conns" => pn_common::conn::TRACK_CONNS,
        "http" => pn_common::conn::TRACK_CONNS | pn_common::conn::TRACK_HTTP,
        other => bail!("invalid --track {other}: off, conns or http"),
    })
}

/// `KEY: ` of the file's line where a value was refused, so the message
/// names the setting (serde says only what type it wanted).
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(at) = span.map(|s| s.start).filter(|&a| a <= text.len()) else {
        return String::new();
    };
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _))
            if !key.trim().is_empty()
                && key
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            format!("{}: ", key.trim())
        }
        _ => String::new(),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

impl RunConfig {
    /// Merges flags over the file (if any) over the defaults, and validates.
    pub fn resolve(flags: RunSettings, file: Option<&Path>) -> anyhow::Result<RunConfig> {
        let file_settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<RunSettings>(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {}{}",
                        path.display(),
                        key_at(&text, e.span()),
                        e.message()
                    )
                })?
            }
            None => RunSettings::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                flags.$field.clone().or(file_settings.$field.clone())
            };
        }
        let host_raw = pick!(host_id).unwrap_or_else(hostname);
        let host_id: HostId = host_raw
            .parse()
            .map_err(|e| anyhow::anyhow!("{e} (set --host-id)"))?;
        let store = StoreSpec::parse(
            &pick!(store).unwrap_or_else(|| "embedded".into()),
            pick!(etcd_cacert),
            pick!(etcd_cert),
            pick!(etcd_key),
        )?;
        plain_text_allowed(&store, pick!(store_insecure).unwrap_or(false))?;
        let underlay_iface = pick!(underlay_iface);
        let advertise = advertise_endpoint(pick!(advertise))?;
        if store.endpoints().is_some() {
            needs_tunnel(advertise.is_some(), underlay_iface.is_some())?;
        }
        let pool = pick!(pool).unwrap_or_else(|| crate::ipam::DEFAULT_POOL.parse().expect("valid"));
        if let Err(e) = crate::ipam::check_pool(&pool) {
            bail!("invalid --pool: {e}");
        }
        let network_prefix = pick!(network_prefix).unwrap_or(crate::ipam::DEFAULT_NETWORK_PREFIX);
        if network_prefix < pool.prefix_len() || network_prefix > 30 {
            bail!(
                "invalid --network-prefix {network_prefix}: must be between the pool's /{} and /30",
                pool.prefix_len()
            );
        }
        let ipv6 = ipv6_mode(pick!(ipv6).unwrap_or(Switch::On), pick!(pool6))?;
        let mtu = pick!(mtu);
        let track = track_bits(pick!(track).as_deref().unwrap_or("http"))?;
        if let Some(mtu) = mtu
            && !(576..=65535).contains(&mtu)
        {
            bail!("invalid --mtu {mtu}: must be between 576 and 65535");
        }
        let host_quota = pick!(host_quota).unwrap_or(crate::store::view::DEFAULT_HOST_QUOTA);
        if host_quota == 0 {
            bail!("invalid --host-quota 0: every host runs at least 1 container");
        }
        let dns_query_rate = pick!(dns_query_rate).unwrap_or(DEFAULT_DNS_QUERY_RATE);
        if dns_query_rate == 0 {
            bail!("invalid --dns-query-rate 0: at least 1 query per second");
        }
        let dns_ttl = pick!(dns_ttl).unwrap_or(DEFAULT_DNS_TTL);
        if dns_ttl > 86_400 {
            bail!("invalid --dns-ttl {dns_ttl}: at most 86400 seconds");
        }
        let tunnel = tunnel_config(
            pick!(tunnel_cipher),
            pick!(tunnel_rekey_after_secs),
            pick!(tunnel_rekey_after_messages),
        )?;
        let tunnel_io = device_options(
            pick!(tunnel_workers),
            pick!(tunnel_offloads),
            pick!(tunnel_spin_us),
            pick!(tunnel_pin),
            pick!(tunnel_pin_rx),
            pick!(tunnel_notrack),
        )?;
        let mut etcd_prefix = pick!(etcd_prefix).unwrap_or_else(|| "/pn/".into());
        if !etcd_prefix.ends_with('/') {
            etcd_prefix.push('/');
        }
        let ranges = edge_ranges(
            EdgeFlags {
                egress_deny: pick!(egress_deny),
                router_cidr: pick!(router_cidr),
                router_cidr6: pick!(router_cidr6),
            },
            pool,
            pick!(pool6),
        )?;
        Ok(RunConfig {
            egress_deny: ranges.egress_deny,
            egress_deny6: ranges.egress_deny6,
            router_cidrs: ranges.router_cidrs,
            router_cidrs6: ranges.router_cidrs6,
            publish_ports: pick!(publish_ports).unwrap_or_default(),
            forward_guard: pick!(forward_guard).unwrap_or_default(),
            host_id,
            state_dir: pick!(state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            store,
            bpffs: pick!(bpffs).unwrap_or_else(|| DEFAULT_BPFFS.into()),
            underlay_iface,
            advertise,
            dns_listen: pick!(dns_listen).unwrap_or_else(|| {
                SocketAddrV4::new(
                    Ipv4Addr::from(pn_common::ip4_octets(pn_common::GATEWAY)),
                    53,
                )
            }),
            metrics_listen: pick!(metrics_listen)
                .unwrap_or_else(|| DEFAULT_METRICS.parse().expect("valid")),
            dns_ttl,
            dns_upstream: pick!(dns_upstream),
            dns_query_rate,
            pool,
            network_prefix,
            ipv6,
            mtu,
            drop_events_per_sec: pick!(drop_events_per_sec).unwrap_or(DEFAULT_DROP_EVENTS_PER_SEC),
            conn_share: pick!(conn_share).unwrap_or(DEFAULT_CONN_SHARE),
            track,
            etcd_prefix,
            api_socket: pick!(api_socket).unwrap_or_else(|| DEFAULT_API_SOCKET.into()),
            host_quota,
            tunnel,
            tunnel_io,
            tc_memo: pick!(tc_memo).unwrap_or(false),
        })
    }
}

/// A setting that is `on` or `off` (`--ipv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

impl std::str::FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Switch::On),
            "off" => Ok(Switch::Off),
            _ => Err(format!("{s:?}: expected on or off")),
        }
    }
}

#[cfg(test)]
mod fleet_store_tests;
#[cfg(test)]
mod tests;
