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
    lb::{LbConn, LbConnKey, udp_idle_s},
    maps::ConnState,
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
    /// Balanced connections (forward entries of `PN_LB_CONNS` and
    /// `PN_LB6_CONNS`) per row.
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

/// A `PN_LB_CONNS`/`PN_LB6_CONNS` entry: what the sweep does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbJudged {
    /// A forward entry: kept, one balanced connection of this row.
    Count(u16),
    /// A reverse entry: kept (its connection is counted by its forward one).
    Keep,
    Remove,
}

/// The forward entry of a reverse one (`key.reverse` 1, `entry.addr` the
/// service address).
pub fn forward_of<A: Copy>(key: &LbConnKey<A>, entry: &LbConn<A>) -> LbConnKey<A> {
    LbConnKey {
        remote: entry.addr,
        reverse: 0,
        ..*key
    }
}

/// A `PN_LB_CONNS` or `PN_LB6_CONNS` entry. `owner`: the row of the local container of its
/// client; `forward`: for a reverse entry, its forward one (`None`: gone);
/// `now_ns`: the monotonic clock (the programs' seconds are its seconds).
/// A TCP connection lives until it has closed ([`LbConn::expired`], as the
/// programs judge it); a UDP flow, which never closes, until its client
/// has been silent for the UDP idle time of `PN_CONNS` (5 min), by the
/// stamp of its forward entry ([`udp_idle_s`]).
pub fn judge_lb<A>(
    owner: Option<u16>,
    key: &LbConnKey<A>,
    entry: &LbConn<A>,
    forward: Option<&LbConn<A>>,
    now_ns: u64,
) -> LbJudged {
    let Some(row) = owner else {
        return LbJudged::Remove;
    };
    let now_s = (now_ns / 1_000_000_000) as u32;
    if key.proto == IPPROTO_UDP {
        let stamp = if key.reverse == 0 {
            Some(entry.state)
        } else {
            forward.map(|f| f.state)
        };
        let idle_limit = (policy::CONN_IDLE_OTHER_NS / 1_000_000_000) as u32;
        match stamp {
            Some(st) if udp_idle_s(st, now_s) < idle_limit => {}
            _ => return LbJudged::Remove,
        }
    } else if entry.expired(now_s) {
        return LbJudged::Remove;
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
        lb::{LB_CLOSED_GRACE_S, LB_FIN_BACKEND, LB_FIN_CLIENT, lb_closing, udp_stamp},
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
    fn a_reverse_entry_names_its_forward_one() {
        let [(fk, _), (rk, rv)] = lb_pair(IPPROTO_UDP);
        assert_eq!(forward_of(&rk, &rv), fk);
    }

    #[test]
    fn a_balanced_udp_flow_lives_while_its_client_sends() {
        let now_s = 1_000;
        let now = u64::from(now_s) * S;
        let [(fk, fv), (rk, rv)] = lb_pair(IPPROTO_UDP);
        let fresh = LbConn {
            state: udp_stamp(now_s - 1),
            ..fv
        };
        assert_eq!(
            judge_lb(Some(4), &fk, &fresh, None, now),
            LbJudged::Count(4)
        );
        assert_eq!(
            judge_lb(Some(4), &rk, &rv, Some(&fresh), now),
            LbJudged::Keep
        );
        let idle = LbConn {
            state: udp_stamp(now_s - 300),
            ..fv
        };
        assert_eq!(judge_lb(Some(4), &fk, &idle, None, now), LbJudged::Remove);
        assert_eq!(
            judge_lb(Some(4), &rk, &rv, Some(&idle), now),
            LbJudged::Remove
        );
        // Its forward entry gone (the LRU, a sweep): nothing to age it by.
        assert_eq!(judge_lb(Some(4), &rk, &rv, None, now), LbJudged::Remove);
        // An earlier agent's entry (no stamp): as old as boot.
        assert_eq!(judge_lb(Some(4), &fk, &fv, None, now), LbJudged::Remove);
        assert_eq!(judge_lb(None, &fk, &fresh, None, now), LbJudged::Remove);
    }

    #[test]
    fn a_balanced_tcp_connection_lives_until_it_has_closed() {
        let now_s = 1_000;
        let now = u64::from(now_s) * S;
        let [(fk, fv), (rk, _)] = lb_pair(IPPROTO_TCP);
        // Open and idle for hours: kept (no flow stamp is read for TCP).
        assert_eq!(judge_lb(Some(4), &fk, &fv, None, now), LbJudged::Count(4));
        assert_eq!(judge_lb(Some(4), &rk, &fv, None, now), LbJudged::Keep);
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
    fn an_ipv6_balanced_flow_is_judged_as_ipv4s() {
        let a = |last: u8| {
            let mut x = [
                0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            x[15] = last;
            x
        };
        let (client, vip, backend) = (a(2), a(100), a(9));
        let fwd = LbConnKey {
            client,
            remote: vip,
            client_port: 40000,
            remote_port: 53,
            proto: IPPROTO_UDP,
            reverse: 0,
            _pad: [0; 2],
        };
        let rev = LbConnKey {
            remote: backend,
            reverse: 1,
            ..fwd
        };
        let now_s = 1_000;
        let now = u64::from(now_s) * S;
        let fv = LbConn {
            addr: backend,
            state: udp_stamp(now_s - 1),
        };
        let rv = LbConn {
            addr: vip,
            state: 0,
        };
        assert_eq!(forward_of(&rev, &rv), fwd);
        assert_eq!(judge_lb(Some(5), &fwd, &fv, None, now), LbJudged::Count(5));
        assert_eq!(judge_lb(Some(5), &rev, &rv, Some(&fv), now), LbJudged::Keep);
        let idle = LbConn {
            state: udp_stamp(now_s - 300),
            ..fv
        };
        assert_eq!(
            judge_lb(Some(5), &rev, &rv, Some(&idle), now),
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
