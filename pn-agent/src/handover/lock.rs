//! The state directory's lock: one agent per state directory. A successor
//! takes it once its predecessor is gone.

use std::{
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

use super::error::HandoverError;

/// The lock of a state directory (held for the agent's life).
pub struct StateLock;

impl StateLock {
    fn file(dir: &Path) -> Result<File, HandoverError> {
        File::create(dir.join("agent.lock"))
            .map_err(|e| HandoverError::Io("creating agent.lock", e))
    }

    /// The lock, or `None` while another agent holds it.
    pub fn try_take(dir: &Path) -> Result<Option<Flock<File>>, HandoverError> {
        Ok(Flock::lock(Self::file(dir)?, FlockArg::LockExclusiveNonblock).ok())
    }

    /// The lock, waiting up to `wait` for the agent holding it to exit.
    pub fn take(dir: &Path, wait: Duration) -> Result<Flock<File>, HandoverError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(l) = Self::try_take(dir)? {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(HandoverError::Busy(dir.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
