//! The control API's protocol: one JSON request per line on a Unix socket,
//! one JSON response line back (or a stream of lines for `flows --follow`).
//! Types only: the agent answers with them (`server`), the CLI sends
//! them (`client`).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    path::PathBuf,
};

use ipnet::{Ipv4Net, Ipv6Net};
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};
use serde::{Deserialize, Serialize};

use crate::{
    error::Error,
    key::{ContainerKey, RuntimeRef},
};

/// Longest request line accepted (a request is a few hundred bytes).
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    NetworkCreate {
        id: Option<NetworkId>,
        cidr: Option<Ipv4Net>,
        /// A /64 of the fleet's IPv6 pool (default: the next free one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cidr6: Option<Ipv6Net>,
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
        #[serde(default)]
        web_port: Option<u16>,
        #[serde(default)]
        balance: Balance,
        #[serde(default)]
        health_port: Option<u16>,
    },
    AppUpdate {
        id: AppId,
        #[serde(default)]
        balance: Option<Balance>,
        #[serde(default)]
        health_port: Option<u16>,
    },
    AppList {
        network: Option<NetworkId>,
    },
    AppDelete {
        id: AppId,
    },
    /// Moves an application and its containers, on every host, to another
    /// network: new addresses in place, same interfaces.
    AppMove {
        id: AppId,
        network: NetworkId,
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
    /// The CNI plugin's ADD: attach `netns` as a container of `app` for a
    /// runtime; idempotent per (runtime container id, `ifname`) on this host.
    /// Answers an [`Attachment`].
    CniAdd {
        app: AppId,
        #[serde(rename = "type")]
        ctype: ContainerType,
        index: Option<u32>,
        netns: String,
        ifname: String,
        runtime: RuntimeRef,
    },
    /// The CNI plugin's DEL: detach what ADD made for (runtime container id,
    /// `ifname`) on this host, if anything. Answers the container detached
    /// (`Option<ContainerInfo>`).
    CniDel {
        app: AppId,
        ifname: String,
        runtime: RuntimeRef,
    },
    /// The CNI plugin's CHECK: the attachment exists and is as ADD left it.
    /// Answers an [`Attachment`].
    CniCheck {
        app: AppId,
        netns: String,
        ifname: String,
        runtime: RuntimeRef,
    },
    /// The CNI plugin's GC (spec 1.1.0): detach this host's containers of
    /// `app` that runtime network `network` attached and that are not among
    /// `valid` (runtime container id, interface name). Answers the
    /// containers detached (`Vec<ContainerInfo>`).
    CniGc {
        app: AppId,
        network: String,
        valid: Vec<(String, String)>,
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
            Request::AppUpdate { .. } => "app-update",
            Request::AppList { .. } => "app-list",
            Request::AppDelete { .. } => "app-delete",
            Request::AppMove { .. } => "app-move",
            Request::ContainerAttach { .. } => "container-attach",
            Request::ContainerDetach { .. } => "container-detach",
            Request::ContainerList { .. } => "container-list",
            Request::CniAdd { .. } => "cni-add",
            Request::CniDel { .. } => "cni-del",
            Request::CniCheck { .. } => "cni-check",
            Request::CniGc { .. } => "cni-gc",
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
    /// Its IPv6 range (none: not given one yet).
    #[serde(default)]
    pub cidr6: Option<Ipv6Net>,
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
    #[serde(default)]
    pub balance: Balance,
    /// With `vip`: each type's service address and the containers in its
    /// rotation (on any host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceInfo {
    #[serde(rename = "type")]
    pub ctype: ContainerType,
    pub addr: Ipv4Addr,
    /// Its IPv6 twin, in a network with an IPv6 range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<std::net::Ipv6Addr>,
    /// Containers in the rotation (attached and healthy).
    pub backends: Vec<Ipv4Addr>,
    /// Containers of the type out of it (failing their health check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<Ipv4Addr>,
    /// This host's counters, per container of the type (in the rotation or
    /// not) that any of its clients reached through the address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<BackendCounters>,
}

/// What clients on one host did with one backend of a service address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendCounters {
    /// The backend container's IPv4 address, both families' counts summed;
    /// its IPv6 address for counts through the IPv6 service address of a
    /// backend that is no longer a member (its IPv4 address is not known
    /// any more). Written as an address string either way.
    pub backend: std::net::IpAddr,
    /// Connections (and UDP flows) sent to it.
    pub connections: u64,
    /// Established TCP connections reset because it left the rotation.
    pub resets: u64,
    /// UDP flows moved to another backend because it left the rotation.
    pub moved: u64,
}

