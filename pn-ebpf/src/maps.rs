//! The maps, pinned by name under the agent's bpffs directory so that an agent
//! restart finds (and keeps enforcing with) the same state.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pn_common::{
    Ip4, Ip6,
    lb::{
        Backend, LbConn, LbConnKey, LbStats, LbStatsKey, MAX_BACKENDS, MAX_LB_CLIENTS,
        MAX_LB_CONNS, MAX_SERVICES, MAX_SLOTS, Service, SlotKey,
    },
    maps::{
        Config, ConnCount, ConnKey, ConnState, Counters, DenyRange, EVENTS_BYTES, Endpoint,
        EventBudget, FlowKey, FlowState, Iface, MAX_CONNS, MAX_CONNS6, MAX_COUNTER_SLOTS,
        MAX_EGRESS_DENY, MAX_EGRESS_DENY6, MAX_ENDPOINTS, MAX_ENDPOINTS6, MAX_FLOWS, MAX_IFACES,
        MAX_PEERS, MAX_PEERS6, MAX_TAGS, Peer,
    },
    memo::Memo,
};

#[map]
pub static PN_ENDPOINTS: HashMap<Ip4, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// The same members by their IPv6 address (see `pn_common::maps`).
#[map]
pub static PN_ENDPOINTS6: HashMap<Ip6, Endpoint> = HashMap::pinned(MAX_ENDPOINTS6, 0);

#[map]
pub static PN_IFACES: HashMap<u32, Iface> = HashMap::pinned(MAX_IFACES, 0);

/// This CPU's memo of recent `PN_IFACES` and `PN_ENDPOINTS` lookups (see
/// `pn_common::memo`).
#[map]
pub static PN_MEMO: PerCpuArray<Memo> = PerCpuArray::pinned(1, 0);

/// The generation the memo's slots must carry: odd while the agent writes
/// `PN_IFACES` or `PN_ENDPOINTS`, the next even number after.
#[map]
pub static PN_MEMO_GEN: Array<u64> = Array::pinned(1, 0);

/// Per slot (see `Iface::slot`), per reason; per CPU: exact without atomics.
#[map]
pub static PN_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_COUNTER_SLOTS, 0);

#[map]
pub static PN_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static PN_FLOWS6: LruHashMap<FlowKey<Ip6>, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static PN_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map]
pub static PN_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static PN_EVBUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(EventBudget::KINDS, 0);

#[map]
pub static PN_PEERS: HashMap<Ip4, Peer> = HashMap::pinned(MAX_PEERS, 0);

/// The peers whose advertised endpoint is IPv6, by that address.
#[map]
pub static PN_PEERS6: HashMap<Ip6, Peer> = HashMap::pinned(MAX_PEERS6, 0);

#[map]
pub static PN_TAGS: HashMap<u32, u32> = HashMap::pinned(MAX_TAGS, 0);

/// Connections between local containers and the world (egress) or the
/// routers (published), so that their other direction is admitted.
#[map]
pub static PN_CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::pinned(MAX_CONNS, 0);

/// Destinations that are never the world.
#[map]
pub static PN_EGRESS_DENY: LpmTrie<Ip4, DenyRange> = LpmTrie::pinned(MAX_EGRESS_DENY, 0);

/// `PN_CONNS` over IPv6.
#[map]
pub static PN_CONNS6: LruHashMap<ConnKey<Ip6>, ConnState> = LruHashMap::pinned(MAX_CONNS6, 0);

/// IPv6 destinations that are never the world (`::/0` while the host has
/// no global IPv6 address to translate to).
#[map]
pub static PN_EGRESS_DENY6: LpmTrie<Ip6, DenyRange> = LpmTrie::pinned(MAX_EGRESS_DENY6, 0);

/// Service addresses this host balances toward (see `pn_common::lb`).
#[map]
pub static PN_LB_SERVICES: HashMap<Ip4, Service> = HashMap::pinned(MAX_SERVICES, 0);

/// Maglev tables of the services, slot by slot; allocated on use.
#[map]
pub static PN_LB_SLOTS: HashMap<SlotKey, Ip4> =
    HashMap::pinned(MAX_SLOTS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Backends in a rotation, and the service of each.
#[map]
pub static PN_LB_BACKENDS: HashMap<Ip4, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// Balanced connections, both ways.
#[map]
pub static PN_LB_CONNS: LruHashMap<LbConnKey, LbConn> = LruHashMap::pinned(MAX_LB_CONNS, 0);

/// Marks of the addresses that may hold a reverse entry of `PN_LB_CONNS`
/// or `PN_LB6_CONNS`, by `pn_common::lb::client_mark` (see
/// `MAX_LB_CLIENTS`): replies toward any other skip that lookup.
#[map]
pub static PN_LB_CLIENTS: Array<u8> = Array::pinned(MAX_LB_CLIENTS, 0);

/// Per backend: connections sent, connections moved away.
#[map]
pub static PN_LB_STATS: PerCpuHashMap<LbStatsKey, LbStats> = PerCpuHashMap::pinned(MAX_BACKENDS, 0);

/// Per container (by `Iface::slot`): entries it holds in the connection
/// tables, against `Config::conn_share` (see `crate::share`).
#[map]
pub static PN_CONN_COUNT: Array<ConnCount> = Array::pinned(MAX_COUNTER_SLOTS, 0);

/// IPv6 service addresses, the same way (see `pn_common::lb`, `lb6`).
#[map]
pub static PN_LB6_SERVICES: HashMap<Ip6, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static PN_LB6_SLOTS: HashMap<SlotKey<Ip6>, Ip6> =
    HashMap::pinned(MAX_SLOTS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[map]
pub static PN_LB6_BACKENDS: HashMap<Ip6, Backend<Ip6>> = HashMap::pinned(MAX_BACKENDS, 0);

#[map]
pub static PN_LB6_CONNS: LruHashMap<LbConnKey<Ip6>, LbConn<Ip6>> =
    LruHashMap::pinned(MAX_LB_CONNS, 0);

#[map]
pub static PN_LB6_STATS: PerCpuHashMap<LbStatsKey<Ip6>, LbStats> =
    PerCpuHashMap::pinned(MAX_BACKENDS, 0);
