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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
