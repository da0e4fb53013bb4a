//! Keys and values of the maps the agent fills and the programs read. All
//! `#[repr(C)]` with explicit padding, sizes pinned at compile time: a layout
//! change is a compile error on both sides, never a silent misread.
//!
//! IPv6 (issue 24) keeps IPv4's maps and keys as they are, so an IPv4
//! packet costs what it did: a container's IPv6 address sits beside its
//! IPv4 one in [`Iface`] (one lookup gives either family its tag, flags and
//! counter row), the IPv6 pool beside the IPv4 one in [`Config`], and the
//! counters are shared (a reason means the same in both families). What is
//! keyed by an address gets an IPv6 twin rather than a wider key for both:
//! `PN_ENDPOINTS6` ([`Ip6`] → the same [`Endpoint`]), `PN_CONNS6` and
//! `PN_FLOWS6` (their keys with [`Ip6`] addresses, 40 bytes), and
//! `PN_EGRESS_DENY6` (an LPM trie of 16-byte addresses). One 16-byte key
//! for both families (IPv4-mapped) was the alternative: it would hash four
//! times the bytes on every IPv4 lookup and rebuild every pinned map of
//! today's fleets at upgrade, to save a few map definitions.

use crate::{Ip4, Ip6};

/// Value of `PN_ENDPOINTS`, keyed by the endpoint's address ([`Ip4`]). Holds
/// every member of every network the host knows: local containers and, for the
/// tunnel, remote ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// The network's tag (small integer allocated by the store; 0 is never used).
    pub tag: u32,
    /// Host-side interface of a local endpoint; 0 for a remote one.
    pub ifindex: u32,
    /// Index of the peer host carrying a remote endpoint. For a local one:
    /// its row of `PN_COUNTERS` (its interface's [`Iface::slot`]), so the
    /// underlay guard counts a drop toward it without a second lookup; 0
    /// when not given (an entry an earlier agent wrote, or no slot free):
    /// then the row is looked up by `ifindex`.
    pub peer: u32,
    pub flags: u32,
}

impl Endpoint {
    pub const FLAG_REMOTE: u32 = 1;

    pub const fn is_remote(&self) -> bool {
        self.flags & Self::FLAG_REMOTE != 0
    }

    /// A local endpoint's counter row as the entry carries it (see
    /// `peer`); 0 for a remote one or one not given it.
    pub const fn row(&self) -> u16 {
        if self.is_remote() || self.peer > u16::MAX as u32 {
            0
        } else {
            self.peer as u16
        }
    }
}

/// Value of `PN_IFACES`, keyed by the host-side ifindex (`u32`) of a container's
/// veth: what that container is allowed to be.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Iface {
    /// The only source address the container may use.
    pub addr: Ip4,
    /// Its network's tag.
    pub tag: u32,
    /// `FLAG_*` below. Zero is a container of an unsealed network that is
    /// published nowhere.
    pub flags: u32,
    /// The app's web port (host order) when `FLAG_PUBLISHED`: the only port
    /// routers reach through the host's published port.
    pub web_port: u16,
    /// Its row of `PN_COUNTERS` (1..=[`MAX_IFACES`]), given by the agent;
    /// 0 is the host's own row (and the row of an entry not given one yet).
    pub slot: u16,
    /// The only IPv6 source address the container may use; `::` when it
    /// has none (an IPv4-only host or network): then no IPv6 source is its.
    /// Beside the IPv4 one rather than in a map of its own, so one lookup
    /// per packet gives either family the same tag, flags and counter row.
    pub addr6: Ip6,
}

impl Iface {
    /// Its network is sealed (`--egress deny`): nothing outside the network.
    /// Kept per interface, not per network, so the check costs no lookup; the
    /// agent rewrites the network's interfaces when the setting changes.
    pub const FLAG_EGRESS_DENY: u32 = 1;
    /// A `web` container published on a port of its host for the routers.
    pub const FLAG_PUBLISHED: u32 = 2;

    pub const fn egress_denied(&self) -> bool {
        self.flags & Self::FLAG_EGRESS_DENY != 0
    }

