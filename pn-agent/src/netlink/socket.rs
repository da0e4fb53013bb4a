//! The agent's own netlink connection.

use std::sync::Arc;

use rtnetlink::Handle;

use super::error::{NetlinkError, Result};

/// The agent's own namespace.
#[derive(Clone)]
pub struct Netlink {
    pub(super) handle: Handle,
    /// The kernel runs one dump at a time per netlink socket and answers
    /// another one started meanwhile with EBUSY; the agent's tasks share
    /// this socket, so its dumps take turns.
    dumps: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a netlink connection (needs a running tokio runtime).
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            dumps: Arc::default(),
        })
    }

    /// Held for the whole of a dump on this socket (see `dumps`).
    pub(super) async fn one_dump(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dumps.lock().await
    }
}
