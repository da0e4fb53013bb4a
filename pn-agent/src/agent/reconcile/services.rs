//! The service addresses this host balances toward: for each app that
//! balances by `vip` in a network with a local member, each type's address
//! and the containers in its rotation (attached on a host this one knows,
//! and not failing their health check). IPv6 service addresses the same
//! way, toward the backends' IPv6 addresses.

use std::collections::BTreeMap;

use pn_common::{Ip4, Ip6};

use super::local::{Local, local_tags};
use crate::model::to_ip4;
use crate::store::view::services::in_rotation;
use crate::{datapath::ServiceState, model::Balance, store::view::MembershipView};

/// The service addresses of both families.
pub(super) type Services = (
    BTreeMap<Ip4, ServiceState>,
    BTreeMap<Ip6, ServiceState<Ip6>>,
);

pub(super) fn services(view: &MembershipView, local: &Local<'_>) -> Services {
    let (mut out, mut out6) = (BTreeMap::new(), BTreeMap::new());
    // The common case costs one pass over the apps.
    if !view.apps.values().any(|a| !a.services.is_empty()) {
        return (out, out6);
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
            let live: Vec<_> = view
                .containers_of_app(&app.id)
                .filter(|c| c.key.ctype == *ctype && in_rotation(view, Some(local.host), c))
                .collect();
            out.insert(
                to_ip4(*vip),
                ServiceState {
                    tag: net.tag,
                    backends: live.iter().map(|c| to_ip4(c.ip)).collect(),
                },
            );
            // Only the backends that have an IPv6 address (a host with
            // `--ipv6 off` gives none): the others take IPv4 clients only.
            if let Some(vip6) = app.services6.get(ctype) {
                out6.insert(
                    vip6.octets(),
                    ServiceState {
                        tag: net.tag,
                        backends: live.iter().filter_map(|c| Some(c.ip6?.octets())).collect(),
                    },
                );
            }
        }
    }
    (out, out6)
}
