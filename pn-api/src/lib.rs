//! pn's control API, apart from the agent so that its clients (the CLI, the
//! CNI plugin, tests) need neither the datapath nor the store: the protocol
//! (`proto`), a client (`client`), the error kinds every answer carries
//! (`error`), the key that names a container (`key`) and the network
//! configuration the CNI plugin reads (`cni`).

pub mod client;
pub mod cni;
pub mod error;
pub mod key;
pub mod proto;

/// The agent's control socket when none is named (`--api-socket`, the
/// config file's `api-socket`, the CNI configuration's `agentSocket`).
pub const DEFAULT_API_SOCKET: &str = "/run/pn-agent/api.sock";
