//! The maps, pinned by name under the agent's bpffs directory so that an agent
//! restart finds (and keeps enforcing with) the same state.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pn_common::{
    Ip4,
    maps::{
        Config, ConnKey, ConnState, Counter, CounterKey, DenyRange, EVENTS_BYTES, Endpoint,
        EventBudget, FlowKey, FlowState, Iface, MAX_CONNS, MAX_COUNTERS, MAX_EGRESS_DENY,
        MAX_ENDPOINTS, MAX_FLOWS, MAX_IFACES, MAX_PEERS, MAX_TAGS, Peer,
    },
};

#[map]
pub static PN_ENDPOINTS: HashMap<Ip4, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static PN_IFACES: HashMap<u32, Iface> = HashMap::pinned(MAX_IFACES, 0);

#[map]
pub static PN_COUNTERS: PerCpuHashMap<CounterKey, Counter> = PerCpuHashMap::pinned(MAX_COUNTERS, 0);

#[map]
pub static PN_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map]
pub static PN_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map]
pub static PN_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static PN_EVBUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

#[map]
pub static PN_PEERS: HashMap<Ip4, Peer> = HashMap::pinned(MAX_PEERS, 0);

#[map]
pub static PN_TAGS: HashMap<u32, u32> = HashMap::pinned(MAX_TAGS, 0);

/// Connections between local containers and the world (egress) or the
/// routers (published), so that their other direction is admitted.
#[map]
pub static PN_CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::pinned(MAX_CONNS, 0);

/// Destinations that are never the world.
#[map]
pub static PN_EGRESS_DENY: LpmTrie<Ip4, DenyRange> = LpmTrie::pinned(MAX_EGRESS_DENY, 0);
