//! The agent's own netlink connection.

use rtnetlink::Handle;

use super::error::{NetlinkError, Result};

/// The agent's own namespace.
#[derive(Clone)]
pub struct Netlink {
    pub(super) handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection (needs a running tokio runtime).
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }
}
