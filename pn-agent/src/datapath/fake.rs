//! An in-memory stand-in for the kernel's maps and links, for tests of the
//! datapath's diff and of the reconciler: it holds a [`State`] and records
//! every call, so a test can assert both on the result and on the work done.

use pn_common::{
    Ip4, Ip6,
    maps::{Endpoint, Iface, Peer},
};

use super::{
    error::{Result, plain},
    maps::Maps,
    state::{ServiceState, State},
};

#[derive(Debug, Default)]
pub struct FakeMaps {
    pub state: State,
    /// Every call, in order (`"set_endpoint 10.240.0.2"`, `"attach pnh…"`).
    pub calls: Vec<String>,
    /// Calls whose name starts with this fail (to test partial applies).
    pub fail_on: Option<&'static str>,
    /// `PN_MEMO_GEN` as the kernel's would hold it (`pn_common::memo`):
    /// odd from a write to a memoised map until `settle` (not in `calls`).
    pub generation: u64,
    /// The generation each memoised write was made under, in order.
    pub memo_writes: Vec<u64>,
    /// `--tc-memo`: off, `settle` leaves `generation` odd, as the
    /// kernel's.
    pub memo: bool,
}

impl FakeMaps {
    /// As `Kernel::load` leaves the maps with `--tc-memo` on or off:
    /// `PN_MEMO_GEN` past what an earlier agent left (`generation`).
    pub fn loaded(generation: u64, memo: bool) -> FakeMaps {
        FakeMaps {
            generation: pn_common::memo::loaded(generation, memo),
            memo,
            ..FakeMaps::default()
        }
    }

    fn call(&mut self, what: String) -> Result<()> {
        // As the kernel's: odd before the write, whether it works or not.
        if [
            "set_endpoint",
            "remove_endpoint",
            "set_iface",
            "remove_iface",
        ]
        .iter()
        .any(|m| what.starts_with(m))
        {
            self.generation = pn_common::memo::writing(self.generation);
            self.memo_writes.push(self.generation);
        }
        if let Some(f) = self.fail_on
            && what.starts_with(f)
        {
            return Err(plain(format!("fake failure: {what}")));
        }
        self.calls.push(what);
        Ok(())
    }
}

fn ip(a: Ip4) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(pn_common::ip4_octets(a))
}