    pub const fn published(&self) -> bool {
        self.flags & Self::FLAG_PUBLISHED != 0
    }
}

/// One counter of `PN_COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Value of `PN_COUNTERS`, a per-CPU array indexed by [`Iface::slot`]: one
/// counter per reason. An array, not a hash keyed by address: counting is
/// an inlined index (no hashing, no insert), and nothing a packet carries
/// can add a row, so a flood toward many addresses cannot fill the map.
/// Row 0 is the host's: packets of no known interface, the underlay's and
/// the tunnel's drops, clear text toward remote members.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub by_reason: [Counter; crate::Reason::COUNT],
}

// By hand: `Default` is derived for arrays of up to 32 elements only.
impl Default for Counters {
    fn default() -> Self {
        Counters {
            by_reason: [Counter::default(); crate::Reason::COUNT],
        }
    }
}

impl Counters {
    /// The sum of two rows (of two CPUs).
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.by_reason.iter_mut().zip(other.by_reason.iter()) {
            a.packets += b.packets;
            a.bytes += b.bytes;
        }
    }
}

/// Key of `PN_FLOWS` (LRU), and with [`Ip6`] addresses of `PN_FLOWS6`: a
/// unidirectional flow, seen where it leaves its sender. Ports are in host
/// order; 0 for ICMP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey<A = Ip4> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `PN_FLOWS`: when the flow was last refreshed (ns, monotonic).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    pub last_seen_ns: u64,
}

/// The only element of `PN_CONFIG` (array of 1): settings the agent pushes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Address of the agent's DNS server, as containers reach it.
    pub dns_addr: Ip4,
    /// Its port, host order.
    pub dns_port: u16,
    /// UDP port of the encrypted tunnel on the underlay, host order; 0 = none.
    pub tunnel_port: u16,
    /// Maximum events per second, CPU and kind (drops, new flows) sent to
    /// user space; the rest is only counted (a flood must not turn into an
    /// event storm).
    pub drop_events_per_sec: u32,
    /// Index of the tunnel's device while the tunnel is up, 0 otherwise:
    /// remote members are reached through it only, and admitted only from it.
    pub tunnel_ifindex: u32,
    /// The fleet's address pool (network address and mask, as [`Ip4`]): a
    /// destination outside it is the world. The zero default puts every
    /// address in the pool, so an agent that does not set it keeps the world
    /// out of reach.
    pub pool_addr: Ip4,
    pub pool_mask: Ip4,
    /// The fleet's IPv6 pool (the unique local /48), as address and mask
    /// like the IPv4 one, with the same zero default.
    pub pool6_addr: Ip6,
    pub pool6_mask: Ip6,
    /// Entries each container may hold in each connection table
    /// (`PN_CONNS` and `PN_CONNS6` together; apart, `PN_LB_CONNS` and
    /// `PN_LB6_CONNS` together): a new connection over it is dropped
    /// (`conn_quota`), so one container can neither fill a table nor crowd
    /// out another's entries. 0: no share
    /// (an agent that does not set it keeps the old behaviour).
    pub conn_share: u32,
    pub _pad: u32,
}

impl Config {
    pub const fn in_pool(&self, ip: Ip4) -> bool {
        ip & self.pool_mask == self.pool_addr & self.pool_mask
    }

    /// By 64-bit halves: two comparisons, no byte loop for the verifier.
    pub const fn in_pool6(&self, ip: &Ip6) -> bool {
        let (a, m, p) = (
            halves(ip),
            halves(&self.pool6_mask),
            halves(&self.pool6_addr),
        );
        a[0] & m[0] == p[0] & m[0] && a[1] & m[1] == p[1] & m[1]
    }
}

/// An [`Ip6`] as two native-order words: how the programs compare and mask
/// one (byte arrays may compile to a `bcmp` call, which BPF lacks).
pub const fn halves(ip: &Ip6) -> [u64; 2] {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = *ip;
    [
        u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_ne_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
    ]
}

