//! pn's host agent as a library: the binary (`main.rs`) is only the command
//! line; every module here is usable from tests, benchmarks and fuzz targets.

pub mod agent;
pub mod client;
pub mod config;
pub mod datapath;
pub mod dns;
pub mod error;
pub mod flows;
pub mod handover;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod proto;
pub mod server;
pub mod store;

/// The compiled eBPF object (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pn-ebpf"));
