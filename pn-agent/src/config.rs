//! `pn-agent run` settings: flags, optionally a TOML file (`--config`), then
//! defaults. A flag beats the file; the file beats the default.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use pn_common::ids::HostId;
use serde::Deserialize;

use crate::{edge::ports::PortRange, store::etcd::TlsFiles};

pub const DEFAULT_API_SOCKET: &str = "/run/pn-agent/api.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pn-agent";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/pn-agent";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
pub const DEFAULT_DNS_TTL: u32 = 5;
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DROP_EVENTS_PER_SEC: u32 = 200;

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
    /// Encrypted tunnel endpoint published to peers (IP:PORT).
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
    /// Fleet-wide address pool networks are carved from [default: 10.240.0.0/12].
    #[arg(long)]
    pub pool: Option<Ipv4Net>,
    /// Prefix length of a network's range when none is given [default: 22].
    #[arg(long)]
    pub network_prefix: Option<u8>,
    /// MTU of container interfaces [default: underlay MTU − tunnel overhead, or 1500 without underlay].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Drop events per second and CPU sent to `flows` (the rest is only counted) [default: 200].
    #[arg(long)]
    pub drop_events_per_sec: Option<u32>,
    /// What the datapath tracks between members: off, conns (connections) or http (connections and HTTP/1.x requests) [default: http].
    #[arg(long)]
    pub track: Option<String>,
    /// AEAD implementation of the tunnel: ring or rustcrypto [default: ring].
    #[arg(long)]
    pub tunnel_cipher: Option<String>,
    /// Rekey a tunnel session after this many seconds [default: 120].
    #[arg(long)]
    pub tunnel_rekey_after_secs: Option<u64>,
    /// Rekey a tunnel session after this many packets [default: 2^60].
    #[arg(long)]
    pub tunnel_rekey_after_messages: Option<u64>,
    /// Key prefix in etcd [default: /pn/].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// Destinations containers never reach as the world, CIDR[,…], on top of
    /// the built-in list (host, loopback, link-local, multicast, underlay, store).
    #[arg(long, value_delimiter = ',')]
    pub egress_deny: Option<Vec<Ipv4Net>>,
    /// Sources that may use published ports (the platform's front routers),
    /// CIDR[,…]; with none, nothing is published.
    #[arg(long, value_delimiter = ',')]
    pub router_cidr: Option<Vec<Ipv4Net>>,
    /// Host ports published for `web` containers, LO-HI [default: 30000-32767].
    #[arg(long)]
    pub publish_ports: Option<PortRange>,
    /// The API socket (also the global `--api-socket`).
    #[arg(skip)]
    pub api_socket: Option<PathBuf>,
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
    pub pool: Ipv4Net,
    pub network_prefix: u8,
    /// Explicit container MTU; `None`: derived from the underlay.
    pub mtu: Option<u32>,
    pub drop_events_per_sec: u32,
    /// `pn_common::conn::TRACK_*` bits.
    pub track: u32,
    pub etcd_prefix: String,
    pub api_socket: PathBuf,
    pub tunnel: pn_tunnel::Config,
    /// `--egress-deny`, network addresses outside the pool.
    pub egress_deny: Vec<Ipv4Net>,
    /// `--router-cidr`, network addresses outside the pool.
    pub router_cidrs: Vec<Ipv4Net>,
    pub publish_ports: PortRange,
}

