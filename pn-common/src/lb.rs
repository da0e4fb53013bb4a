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
//!
//! The entries are the connection's, not the tuple's: FINs both ways (or a
//! RST either way) mark both entries closed; they still translate the last
//! segments of the close for [`LB_CLOSED_GRACE_S`], then expire. A client's
//! SYN on a closed tuple is a new connection (chosen again), and a SYN
//! straight to a backend's own address removes the reverse entry an earlier
//! balanced connection from the same port left, whose replies would
//! otherwise come back from the service address.
//!
//! IPv6 service addresses are balanced the same way, by the same code over
//! [`Ip6`] (the types take the address type, [`Ip4`] by default): maps of
//! their own (`PN_LB6_*`), the same decision, a table built the same way.
//!
//! Known cost of translating packets rather than connects: a client port
//! used straight to a backend and through the service address (to the same
//! backend port) within the backend's TIME_WAIT meets that TIME_WAIT with a
//! SYN whose sequence number and timestamp Linux drew for another tuple (the
//! service address's), so the backend answers with the old connection's ACK;
//! the client resets it and sends its SYN again a few ms later. Measured in
//! pn-bench's service scenario, where mixing both paths on one port made
//! either 2–5× slower than the other; balancing at `connect` (a cgroup
//! `connect4` program, as Cilium's socket LB) would not have it.

use crate::{
    Ip4, Ip6,
    policy::{IPPROTO_TCP, PacketSummary, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// An address the balancer works on ([`Ip4`], [`Ip6`]).
pub trait LbAddr: Copy + Default {
    /// The address hashed to a word (IPv4's is itself, so its tables and
    /// slots are what they were before IPv6).
    fn fold(&self) -> u32;
    /// The address's last two bytes (see [`client_mark`]).
    fn low16(&self) -> u32;
}

impl LbAddr for Ip4 {
    #[inline(always)]
    fn fold(&self) -> u32 {
        *self
    }

    #[inline(always)]
    fn low16(&self) -> u32 {
        let b = self.to_ne_bytes();
        u32::from(u16::from_be_bytes([b[2], b[3]]))
    }
}

impl LbAddr for Ip6 {
    /// Each word mixed into the next: addresses of one /64 differ in their
    /// low words only, and a plain XOR of the words could map two of them
    /// to one value.
    #[inline(always)]
    fn fold(&self) -> u32 {
        let a = self;
        let w = |i: usize| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        fmix32(w(0) ^ fmix32(w(4) ^ fmix32(w(8) ^ fmix32(w(12)))))
    }

    #[inline(always)]
    fn low16(&self) -> u32 {
        u32::from(u16::from_be_bytes([self[14], self[15]]))
    }
}

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

/// `PN_LB_CLIENTS`: one byte per [`client_mark`] index, set (by the
/// programs, before they record a balanced connection; by the agent at
/// start, for the entries a table already holds) and never cleared. A
/// reply entering a container whose mark is 0 cannot have a reverse entry
/// in `PN_LB_CONNS`/`PN_LB6_CONNS`, so the programs skip that lookup: an
/// array read (inlined) instead of an LRU hash miss on every packet toward
/// a container that never used a service address. Marks are by address,
/// not by counter row, so no row reuse, move or agent restart can leave a
/// live connection unmarked; two addresses sharing an index only cost the
/// lookup.
pub const MAX_LB_CLIENTS: u32 = 65_536;

/// The index of `addr`'s mark in `PN_LB_CLIENTS`: its last two bytes (a
/// host's containers get addresses of one block, which they tell apart).
#[inline(always)]
pub fn client_mark<A: LbAddr>(addr: &A) -> u32 {
    addr.low16() & (MAX_LB_CLIENTS - 1)
}

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
pub struct SlotKey<A = Ip4> {
    pub vip: A,
    pub slot: u32,
}

/// Value of `PN_LB_BACKENDS`, keyed by a backend's address: the service it
/// is in the rotation of. Absent: not (or no longer) a live backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend<A = Ip4> {
    pub vip: A,
    pub _pad: u32,
}

/// Key of `PN_LB_CONNS` (LRU). Forward: `remote` is the service address,
/// the value the backend. Reverse: `remote` is the backend, the value the
/// service address. Ports host order (the balancer never changes them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbConnKey<A = Ip4> {
    pub client: A,
    pub remote: A,
    pub client_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub reverse: u8,
    pub _pad: [u8; 2],
}

