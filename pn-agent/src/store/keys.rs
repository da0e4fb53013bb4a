//! The key layout of the store, relative to the backend's prefix: one enum,
//! one printer and one parser, so every reader of keys (the membership
//! rules, the view, the agent) agrees on what a key names.
//!
//! | key | value |
//! | --- | --- |
//! | `pool` | [`PoolDoc`](super::membership::PoolDoc): ranges and tags of every network |
//! | `networks/<pn-…>` | [`Network`](crate::model::Network) |
//! | `apps/<ap-…>` | [`App`](crate::model::App) |
//! | `admissions` | [`Admissions`](crate::model::Admissions): which hosts may run which app's containers |
//! | `on/<host>/containers/<ap-…>/<type>/<index>` | [`Container`](crate::model::Container) run by `<host>` |
//! | `containers/<ap-…>/<type>/<index>` | a container record of an older release (read, never written) |
//! | `on/<host>/claims/<ap-…>/<type>/<index>` | `<host>` holds a container key (attaching or attached) |
//! | `on/<host>/ips/<pn-…>/<address>` | [`AddressLease`](crate::model::AddressLease) of a container of `<host>`, IPv4 or IPv6 |
//! | `claims/<ap-…>/<type>/<index>` | a claim of an older release (read, deleted, never written) |
//! | `ips/<pn-…>/<address>` | a service address's lease (the operator's), or a container's of an older release |
//! | `hosts/<host>` | [`Host`](crate::model::Host) |
//! | `peers/<n>` | the host holding peer id `n` (a JSON string) |
//!
//! Who may write what ([`host_writes`]; etcd's roles can say exactly this
//! because each host's records are one key range): a host writes its own
//! record `hosts/<host>` and everything under `on/<host>/` (its containers,
//! its claims on container keys, its address leases: nobody else can delete
//! them), plus the shared peer id markers `peers/` (a host takes its id as
//! it registers, when no other host knows it: a comparison under every
//! registered host would not keep two new ones apart). Claims and leases only
//! make honest hosts pick different keys and addresses (a reservation
//! compares the key under every known host): no agent believes them. What
//! an agent believes of a container comes from its record under
//! `on/<host>/` (the older of two records of one key or one address keeps
//! it; a host's records beyond its quota are refused), checked against the
//! operator's `admissions`. Everything else (`pool`, `networks/`, `apps/`,
//! `admissions`, service leases under `ips/`, other hosts' records) is the
//! operator's.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use pn_common::ids::{AppId, HostId, NetworkId, parse_index};

use crate::model::ContainerKey;

pub const POOL: &str = "pool";
pub const NETWORKS: &str = "networks/";
pub const APPS: &str = "apps/";
/// Records of an older release, before containers lived under their host.
pub const CONTAINERS: &str = "containers/";
/// Each host's own range: `on/<host>/`.
pub const ON: &str = "on/";
const ON_CONTAINERS: &str = "containers/";
const ON_CLAIMS: &str = "claims/";
const ON_IPS: &str = "ips/";
pub const ADMISSIONS: &str = "admissions";
/// Claims of an older release (now in each host's range).
pub const CLAIMS: &str = "claims/";
/// Service addresses' leases (the operator's), and container leases of an
/// older release (now in each host's range), of both families.
pub const IPS: &str = "ips/";
pub const HOSTS: &str = "hosts/";
pub const PEERS: &str = "peers/";

/// What a key of the store names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Pool,
    Network(NetworkId),
    App(AppId),
    /// Which hosts may run which app's containers (the operator's).
    Admissions,
    /// A container record, under the host that runs it.
    Container(HostId, ContainerKey),
    /// A container record as an older release wrote it (no host in the key).
    LegacyContainer(ContainerKey),
    /// A host's claim on a container key (attaching or attached), in its
    /// range.
    HostClaim(HostId, ContainerKey),
    /// An address of a network leased to a container of a host, in its
    /// range (either family).
    HostIp(HostId, NetworkId, IpAddr),
    /// Claim on a container key as an older release wrote it (shared).
    Claim(ContainerKey),
    /// An allocated address of a network: a service address's lease, or a
    /// container's as an older release wrote it (shared).
    Ip(NetworkId, Ipv4Addr),
    /// An allocated IPv6 address of a network (under `ips/` too).
    Ip6(NetworkId, Ipv6Addr),
    Host(HostId),
    /// Claim on a peer id (non-zero), so two hosts never hold the same.
    Peer(u32),
}

