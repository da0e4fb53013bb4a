//! Test support, one home for this crate's unit tests and the integration
//! tests (feature `testing`; never compiled into the agent): test
//! certificates, a real etcd (one member or a cluster), model records built
//! one way.

pub mod etcd;
pub mod etcd_cluster;
pub mod model;
pub mod pki;
