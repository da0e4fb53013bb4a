//! What a view says of service addresses (apps that balance by `vip`):
//! which containers are in a type's rotation, and what the app's names
//! answer. Read by the reconciler, the DNS, `app list` and the metrics.

use std::net::Ipv4Addr;

use pn_common::{ids::HostId, names::Selector};

use super::state::MembershipView;
use crate::{
    model::{App, Balance, Container},
    proto::ServiceInfo,
};

/// Whether a container takes new connections of its type's service.
pub fn in_rotation(view: &MembershipView, local: Option<&HostId>, c: &Container) -> bool {
    let reachable = match local {
        Some(h) if c.host == *h => true,
        _ => view.peer_id(&c.host).is_some_and(|p| p != 0),
    };
    reachable && !c.unhealthy
}

/// For `app list`: each service address with its backends, as the store
/// has them (the datapath's counters are the caller's to add).
pub fn service_infos(view: &MembershipView, app: &App) -> Vec<ServiceInfo> {
    app.services
        .iter()
        .map(|(ctype, addr)| {
            let (mut backends, mut unhealthy) = (Vec::new(), Vec::new());
            for c in view
                .containers_of_app(&app.id)
                .filter(|c| c.key.ctype == *ctype)
            {
                if in_rotation(view, None, c) {
                    backends.push(c.ip);
                } else {
                    unhealthy.push(c.ip);
                }
            }
            ServiceInfo {
                ctype: ctype.clone(),
                addr: *addr,
                backends,
                unhealthy,
                counters: Vec::new(),
            }
        })
        .collect()
}

/// The address a DNS name of `app` answers when the app balances by
/// `vip`: the bare name and the type names give the service address, a
/// container name gives the container (`None`).
pub fn service_addr(app: &App, selector: &Selector) -> Option<Ipv4Addr> {
    if app.balance != Balance::Vip {
        return None;
    }
    let ctype = match selector {
        Selector::Web => pn_common::ids::ContainerType::WEB,
        Selector::Type(t) => t.as_str(),
        Selector::Container(..) => return None,
    };
    app.services
        .iter()
        .find(|(t, _)| t.as_str() == ctype)
        .map(|(_, a)| *a)
}
