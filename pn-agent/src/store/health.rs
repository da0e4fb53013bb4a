//! Whether the store answers, as the follower last saw it: read by `status`
//! and the metrics, written only by the follower.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

#[derive(Debug, Default)]
pub struct Health {
    reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub fn set(&self, reachable: bool, error: Option<String>) {
        let was = self.reachable.swap(reachable, Ordering::Relaxed);
        if was != reachable {
            if reachable {
                log::info!("store reachable");
            } else {
                log::warn!("store unreachable: {}", error.as_deref().unwrap_or("?"));
            }
        }
        if error.is_some() {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        }
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
