//! The balancer's packet rewriting: a client's packets toward a service
//! address get the chosen backend as destination (before the member policy
//! judges them), the backend's replies get the service address back as
//! source (after). Decisions in `pn_common::lb`.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use pn_common::{
    Ip4,
    lb::{self, LbConn, LbConnKey, LbStats, LbStep, SlotKey},
    maps::Iface,
    policy::{ETH_HLEN, IPPROTO_TCP, Ipv4Summary},
};

use crate::maps::{PN_LB_BACKENDS, PN_LB_CONNS, PN_LB_SERVICES, PN_LB_SLOTS, PN_LB_STATS};

/// Offsets of the addresses in the IPv4 header, and of the checksums.
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// A packet leaving a client: toward a service address of its network, it
/// leaves toward a backend (`pkt.dst` follows). `l4`: where L4 starts.
#[inline(always)]
pub fn from_container(ctx: &TcContext, iface: &Iface, pkt: &mut Ipv4Summary, l4: usize) {
    if pkt.src != iface.addr {
        return;
    }
    // SAFETY: plain-data values, see `tc::handle`.
    let svc = unsafe { PN_LB_SERVICES.get(pkt.dst) };
    if svc.is_none() {
        return;
    }
    let key = LbConnKey::forward(pkt);
    // SAFETY: as above.
    let known = unsafe { PN_LB_CONNS.get(key) }.map(|c| c.addr);
    let vip = pkt.dst;
    let live = |b: Ip4| {
        // SAFETY: as above.
        unsafe { PN_LB_BACKENDS.get(b) }.is_some_and(|e| e.vip == vip)
    };
    let backend = match lb::lb_step(pkt, svc, iface.tag, known, live) {
        LbStep::Pass => return,
        LbStep::Keep(b) => b,
        LbStep::Choose { moved } => {
            let slot = SlotKey {
                vip,
                slot: lb::slot_of(pkt),
            };
            // SAFETY: as above.
            let Some(b) = (unsafe { PN_LB_SLOTS.get(slot) }).copied() else {
                return;
            };
            let _ = PN_LB_CONNS.insert(key, LbConn { addr: b, _pad: 0 }, 0);
            let rev = LbConnKey::reverse_of(pkt, b);
            let _ = PN_LB_CONNS.insert(rev, LbConn { addr: vip, _pad: 0 }, 0);
            if moved && let Some(old) = known {
                stat(old, |s| s.moved_away += 1);
            }
            stat(b, |s| s.new_conns += 1);
            b
        }
    };
    if rewrite(ctx, pkt.proto, l4, IP_DST, vip, backend) {
        pkt.dst = backend;
    }
}

/// A packet entering a client: a reply from a backend it reached through a
/// service address comes from that address.
#[inline(always)]
pub fn to_container(ctx: &TcContext, pkt: &Ipv4Summary, l4: usize) {
    if !pn_common::policy::has_ports(pkt.proto) {
        return;
    }
    // SAFETY: plain-data values, see `tc::handle`.
    let Some(c) = (unsafe { PN_LB_CONNS.get(LbConnKey::reply(pkt)) }).copied() else {
        return;
    };
    rewrite(ctx, pkt.proto, l4, IP_SRC, pkt.src, c.addr);
}

#[inline(always)]
fn stat(backend: Ip4, f: impl FnOnce(&mut LbStats)) {
    match PN_LB_STATS.get_ptr_mut(backend) {
        // SAFETY: a per-CPU value of this CPU, valid for the program run.
        Some(p) => f(unsafe { &mut *p }),
        None => {
            let mut s = LbStats::default();
            f(&mut s);
            let _ = PN_LB_STATS.insert(backend, s, 0);
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
