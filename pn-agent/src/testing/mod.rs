//! Test support, one home for this crate's unit tests and the integration
//! tests (feature `testing`; never compiled into the agent): test
//! certificates, a real etcd, model records built one way.

pub mod etcd;
pub mod model;
pub mod pki;
