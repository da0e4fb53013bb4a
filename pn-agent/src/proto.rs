//! The control API's protocol: one JSON request per line on a Unix socket,
//! one JSON response line back (or a stream of lines for `flows --follow`).
//! Types only: the agent answers with them (`server`), the CLI sends
//! them (`client`).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};
use serde::{Deserialize, Serialize};

use crate::{
    error::Error,
    model::{ContainerKey, Egress},
};

/// Longest request line accepted (a request is a few hundred bytes).
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    NetworkCreate {
        id: Option<NetworkId>,
        cidr: Option<Ipv4Net>,
        egress: Option<Egress>,
    },
    NetworkUpdate {
        id: NetworkId,
        egress: Egress,
    },
    NetworkList,
    NetworkDelete {
        id: NetworkId,
        force: bool,
    },
    AppCreate {
        network: NetworkId,
        id: Option<AppId>,
        name: Option<String>,
        web_port: Option<u16>,
    },
    AppList {
        network: Option<NetworkId>,
    },
    AppDelete {
        id: AppId,
    },
    ContainerAttach {
        app: AppId,
        #[serde(rename = "type")]
        ctype: ContainerType,
        index: Option<u32>,
        netns: String,
        ifname: String,
    },
    ContainerDetach {
        #[serde(flatten)]
        key: ContainerKey,
    },
    ContainerList {
        app: Option<AppId>,
        network: Option<NetworkId>,
    },
    DomainNames {
        app: AppId,
    },
    Env {
        #[serde(flatten)]
        key: ContainerKey,
    },
    Status,
    Flows {
        follow: bool,
    },
    HostList,
    HostRemove {
        id: HostId,
    },
}

impl Request {
    /// Name for logs and metrics.
    pub fn command(&self) -> &'static str {
        match self {
            Request::NetworkCreate { .. } => "network-create",
            Request::NetworkUpdate { .. } => "network-update",
            Request::NetworkList => "network-list",
            Request::NetworkDelete { .. } => "network-delete",
            Request::AppCreate { .. } => "app-create",
            Request::AppList { .. } => "app-list",
            Request::AppDelete { .. } => "app-delete",
            Request::ContainerAttach { .. } => "container-attach",
            Request::ContainerDetach { .. } => "container-detach",
            Request::ContainerList { .. } => "container-list",
            Request::DomainNames { .. } => "domain-names",
            Request::Env { .. } => "env",
            Request::Status => "status",
            Request::Flows { .. } => "flows",
            Request::HostList => "host-list",
            Request::HostRemove { .. } => "host-remove",
        }
    }
}

/// `{"ok": …}` or `{"error": {"kind": "not_found", "message": "one line"}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(serde_json::Value),
    Error(Error),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkInfo {
    pub id: NetworkId,
    pub cidr: Ipv4Net,
    pub tag: u32,
    #[serde(default)]
    pub egress: Egress,
    pub apps: usize,
    pub containers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AppInfo {
    pub id: AppId,
    pub network: NetworkId,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_web_port")]
    pub web_port: u16,
    pub containers: usize,
}

fn default_web_port() -> u16 {
    crate::model::DEFAULT_WEB_PORT
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    /// `ap-…/type-index`.
    pub id: String,
    pub app: AppId,
    pub network: NetworkId,
    #[serde(rename = "type")]
    pub ctype: ContainerType,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub host: String,
    pub netns: String,
    pub interface: String,
    pub host_interface: String,
    pub names: Vec<String>,
    /// `HOST_IP:PORT` where the platform's routers reach it (`web`
    /// containers of a host with `--router-cidr`); `null` otherwise.
    #[serde(default)]
    pub published: Option<SocketAddrV4>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub id: HostId,
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    pub containers: usize,
    /// The host this agent runs on.
    pub this: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub host: String,
    pub version: String,
    pub store: StoreStatus,
    pub datapath: DatapathStatus,
    pub endpoints: EndpointCounts,
    pub peers: Vec<PeerStatus>,
    pub dns: String,
    pub tunnel: String,
    #[serde(default)]
    pub edge: EdgeStatus,
}

/// The edge: the world and the routers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EdgeStatus {
    /// The nftables table is in place.
    pub applied: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Addresses published ports answer on.
    pub host_addrs: Vec<Ipv4Addr>,
    pub router_cidrs: Vec<Ipv4Net>,
    /// `--publish-ports`.
    pub publish_ports: String,
    /// `web` containers of this host published.
    pub published: usize,
    /// Ranges that are never the world, merged.
    pub egress_deny: Vec<Ipv4Net>,
    /// `pn-only` or `shared`.
    pub forwarding: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    pub backend: String,
    pub reachable: bool,
    pub revision: i64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Records read from the store and refused, by reason.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatapathStatus {
    pub bpffs: PathBuf,
    pub programs: Vec<String>,
    /// Host-side interfaces with both programs attached.
    pub attached_interfaces: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointCounts {
    pub local: usize,
    pub remote: usize,
    pub in_maps: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub host: String,
    #[serde(default)]
    pub advertise: Option<String>,
    pub containers: usize,
    pub tunnel: String,
}
