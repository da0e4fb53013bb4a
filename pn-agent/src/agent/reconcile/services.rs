//! The service addresses this host balances toward: for each app that
//! balances by `vip` in a network with a local member, each type's address
//! and the containers in its rotation (attached on a host this one knows,
//! and not failing their health check).

use std::{collections::BTreeMap, net::Ipv4Addr};

use pn_common::{Ip4, names::Selector};

use super::{Local, local_tags, to_ip4};
use crate::{
    datapath::ServiceState,
    model::{App, Balance, Container},
    proto::ServiceInfo,
    store::view::MembershipView,
};

/// Whether a container takes new connections of its type's service.
fn in_rotation(view: &MembershipView, local: Option<&Local<'_>>, c: &Container) -> bool {
    let reachable = match local {
        Some(l) if c.host == *l.host => true,
        _ => view.peer_id(&c.host).is_some_and(|p| p != 0),
    };
    reachable && !c.unhealthy
}

pub(super) fn services(view: &MembershipView, local: &Local<'_>) -> BTreeMap<Ip4, ServiceState> {
    let mut out = BTreeMap::new();
    // The common case costs one pass over the apps.
    if !view.apps.values().any(|a| !a.services.is_empty()) {
        return out;
    }
    let tags = local_tags(view, local);
    for app in view.apps.values().filter(|a| a.balance == Balance::Vip) {
        let Some(net) = view.networks.get(&app.network) else {
            continue;
        };
        if !tags.contains(&net.tag) {
            continue;
        }
        for (ctype, vip) in &app.services {
            let backends = view
                .containers_of_app(&app.id)
                .filter(|c| c.key.ctype == *ctype && in_rotation(view, Some(local), c))
                .map(|c| to_ip4(c.ip))
                .collect();
            out.insert(
                to_ip4(*vip),
                ServiceState {
                    tag: net.tag,
                    backends,
                },
            );
        }
    }
    out
}

/// For `app list`: each service address with its backends, as the store
/// has them.
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
