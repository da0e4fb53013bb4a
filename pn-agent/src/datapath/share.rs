//! The sweep of the connection tables, which keeps each container's count
//! of entries (`PN_CONN_COUNT`, against `--conn-share`) true: the programs
//! add one per entry they create and never subtract, so every
//! [`SWEEP_EVERY`] the agent removes what has idled out (or belongs to no
//! local container any more) and writes back what each container holds.
//! A count the programs raised twice for one entry (two CPUs), or an entry
//! the LRU evicted, is right again after the next sweep. What to keep and
//! whom to count is decided here, without a kernel; `kernel::sweep` reads
//! and writes the maps.

use std::{collections::BTreeMap, time::Duration};

use pn_common::{
    lb::{LbConn, LbConnKey},
    maps::{ConnState, FlowKey, FlowState},
    policy::{self, IPPROTO_UDP},
};

/// How often the tables are swept. The shortest idle time is minutes
/// (UDP's 5, a closed TCP connection's 2): a container's count is at most
/// this late over what it holds.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a sweep found: entries per container (by counter row), and what it
/// removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// `PN_CONNS` and `PN_CONNS6` entries per row.
    pub conns: BTreeMap<u16, u64>,
    /// Balanced connections (forward entries of `PN_LB_CONNS`) per row.
    pub lb: BTreeMap<u16, u64>,
    /// Entries removed: idled out, closed long ago, or of no local container.
    pub removed: u64,
}

/// A `PN_CONNS`/`PN_CONNS6` entry: the row to count it in, or `None` to
/// remove it (idled out, or its container is not local any more: a
/// detach forgets them, this catches what a crash left). `owner`: the row
/// of the local container of the key's address.
pub fn judge_conn(owner: Option<u16>, entry: &ConnState, proto: u8, now_ns: u64) -> Option<u16> {
    let row = owner?;
    policy::conn_live(entry, proto, now_ns).map(|_| row)
}

/// A `PN_LB_CONNS` entry: what the sweep does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbJudged {
    /// A forward entry: kept, one balanced connection of this row.
    Count(u16),
    /// A reverse entry: kept (its connection is counted by its forward one).
    Keep,
    Remove,
}

