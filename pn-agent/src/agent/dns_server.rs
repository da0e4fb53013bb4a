//! The agent's DNS server: started once the gateway's address is free (a
//! predecessor's server closed), answering from the membership view.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, RwLock},
    time::Duration,
};

use super::Agent;
use crate::{
    dns::{self, DnsConfig, DnsError},
    store::view::MembershipView,
};

/// The DNS server's view of the membership; `ipv6`: whether AAAA queries
/// get the containers' IPv6 addresses (`--ipv6 off`: this host's
/// containers have no IPv6, so none is answered to them).
struct ViewDirectory {
    view: Arc<RwLock<MembershipView>>,
    ipv6: bool,
}

impl dns::Directory for ViewDirectory {
    fn member(&self, client: Ipv4Addr) -> Option<dns::Member> {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        let network = v.container_by_ip(client)?.network;
        // Sealed unless its network says otherwise: a record missing for a
        // moment never opens the world.
        let sealed = v
            .networks
            .get(&network)
            .is_none_or(|n| n.egress != crate::model::Egress::Allow);
        Some(dns::Member { network, sealed })
    }

    fn by_ip6(&self, client: Ipv6Addr) -> Option<Ipv4Addr> {
        if !self.ipv6 {
            return None;
        }
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        v.container_by_ip6(client).map(|c| c.ip)
    }

    fn resolve(&self, q: &pn_common::names::RecordQuery, out: &mut Vec<IpAddr>) -> bool {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        let Some(app) = v.apps.get(&q.app).filter(|a| a.network == q.network) else {
            return false;
        };
        // An app balanced by `vip`: its and its types' names answer the
        // service addresses (IPv6's in AAAA); `N.TYPE` still names one
        // container.
        if let Some(vip) = crate::store::view::services::service_addr(app, &q.selector) {
            out.push(IpAddr::V4(vip));
            let vip6 = crate::store::view::services::service_addr6_served(&v, app, &q.selector);
            if let Some(ip6) = vip6.filter(|_| self.ipv6) {
                out.push(IpAddr::V6(ip6));
            }
            return true;
        }
        let before = out.len();
        // During an app's move its containers change network one by one:
        // only those already in the asked network answer.
        for c in v
            .select(&q.app, &q.selector)
            .filter(|c| c.network == q.network)
        {
            out.push(IpAddr::V4(c.ip));
            if let Some(ip6) = c.ip6.filter(|_| self.ipv6) {
                out.push(IpAddr::V6(ip6));
            }
        }
        out.len() > before
    }
}

impl Agent {
    /// Starts the DNS server (retrying a moment while a predecessor's
    /// socket is still being closed).
    pub(super) async fn start_dns(&self) -> anyhow::Result<()> {
        let mut tries = 0;
        let limits = dns::Limits::default()
            .with_query_rate(self.cfg.dns_query_rate)
            .fit_descriptors(dns::descriptor_limit().unwrap_or(1024));
        let handle = loop {
            let r = dns::serve_with(
                DnsConfig {
                    listen: self.cfg.dns_listen,
                    gateway6: self.cfg.ipv6.is_on().then_some(crate::netlink::GATEWAY6),
                    ttl: self.cfg.dns_ttl,
                    upstreams: self.dns_upstreams.clone(),
                },
                limits.clone(),
                Arc::new(ViewDirectory {
                    view: self.view.clone(),
                    ipv6: self.cfg.ipv6.is_on(),
                }),
                self.dns_stats.clone(),
            )
            .await;
            match r {
                Err(DnsError::Bind { ref source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && tries < 50 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => break r?,
            }
        };
        *self.dns.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }
}