impl Key {
    /// The key `s` names, if it is one of the layout's, spelt the way
    /// [`Display`](fmt::Display) spells it. Ids parse case-insensitively, so
    /// a key in another spelling would alias a canonical one (and its delete
    /// would remove the other's record): those are not keys of the layout.
    pub fn parse(s: &str) -> Option<Key> {
        let key = Self::parse_loose(s)?;
        (key.to_string() == s).then_some(key)
    }

    fn parse_loose(s: &str) -> Option<Key> {
        if s == POOL {
            return Some(Key::Pool);
        }
        if s == ADMISSIONS {
            return Some(Key::Admissions);
        }
        if let Some(t) = s.strip_prefix(ON) {
            let (host, t) = t.split_once('/')?;
            let host: HostId = host.parse().ok()?;
            if let Some(t) = t.strip_prefix(ON_CLAIMS) {
                return container_key(t).map(|k| Key::HostClaim(host, k));
            }
            if let Some(t) = t.strip_prefix(ON_IPS) {
                let (net, ip) = t.split_once('/')?;
                return Some(Key::HostIp(host, net.parse().ok()?, ip.parse().ok()?));
            }
            let k = container_key(t.strip_prefix(ON_CONTAINERS)?)?;
            return Some(Key::Container(host, k));
        }
        if let Some(t) = s.strip_prefix(NETWORKS) {
            return t.parse().ok().map(Key::Network);
        }
        if let Some(t) = s.strip_prefix(APPS) {
            return t.parse().ok().map(Key::App);
        }
        if let Some(t) = s.strip_prefix(CONTAINERS) {
            return container_key(t).map(Key::LegacyContainer);
        }
        if let Some(t) = s.strip_prefix(CLAIMS) {
            return container_key(t).map(Key::Claim);
        }
        if let Some(t) = s.strip_prefix(IPS) {
            let (net, ip) = t.split_once('/')?;
            return Some(Key::lease(net.parse().ok()?, ip.parse().ok()?));
        }
        if let Some(t) = s.strip_prefix(HOSTS) {
            return t.parse().ok().map(Key::Host);
        }
        if let Some(t) = s.strip_prefix(PEERS) {
            return parse_index(t).ok().map(Key::Peer);
        }
        None
    }
}

/// `<ap-…>/<type>/<index>`
fn container_key(s: &str) -> Option<ContainerKey> {
    let mut parts = s.split('/');
    let k = ContainerKey {
        app: parts.next()?.parse().ok()?,
        ctype: parts.next()?.parse().ok()?,
        index: parse_index(parts.next()?).ok()?,
    };
    parts.next().is_none().then_some(k)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Pool => f.write_str(POOL),
            Key::Network(id) => write!(f, "{NETWORKS}{id}"),
            Key::App(id) => write!(f, "{APPS}{id}"),
            Key::Admissions => f.write_str(ADMISSIONS),
            Key::Container(h, k) => write!(
                f,
                "{ON}{h}/{ON_CONTAINERS}{}/{}/{}",
                k.app, k.ctype, k.index
            ),
            Key::LegacyContainer(k) => {
                write!(f, "{CONTAINERS}{}/{}/{}", k.app, k.ctype, k.index)
            }
            Key::HostClaim(h, k) => {
                write!(f, "{ON}{h}/{ON_CLAIMS}{}/{}/{}", k.app, k.ctype, k.index)
            }
            Key::HostIp(h, net, ip) => write!(f, "{ON}{h}/{ON_IPS}{net}/{ip}"),
            Key::Claim(k) => write!(f, "{CLAIMS}{}/{}/{}", k.app, k.ctype, k.index),
            Key::Ip(net, ip) => write!(f, "{IPS}{net}/{ip}"),
            Key::Ip6(net, ip) => write!(f, "{IPS}{net}/{ip}"),
            Key::Host(id) => write!(f, "{HOSTS}{id}"),
            Key::Peer(n) => write!(f, "{PEERS}{n}"),
        }
    }
}

impl Key {
    /// The lease key of an address of either family.
    pub fn lease(net: NetworkId, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(ip) => Key::Ip(net, ip),
            IpAddr::V6(ip) => Key::Ip6(net, ip),
        }
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.to_string()
    }
}

/// Prefix of everything one host writes but its host record: its range.
pub fn on_host(host: &HostId) -> String {
    format!("{ON}{host}/")
}

