//! The balancer's packet rewriting: a client's packets toward a service
//! address get the chosen backend as destination (before the member policy
//! judges them), the backend's replies get the service address back as
//! source (after). Decisions in `pn_common::lb`.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use pn_common::{
    Ip4,
    lb::{self, LbAddr, LbConn, LbConnKey, LbCount, LbStats, LbStatsKey, LbStep, SlotKey},
    maps::Iface,
    policy::{ETH_HLEN, IPPROTO_TCP, Ipv4Summary},
};

use crate::{
    maps::{PN_LB_BACKENDS, PN_LB_CLIENTS, PN_LB_CONNS, PN_LB_SERVICES, PN_LB_SLOTS, PN_LB_STATS},
    share::Table,
};

/// Offsets of the addresses in the IPv4 header, and of the checksums.
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// What [`from_container`] did with a packet.
pub enum Balanced {
    /// Nothing: not toward a service address (or left as it was).
    Not,
    /// Rewritten toward a backend: `pkt.dst` is the backend now.
    To,
    /// A new connection over the client's share, to be dropped (`conn_quota`).
    Over,
}

/// A packet leaving a client: toward a service address of its network, it
/// leaves toward a backend (`pkt.dst` follows). `l4`: where L4 starts;
/// `flags`: the TCP flags (0 for anything else); `share`: the entries the
/// client may hold (`Config::conn_share`); `member`: the destination is a
/// member's address, so no service's (service addresses are unique
/// against containers', the agent's `check_services`): no lookup.
#[inline(always)]
pub fn from_container(
    ctx: &TcContext,
    iface: &Iface,
    pkt: &mut Ipv4Summary,
    l4: usize,
    flags: u8,
    share: u32,
    member: bool,
) -> Balanced {
    if pkt.src != iface.addr {
        return Balanced::Not;
    }
    let svc = if member {
        None
    } else {
        // SAFETY: plain-data values, see `tc::handle`.
        unsafe { PN_LB_SERVICES.get(pkt.dst) }
    };
    if svc.is_none() {
        // (No reverse entry to remove for a client never marked.)
        if lb::opens(pkt.proto, flags) && may_be_client(&pkt.src) {
            // A connection straight to an address from a port that earlier
            // reached it through a service: its replies are its own, not
            // the service's.
            let _ = PN_LB_CONNS.remove(LbConnKey::reverse_of(pkt, pkt.dst));
        }
        return Balanced::Not;
    }
    let key = LbConnKey::forward(pkt);
    // A pointer, not a copy: a closing segment then changes the state in
    // place. An LRU map's insert takes a new element (evicting when full)
    // and frees the old one under the LRU's locks; the closing segments
    // made four such inserts a connection, on the path of the server's FIN.
    let entry = PN_LB_CONNS.get_ptr_mut(key);
    // SAFETY: a value of the map, valid for the program run; plain data.
    let known = entry.map(|p| unsafe { *p });
    let vip = pkt.dst;
    let live = |b: Ip4| {
        // SAFETY: as above.
        unsafe { PN_LB_BACKENDS.get(b) }.is_some_and(|e| e.vip == vip)
    };
    // The backend; the entries' state; whether they are to be written.
    let (backend, state, fresh) = match lb::lb_step(pkt, flags, svc, iface.tag, known, live, now_s)
    {
        LbStep::Pass => return Balanced::Not,
        LbStep::Expire(b) => {
            let _ = PN_LB_CONNS.remove(key);
            let _ = PN_LB_CONNS.remove(LbConnKey::reverse_of(pkt, b));
            return Balanced::Not;
        }
        LbStep::Keep(b) => (b, known.map_or(0, |c| c.state), false),
        LbStep::Renew(b) => (b, 0, true),
        LbStep::Choose(count) => {
            // New entries (not a known connection's, rewritten in place)
            // only within the client's share.
            if known.is_none() && !crate::share::take(iface.slot, share, Table::Lb) {
                return Balanced::Over;
            }
            let slot = SlotKey {
                vip,
                slot: lb::slot_of(pkt),
            };
            // SAFETY: as above.
            let Some(b) = (unsafe { PN_LB_SLOTS.get(slot) }).copied() else {
                return Balanced::Not;
            };
            match count {
                LbCount::New => stat(vip, b, |s| s.new_conns += 1),
                LbCount::Reset(old) => stat(vip, old, |s| s.resets += 1),
                LbCount::Moved(old) => stat(vip, old, |s| s.moved += 1),
                LbCount::Nothing => {}
            }
            (b, 0, true)
        }
    };
    // UDP never closes: its forward entry carries when the client last
    // sent, which the agent's sweep ages (written once a second at most).
    let udp = pkt.proto != IPPROTO_TCP;
    let closing = if udp {
        lb::udp_stamp(now_s())
    } else if lb::may_close(flags) {
        lb::lb_closing(state, flags, true, now_s())
    } else {
        state
    };
    if fresh {
        // Before any entry of its is written: its replies are looked up.
        mark_client(&pkt.src);
        record(pkt, backend, closing);
    } else if closing != state {
        if let Some(p) = entry {
            // SAFETY: as above; a u32 store.
            unsafe { (*p).state = closing };
        }
        if !udp {
            set_state(LbConnKey::reverse_of(pkt, backend), closing);
        }
    }
    if rewrite(ctx, pkt.proto, l4, IP_DST, vip, backend) {
        pkt.dst = backend;
        Balanced::To
    } else {
        Balanced::Not
    }
}

