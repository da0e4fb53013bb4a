//! The one path to the kernel the datapath writes through.

use pn_common::{
    Ip4, Ip6,
    maps::{Endpoint, Iface, Peer},
};

use super::{
    error::Result,
    state::{ServiceState, State},
};

/// One path to the kernel: every write the datapath makes goes through
/// these calls (aya in production, a fake in tests).
pub trait Maps {
    /// The kernel's current contents, read whole.
    fn read(&mut self) -> Result<State>;
    fn set_endpoint(&mut self, ip: Ip4, ep: Endpoint) -> Result<()>;
    fn remove_endpoint(&mut self, ip: Ip4) -> Result<()>;
    fn set_endpoint6(&mut self, ip: Ip6, ep: Endpoint) -> Result<()>;
    fn remove_endpoint6(&mut self, ip: Ip6) -> Result<()>;
    fn set_iface(&mut self, ifindex: u32, iface: Iface) -> Result<()>;
    fn remove_iface(&mut self, ifindex: u32) -> Result<()>;
    /// Ends a batch of writes to the maps the programs memoise
    /// (`PN_IFACES`, `PN_ENDPOINTS`, `PN_ENDPOINTS6`; see
    /// `pn_common::memo`): the first such write of a batch turned the
    /// memo off (generation odd), this turns it back on under a generation
    /// no slot filled before carries. Nothing when nothing was written.
    /// Every batch must end with it, failed writes or not; one that does not
    /// leaves the memo off (slower, never stale).
    fn settle(&mut self) -> Result<()>;
    fn set_peer(&mut self, ip: Ip4, peer: Peer) -> Result<()>;
    fn remove_peer(&mut self, ip: Ip4) -> Result<()>;
    fn set_peer6(&mut self, ip: Ip6, peer: Peer) -> Result<()>;
    fn remove_peer6(&mut self, ip: Ip6) -> Result<()>;
    fn set_tag(&mut self, tag: u32) -> Result<()>;
    fn remove_tag(&mut self, tag: u32) -> Result<()>;
    /// Attaches both programs to an interface, or replaces in place the
    /// programs of links an earlier agent pinned.
    fn attach(&mut self, ifname: &str) -> Result<()>;
    fn detach(&mut self, ifname: &str) -> Result<()>;
    /// Zeroes a row of `PN_COUNTERS` (before an interface gets the slot).
    fn reset_counters(&mut self, slot: u16) -> Result<()>;
    /// Writes a service (its table from its backends); `old`: what the
    /// kernel holds now, so only the difference is written.
    fn set_service(
        &mut self,
        vip: Ip4,
        old: Option<&ServiceState>,
        new: &ServiceState,
    ) -> Result<()>;
    fn remove_service(&mut self, vip: Ip4, old: &ServiceState) -> Result<()>;
    /// The same for an IPv6 service address.
    fn set_service6(
        &mut self,
        vip: Ip6,
        old: Option<&ServiceState<Ip6>>,
        new: &ServiceState<Ip6>,
    ) -> Result<()>;
    fn remove_service6(&mut self, vip: Ip6, old: &ServiceState<Ip6>) -> Result<()>;
    /// Forgets a removed local endpoint's connections with the outside
    /// (its address may go to another container, which must not inherit
    /// them).
    fn forget_conns(&mut self, ip: Ip4) -> Result<()>;
    fn forget_conns6(&mut self, ip: Ip6) -> Result<()>;
    fn set_deny(&mut self, range: (Ip4, u8), kind: u32) -> Result<()>;
    fn remove_deny(&mut self, range: (Ip4, u8)) -> Result<()>;
    fn set_deny6(&mut self, range: (Ip6, u8), kind: u32) -> Result<()>;
    fn remove_deny6(&mut self, range: (Ip6, u8)) -> Result<()>;
}
