//! The service addresses this host balances toward: for each app that
//! balances by `vip` in a network with a local member, each type's address
//! and the containers in its rotation (attached on a host this one knows,
//! and not failing their health check).

use std::collections::BTreeMap;

use pn_common::Ip4;

use super::local::{Local, local_tags};
use crate::model::to_ip4;
use crate::store::view::services::in_rotation;
use crate::{datapath::ServiceState, model::Balance, store::view::MembershipView};

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
                .filter(|c| c.key.ctype == *ctype && in_rotation(view, Some(local.host), c))
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