/// `--egress-deny` and `--router-cidr` ranges: network addresses, outside
/// the pool (members are governed by their networks, not by these lists).
fn outside_pool(flag: &str, nets: Vec<Ipv4Net>, pool: Ipv4Net) -> anyhow::Result<Vec<Ipv4Net>> {
    for n in &nets {
        if n.trunc() != *n {
            bail!(
                "invalid --{flag} {n}: not a network address (did you mean {}?)",
                n.trunc()
            );
        }
        if n.contains(&pool.network()) || pool.contains(&n.network()) {
            bail!("invalid --{flag} {n}: overlaps the pool {pool}");
        }
    }
    Ok(nets)
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
                toml::from_str::<RunSettings>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
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
        if let StoreSpec::EtcdTls(_, files) = &store {
            files.check()?;
        }
        let underlay_iface = pick!(underlay_iface);
        let advertise = pick!(advertise);
        if store.endpoints().is_some() {
            let missing: Vec<&str> = [
                (advertise.is_none(), "--advertise"),
                (underlay_iface.is_none(), "--underlay-iface"),
            ]
            .iter()
            .filter(|(m, _)| *m)
            .map(|(_, flag)| *flag)
            .collect();
            if !missing.is_empty() {
                bail!(
                    "a fleet store (--store etcd…) needs {}: without the tunnel, traffic to \
                     members on other hosts would leave this host in clear text",
                    missing.join(" and ")
                );
            }
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
        let mtu = pick!(mtu);
        let track = match pick!(track).as_deref().unwrap_or("http") {
            "off" => 0,
            "conns" => pn_common::conn::TRACK_CONNS,
            "http" => pn_common::conn::TRACK_CONNS | pn_common::conn::TRACK_HTTP,
            other => bail!("invalid --track {other}: off, conns or http"),
        };
        if let Some(mtu) = mtu
            && !(576..=65535).contains(&mtu)
        {
            bail!("invalid --mtu {mtu}: must be between 576 and 65535");
        }
        let dns_ttl = pick!(dns_ttl).unwrap_or(DEFAULT_DNS_TTL);
        if dns_ttl > 86_400 {
            bail!("invalid --dns-ttl {dns_ttl}: at most 86400 seconds");
        }
        let mut tunnel = pn_tunnel::Config::default();
        if let Some(c) = pick!(tunnel_cipher) {
            tunnel.cipher = c
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid --tunnel-cipher: {e}"))?;
        }
        if let Some(secs) = pick!(tunnel_rekey_after_secs) {
            if secs == 0 {
                bail!("invalid --tunnel-rekey-after-secs 0");
            }
            tunnel.rekey_after_time = std::time::Duration::from_secs(secs);
            // Keep WireGuard's margin between renewing and refusing a session.
            tunnel.reject_after_time =
                tunnel.rekey_after_time + std::time::Duration::from_secs(secs.div_ceil(2).max(5));
        }
        if let Some(n) = pick!(tunnel_rekey_after_messages) {
            if n == 0 {
                bail!("invalid --tunnel-rekey-after-messages 0");
            }
            tunnel.rekey_after_messages = n;
        }
        let mut etcd_prefix = pick!(etcd_prefix).unwrap_or_else(|| "/pn/".into());
        if !etcd_prefix.ends_with('/') {
            etcd_prefix.push('/');
        }
        let egress_deny =
            outside_pool("egress-deny", pick!(egress_deny).unwrap_or_default(), pool)?;
        let router_cidrs =
            outside_pool("router-cidr", pick!(router_cidr).unwrap_or_default(), pool)?;
        Ok(RunConfig {
            egress_deny,
            router_cidrs,
            publish_ports: pick!(publish_ports).unwrap_or_default(),
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
            pool,
            network_prefix,
            mtu,
            drop_events_per_sec: pick!(drop_events_per_sec).unwrap_or(DEFAULT_DROP_EVENTS_PER_SEC),
            track,
            etcd_prefix,
            api_socket: pick!(api_socket).unwrap_or_else(|| DEFAULT_API_SOCKET.into()),
            tunnel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile_path::TempPath {
        tempfile_path::write(content)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(content: &str) -> TempPath {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "pn-config-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, content).unwrap();
            TempPath(p)
        }
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let f = file(
            "host-id = \"from-file\"\ndns-ttl = 9\nstore = \"etcd://10.0.0.1:2379,10.0.0.2:2379\"\n\
             advertise = \"192.0.2.1:51871\"\nunderlay-iface = \"eth1\"\n",
        );
        let flags = RunSettings {
            host_id: Some("from-flag".into()),
            ..Default::default()
        };
        let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
        assert_eq!(c.host_id.as_str(), "from-flag");
        assert_eq!(c.dns_ttl, 9);
        assert_eq!(
            c.store,
            StoreSpec::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.dns_listen.to_string(), "169.254.1.1:53");
        assert_eq!(c.pool.to_string(), "10.240.0.0/12");
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
    }

    #[test]
    fn edge_settings_from_flags_and_file() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            s: RunSettings,
        }
        let flags = <Flags as clap::Parser>::try_parse_from([
            "run",
            "--host-id",
            "h",
            "--egress-deny",
            "198.51.100.0/24,192.0.2.64/26",
            "--router-cidr",
            "192.0.2.0/28",
            "--publish-ports",
            "40000-40099",
        ])
        .unwrap()
        .s;
        let c = RunConfig::resolve(flags, None).unwrap();
        assert_eq!(
            c.egress_deny,
            vec![
                "198.51.100.0/24".parse::<Ipv4Net>().unwrap(),
                "192.0.2.64/26".parse().unwrap()
            ]
        );
        assert_eq!(
            c.router_cidrs,
            vec!["192.0.2.0/28".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            c.publish_ports,
            PortRange {
                lo: 40000,
                hi: 40099
            }
        );

        let f = file(
            "host-id = \"h\"\negress-deny = [\"203.0.113.0/24\"]\nrouter-cidr = [\"192.0.2.0/24\"]\npublish-ports = \"31000-31010\"\n",
        );
        let c = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap();
        assert_eq!(
            c.egress_deny,
            vec!["203.0.113.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            c.router_cidrs,
            vec!["192.0.2.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(c.publish_ports.to_string(), "31000-31010");

        // Defaults: nothing denied beyond the built-in list, no router, the NodePort range.
        let c = RunConfig::resolve(
            RunSettings {
                host_id: Some("h".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(c.egress_deny.is_empty() && c.router_cidrs.is_empty());
        assert_eq!(
            c.publish_ports,
            PortRange {
                lo: 30000,
                hi: 32767
            }
        );
    }

    #[test]
    fn bad_edge_settings_give_one_clear_line() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            s: RunSettings,
        }
        for (args, want) in [
            (["--egress-deny", "10.0.0.0/8"], "overlaps the pool"),
            (["--egress-deny", "10.241.0.0/16"], "overlaps the pool"),
            (["--router-cidr", "192.0.2.1/24"], "not a network address"),
            (["--router-cidr", "10.240.0.0/12"], "overlaps the pool"),
        ] {
            let flags = <Flags as clap::Parser>::try_parse_from(
                ["run", "--host-id", "h"].into_iter().chain(args),
            )
            .unwrap()
            .s;
            let e = RunConfig::resolve(flags, None).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        for args in [
            ["--publish-ports", "32767-30000"],
            ["--publish-ports", "0-10"],
            ["--publish-ports", "30000"],
            ["--egress-deny", "not-a-cidr"],
            ["--router-cidr", "192.0.2.0/33"],
        ] {
            let e = <Flags as clap::Parser>::try_parse_from(
                ["run", "--host-id", "h"].into_iter().chain(args),
            )
            .err()
            .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.to_string().contains(args[0]), "{args:?}: {e}");
        }
        let f = file("publish-ports = \"9-1\"\n");
        let e = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap_err();
        assert!(e.to_string().contains("LO-HI"), "{e}");
    }

    #[test]
    fn bad_settings_give_one_clear_line() {
        let f = file("hots-id = \"typo\"\n");
        let e = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap_err();
        assert!(e.to_string().contains("unknown field `hots-id`"), "{e}");
        for (flags, want) in [
            (
                RunSettings {
                    host_id: Some("Bad_Host".into()),
                    ..Default::default()
                },
                "invalid host id",
            ),
            (
                RunSettings {
                    host_id: Some("h".into()),
                    store: Some("consul://x".into()),
                    ..Default::default()
                },
                "invalid --store",
            ),
            (
                RunSettings {
                    host_id: Some("h".into()),
                    store: Some("etcd://nohost".into()),
                    ..Default::default()
                },
                "invalid etcd endpoint",
            ),
            (
                RunSettings {
                    host_id: Some("h".into()),
                    mtu: Some(100),
                    ..Default::default()
                },
                "invalid --mtu",
            ),
        ] {
            let e = RunConfig::resolve(flags, None).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = RunConfig::resolve(
            RunSettings::default(),
            Some(Path::new("/nonexistent/pn.toml")),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("reading config file"), "{e:#}");
    }

    fn fleet(store: &str) -> RunSettings {
        RunSettings {
            host_id: Some("h1".into()),
            store: Some(store.into()),
            advertise: Some("192.0.2.1:51871".parse().unwrap()),
            underlay_iface: Some("eth1".into()),
            ..Default::default()
        }
    }

    fn refused(flags: RunSettings, file: Option<&Path>, want: &str) {
        let e = RunConfig::resolve(flags, file).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn a_fleet_store_needs_the_tunnel() {
        for (advertise, underlay, want) in [
            (false, false, "needs --advertise and --underlay-iface"),
            (true, false, "needs --underlay-iface"),
            (false, true, "needs --advertise: without the tunnel"),
        ] {
            let mut flags = fleet("etcd://10.0.0.1:2379");
            if !advertise {
                flags.advertise = None;
            }
            if !underlay {
                flags.underlay_iface = None;
            }
            refused(flags, None, want);
        }
        assert!(RunConfig::resolve(fleet("etcd://10.0.0.1:2379"), None).is_ok());
        // The embedded store is one host: no tunnel needed.
        let c = RunConfig::resolve(
            RunSettings {
                host_id: Some("h1".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(c.store, StoreSpec::Embedded);
    }

    #[test]
    fn tls_needs_all_three_files_and_plain_text_none() {
        let with = |store: &str, cacert: bool, cert: bool, key: bool| RunSettings {
            etcd_cacert: cacert.then(|| "/ca.pem".into()),
            etcd_cert: cert.then(|| "/h1.pem".into()),
            etcd_key: key.then(|| "/h1.key".into()),
            ..fleet(store)
        };
        refused(
            with("etcds://10.0.0.1:2379", false, false, false),
            None,
            "needs --etcd-cacert, --etcd-cert and --etcd-key (missing --etcd-cacert, --etcd-cert, --etcd-key)",
        );
        refused(
            with("etcds://10.0.0.1:2379", true, true, false),
            None,
            "(missing --etcd-key)",
        );
        // Certificates with a plain-text or embedded store would be a silent
        // downgrade: refused.
        refused(
            with("etcd://10.0.0.1:2379", true, true, true),
            None,
            "--etcd-cacert, --etcd-cert, --etcd-key given but --store etcd://… is plain text",
        );
        refused(
            with("embedded", false, true, false),
            None,
            "--etcd-cert given but --store is embedded",
        );
        refused(
            with("https://10.0.0.1:2379", true, true, true),
            None,
            "invalid --store",
        );
        // The files are read at start: a missing one is named.
        refused(
            with("etcds://10.0.0.1:2379", true, true, true),
            None,
            "cannot read --etcd-cacert /ca.pem",
        );
    }

    #[test]
    fn tls_settings_come_from_the_file_too() {
        use crate::store::etcd::testing::Pki;
        let pki = Pki::new("config");
        let ca = pki.ca("ca");
        let h1 = pki.issue(&ca, "h1", &[]);
        let f = file(&format!(
            "store = \"etcds://10.0.0.1:2379,10.0.0.2:2379\"\netcd-cacert = {:?}\n\
             etcd-cert = {:?}\netcd-key = {:?}\nadvertise = \"192.0.2.1:51871\"\n\
             underlay-iface = \"eth1\"\nhost-id = \"h1\"\n",
            ca.crt, h1.crt, h1.key
        ));
        let c = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap();
        assert_eq!(
            c.store,
            StoreSpec::EtcdTls(
                vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
                TlsFiles {
                    cacert: ca.crt.clone(),
                    cert: h1.crt.clone(),
                    key: h1.key.clone(),
                }
            )
        );
        // A flag beats the file here too: the wrong key is named.
        let flags = RunSettings {
            etcd_key: Some(ca.key.clone()),
            ..Default::default()
        };
        refused(flags, Some(&f.0), "is not the private key of --etcd-cert");
    }

    /// The config file `cargo xtask install` puts in /etc/pn-agent: as
    /// shipped (every line a comment) and with every setting uncommented,
    /// it is a valid configuration.
    #[test]
    fn the_installed_default_config_is_valid() {
        let shipped = include_str!("../../dist/config.toml");
        let f = file(shipped);
        let flags = RunSettings {
            host_id: Some("h1".into()),
            ..Default::default()
        };
        let c = RunConfig::resolve(flags.clone(), Some(&f.0)).unwrap();
        assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv)
                    if kv.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    }) =>
                {
                    kv
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("\nstore = "), "{uncommented}");
        let f = file(&uncommented);
        let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
        assert_eq!(c.host_id.as_str(), "h1", "a flag wins over the file");
        assert_eq!(c.underlay_iface.as_deref(), Some("eth0"));
    }
}