/// Prefix of the records of one app's containers on one host.
pub fn containers_on(host: &HostId, app: &AppId) -> String {
    format!("{ON}{host}/{ON_CONTAINERS}{app}/")
}

/// Prefix of the claims of an older release on one app's container keys.
pub fn claims_of(app: &AppId) -> String {
    format!("{CLAIMS}{app}/")
}

/// Prefix of one host's claims on one app's container keys.
pub fn claims_on(host: &HostId, app: &AppId) -> String {
    format!("{ON}{host}/{ON_CLAIMS}{app}/")
}

/// Prefix of the addresses of one network leased to one host's containers.
pub fn ips_on(host: &HostId, net: &NetworkId) -> String {
    format!("{ON}{host}/{ON_IPS}{net}/")
}

/// Prefix of every address leased to one host's containers.
pub fn all_ips_on(host: &HostId) -> String {
    format!("{ON}{host}/{ON_IPS}")
}

/// Prefix of the legacy records of one app's containers.
pub fn legacy_containers_of(app: &AppId) -> String {
    format!("{CONTAINERS}{app}/")
}

/// Whether `key` (relative) is a container record of either layout.
pub fn is_container(key: &str) -> bool {
    matches!(
        Key::parse(key),
        Some(Key::Container(..) | Key::LegacyContainer(_))
    )
}

/// A range of keys an etcd role may write: one key, or every key under a
/// prefix (relative to the store's prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub prefix: bool,
}

/// The shared prefixes a host's role could write in an older release, and
/// which `fleet grant-host` takes back (after `fleet migrate`).
pub const FORMER_HOST_WRITES: [&str; 2] = [CLAIMS, IPS];

/// What host `host`'s role may write (it reads everything): its own host
/// record and range, and the shared peer id markers.
pub fn host_writes(host: &HostId) -> Vec<Grant> {
    vec![
        Grant {
            key: Key::Host(host.clone()).to_string(),
            prefix: false,
        },
        Grant {
            key: on_host(host),
            prefix: true,
        },
        Grant {
            key: PEERS.into(),
            prefix: true,
        },
    ]
}

