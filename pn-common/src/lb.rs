//! Service addresses balanced in the kernel: the layouts of the balancer's
//! maps, the flow hash and the per-packet decision (pure, so tested here),
//! and, in user space, the Maglev lookup table the agent computes.
//!
//! A service address (one per container type of an app that balances by
//! `vip`) is never an endpoint. A client's first packet of a TCP connection
//! or UDP flow toward it picks a slot of the service's table by a hash of its
//! 5-tuple; the slot names a backend (a container of the type); the choice
//! is recorded in `PN_LB_CONNS` both ways (forward: client → backend, reverse:
//! backend → service address), and the destination is rewritten before the
//! member policy judges the packet. Replies are rewritten back on the
//! client's veth, wherever the backend runs.

use crate::{Ip4, policy::Ipv4Summary};

/// Slots per service: a prime, as Maglev needs; large enough next to the
/// backend count that the spread stays within a few percent and a backend
/// change moves about its share of the slots.
pub const LB_TABLE_SIZE: u32 = 1021;
/// Services a host balances toward (client side).
pub const MAX_SERVICES: u32 = 1024;
/// `PN_LB_SLOTS` entries (allocated on use).
pub const MAX_SLOTS: u32 = MAX_SERVICES * LB_TABLE_SIZE;
/// Backends of all services a host knows.
pub const MAX_BACKENDS: u32 = 65_536;
/// `PN_LB_CONNS`: two entries per balanced connection.
pub const MAX_LB_CONNS: u32 = 131_072;

/// Value of `PN_LB_SERVICES`, keyed by the service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// The network whose members may use it.
    pub tag: u32,
    /// Live backends; 0: the address is left alone (and the policy drops it).
    pub backends: u32,
}

/// Key of `PN_LB_SLOTS`: one slot of a service's Maglev table; the value is
/// the backend's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SlotKey {
    pub vip: Ip4,
    pub slot: u32,
}

/// Value of `PN_LB_BACKENDS`, keyed by a backend's address: the service it
/// is in the rotation of. Absent: not (or no longer) a live backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub vip: Ip4,
    pub _pad: u32,
}

/// Key of `PN_LB_CONNS` (LRU). Forward: `remote` is the service address,
/// the value the backend. Reverse: `remote` is the backend, the value the
/// service address. Ports host order (the balancer never changes them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbConnKey {
    pub client: Ip4,
    pub remote: Ip4,
    pub client_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub reverse: u8,
    pub _pad: [u8; 2],
}

/// Value of `PN_LB_CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbConn {
    pub addr: Ip4,
    pub _pad: u32,
}

/// Value of `PN_LB_STATS` (per CPU), keyed by backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbStats {
    /// Connections (flows) sent to it.
    pub new_conns: u64,
    /// Connections taken from it because it left the rotation: their next
    /// packet goes to a live backend, which answers a TCP segment it has no
    /// socket for with a reset (so the client sees a reset, not a hang).
    pub moved_away: u64,
}

const _: () = assert!(core::mem::size_of::<Service>() == 8);
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<LbConnKey>() == 16);
const _: () = assert!(core::mem::size_of::<LbConn>() == 8);
const _: () = assert!(core::mem::size_of::<LbStats>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, integer-only, explicit padding: any byte pattern
    // is a valid value.
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for LbConnKey {}
    unsafe impl aya::Pod for LbConn {}
    unsafe impl aya::Pod for LbStats {}
}

impl LbConnKey {
    /// The entry of a packet from a client toward a service address.
    pub const fn forward(pkt: &Ipv4Summary) -> LbConnKey {
        LbConnKey {
            client: pkt.src,
            remote: pkt.dst,
            client_port: pkt.sport,
            remote_port: pkt.dport,
            proto: pkt.proto,
            reverse: 0,
            _pad: [0; 2],
        }
    }

    /// The entry a forward packet leaves for its replies (backend → client).
    pub const fn reverse_of(pkt: &Ipv4Summary, backend: Ip4) -> LbConnKey {
        LbConnKey {
            client: pkt.src,
            remote: backend,
            client_port: pkt.sport,
            remote_port: pkt.dport,
            proto: pkt.proto,
            reverse: 1,
            _pad: [0; 2],
        }
    }

    /// The entry of a packet entering a client (a reply from a backend).
    pub const fn reply(pkt: &Ipv4Summary) -> LbConnKey {
        LbConnKey {
            client: pkt.dst,
            remote: pkt.src,
            client_port: pkt.dport,
            remote_port: pkt.sport,
            proto: pkt.proto,
            reverse: 1,
            _pad: [0; 2],
        }
    }
}

/// murmur3's finalizer: every input bit moves every output bit, so clients
/// differing only in their source port spread evenly over the slots.
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The slot of a flow in a service's table.
pub const fn slot_of(pkt: &Ipv4Summary) -> u32 {
    let ports = ((pkt.sport as u32) << 16) | pkt.dport as u32;
    let h = fmix32(pkt.src ^ fmix32(pkt.dst ^ fmix32(ports ^ pkt.proto as u32)));
    h % LB_TABLE_SIZE
}

/// What the balancer does with a packet leaving a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbStep {
    /// Not for a usable service address: left as is (the policy judges it;
    /// a service address is no endpoint, so another network's client is
    /// dropped as `policy_denied`).
    Pass,
    /// Known connection, backend still live: rewrite toward it.
    Keep(Ip4),
    /// New connection (or its backend left): pick from the table and record.
    Choose { moved: bool },
}

/// `svc`: the service entry of the destination; `client_tag`: the sender's
/// network; `known`: the forward entry's backend; `live`: whether that
/// backend is still in the rotation of this service.
pub fn lb_step(
    pkt: &Ipv4Summary,
    svc: Option<&Service>,
    client_tag: u32,
    known: Option<Ip4>,
    live: impl FnOnce(Ip4) -> bool,
) -> LbStep {
    if !crate::policy::has_ports(pkt.proto) {
        return LbStep::Pass;
    }
    match svc {
        Some(s) if s.tag == client_tag && s.backends > 0 => {}
        _ => return LbStep::Pass,
    }
    match known {
        Some(b) if live(b) => LbStep::Keep(b),
        Some(_) => LbStep::Choose { moved: true },
        None => LbStep::Choose { moved: false },
    }
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016) of `backends`:
/// `size` slots (a prime), each naming one backend, each backend holding
/// `size / n` or one more; a backend added or removed changes little more
/// than its own share. Backends are taken in sorted order, and the result
/// depends on the set only, so every host computes the same table.
#[cfg(any(feature = "user", test))]
pub fn maglev(backends: &[Ip4], size: u32) -> Vec<Ip4> {
    let mut b: Vec<Ip4> = backends.to_vec();
    b.sort_unstable();
    b.dedup();
    let m = size as usize;
    if b.is_empty() || m == 0 {
        return Vec::new();
    }
    let perm: Vec<(usize, usize)> = b
        .iter()
        .map(|&ip| {
            let h1 = fmix32(ip ^ 0x9e37_79b9) as usize;
            let h2 = fmix32(ip.rotate_left(16) ^ 0x7f4a_7c15) as usize;
            (h1 % m, h2 % (m - 1) + 1)
        })
        .collect();
    let mut next = vec![0usize; b.len()];
    let mut table: Vec<Option<Ip4>> = vec![None; m];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perm.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = Some(b[i]);
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table.into_iter().map(|s| s.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests;