impl Maps for FakeMaps {
    fn read(&mut self) -> Result<State> {
        self.call("read".into())?;
        Ok(self.state.clone())
    }
    fn set_endpoint(&mut self, a: Ip4, ep: Endpoint) -> Result<()> {
        self.call(format!("set_endpoint {}", ip(a)))?;
        self.state.endpoints.insert(a, ep);
        Ok(())
    }
    fn remove_endpoint(&mut self, a: Ip4) -> Result<()> {
        self.call(format!("remove_endpoint {}", ip(a)))?;
        self.state.endpoints.remove(&a);
        Ok(())
    }
    fn set_endpoint6(&mut self, a: Ip6, ep: Endpoint) -> Result<()> {
        self.call(format!("set_endpoint6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.endpoints6.insert(a, ep);
        Ok(())
    }
    fn remove_endpoint6(&mut self, a: Ip6) -> Result<()> {
        self.call(format!("remove_endpoint6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.endpoints6.remove(&a);
        Ok(())
    }
    fn set_iface(&mut self, ifindex: u32, iface: Iface) -> Result<()> {
        self.call(format!("set_iface {ifindex}"))?;
        self.state.ifaces.insert(ifindex, iface);
        Ok(())
    }
    fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        self.call(format!("remove_iface {ifindex}"))?;
        self.state.ifaces.remove(&ifindex);
        Ok(())
    }
    fn settle(&mut self) -> Result<()> {
        if self.memo && pn_common::memo::stamp(self.generation).is_none() {
            self.generation = pn_common::memo::written(self.generation);
        }
        Ok(())
    }
    fn set_peer(&mut self, a: Ip4, peer: Peer) -> Result<()> {
        self.call(format!("set_peer {}", ip(a)))?;
        self.state.peers.insert(a, peer);
        Ok(())
    }
    fn remove_peer(&mut self, a: Ip4) -> Result<()> {
        self.call(format!("remove_peer {}", ip(a)))?;
        self.state.peers.remove(&a);
        Ok(())
    }

    fn set_peer6(&mut self, a: Ip6, peer: Peer) -> Result<()> {
        self.call(format!("set_peer6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.peers6.insert(a, peer);
        Ok(())
    }

    fn remove_peer6(&mut self, a: Ip6) -> Result<()> {
        self.call(format!("remove_peer6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.peers6.remove(&a);
        Ok(())
    }
    fn set_tag(&mut self, tag: u32) -> Result<()> {
        self.call(format!("set_tag {tag}"))?;
        self.state.tags.insert(tag);
        Ok(())
    }
    fn remove_tag(&mut self, tag: u32) -> Result<()> {
        self.call(format!("remove_tag {tag}"))?;
        self.state.tags.remove(&tag);
        Ok(())
    }
    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.call(format!("attach {ifname}"))?;
        self.state.attached.insert(ifname.to_string());
        Ok(())
    }
    fn detach(&mut self, ifname: &str) -> Result<()> {
        self.call(format!("detach {ifname}"))?;
        self.state.attached.remove(ifname);
        Ok(())
    }
    fn reset_counters(&mut self, slot: u16) -> Result<()> {
        self.call(format!("reset_counters {slot}"))
    }
    fn set_service(&mut self, a: Ip4, _: Option<&ServiceState>, s: &ServiceState) -> Result<()> {
        self.call(format!("set_service {}", ip(a)))?;
        self.state.services.insert(a, s.clone());
        Ok(())
    }
    fn remove_service(&mut self, a: Ip4, _: &ServiceState) -> Result<()> {
        self.call(format!("remove_service {}", ip(a)))?;
        self.state.services.remove(&a);
        Ok(())
    }
    fn set_service6(
        &mut self,
        a: Ip6,
        _: Option<&ServiceState<Ip6>>,
        s: &ServiceState<Ip6>,
    ) -> Result<()> {
        self.call(format!("set_service6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.services6.insert(a, s.clone());
        Ok(())
    }
    fn remove_service6(&mut self, a: Ip6, _: &ServiceState<Ip6>) -> Result<()> {
        self.call(format!("remove_service6 {}", std::net::Ipv6Addr::from(a)))?;
        self.state.services6.remove(&a);
        Ok(())
    }
    fn forget_conns(&mut self, a: Ip4) -> Result<()> {
        self.call(format!("forget_conns {}", ip(a)))
    }
    fn set_deny(&mut self, (a, len): (Ip4, u8), kind: u32) -> Result<()> {
        self.call(format!("set_deny {}/{len}", ip(a)))?;
        self.state.egress_deny.insert((a, len), kind);
        Ok(())
    }
    fn remove_deny(&mut self, (a, len): (Ip4, u8)) -> Result<()> {
        self.call(format!("remove_deny {}/{len}", ip(a)))?;
        self.state.egress_deny.remove(&(a, len));
        Ok(())
    }
    fn forget_conns6(&mut self, a: Ip6) -> Result<()> {
        self.call(format!("forget_conns6 {}", std::net::Ipv6Addr::from(a)))
    }
    fn set_deny6(&mut self, (a, len): (Ip6, u8), kind: u32) -> Result<()> {
        self.call(format!("set_deny6 {}/{len}", std::net::Ipv6Addr::from(a)))?;
        self.state.egress_deny6.insert((a, len), kind);
        Ok(())
    }
    fn remove_deny6(&mut self, (a, len): (Ip6, u8)) -> Result<()> {
        self.call(format!(
            "remove_deny6 {}/{len}",
            std::net::Ipv6Addr::from(a)
        ))?;
        self.state.egress_deny6.remove(&(a, len));
        Ok(())
    }
}
