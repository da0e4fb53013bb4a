//! The records of the membership store: what a network, an application, a
//! container and a host are, as every agent of the fleet sees them.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

use ipnet::{Ipv4Net, Ipv6Net};
pub use pn_api::key::{ContainerKey, HOST_IF_PREFIX, RuntimeRef, fnv1a64};
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub cidr: Ipv4Net,
    /// Small integer naming the network in the kernel maps and on the wire.
    pub tag: u32,
    pub created_at: u64,
    /// Whether its containers reach the world (records of older agents:
    /// allowed). The only field of a network that may change.
    #[serde(default)]
    pub egress: Egress,
    /// Its IPv6 prefix, a /64 of the fleet's unique local /48 (records of
    /// agents without IPv6: none, given on the next converge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<Ipv6Net>,
}

pub use pn_api::proto::Egress;

pub use pn_api::proto::DEFAULT_WEB_PORT;

fn default_web_port() -> u16 {
    DEFAULT_WEB_PORT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: AppId,
    pub network: NetworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at: u64,
    /// How connections to the app's names are balanced.
    #[serde(default, skip_serializing_if = "Balance::is_dns")]
    pub balance: Balance,
    /// With `vip`: each container type's service address (from the
    /// network's range, leased under `ips/` like a container's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<ContainerType, Ipv4Addr>,
    /// With `vip` in a network with an IPv6 range: each type's IPv6
    /// service address beside its IPv4 one (from the network's /64, leased
    /// under `ips/` the same way; records of agents without it: none, given
    /// on the next converge).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services6: BTreeMap<ContainerType, Ipv6Addr>,
    /// TCP port probed by the agent of each container's host; a container
    /// failing three probes in a row leaves its service's rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
    /// The port its `web` containers listen on (`PORT`), where routers are
    /// sent through the published port (records of older agents: 8080).
    #[serde(default = "default_web_port")]
    pub web_port: u16,
}

pub use pn_api::proto::Balance;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(flatten)]
    pub key: ContainerKey,
    pub network: NetworkId,
    pub ip: Ipv4Addr,
    /// Its IPv6 address in its network's `cidr6` (none: the network has no
    /// IPv6 yet, or the record predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The host whose agent attached it (and owns its interface).
    pub host: HostId,
    /// Namespace as given to `attach` (name or path).
    pub netns: String,
    /// Interface name inside the namespace.
    pub ifname: String,
    /// Host-side end of the veth pair.
    pub host_ifname: String,
    pub created_at: u64,
    /// Set when a container runtime attached it through the CNI plugin:
    /// how DEL and CHECK find it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeRef>,
    /// Failing its app's health check (`--health-port`), as its host's
    /// agent last saw: out of its service's rotation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unhealthy: bool,
    /// Where the platform's routers reach it (`HOST_IP:PORT`): a `web`
    /// container of a host with `--router-cidr`, given a port of its host's
    /// `--publish-ports` by that host's agent, kept until it is detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<SocketAddrV4>,
}

impl Container {
    /// A `web` container: the only type ever published.
    pub fn is_web(&self) -> bool {
        self.key.ctype.as_str() == ContainerType::WEB
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: HostId,
    /// Encrypted tunnel endpoint published to peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Static X25519 public key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub started_at: u64,
    /// The host's number in every agent's datapath and tunnel: non-zero,
    /// unique in the fleet, allocated by the store when the host registers
    /// and kept across registrations (0 in records of older agents: not
    /// usable until the host registers again).
    #[serde(default)]
    pub peer_id: u32,
}

impl Host {
    /// The published public key, if it is one (32 bytes of base64).
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        pn_tunnel::keyfile::decode_key(self.public_key.as_deref()?)
    }
}

/// Owner of an allocated address (the `ips/` keys), written before the
/// container record so that two attaches can never get the same address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressLease {
    #[serde(flatten)]
    pub owner: ContainerKey,
    pub host: HostId,
    /// A service address: `owner` names the app and type (index 0), and the
    /// lease lives as long as the app balances by `vip`, whatever the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
}

