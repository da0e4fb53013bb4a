//! What a view says of service addresses (apps that balance by `vip`):
//! which containers are in a type's rotation, and what the app's names
//! answer. Read by the reconciler, the DNS, `app list` and the metrics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
                addr6: app.services6.get(ctype).copied(),
                backends,
                unhealthy,
                counters: Vec::new(),
            }
        })
        .collect()
}

/// Every service address of `app`, of both families.
pub fn addresses(app: &App) -> impl Iterator<Item = IpAddr> + '_ {
    let v4 = app.services.values().map(|ip| IpAddr::V4(*ip));
    v4.chain(app.services6.values().map(|ip| IpAddr::V6(*ip)))
}

/// The type a DNS name of `app` names when the app balances by `vip`: the
/// bare name and the type names give the service address, a container
/// name gives the container (`None`).
fn service_type<'a>(app: &App, selector: &'a Selector) -> Option<&'a str> {
    if app.balance != Balance::Vip {
        return None;
    }
    match selector {
        Selector::Web => Some(pn_common::ids::ContainerType::WEB),
        Selector::Type(t) => Some(t.as_str()),
        Selector::Container(..) => None,
    }
}

/// The address a DNS name of `app` answers in A when the app balances by
/// `vip` (see [`service_type`]).
pub fn service_addr(app: &App, selector: &Selector) -> Option<Ipv4Addr> {
    let ctype = service_type(app, selector)?;
    app.services
        .iter()
        .find(|(t, _)| t.as_str() == ctype)
        .map(|(_, a)| *a)
}

/// The address the same name answers in AAAA: the type's IPv6 service
/// address, if it has one (a network without an IPv6 range, or a record
/// not given one yet: no AAAA, never the containers' own).
pub fn service_addr6(app: &App, selector: &Selector) -> Option<Ipv6Addr> {
    let ctype = service_type(app, selector)?;
    app.services6
        .iter()
        .find(|(t, _)| t.as_str() == ctype)
        .map(|(_, a)| *a)
}

/// [`service_addr6`], only while a container of the type has an IPv6
/// address: the balancer's IPv6 rotation takes those alone (a host with
/// `--ipv6 off` gives none), so an address with no such container would
/// answer AAAA that no connection can use, and a client trying IPv6 first
/// would wait out its connect instead of taking the A record at once.
/// Unhealthy containers count: a failing check is a moment, the family is
/// the host's setting.
pub fn service_addr6_served(
    view: &MembershipView,
    app: &App,
    selector: &Selector,
) -> Option<Ipv6Addr> {
    let addr = service_addr6(app, selector)?;
    let ctype = service_type(app, selector)?;
    view.containers_of_app(&app.id)
        .any(|c| c.key.ctype.as_str() == ctype && c.ip6.is_some())
        .then_some(addr)
}
