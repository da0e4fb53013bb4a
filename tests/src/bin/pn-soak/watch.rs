//! The underlay watched all along: a capture of every interface of the
//! underlay's namespace (each host's port on the bridge), rotated after
//! each fault so no file grows with the soak's length; the next capture
//! starts before the last one stops, so nothing passes unwatched.

use pn_tests::{Namespace, net::Capture};

use crate::traffic::MARKER;

pub struct Watch {
    ns: String,
    current: Option<Capture>,
    frames: u64,
}

fn capture(ns: &str) -> Capture {
    // etcd's members talk among themselves inside the underlay's
    // namespace: their raft traffic carries no member's packet.
    Capture::start(&Namespace::borrowed(ns), "any", "ip and not tcp port 2380")
}

impl Watch {
    pub fn start(underlay: &Namespace) -> Watch {
        Watch {
            ns: underlay.name.clone(),
            current: Some(capture(&underlay.name)),
            frames: 0,
        }
    }

    /// Starts the next capture, stops the current one and scans it: the
    /// frames that carry a member's payload in clear.
    pub fn rotate(&mut self) -> usize {
        let next = capture(&self.ns);
        let seen = self.scan_current();
        self.current = Some(next);
        seen
    }

    /// Stops watching: the clear-text frames of the last capture, and the
    /// frames scanned over the whole watch.
    pub fn finish(&mut self) -> (usize, u64) {
        let seen = self.scan_current();
        (seen, self.frames)
    }

    fn scan_current(&mut self) -> usize {
        let Some(c) = self.current.take() else {
            return 0;
        };
        let frames = c.finish();
        self.frames += frames.len() as u64;
        frames.iter().filter(|f| carries_marker(f)).count()
    }
}

fn carries_marker(frame: &[u8]) -> bool {
    frame
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == MARKER[0])
        .any(|(i, _)| frame[i..].starts_with(MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_anywhere_in_a_frame() {
        let mut f = vec![0u8; 60];
        assert!(!carries_marker(&f));
        f.extend_from_slice(MARKER);
        assert!(carries_marker(&f));
        assert!(!carries_marker(&MARKER[..MARKER.len() - 1]));
    }
}
