//! The lowest layer of the store: a small transactional key-value interface
//! with revisions and watches, the semantics of etcd's v3 API. It knows
//! nothing of networks or containers; [`super::membership`] builds on it.

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::{ErrorKind, Kind};

/// A stored value, the revision of its last change and of its creation
/// (etcd's `create_revision`: which of two records is the older one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub mod_rev: i64,
    pub create_rev: i64,
}

/// The whole content under a prefix at one revision.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub entries: Vec<(String, Entry)>,
    /// Store revision the listing reflects; watch from `rev + 1`.
    pub rev: i64,
}

/// Condition of a transaction.
#[derive(Clone, Debug)]
pub enum Cond {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at this revision.
    ModRev(String, i64),
}

#[derive(Clone, Debug)]
pub enum Op {
    Put(String, String),
    Delete(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: String,
        value: String,
        rev: i64,
    },
    Delete {
        key: String,
        rev: i64,
    },
    /// The watcher fell behind or the history it needs is gone: list again.
    Resync,
}

/// The server a backend talks to, of several (an etcd cluster's members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The member in use, `scheme://HOST:PORT`.
    pub member: String,
    /// How many times the backend moved to another member.
    pub failovers: u64,
}

/// A failed store request. The kind tells an operator what to do: wait for
/// the store to come back, or look at the data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered but will not serve this host (a certificate it
    /// rejects or does not trust, a role without the permission): retrying
    /// does not help until someone fixes the certificate or the role.
    #[error("store refused this host: {0}")]
    Refused(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Kind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Not reachable for this host, either way; the message says
            // whether to wait or to fix a certificate or a role.
            StoreError::Unavailable(_) | StoreError::Refused(_) => ErrorKind::Unavailable,
            // Records that do not decode and a failing state directory are
            // not cured by retrying: someone has to look.
            StoreError::Corrupt(_) | StoreError::Io(_) => ErrorKind::Internal,
        }
    }
}

/// Transactional key-value store with revisions (etcd v3 semantics). Keys are
/// relative to the backend's own prefix.
pub trait Backend: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>>;
    /// Applies `ops` atomically if every condition holds. `Some(rev)` is the
    /// revision of the commit; `None` means a condition failed (nothing written).
    fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>)
    -> BoxFuture<'_, Result<Option<i64>, StoreError>>;
    /// Changes under `prefix` from revision `from_rev` on, in order.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_rev: i64,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<WatchEvent>, StoreError>>;
    /// Human description for `status` (e.g. "embedded /var/lib/pn-agent/store.log").
    fn describe(&self) -> String;
    /// Which member it talks to, for a store with members.
    fn link(&self) -> Option<Link> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_unavailable_and_bad_data_internal() {
        assert_eq!(
            StoreError::Unavailable("etcd down".into()).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            StoreError::Corrupt("pool: bad json".into()).kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            StoreError::Io(std::io::Error::other("disk full")).kind(),
            ErrorKind::Internal
        );
    }
}
