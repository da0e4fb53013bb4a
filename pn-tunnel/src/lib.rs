//! pn's encrypted tunnel between hosts, "sans I/O" (as boringtun's `noise`):
//! [`Tunnel`] takes datagrams and packets in and says what to send, with no
//! socket, device or clock inside — time comes in as a [`Clock`]. The
//! `device` feature adds the I/O loop around it (a TUN device, a UDP socket,
//! threads), and `metrics` its Prometheus collector; without them the crate
//! is the protocol alone, which is what the fuzz targets and the benchmark
//! build.
//!
//! Modules: `wire` (byte layouts), `handshake` (Noise IK), `cookie`
//! (mac1/mac2 and cookie replies against handshake floods), `keyfile` (the
//! host's static key on disk), `aead` (the data path's ciphers), `suite`
//! (which of them a session uses), `replay`,
//! `session` (sessions and their rotation per peer), `carry` (the sessions
//! handed to a successor agent), `offload` (TSO/GRO),
//! and the `Tunnel` split by what it owns: its peer table and timers,
//! pairing, and the data path.

pub mod aead;
pub mod carry;
pub mod cookie;
#[cfg(feature = "device")]
pub mod device;
pub mod handshake;
pub mod keyfile;
pub mod offload;
pub mod replay;
pub mod session;
pub mod suite;
pub mod wire;

mod config;
mod data;
mod limiter;
mod members;
mod pairing;
mod peer_id;
mod tunnel;

pub use config::{Clock, Config};
pub use data::{Decap, Encap, Opener, Sealer};
pub use members::{Member, Members, check_incoming, route_outgoing};
pub use peer_id::PeerId;
pub use tunnel::{PeerState, Stats, Tunnel};

#[cfg(test)]
mod tests;
