//! What the edge's nftables rules drop themselves, by counter.

/// The names of pn's counters in its table (and in metrics' `reason`).
pub const COUNTER_FORWARD_DENIED: &str = "forward_denied";
pub const COUNTER_EGRESS_DENIED: &str = "egress_denied";
pub const COUNTER_POOL_SPOOFED: &str = "pool_spoofed";
pub const COUNTER_DNS_DENIED: &str = "dns_denied";

/// Packets and bytes of one of pn's nftables counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Count {
    fn add_assign(&mut self, o: Count) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// What the rules drop themselves (everything else is counted by the eBPF
/// programs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeCounters {
    /// Forwarded traffic that is not pn's (with the forward guard).
    pub forward_denied: Count,
    /// New connections from a container to a denied range that got past
    /// the datapath (should stay zero).
    pub egress_denied: Count,
    /// Pool sources forwarded from anywhere but pn's interfaces.
    pub pool_spoofed: Count,
    /// Queries to the gateway's DNS from anywhere but pn's containers.
    pub dns_denied: Count,
}

impl EdgeCounters {
    /// Each counter by its name in the table (and in metrics' `reason`).
    pub fn by_reason(&self) -> [(&'static str, Count); 4] {
        [
            (COUNTER_FORWARD_DENIED, self.forward_denied),
            (COUNTER_EGRESS_DENIED, self.egress_denied),
            (COUNTER_POOL_SPOOFED, self.pool_spoofed),
            (COUNTER_DNS_DENIED, self.dns_denied),
        ]
    }

    /// The counter named `name` in the table, if it is one of pn's.
    pub(super) fn by_name(&mut self, name: &str) -> Option<&mut Count> {
        Some(match name {
            COUNTER_FORWARD_DENIED => &mut self.forward_denied,
            COUNTER_EGRESS_DENIED => &mut self.egress_denied,
            COUNTER_POOL_SPOOFED => &mut self.pool_spoofed,
            COUNTER_DNS_DENIED => &mut self.dns_denied,
            _ => return None,
        })
    }
}

impl std::ops::AddAssign for EdgeCounters {
    fn add_assign(&mut self, o: EdgeCounters) {
        for (name, count) in o.by_reason() {
            if let Some(c) = self.by_name(name) {
                *c += count;
            }
        }
    }
}
