//! The device's runtime switches: how many workers, which offloads, the
//! spin before sleeping. Every offload can be turned off (kernels have
//! broken them before: Tailscale had to add the same switches).

use std::time::Duration;

/// More workers than this gain nothing on one TUN device and cost memory.
pub const MAX_WORKERS: usize = 64;

/// The offloads, by the name their switch takes.
pub const OFFLOADS: [&str; 4] = ["tso", "gso", "gro", "coalesce"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Workers (a TUN queue, a UDP socket and a thread each way each);
    /// 0: one per CPU this process may run on.
    pub workers: usize,
    /// `tso`: the TUN device hands us TCP super-packets (and checksums
    /// left to do), segmented here once.
    pub tso: bool,
    /// `gso`: a train of datagrams to one peer leaves in one send
    /// (UDP_SEGMENT).
    pub gso: bool,
    /// `gro`: the kernel coalesces datagrams from one peer into one read
    /// (UDP_GRO).
    pub gro: bool,
    /// `coalesce`: opened segments of one TCP flow reach the TUN device as
    /// one super-packet.
    pub coalesce: bool,
    /// How long a loop that just had traffic polls before it sleeps
    /// (zero: it sleeps at once). Idle loops never spin.
    pub spin: Duration,
    /// With more than one worker, each stays on one CPU, and its socket
    /// gets the datagrams that CPU received (SO_INCOMING_CPU): a flow stays
    /// on its worker.
    pub pin: bool,
    /// With `pin`, the receiving threads stay on their CPUs too (the
    /// default); off, the scheduler places them (their sockets still get
    /// what their CPU received). On one machine carrying both ends (the
    /// bench's hosts), pinned receivers put a stream's sealing and opening
    /// on one CPU, its two ends' threads taking turns; free ones carry the
    /// stream faster but round trips slower (README).
    pub pin_rx: bool,
    /// The agent's edge keeps the sockets' datagrams with the other hosts
    /// out of connection tracking (`--tunnel-notrack`). The device itself
    /// does nothing with it: it is here to be said in the log line at start
    /// with the other switches.
    pub notrack: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 0,
            tso: true,
            gso: true,
            gro: true,
            coalesce: true,
            spin: Duration::ZERO,
            pin: true,
            pin_rx: true,
            notrack: false,
        }
    }
}

impl Options {
    /// Turns on exactly the offloads of `list` (comma-separated names of
    /// [`OFFLOADS`], or `none`).
    pub fn set_offloads(&mut self, list: &str) -> Result<(), String> {
        let names: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "none")
            .collect();
        if let Some(bad) = names.iter().find(|n| !OFFLOADS.contains(n)) {
            return Err(format!(
                "unknown offload {bad:?} (known: {}, or none)",
                OFFLOADS.join(", ")
            ));
        }
        let on = |n: &str| names.contains(&n);
        (self.tso, self.gso, self.gro, self.coalesce) =
            (on("tso"), on("gso"), on("gro"), on("coalesce"));
        Ok(())
    }

    /// The workers to run: as asked, or one per CPU allowed.
    pub fn worker_count(&self) -> usize {
        let n = match self.workers {
            0 => super::sys::allowed_cpus().len(),
            n => n,
        };
        n.clamp(1, MAX_WORKERS)
    }

    /// What is on, for the log line at start.
    pub fn describe(&self) -> String {
        let onoff = |b: bool| if b { "on" } else { "off" };
        let spin = match self.spin.as_micros() {
            0 => "off".to_string(),
            us => format!("{us} µs"),
        };
        format!(
            "offloads tso {}, gso {}, gro {}, coalesce {}; spin {spin}; pinning {}; notrack {}",
            onoff(self.tso),
            onoff(self.gso),
            onoff(self.gro),
            onoff(self.coalesce),
            match (self.pin, self.pin_rx) {
                (false, _) => "off",
                (true, false) => "on (receiving threads free)",
                (true, true) => "on (both ways)",
            },
            onoff(self.notrack),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_lists() {
        let mut o = Options::default();
        o.set_offloads("gso, gro").unwrap();
        assert!(!o.tso && o.gso && o.gro && !o.coalesce);
        o.set_offloads("none").unwrap();
        assert!(!o.tso && !o.gso && !o.gro && !o.coalesce);
        assert!(o.set_offloads("tso,lro").is_err());
        assert!(o.describe().contains("tso off"));
        assert!(o.describe().ends_with("notrack off"));
        assert!(o.describe().contains("pinning on (both ways)"));
        o.pin_rx = false;
        assert!(o.describe().contains("pinning on (receiving threads free)"));
        o.pin = false;
        assert!(o.describe().contains("pinning off"));
    }

    #[test]
    fn one_worker_at_least() {
        let o = Options::default();
        assert!(o.worker_count() >= 1);
        let o = Options {
            workers: 1000,
            ..Options::default()
        };
        assert_eq!(o.worker_count(), MAX_WORKERS);
    }
}
