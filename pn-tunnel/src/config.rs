//! The tunnel's timers and limits, and time as it is handed in.

use std::time::{Duration, Instant};

use crate::aead::Cipher;

#[derive(Clone, Debug)]
pub struct Config {
    /// This host's preference (see `suite`): AES-256-GCM, or which
    /// implementation of ChaCha20-Poly1305 it uses.
    pub cipher: Cipher,
    /// Whether this CPU has AES instructions (without, AES-256-GCM is never
    /// offered): [`crate::aead::aes_hardware`] unless a test says otherwise.
    pub aes_hardware: bool,
    /// An initiator starts a new handshake once its session is this old…
    pub rekey_after_time: Duration,
    /// …and nobody uses a session older than this.
    pub reject_after_time: Duration,
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
    /// An unanswered initiation is sent again after this long…
    pub handshake_retry: Duration,
    /// …until this long has passed, then queued packets are dropped.
    pub handshake_give_up: Duration,
    /// Packets kept per peer while a handshake is in flight.
    pub max_queued: usize,
    /// Initiations answered per second from all sources together; beyond
    /// it the tunnel is under load and answers only initiations that carry
    /// a cookie it gave (mac2), and any other with a cookie reply.
    pub handshake_load_per_sec: f64,
    /// …and so much time spent on them per second (whichever comes first).
    pub handshake_cpu_per_sec: Duration,
    /// Under load, initiations answered per proven source address and
    /// second (burst: 2×).
    pub handshakes_per_sec: f64,
}

impl Default for Config {
    /// WireGuard's timers and limits.
    fn default() -> Config {
        Config {
            cipher: Cipher::Ring,
            aes_hardware: crate::aead::aes_hardware(),
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            reject_after_messages: u64::MAX - (1 << 13),
            handshake_retry: Duration::from_secs(5),
            handshake_give_up: Duration::from_secs(90),
            max_queued: 256,
            handshake_load_per_sec: 200.0,
            handshake_cpu_per_sec: Duration::from_millis(100),
            handshakes_per_sec: 20.0,
        }
    }
}

/// Time as the tunnel sees it: a monotonic instant for timers, and wall
/// time (ns since the epoch) for the initiation timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub wall_ns: u64,
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            now: Instant::now(),
            wall_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }
}