/// Value of `PN_LB_CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbConn<A = Ip4> {
    pub addr: A,
    /// TCP: how far the connection is closed: [`LB_FIN_CLIENT`] and
    /// [`LB_FIN_BACKEND`] (a RST sets both); once both, the second since
    /// boot it closed at, in the bits above (see [`lb_closing`]). 0: open
    /// (so entries of earlier agents, whose padding was 0, read as open).
    /// UDP, which never closes: the second its client last sent, in the
    /// same bits ([`udp_stamp`]), for the agent's sweep.
    pub state: u32,
}

/// `LbConn::state`: the client sent its FIN.
pub const LB_FIN_CLIENT: u32 = 1;
/// `LbConn::state`: the backend sent its FIN.
pub const LB_FIN_BACKEND: u32 = 2;
const LB_CLOSED: u32 = LB_FIN_CLIENT | LB_FIN_BACKEND;
/// Seconds are kept modulo 2^30 (34 years) above the two flags.
const LB_SECONDS: u32 = (1 << 30) - 1;
/// A closed connection's entries still translate this long: the last ACK,
/// a FIN retransmitted while its peer is in TIME_WAIT (Linux: 60 s).
pub const LB_CLOSED_GRACE_S: u32 = 60;

/// Key of `PN_LB_STATS`: a backend of a service address (by both, so a
/// backend that left keeps its counters under its service, and an address
/// given to another container later starts from zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LbStatsKey<A = Ip4> {
    pub vip: A,
    pub backend: A,
}

/// Value of `PN_LB_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbStats {
    /// Connections (flows) sent to it.
    pub new_conns: u64,
    /// Established TCP connections taken from it because it left the
    /// rotation (detached, unhealthy): their next segment goes to a live
    /// backend, which has no socket for it and answers with a reset, so
    /// the client sees a reset, not a hang.
    pub resets: u64,
    /// UDP flows taken from it the same way (they go on with another).
    pub moved: u64,
}

const _: () = assert!(core::mem::size_of::<Service>() == 8);
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<LbConnKey>() == 16);
const _: () = assert!(core::mem::size_of::<LbConn>() == 8);
const _: () = assert!(core::mem::size_of::<LbStats>() == 24);
const _: () = assert!(core::mem::size_of::<LbStatsKey>() == 8);
// IPv6's (`PN_LB6_*`): no padding the kernel would hash as key bytes.
const _: () = assert!(core::mem::size_of::<SlotKey<Ip6>>() == 20);
const _: () = assert!(core::mem::size_of::<Backend<Ip6>>() == 20);
const _: () = assert!(core::mem::size_of::<LbConnKey<Ip6>>() == 40);
const _: () = assert!(core::mem::size_of::<LbConn<Ip6>>() == 20);
const _: () = assert!(core::mem::size_of::<LbStatsKey<Ip6>>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, integer-only, explicit padding: any byte pattern
    // is a valid value.
    unsafe impl aya::Pod for Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SlotKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbConn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbStatsKey {}
    // SAFETY: as above (IPv6's, sizes asserted above).
    unsafe impl aya::Pod for SlotKey<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbConnKey<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbConn<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbStatsKey<Ip6> {}
}

