//! The host's own IPv6 addresses, for the edge (what is never the world,
//! what published ports answer on, whether there is a global address to
//! translate containers' IPv6 to).

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use rtnetlink::packet_route::address::AddressAttribute;

use super::{
    error::{Result, kernel},
    socket::Netlink,
};

impl Netlink {
    /// Every IPv6 address of this namespace, with its interface's name.
    pub async fn ipv6_addrs(&self) -> Result<Vec<(String, Ipv6Net)>> {
        let names: std::collections::HashMap<u32, String> = self
            .links_with_prefix("")
            .await?
            .into_iter()
            .map(|(n, i)| (i, n))
            .collect();
        let mut out = Vec::new();
        let _dump = self.one_dump().await;
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(kernel("listing addresses"))?
        {
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if let (Some(ip), Some(name)) = (addr, names.get(&a.header.index))
                && let Ok(net) = Ipv6Net::new(ip, a.header.prefix_len)
            {
                out.push((name.clone(), net));
            }
        }
        Ok(out)
    }
}
