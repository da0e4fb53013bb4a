//! Each container's share of the connection tables (`--conn-share`): the
//! programs refuse a container's new connection once it holds its share,
//! so one container opening connections without end neither fills a table
//! nor makes the LRU evict other containers' entries (their world,
//! published and balanced connections). The counts are
//! `maps::ConnCount`, one row per container.

/// Whether a container holding `held` entries of a table may add one
/// (`share` 0: no share).
pub const fn within_share(held: u64, share: u32) -> bool {
    share == 0 || held < share as u64
}

/// The count the agent's sweep writes back: what it found in the table
/// (`found`), plus what the programs added while it looked (`before` and
/// `after`: the count read before the scan and just before the write).
/// Entries added during the scan may be in `found` too: counted twice
/// until the next sweep, which errs toward refusing, never toward letting
/// a container past its share.
pub const fn recounted(found: u64, before: u64, after: u64) -> u64 {
    found.saturating_add(after.saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_bounds_what_a_container_holds() {
        assert!(within_share(0, 64));
        assert!(within_share(63, 64));
        assert!(!within_share(64, 64));
        // A count the programs raised past the share (two CPUs at once).
        assert!(!within_share(65, 64));
        // No share: the old behaviour.
        assert!(within_share(u64::MAX, 0));
    }

    #[test]
    fn a_recount_keeps_what_was_added_during_the_scan() {
        assert_eq!(recounted(10, 30, 30), 10);
        assert_eq!(recounted(10, 30, 35), 15);
        // The count was reset under the sweep (a new container took the
        // slot): nothing is subtracted from what was found.
        assert_eq!(recounted(10, 30, 0), 10);
        assert_eq!(recounted(u64::MAX, 0, 5), u64::MAX);
    }
}