impl<A: Copy> LbConnKey<A> {
    /// The entry of a packet from a client toward a service address.
    pub const fn forward(pkt: &PacketSummary<A>) -> LbConnKey<A> {
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
    pub const fn reverse_of(pkt: &PacketSummary<A>, backend: A) -> LbConnKey<A> {
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

    /// The forward entry of the connection a reply belongs to, whose
    /// reverse entry named `vip`.
    pub const fn forward_of_reply(pkt: &PacketSummary<A>, vip: A) -> LbConnKey<A> {
        LbConnKey {
            client: pkt.dst,
            remote: vip,
            client_port: pkt.dport,
            remote_port: pkt.sport,
            proto: pkt.proto,
            reverse: 0,
            _pad: [0; 2],
        }
    }

    /// The entry of a packet entering a client (a reply from a backend).
    pub const fn reply(pkt: &PacketSummary<A>) -> LbConnKey<A> {
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
#[inline(always)]
pub fn slot_of<A: LbAddr>(pkt: &PacketSummary<A>) -> u32 {
    let ports = ((pkt.sport as u32) << 16) | pkt.dport as u32;
    let h = fmix32(pkt.src.fold() ^ fmix32(pkt.dst.fold() ^ fmix32(ports ^ pkt.proto as u32)));
    h % LB_TABLE_SIZE
}

impl<A> LbConn<A> {
    /// Both sides sent their FIN, or one a reset.
    pub const fn closed(&self) -> bool {
        self.state & LB_CLOSED == LB_CLOSED
    }

    /// Closed more than [`LB_CLOSED_GRACE_S`] ago (`now_s`: seconds since
    /// boot): the entries are stale, the tuple free for a new connection.
    pub const fn expired(&self, now_s: u32) -> bool {
        self.closed() && (now_s.wrapping_sub(self.state >> 2) & LB_SECONDS) >= LB_CLOSED_GRACE_S
    }
}

/// A balanced UDP flow's [`LbConn::state`] at `now_s` (seconds since
/// boot): the second above the two close bits, which stay 0 (a UDP entry
/// never reads as closed). Rewritten when it changes, at most once a second.
pub const fn udp_stamp(now_s: u32) -> u32 {
    (now_s & LB_SECONDS) << 2
}

/// Seconds since a balanced UDP flow's client last sent (`state`: its
/// [`udp_stamp`]); an entry of an earlier agent (0) reads as old as boot.
pub const fn udp_idle_s(state: u32, now_s: u32) -> u32 {
    now_s.wrapping_sub(state >> 2) & LB_SECONDS
}

/// A TCP segment opening a connection (SYN without ACK).
pub const fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A segment that may close the connection (only then does the datapath
/// read the clock and call [`lb_closing`]).
pub const fn may_close(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// The state of a connection's entries after a segment with `tcp_flags`
/// from the client (`from_client`) or its backend; `state` itself when
/// nothing changes (so the map is written only on a change). `now_s` is
/// recorded when the connection becomes closed.
pub const fn lb_closing(state: u32, tcp_flags: u8, from_client: bool, now_s: u32) -> u32 {
    let bits = if tcp_flags & TCP_RST != 0 {
        LB_CLOSED
    } else if tcp_flags & TCP_FIN != 0 {
        if from_client {
            LB_FIN_CLIENT
        } else {
            LB_FIN_BACKEND
        }
    } else {
        0
    };
    let was = state & LB_CLOSED;
    let now = was | bits;
    if now == was {
        state
    } else if now == LB_CLOSED {
        LB_CLOSED | ((now_s & LB_SECONDS) << 2)
    } else {
        now
    }
}

/// What a new choice counts, on which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbCount<A = Ip4> {
    /// A new connection (a SYN) or flow: `new_conns` of the chosen one.
    New,
    /// An established TCP connection whose backend left: `resets` of the
    /// one it left (the next backend resets it).
    Reset(A),
    /// A UDP flow whose backend left: `moved` of the one it left.
    Moved(A),
    /// A segment of a connection whose entries were lost (LRU): chosen
    /// again (the same backend while the table is unchanged), no count.
    Nothing,
}

/// What the balancer does with a packet leaving a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbStep<A = Ip4> {
    /// Not for a usable service address: left as is (the policy judges it;
    /// a service address is no endpoint, so another network's client is
    /// dropped as `policy_denied`).
    Pass,
    /// Known connection, backend still live: rewrite toward it.
    Keep(A),
    /// A SYN again on an open connection (retransmitted): rewrite toward
    /// the same backend and write both entries again (the reverse one may
    /// have been removed by a direct SYN from the same port).
    Renew(A),
    /// New connection (or its backend left): pick from the table, record
    /// both entries (open), count.
    Choose(LbCount<A>),
    /// A stray segment of a connection closed long ago, whose backend was
    /// this: remove both entries, rewrite nothing (the policy drops it).
    Expire(A),
}

/// `tcp_flags`: the segment's (0 but for TCP); `svc`: the service entry of
/// the destination; `client_tag`: the sender's network; `known`: the
/// forward entry; `live`: whether a backend is still in the rotation of
/// this service; `now_s`: seconds since boot (read only for a closed entry).
#[inline(always)]
pub fn lb_step<A: Copy>(
    pkt: &PacketSummary<A>,
    tcp_flags: u8,
    svc: Option<&Service>,
    client_tag: u32,
    known: Option<LbConn<A>>,
    live: impl FnOnce(A) -> bool,
    now_s: impl FnOnce() -> u32,
) -> LbStep<A> {
    if !crate::policy::has_ports(pkt.proto) {
        return LbStep::Pass;
    }
    match svc {
        Some(s) if s.tag == client_tag && s.backends > 0 => {}
        _ => return LbStep::Pass,
    }
    let tcp = pkt.proto == IPPROTO_TCP;
    let syn = opens(pkt.proto, tcp_flags);
    let Some(c) = known else {
        return LbStep::Choose(if syn || !tcp {
            LbCount::New
        } else {
            LbCount::Nothing
        });
    };
    if c.closed() {
        if syn {
            return LbStep::Choose(LbCount::New);
        }
        if c.expired(now_s()) {
            return LbStep::Expire(c.addr);
        }
        // The last segments of the close: to its backend while it lives;
        // a closed connection is not reset again.
        return if live(c.addr) {
            LbStep::Keep(c.addr)
        } else {
            LbStep::Choose(LbCount::Nothing)
        };
    }
    match (live(c.addr), syn) {
        (true, false) => LbStep::Keep(c.addr),
        (true, true) => LbStep::Renew(c.addr),
        (false, true) => LbStep::Choose(LbCount::New),
        (false, false) if tcp => LbStep::Choose(LbCount::Reset(c.addr)),
        (false, false) => LbStep::Choose(LbCount::Moved(c.addr)),
    }
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016) of `backends`:
/// `size` slots (a prime), each naming one backend, each backend holding
/// `size / n` or one more; a backend added or removed changes little more
/// than its own share. Backends are taken in sorted order, and the result
/// depends on the set only, so every host computes the same table.
#[cfg(any(feature = "user", test))]
pub fn maglev<A: LbAddr + Ord>(backends: &[A], size: u32) -> Vec<A> {
    let mut b: Vec<A> = backends.to_vec();
    b.sort_unstable();
    b.dedup();
    let m = size as usize;
    if b.is_empty() || m == 0 {
        return Vec::new();
    }
    let perm: Vec<(usize, usize)> = b
        .iter()
        .map(|ip| {
            let ip = ip.fold();
            let h1 = fmix32(ip ^ 0x9e37_79b9) as usize;
            let h2 = fmix32(ip.rotate_left(16) ^ 0x7f4a_7c15) as usize;
            (h1 % m, h2 % (m - 1) + 1)
        })
        .collect();
    let mut next = vec![0usize; b.len()];
    let mut table: Vec<Option<A>> = vec![None; m];
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
    table.into_iter().map(Option::unwrap_or_default).collect()
}

#[cfg(test)]
mod tests;
