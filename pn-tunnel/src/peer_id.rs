//! How the agent names a peer host, apart from the [`crate::Tunnel`] that
//! keys its table by it, so the modules the tunnel uses can name peers too.

/// The agent's own number for a peer host.
pub type PeerId = u32;
