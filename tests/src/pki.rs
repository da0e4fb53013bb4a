//! Test certificates: pn-agent's own recipe (the commands README's "etcd:
//! TLS and roles" gives an operator), shared with its unit tests.

pub use pn_agent::pki::{Pair, Pki};
