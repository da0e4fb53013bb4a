//! The membership's names for what the datapath counts by address, asked
//! by its metrics at each scrape.

use std::{
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use crate::{
    datapath::metrics::{Names, Service},
    store::view::{MembershipView, services::service_infos},
};

pub(super) struct ViewNames(pub(super) Arc<RwLock<MembershipView>>);

impl Names for ViewNames {
    fn endpoints(&self, ips: &[Ipv4Addr]) -> Vec<Option<[String; 3]>> {
        let view = self.0.read().unwrap_or_else(|p| p.into_inner());
        ips.iter()
            .map(|ip| {
                let c = view.container_by_ip(*ip)?;
                Some([c.network.to_string(), c.key.app.to_string(), c.key.name()])
            })
            .collect()
    }

    fn services(&self) -> Vec<Service> {
        let view = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for app in view.apps.values() {
            for s in service_infos(&view, app) {
                let backends = s.backends.iter().map(|b| (*b, true));
                let unhealthy = s.unhealthy.iter().map(|b| (*b, false));
                let backends: Vec<_> = backends.chain(unhealthy).collect();
                let backends6 = backends
                    .iter()
                    .filter_map(|(b, up)| Some((view.container_by_ip(*b)?.ip6?, *up)))
                    .collect();
                out.push(Service {
                    app: app.id.to_string(),
                    service: s.ctype.to_string(),
                    addr: s.addr,
                    backends,
                    addr6: s.addr6,
                    backends6,
                });
            }
        }
        out
    }
}