/// Which hosts may run which app's containers: the operator's one record
/// (`admissions`). With none, or with `enforced` false, every host may run
/// every app's containers (a single machine, a fleet of an older release);
/// enforced, an app runs only on the hosts listed for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admissions {
    pub enforced: bool,
    #[serde(default)]
    pub apps: std::collections::BTreeMap<AppId, std::collections::BTreeSet<HostId>>,
}

impl Admissions {
    pub fn admits(&self, app: &AppId, host: &HostId) -> bool {
        !self.enforced || self.apps.get(app).is_some_and(|h| h.contains(host))
    }
}

/// A name given by an operator or read from a record that does not follow
/// its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid interface name {0:?}: 1 to 15 characters among a-z, A-Z, 0-9, -, _ and .")]
    Interface(String),
    #[error("invalid application name {0:?}: 1 to 64 printable characters")]
    App(String),
    #[error("invalid namespace {0:?}: a name or a path, without control characters")]
    Netns(String),
}

impl crate::error::Kind for NameError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

/// The rule for a container's interface name inside its namespace: what
/// the kernel takes (≤ 15 bytes, no `/`), minus `lo` and the names that are
/// paths.
pub fn check_ifname(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "lo"
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Interface(name.into()))
    }
}

/// The rule for an application's display name.
pub fn check_app_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        Err(NameError::App(name.into()))
    } else {
        Ok(())
    }
}

/// The rule for a namespace as given to `attach`: a name (one path
/// component: it also names `/etc/netns/NAME`) or a path.
pub fn check_netns(netns: &str) -> Result<(), NameError> {
    let component_ok = |c: &str| !c.is_empty() && c != "." && c != ".." && c.len() <= 255;
    let ok = !netns.is_empty()
        && netns.len() <= 4096
        && !netns.chars().any(char::is_control)
        && if netns.contains('/') {
            netns.starts_with('/') && netns[1..].split('/').all(component_ok)
        } else {
            component_ok(netns)
        };
    if ok {
        Ok(())
    } else {
        Err(NameError::Netns(netns.into()))
    }
}

/// An address as the kernel maps key it.
pub fn to_ip4(ip: Ipv4Addr) -> pn_common::Ip4 {
    let [a, b, c, d] = ip.octets();
    pn_common::ip4(a, b, c, d)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("pn0").is_ok());
        assert!(check_ifname("eth1.100").is_ok());
        for bad in ["", "lo", "a/b", "way-too-long-name", "sp ace", "..", "."] {
            assert_eq!(
                check_ifname(bad),
                Err(NameError::Interface(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn app_names_are_checked() {
        assert!(check_app_name("waf").is_ok());
        assert!(check_app_name(&"x".repeat(64)).is_ok());
        for bad in [String::new(), "x".repeat(65), "a\nb".to_string()] {
            assert!(check_app_name(&bad).is_err(), "{bad:?}");
        }
        use crate::error::{ErrorKind, Kind};
        assert_eq!(check_app_name("").unwrap_err().kind(), ErrorKind::Invalid);
    }

    #[test]
    fn namespaces_are_names_or_paths() {
        for good in ["c1", "pt1234-c1", "/run/netns/c1", "/proc/1234/ns/net"] {
            assert_eq!(check_netns(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/run/netns/../../etc",
            "c\n1",
            "/run//x",
        ] {
            assert!(check_netns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_keys_are_32_bytes_of_base64() {
        let mut h = Host {
            id: "h1".parse().unwrap(),
            advertise: None,
            public_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            started_at: 0,
            peer_id: 1,
        };
        assert_eq!(h.key_bytes(), Some([0; 32]));
        for bad in ["AAAA", "not base64!", ""] {
            h.public_key = Some(bad.into());
            assert_eq!(h.key_bytes(), None, "{bad}");
        }
        h.public_key = None;
        assert_eq!(h.key_bytes(), None);
    }
}