/// What a connection with the world is, in `PN_CONNS`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// Opened by the container toward the world (translated by the host).
    Egress = 1,
    /// Opened by a router through the container's published port.
    Published = 2,
}

impl ConnKind {
    pub const fn from_u8(v: u8) -> Option<ConnKind> {
        match v {
            1 => Some(ConnKind::Egress),
            2 => Some(ConnKind::Published),
            _ => None,
        }
    }
}

/// Key of `PN_CONNS` (LRU), and with [`Ip6`] addresses of `PN_CONNS6`: a
/// connection between a container and something outside the pool, written
/// from the container's side whatever the direction of the packet, so a
/// packet and its reply find the same entry. Ports in host order; 0 for ICMP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey<A = Ip4> {
    pub container: A,
    pub remote: A,
    pub container_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `PN_CONNS` and `PN_CONNS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// When the side that opened the connection last refreshed it (ns, monotonic).
    pub last_seen_ns: u64,
    /// A [`ConnKind`].
    pub kind: u8,
    /// 1 once the side that opened a TCP connection sent its FIN or a
    /// reset (0 again on its next SYN): the entry then idles out sooner
    /// (see `policy::conn_live`). Was padding: earlier entries read as open.
    pub closing: u8,
    pub _pad: [u8; 6],
}

impl ConnState {
    pub const fn kind(&self) -> Option<ConnKind> {
        ConnKind::from_u8(self.kind)
    }
}

/// Value of `PN_EGRESS_DENY`, an LPM trie keyed by `{prefix_len: u32, addr:
/// Ip4}`, and of `PN_EGRESS_DENY6` (keyed by `{prefix_len: u32, addr: Ip6}`,
/// 20 bytes): why the range is never the world (for `status` and tests; the
/// programs only test presence).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyRange {
    pub kind: u32,
}

impl DenyRange {
    /// Loopback, link-local, multicast, broadcast, reserved: never the world anywhere.
    pub const SPECIAL: u32 = 1;
    /// One of this host's own addresses, or a broadcast address of its subnets.
    pub const HOST: u32 = 2;
    /// The underlay's subnet.
    pub const UNDERLAY: u32 = 3;
    /// An endpoint of the membership store.
    pub const STORE: u32 = 4;
    /// Given with `--egress-deny`.
    pub const OPERATOR: u32 = 5;
    /// IPv6 only: the host has no global address to translate to, so the
    /// whole IPv6 world (`::/0`) is out of reach.
    pub const NO_ADDRESS: u32 = 6;
}

/// Value of `PN_PEERS`, keyed by a peer host's underlay address ([`Ip4`]),
/// and of `PN_PEERS6`, keyed by an IPv6 one ([`Ip6`]): the hosts whose
/// tunnel packets the underlay guard lets through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    /// Agent-local index of the peer (0 is never used).
    pub index: u32,
    pub flags: u32,
}

/// Value of `PN_CONN_COUNT`, an array indexed by [`Iface::slot`]: how many
/// entries the container holds in the connection tables, against
/// [`Config::conn_share`]. The programs add one (atomically) per entry they
/// create and never subtract; the agent's sweep recounts every few seconds
/// (removing what idled out), so a lost race or an evicted entry corrects
/// itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnCount {
    /// Entries of `PN_CONNS` and `PN_CONNS6`. 64 bits: the BPF target's
    /// only atomic width.
    pub conns: u64,
    /// Balanced connections of `PN_LB_CONNS` and `PN_LB6_CONNS` (one per
    /// connection, though each holds two entries: the forward and the
    /// reverse).
    pub lb: u64,
}

/// Per-CPU state of the rate limit of the events sent to user space
/// (`PN_EVBUDGET`, one element per [`crate::event::EventKind`], at
/// [`EventBudget::index`]): drops and new flows each get the configured rate,
/// so a tenant opening flows as fast as it can neither floods the agent nor
/// crowds drop events out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub sent: u32,
    /// The tick (low 32 bits of jiffies) in which the clock last found
    /// the window open and spent: over budget in the same tick, an event is
    /// suppressed without reading the clock (see
    /// [`EventBudget::spent_this_tick`]). Was padding: an entry an earlier
    /// agent's programs wrote holds 0, which costs at most a tick's delay.
    pub spent_tick: u32,
    /// Events over the budget (counted, not sent), since the map was made.
    pub suppressed: u64,
}

