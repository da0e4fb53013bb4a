//! The records of the membership store: what a network, an application, a
//! container and a host are, as every agent of the fleet sees them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use ipnet::Ipv4Net;
use pn_common::{
    ids::{AppId, ContainerType, HostId, NetworkId},
    names,
};
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
}

/// A network's access to the world (`--egress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Destinations outside the pool are reached through the host.
    #[default]
    Allow,
    /// Sealed: nothing outside the network (routers still reach its
    /// published `web` containers).
    Deny,
}

impl std::fmt::Display for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Egress::Allow => "allow",
            Egress::Deny => "deny",
        })
    }
}

/// The port a `web` container serves on when its app does not say.
pub const DEFAULT_WEB_PORT: u16 = 8080;

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
    /// The port its `web` containers listen on (`PORT`), where routers are
    /// sent through the published port (records of older agents: 8080).
    #[serde(default = "default_web_port")]
    pub web_port: u16,
}

/// (app, type, index): what names a container, fleet-wide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerKey {
    pub app: AppId,
    #[serde(rename = "type")]
    pub ctype: ContainerType,
    pub index: u32,
}

impl ContainerKey {
    /// The smallest key of an app (for range scans).
    pub fn first_of(app: AppId) -> ContainerKey {
        ContainerKey {
            app,
            ctype: "a".parse().expect("valid type"),
            index: 0,
        }
    }

    /// `web-1`: the container's name inside its app (`PN_CONTAINER`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.ctype, self.index)
    }

    /// Every DNS name of the container in `network`, most specific first.
    pub fn dns_names(&self, network: &NetworkId) -> Vec<String> {
        let mut out = vec![
            names::container_name(network, &self.app, &self.ctype, self.index),
            names::type_name(network, &self.app, &self.ctype),
        ];
        if names::Selector::Web.matches(&self.ctype, self.index) {
            out.push(names::app_name(network, &self.app));
        }
        out
    }

    /// The host-side end of its veth pair: derived from the key alone
    /// (≤ 15 bytes, [`HOST_IF_PREFIX`]), so every agent names it the same
    /// and a record can only name an interface the agent itself made.
    pub fn host_ifname(&self) -> String {
        let h = fnv1a64(self.to_string().as_bytes());
        format!("{HOST_IF_PREFIX}{:011x}", h & ((1 << 44) - 1))
    }
}

/// Prefix of host-side veth names; anything with it belongs to the agent.
pub const HOST_IF_PREFIX: &str = "pnh";

/// FNV-1a, 64 bits: stable across versions and machines, unlike std's
/// hasher, for names derived from records.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl std::fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}-{}", self.app, self.ctype, self.index)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(flatten)]
    pub key: ContainerKey,
    pub network: NetworkId,
    pub ip: Ipv4Addr,
    /// The host whose agent attached it (and owns its interface).
    pub host: HostId,
    /// Namespace as given to `attach` (name or path).
    pub netns: String,
    /// Interface name inside the namespace.
    pub ifname: String,
    /// Host-side end of the veth pair.
    pub host_ifname: String,
    pub created_at: u64,
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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn key(t: &str, i: u32) -> ContainerKey {
        ContainerKey {
            app: "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap(),
            ctype: t.parse().unwrap(),
            index: i,
        }
    }

    #[test]
    fn host_interface_names_are_short_stable_and_distinct() {
        let a = key("web", 1).host_ifname();
        assert_eq!(a, key("web", 1).host_ifname());
        // The names of running fleets: changing the hash renames every veth.
        assert_eq!(a, "pnh3c95385eaac");
        assert!(a.len() <= 15 && a.starts_with(HOST_IF_PREFIX), "{a}");
        let all: HashSet<_> = (1..500).map(|i| key("web", i).host_ifname()).collect();
        assert_eq!(all.len(), 499);
    }

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

    #[test]
    fn dns_names_follow_the_contract() {
        let net: NetworkId = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c".parse().unwrap();
        assert_eq!(
            key("web", 1).dns_names(&net),
            [
                "1.web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
            ]
        );
        assert_eq!(key("worker", 2).dns_names(&net).len(), 2);
    }
}
