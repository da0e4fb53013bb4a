//! The records of the membership store: what a network, an application, a
//! container and a host are, as every agent of the fleet sees them.

use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub cidr: Ipv4Net,
    /// Small integer naming the network in the kernel maps and on the wire.
    pub tag: u32,
    pub created_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: AppId,
    pub network: NetworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at: u64,
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

    /// Deterministic host-side interface name (≤ 15 bytes): the only name
    /// a container record may carry for its host end.
    pub fn host_ifname(&self) -> String {
        format!(
            "{HOST_IF_PREFIX}{:011x}",
            fnv1a(self.to_string().as_bytes()) & ((1 << 44) - 1)
        )
    }

    /// `web-1`: the container's name inside its app (`PN_CONTAINER`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.ctype, self.index)
    }
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
}

/// Owner of an allocated address (the `ips/` keys), written before the
/// container record so that two attaches can never get the same address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressLease {
    #[serde(flatten)]
    pub owner: ContainerKey,
    pub host: HostId,
}

/// Prefix of host-side veth names; anything with it belongs to the agent.
pub const HOST_IF_PREFIX: &str = "pnh";

/// FNV-1a (64 bits): stable across versions and machines, unlike std's
/// hasher, for names derived from ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Stable, non-zero index of a peer host in the datapath and the tunnel.
pub fn peer_index(host: &HostId) -> u32 {
    let h = fnv1a(host.as_str().as_bytes());
    ((h ^ (h >> 32)) as u32).max(1)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
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
        assert!(a.len() <= 15 && a.starts_with(HOST_IF_PREFIX), "{a}");
        let all: std::collections::HashSet<_> =
            (1..500).map(|i| key("web", i).host_ifname()).collect();
        assert_eq!(all.len(), 499);
    }

    #[test]
    fn peer_indexes_are_never_zero() {
        for i in 0..1000 {
            let h: HostId = format!("host-{i}").parse().unwrap();
            assert_ne!(peer_index(&h), 0);
        }
    }
}