/// The `PN_FLOWS` key of a balanced connection's forward packets (after the
/// balancer: toward the backend), whose stamp says whether a UDP flow is
/// still in use.
pub fn lb_flow(key: &LbConnKey, entry: &LbConn) -> FlowKey {
    let backend = if key.reverse == 0 {
        entry.addr
    } else {
        key.remote
    };
    FlowKey {
        src: key.client,
        dst: backend,
        sport: key.client_port,
        dport: key.remote_port,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// A `PN_LB_CONNS` entry. `owner`: the row of the local container of its
/// client; `flow`: the `PN_FLOWS` entry of [`lb_flow`] (read for UDP only);
/// `now_ns`: the monotonic clock (the programs' seconds are its seconds).
/// A TCP connection lives until it closes (then [`LbConn::expired`], as the
/// programs judge it); a UDP flow, which never closes, as long as its
/// client sends within the UDP idle time of `PN_CONNS` (5 min).
pub fn judge_lb(
    owner: Option<u16>,
    key: &LbConnKey,
    entry: &LbConn,
    flow: Option<FlowState>,
    now_ns: u64,
) -> LbJudged {
    let Some(row) = owner else {
        return LbJudged::Remove;
    };
    let now_s = (now_ns / 1_000_000_000) as u32;
    if entry.expired(now_s) {
        return LbJudged::Remove;
    }
    if key.proto == IPPROTO_UDP {
        let idle = flow.map_or(u64::MAX, |f| now_ns.saturating_sub(f.last_seen_ns));
        if idle >= policy::CONN_IDLE_OTHER_NS {
            return LbJudged::Remove;
        }
    }
    if key.reverse == 0 {
        LbJudged::Count(row)
    } else {
        LbJudged::Keep
    }
}

impl Swept {
    pub fn count_conn(&mut self, row: u16) {
        *self.conns.entry(row).or_default() += 1;
    }

    pub fn count_lb(&mut self, row: u16) {
        *self.lb.entry(row).or_default() += 1;
    }
}

/// The counter rows of the local containers, by address.
pub type Owners<A> = BTreeMap<A, u16>;

#[cfg(test)]
mod tests {
    use pn_common::{
        Ip4, ip4,
        lb::{LB_CLOSED_GRACE_S, LB_FIN_BACKEND, LB_FIN_CLIENT, lb_closing},
        maps::ConnKind,
        policy::{CONN_IDLE_CLOSING_NS, CONN_IDLE_OTHER_NS, IPPROTO_TCP, TCP_FIN},
    };

    use super::*;

    const S: u64 = 1_000_000_000;
    const CLIENT: Ip4 = ip4(10, 240, 0, 2);
    const VIP: Ip4 = ip4(10, 240, 0, 100);
    const BACKEND: Ip4 = ip4(10, 240, 0, 9);

    fn conn(at: u64, closing: u8) -> ConnState {
        ConnState {
            last_seen_ns: at,
            kind: ConnKind::Egress as u8,
            closing,
            ..ConnState::default()
        }
    }

    #[test]
    fn a_world_connection_counts_for_its_container_until_it_idles_out() {
        let now = 1_000 * S;
        assert_eq!(
            judge_conn(Some(3), &conn(now, 0), IPPROTO_UDP, now),
            Some(3)
        );
        let old = now - CONN_IDLE_OTHER_NS;
        assert_eq!(judge_conn(Some(3), &conn(old, 0), IPPROTO_UDP, now), None);
        // TCP lives on, unless its opener closed it.
        assert_eq!(
            judge_conn(Some(3), &conn(old, 0), IPPROTO_TCP, now),
            Some(3)
        );
        let closed = now - CONN_IDLE_CLOSING_NS;
        assert_eq!(
            judge_conn(Some(3), &conn(closed, 1), IPPROTO_TCP, now),
            None
        );
        // Of no local container: removed, whatever its age.
        assert_eq!(judge_conn(None, &conn(now, 0), IPPROTO_UDP, now), None);
    }

    fn lb_pair(proto: u8) -> [(LbConnKey, LbConn); 2] {
        let fwd = LbConnKey {
            client: CLIENT,
            remote: VIP,
            client_port: 40000,
            remote_port: 53,
            proto,
            reverse: 0,
            _pad: [0; 2],
        };
        let rev = LbConnKey {
            remote: BACKEND,
            reverse: 1,
            ..fwd
        };
        [
            (
                fwd,
                LbConn {
                    addr: BACKEND,
                    state: 0,
                },
            ),
            (
                rev,
                LbConn {
                    addr: VIP,
                    state: 0,
                },
            ),
        ]
    }

    #[test]
    fn both_entries_of_a_balanced_flow_name_its_packets_toward_the_backend() {
        let [(fk, fv), (rk, rv)] = lb_pair(IPPROTO_UDP);
        let want = FlowKey {
            src: CLIENT,
            dst: BACKEND,
            sport: 40000,
            dport: 53,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(lb_flow(&fk, &fv), want);
        assert_eq!(lb_flow(&rk, &rv), want);
    }

    #[test]
    fn a_balanced_udp_flow_lives_while_its_client_sends() {
        let now = 1_000 * S;
        let [(fk, fv), (rk, rv)] = lb_pair(IPPROTO_UDP);
        let fresh = Some(FlowState {
            last_seen_ns: now - S,
        });
        assert_eq!(judge_lb(Some(4), &fk, &fv, fresh, now), LbJudged::Count(4));
        assert_eq!(judge_lb(Some(4), &rk, &rv, fresh, now), LbJudged::Keep);
        let idle = Some(FlowState {
            last_seen_ns: now - CONN_IDLE_OTHER_NS,
        });
        assert_eq!(judge_lb(Some(4), &fk, &fv, idle, now), LbJudged::Remove);
        assert_eq!(judge_lb(Some(4), &rk, &rv, idle, now), LbJudged::Remove);
        // No flow entry (never forwarded, or the flow table let it go).
        assert_eq!(judge_lb(Some(4), &fk, &fv, None, now), LbJudged::Remove);
        assert_eq!(judge_lb(None, &fk, &fv, fresh, now), LbJudged::Remove);
    }

    #[test]
    fn a_balanced_tcp_connection_lives_until_it_has_closed() {
        let now_s = 1_000;
        let now = u64::from(now_s) * S;
        let [(fk, fv), (rk, _)] = lb_pair(IPPROTO_TCP);
        // Open and idle for hours: kept (no flow stamp is read for TCP).
        assert_eq!(judge_lb(Some(4), &fk, &fv, None, now), LbJudged::Count(4));
        let half = LbConn {
            state: lb_closing(0, TCP_FIN, true, now_s),
            ..fv
        };
        assert_eq!(half.state, LB_FIN_CLIENT);
        assert_eq!(judge_lb(Some(4), &fk, &half, None, now), LbJudged::Count(4));
        let closed = LbConn {
            state: lb_closing(half.state, TCP_FIN, false, now_s),
            ..fv
        };
        assert_ne!(closed.state & LB_FIN_BACKEND, 0);
        assert_eq!(
            judge_lb(Some(4), &fk, &closed, None, now),
            LbJudged::Count(4)
        );
        let later = now + u64::from(LB_CLOSED_GRACE_S) * S;
        assert_eq!(
            judge_lb(Some(4), &fk, &closed, None, later),
            LbJudged::Remove
        );
        assert_eq!(
            judge_lb(Some(4), &rk, &closed, None, later),
            LbJudged::Remove
        );
    }

    #[test]
    fn counts_add_up_per_row() {
        let mut s = Swept::default();
        s.count_conn(1);
        s.count_conn(1);
        s.count_lb(2);
        assert_eq!(s.conns.get(&1), Some(&2));
        assert_eq!(s.lb.get(&2), Some(&1));
        assert_eq!(s.conns.get(&2), None);
    }
}