/// A packet entering a client: a reply from a backend it reached through a
/// service address comes from that address.
#[inline(always)]
pub fn to_container(ctx: &TcContext, pkt: &Ipv4Summary, l4: usize, flags: u8) {
    if !pn_common::policy::has_ports(pkt.proto) || !may_be_client(&pkt.dst) {
        return;
    }
    let key = LbConnKey::reply(pkt);
    let Some(entry) = PN_LB_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a value of the map, valid for the program run; plain data.
    let c = unsafe { *entry };
    let forward = LbConnKey::forward_of_reply(pkt, c.addr);
    if c.closed() && c.expired(now_s()) {
        let _ = PN_LB_CONNS.remove(key);
        let _ = PN_LB_CONNS.remove(forward);
        return;
    }
    rewrite(ctx, pkt.proto, l4, IP_SRC, pkt.src, c.addr);
    if lb::may_close(flags) {
        let closing = lb::lb_closing(c.state, flags, false, now_s());
        if closing != c.state {
            // SAFETY: as above; a u32 store.
            unsafe { (*entry).state = closing };
            set_state(forward, closing);
        }
    }
}

/// Marks `addr` in `PN_LB_CLIENTS` (see `pn_common::lb::MAX_LB_CLIENTS`):
/// it may hold reverse entries from now on. Read first: a mark already set
/// costs no store (no cache line bouncing between CPUs).
#[inline(always)]
pub fn mark_client<A: LbAddr>(addr: &A) {
    if let Some(m) = PN_LB_CLIENTS.get_ptr_mut(lb::client_mark(addr)) {
        // SAFETY: a value of the array, valid for the program run; a byte.
        unsafe {
            if *m == 0 {
                *m = 1;
            }
        }
    }
}

/// Whether a reply toward `addr` may have a reverse entry: its mark is set
/// (or unreadable, which never happens to an index within the array).
#[inline(always)]
pub fn may_be_client<A: LbAddr>(addr: &A) -> bool {
    PN_LB_CLIENTS
        .get(lb::client_mark(addr))
        .is_none_or(|m| *m != 0)
}

/// A connection's entry closing, in place (see `from_container`); an entry
/// the LRU evicted stays absent.
#[inline(always)]
fn set_state(key: LbConnKey, state: u32) {
    if let Some(p) = PN_LB_CONNS.get_ptr_mut(key) {
        // SAFETY: a value of the map, valid for the program run; a u32 store.
        unsafe { (*p).state = state };
    }
}

/// Both entries of the connection of `pkt` (client → service address)
/// balanced to `backend`.
#[inline(always)]
fn record(pkt: &Ipv4Summary, backend: Ip4, state: u32) {
    let _ = PN_LB_CONNS.insert(
        LbConnKey::forward(pkt),
        LbConn {
            addr: backend,
            state,
        },
        0,
    );
    let _ = PN_LB_CONNS.insert(
        LbConnKey::reverse_of(pkt, backend),
        LbConn {
            addr: pkt.dst,
            state,
        },
        0,
    );
}

#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
fn stat(vip: Ip4, backend: Ip4, f: impl FnOnce(&mut LbStats)) {
    let key = LbStatsKey { vip, backend };
    match PN_LB_STATS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value of this CPU, valid for the program run.
        Some(p) => f(unsafe { &mut *p }),
        None => {
            let mut s = LbStats::default();
            f(&mut s);
            let _ = PN_LB_STATS.insert(key, s, 0);
        }
    }
}

/// Replaces one address (at `at`) and fixes the IP and L4 checksums (the
/// address is in the TCP/UDP pseudo-header). False if the packet could not
/// be changed (it then goes on unchanged, and the policy judges it so).
#[inline(always)]
fn rewrite(ctx: &TcContext, proto: u8, l4: usize, at: usize, from: Ip4, to: Ip4) -> bool {
    let (csum, mangled) = if proto == IPPROTO_TCP {
        (l4 + TCP_CSUM, 0)
    } else {
        (l4 + UDP_CSUM, BPF_F_MARK_MANGLED_0 as u64)
    };
    let flags = BPF_F_PSEUDO_HDR as u64 | mangled | 4;
    ctx.l4_csum_replace(csum, from as u64, to as u64, flags)
        .is_ok()
        && ctx
            .l3_csum_replace(IP_CSUM, from as u64, to as u64, 4)
            .is_ok()
        && ctx.store(at, &to, 0).is_ok()
}