fn default_web_port() -> u16 {
    DEFAULT_WEB_PORT
}

/// The port a `web` container serves on when its app does not say.
pub const DEFAULT_WEB_PORT: u16 = 8080;

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
    /// Its IPv6 address; `null` when it has none (its host runs with
    /// `--ipv6 off`, or its network has no IPv6 range yet).
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
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

/// A container as the CNI plugin reports it to its runtime: the container,
/// and what its namespace was given (interface, routes, DNS).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub container: ContainerInfo,
    /// MAC address of the interface inside the namespace.
    pub mac: String,
    pub mtu: u32,
    /// The address (a /32 on the interface) and its gateway.
    pub gateway: Ipv4Addr,
    /// Destinations routed through the gateway.
    pub routes: Vec<Ipv4Net>,
    /// With an IPv6 address (a /128 on the interface): its gateway, the
    /// link-local `fe80::1`; `null` without.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// IPv6 destinations routed through `gateway6` (none without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes6: Vec<Ipv6Net>,
    pub nameservers: Vec<Ipv4Addr>,
    /// Search domains (the container's network zone).
    pub search: Vec<String>,
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
    /// `pn-only` (the table drops forwarded traffic that is not pn's) or
    /// `shared`.
    pub forwarding: String,
    /// `--forward-guard`: `auto`, `on` or `off`.
    #[serde(default)]
    pub forward_guard: String,
    /// IPv4 forwarding was on before pn first ran on this host.
    #[serde(default)]
    pub forwarded_before_pn: bool,
    /// IPv6's `forwarding`, decided on its own (`shared` with `--ipv6 off`).
    #[serde(default)]
    pub forwarding6: String,
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
    /// The etcd member in use (`scheme://HOST:PORT`), for a cluster.
    #[serde(default)]
    pub member: Option<String>,
    /// How many times the agent moved to another member.
    #[serde(default)]
    pub failovers: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatapathStatus {
    pub bpffs: PathBuf,
    pub programs: Vec<String>,
    /// Host-side interfaces with both programs attached.
    pub attached_interfaces: usize,
    /// Events the programs could not deliver (ring buffer full), per kind
    /// (`flow`, `conn`), one count per CPU.
    #[serde(default)]
    pub events_lost: std::collections::BTreeMap<String, Vec<u64>>,
    /// Flow events held back by the per-CPU budget, per kind (`drop`,
    /// `new_flow`), summed over CPUs.
    #[serde(default)]
    pub events_suppressed: std::collections::BTreeMap<String, u64>,
    /// Connections in the agent's table (requests and connections tracking).
    #[serde(default)]
    pub conns_tracked: usize,
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

/// How a client's connections to an app's names reach its containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// The seed's behaviour: the names answer every container; the DNS
    /// client chooses.
    #[default]
    Dns,
    /// The names answer one service address per type; the datapath chooses
    /// a live container for each new connection.
    Vip,
}

impl Balance {
    pub fn is_dns(&self) -> bool {
        *self == Balance::Dns
    }
}

impl std::str::FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dns" => Ok(Balance::Dns),
            "vip" => Ok(Balance::Vip),
            _ => Err(format!("invalid balance {s:?}: dns or vip")),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::Dns => "dns",
            Balance::Vip => "vip",
        })
    }
}

/// A network's access to the world (`--egress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::str::FromStr for Egress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Egress::Allow),
            "deny" => Ok(Egress::Deny),
            other => Err(format!("invalid egress {other:?}: allow or deny")),
        }
    }
}