impl EventBudget {
    /// Elements of `PN_EVBUDGET`.
    pub const KINDS: u32 = 2;

    /// The element of an event kind.
    pub const fn index(kind: crate::event::EventKind) -> u32 {
        match kind {
            crate::event::EventKind::Drop => 0,
            crate::event::EventKind::NewFlow => 1,
        }
    }
}

/// Revision of the maps' meaning. The agent pins maps per layout (the
/// types, sizes and capacities of every map, read from the eBPF object, and
/// this number) and carries entries over to a new layout: bump it when an
/// entry keeps its size but changes meaning, so a new agent does not read
/// old entries as new ones.
pub const LAYOUT_REVISION: u32 = 2;

/// Capacities. `ENDPOINTS` holds the whole fleet's members the host must
/// know; local-only maps are smaller.
pub const MAX_ENDPOINTS: u32 = 131_072;
/// `PN_ENDPOINTS6`: the same members, by their IPv6 address.
pub const MAX_ENDPOINTS6: u32 = MAX_ENDPOINTS;
pub const MAX_IFACES: u32 = 4_096;
/// Rows of `PN_COUNTERS`: the host's (0) and one per interface.
pub const MAX_COUNTER_SLOTS: u32 = MAX_IFACES + 1;
pub const MAX_FLOWS: u32 = 65_536;
pub const MAX_PEERS: u32 = 4_096;
/// `PN_PEERS6`: the peers whose advertised endpoint is IPv6.
pub const MAX_PEERS6: u32 = MAX_PEERS;
/// `PN_CONNS`: connections with the world of this host's containers. LRU:
/// under pressure the least recently used go first, never an active one
/// unless this many are more active; each container holds at most its
/// share (`Config::conn_share`), so only many containers together fill it.
pub const MAX_CONNS: u32 = 131_072;
/// `PN_CONNS6`: the same connections over IPv6.
pub const MAX_CONNS6: u32 = MAX_CONNS;
/// `PN_EGRESS_DENY`: ranges.
pub const MAX_EGRESS_DENY: u32 = 4_096;
/// `PN_EGRESS_DENY6`: IPv6 ranges.
pub const MAX_EGRESS_DENY6: u32 = MAX_EGRESS_DENY;
/// `PN_TAGS`: tags (u32) of the networks with at least one local member.
pub const MAX_TAGS: u32 = 65_536;
pub const EVENTS_BYTES: u32 = 256 * 1024;

const _: () = assert!(core::mem::size_of::<Endpoint>() == 16);
const _: () = assert!(core::mem::size_of::<Iface>() == 32);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Counters>() == 16 * crate::Reason::COUNT);
// Slots are u16.
const _: () = assert!(MAX_COUNTER_SLOTS <= u16::MAX as u32 + 1);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey<Ip6>>() == 40);
const _: () = assert!(core::mem::size_of::<FlowState>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 64);
const _: () = assert!(core::mem::size_of::<ConnCount>() == 16);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 16);
const _: () = assert!(core::mem::size_of::<ConnKey<Ip6>>() == 40);
// `PN_EGRESS_DENY6`'s key is the prefix length (u32) and the address.
const _: () = assert!(core::mem::size_of::<Ip6>() == 16);
const _: () = assert!(core::mem::size_of::<ConnState>() == 16);
const _: () = assert!(core::mem::size_of::<DenyRange>() == 4);
const _: () = assert!(core::mem::size_of::<EventBudget>() == 24);
const _: () = assert!(core::mem::size_of::<Peer>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, integer-only and padding-free
    // (explicit `_pad` fields), so any byte pattern is a valid value.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Iface {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnKey<Ip6> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DenyRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnCount {}
}