/// Prefix of the allocated addresses of one network.
pub fn ips_of(net: &NetworkId) -> String {
    format!("{IPS}{net}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AP: &str = "ap-a71da13f-7c70-4c00-a644-eee8558d8053";
    const PN: &str = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c";

    fn ck() -> ContainerKey {
        ContainerKey {
            app: AP.parse().unwrap(),
            ctype: "web".parse().unwrap(),
            index: 12,
        }
    }

    #[test]
    fn every_key_round_trips() {
        let keys = [
            Key::Pool,
            Key::Network(PN.parse().unwrap()),
            Key::App(AP.parse().unwrap()),
            Key::Admissions,
            Key::Container("h-1".parse().unwrap(), ck()),
            Key::LegacyContainer(ck()),
            Key::Claim(ck()),
            Key::HostClaim("h-1".parse().unwrap(), ck()),
            Key::HostIp(
                "h-1".parse().unwrap(),
                PN.parse().unwrap(),
                "10.240.0.7".parse().unwrap(),
            ),
            Key::HostIp(
                "h-1".parse().unwrap(),
                PN.parse().unwrap(),
                "fd00::7".parse().unwrap(),
            ),
            Key::Ip(PN.parse().unwrap(), Ipv4Addr::new(10, 240, 0, 7)),
            Key::Ip6(PN.parse().unwrap(), "fd12:3456:789a:1::2".parse().unwrap()),
            Key::Host("h-1".parse().unwrap()),
            Key::Peer(4_000_000_000),
        ];
        for k in keys {
            let s = k.to_string();
            assert_eq!(Key::parse(&s), Some(k), "{s}");
        }
        assert_eq!(
            Key::LegacyContainer(ck()).to_string(),
            format!("containers/{AP}/web/12")
        );
        assert_eq!(
            Key::Container("h-1".parse().unwrap(), ck()).to_string(),
            format!("on/h-1/containers/{AP}/web/12")
        );
        assert_eq!(
            Key::Ip(PN.parse().unwrap(), Ipv4Addr::new(10, 240, 0, 7)).to_string(),
            format!("ips/{PN}/10.240.0.7")
        );
        assert_eq!(
            Key::lease(PN.parse().unwrap(), "fd00::2".parse().unwrap()).to_string(),
            format!("ips/{PN}/fd00::2")
        );
        assert_eq!(
            Key::HostClaim("h-1".parse().unwrap(), ck()).to_string(),
            format!("on/h-1/claims/{AP}/web/12")
        );
        assert_eq!(
            Key::HostIp(
                "h-1".parse().unwrap(),
                PN.parse().unwrap(),
                "10.240.0.7".parse().unwrap()
            )
            .to_string(),
            format!("on/h-1/ips/{PN}/10.240.0.7")
        );
    }

    #[test]
    fn prefixes_are_prefixes_of_their_keys() {
        let app: AppId = AP.parse().unwrap();
        assert!(
            Key::LegacyContainer(ck())
                .to_string()
                .starts_with(&legacy_containers_of(&app))
        );
        // A host's range holds its records and no other host's, even one
        // whose id starts with its own.
        let (h1, h10): (HostId, HostId) = ("h1".parse().unwrap(), "h10".parse().unwrap());
        let own = Key::Container(h1.clone(), ck()).to_string();
        assert!(own.starts_with(&on_host(&h1)));
        assert!(own.starts_with(&containers_on(&h1, &app)));
        assert!(Key::Claim(ck()).to_string().starts_with(&claims_of(&app)));
        assert!(
            !Key::Container(h10.clone(), ck())
                .to_string()
                .starts_with(&on_host(&h1))
        );
        let writes = host_writes(&h1);
        let may = |k: &str| {
            writes.iter().any(|g| {
                if g.prefix {
                    k.starts_with(&g.key)
                } else {
                    k == g.key
                }
            })
        };
        let net: NetworkId = PN.parse().unwrap();
        let (claim, lease) = (
            Key::HostClaim(h1.clone(), ck()).to_string(),
            Key::HostIp(h1.clone(), net, Ipv4Addr::LOCALHOST.into()).to_string(),
        );
        assert!(may(&own) && may("hosts/h1") && may(&claim) && may(&lease));
        assert!(claim.starts_with(&claims_on(&h1, &app)));
        assert!(lease.starts_with(&ips_on(&h1, &net)) && lease.starts_with(&all_ips_on(&h1)));
        for other in [
            Key::Claim(ck()).to_string(),
            Key::Ip(net, Ipv4Addr::LOCALHOST).to_string(),
            Key::HostClaim(h10.clone(), ck()).to_string(),
            Key::HostIp(h10.clone(), net, Ipv4Addr::LOCALHOST.into()).to_string(),
            Key::Host(h10.clone()).to_string(),
            Key::Container(h10, ck()).to_string(),
            Key::LegacyContainer(ck()).to_string(),
            Key::App(app).to_string(),
            "admissions".into(),
            "pool".into(),
            format!("networks/{PN}"),
        ] {
            assert!(!may(&other), "{other}");
        }
        assert!(
            Key::Ip(net, Ipv4Addr::LOCALHOST)
                .to_string()
                .starts_with(&ips_of(&net))
        );
        assert!(
            Key::Ip6(net, Ipv6Addr::LOCALHOST)
                .to_string()
                .starts_with(&ips_of(&net))
        );
    }

    #[test]
    fn anything_else_is_not_a_key() {
        for bad in [
            "",
            "pool/",
            "networks/",
            "networks/pn-nope",
            &format!("networks/{}", PN.to_uppercase()),
            &format!("containers/{AP}/web"),
            &format!("containers/{AP}/web/0"),
            &format!("containers/{AP}/web/01"),
            &format!("containers/{AP}/web/1/x"),
            &format!("containers/{AP}/Web/1"),
            &format!("ips/{PN}/10.240.0.300"),
            &format!("ips/{PN}/010.240.0.1"),
            &format!("ips/{PN}/FD00::2"),
            &format!("ips/{PN}/fd00:0::2"),
            &format!("ips/{PN}/fd00::2/64"),
            "hosts/H1",
            "hosts/a_b",
            "peers/0",
            "peers/01",
            "peers/4294967296",
            "other/thing",
            &format!("on/h1/containers/{AP}/web"),
            &format!("on/H1/containers/{AP}/web/1"),
            &format!("on/h1/other/{AP}/web/1"),
            &format!("on/h1/containers/{AP}/web/1/x"),
            &format!("on/h1/claims/{AP}/web"),
            &format!("on/h1/ips/{PN}"),
            &format!("on/h1/ips/{PN}/10.0.0.300"),
            &format!("on/h1/ips/{PN}/FD00::2"),
            "on/h1",
            "admissions/",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }
}
