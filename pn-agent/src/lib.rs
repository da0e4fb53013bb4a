//! pn's host agent as a library: the binary (`main.rs`) is only the command
//! line; every module here is usable from tests, benchmarks and fuzz targets.
//! The control API's protocol, client and error kinds live in `pn-api` (so
//! its clients need no datapath) and are re-exported here under their old paths.

pub use pn_api::{client, error, proto};

pub mod agent;
pub mod config;
pub mod conns;
pub mod datapath;
pub mod dns;
pub mod edge;
pub mod flows;
pub mod handover;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod render;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The compiled eBPF object (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pn-ebpf"));
