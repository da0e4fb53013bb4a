//! pn's control API, apart from the agent so that its clients (the CLI, the
//! CNI plugin, tests) need neither the datapath nor the store: the protocol
//! (`proto`), a client (`client`), the error kinds every answer carries
//! (`error`) and the key that names a container (`key`).

pub mod client;
pub mod error;
pub mod key;
pub mod proto;
