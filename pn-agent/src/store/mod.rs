//! The membership store, in three layers, each using only the one below:
//!
//! - [`backend`]: a small transactional key-value interface with revisions
//!   and watches, the semantics of etcd's v3 API. Two implementations: the
//!   [`embedded`] file-backed store (default, one machine) and [`etcd`] (a
//!   fleet).
//! - [`keys`]: the key layout, one printer and one parser.
//! - [`membership`]: networks, applications, containers, hosts and address
//!   allocation, written once on top of any backend, so both behave the same
//!   and one conformance suite covers them.
//!
//! Every agent keeps a [`view::MembershipView`] fed by `list` + `watch`;
//! [`metrics`] reads it (and [`health`]) at each scrape.

pub mod backend;
pub mod embedded;
pub mod etcd;
pub mod health;
pub mod keys;
pub mod membership;
pub mod metrics;
pub mod view;

pub use backend::{Backend, Cond, Entry, Link, Listing, Op, StoreError, WatchEvent};
pub use membership::{Membership, MembershipError, NewNetwork, PoolDoc, PoolEntry, Reserved};

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod conformance6;
#[cfg(test)]
pub(crate) mod lease_conformance;
#[cfg(test)]
pub(crate) mod move_conformance;
#[cfg(test)]
pub(crate) mod placement_conformance;
