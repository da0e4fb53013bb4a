//! What the plugin prints: the ADD result built from the agent's answer,
//! and the CNI error object for any failure, with the spec's code chosen by
//! the kind of the agent's error (never by its wording).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use pn_api::{client::ClientError, error::ErrorKind, proto::Attachment};
use rscni_types::{
    error::Error,
    types::{CNIResult, Interface, IpConfig, Route},
};

/// The spec's "internal error" code (the reference library's `ErrInternal`).
pub const INTERNAL: u32 = 999;

/// ADD's result: what came before in a chain (`prev`), then this
/// interface, its address with the gateway, the routes through the gateway
/// and the DNS server with the network's search domain.
///
/// The DNS server is the IPv4 one (`169.254.1.1`) only, a dual-stack
/// container's too, although the agent also answers on `fe80::1` of every
/// container link and writes `nameserver fe80::1%IFNAME` second into the
/// resolv.conf of a named namespace (`netlink::write_resolv_conf`). A
/// link-local server is only reachable with its zone, and the runtimes
/// that read this field parse each entry as a bare address: podman (CNI
/// backend, 4.3) fails the whole ADD on `fe80::1%eth0` ("failed to parse
/// cni nameserver ip"), and without the zone writes `nameserver fe80::1`,
/// which the container's resolver cannot reach (`connect`: EINVAL). Every
/// container has IPv4, and the IPv4 server answers AAAA as well.
pub fn add_result(prev: Option<CNIResult>, ifname: &str, netns: &str, a: &Attachment) -> CNIResult {
    let mut r = prev.unwrap_or_default();
    let index = r.interfaces.len() as u32;
    r.interfaces.push(Interface {
        name: ifname.to_string(),
        mac: a.mac.clone(),
        mtu: Some(a.mtu),
        sandbox: Some(netns.to_string()),
        socket_path: None,
        pci_id: None,
    });
    r.ips.push(IpConfig {
        interface: Some(index),
        address: IpNet::V4(Ipv4Net::from(a.container.ip)),
        gateway: Some(IpAddr::V4(a.gateway)),
    });
    if let (Some(ip6), Some(gw6)) = (a.container.ip6, a.gateway6) {
        r.ips.push(IpConfig {
            interface: Some(index),
            address: IpNet::V6(Ipv6Net::from(ip6)),
            gateway: Some(IpAddr::V6(gw6)),
        });
    }
    let v4 = a
        .routes
        .iter()
        .map(|dst| (IpNet::V4(*dst), IpAddr::V4(a.gateway)));
    let v6 = a.gateway6.iter().flat_map(|gw6| {
        a.routes6
            .iter()
            .map(|dst| (IpNet::V6(*dst), IpAddr::V6(*gw6)))
    });
    for (dst, gw) in v4.chain(v6) {
        r.routes.push(Route {
            dst,
            gw: Some(gw),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        });
    }
    let mut dns = r.dns.take().unwrap_or_default();
    dns.nameservers
        .extend(a.nameservers.iter().map(|n| n.to_string()));
    dns.search
        .get_or_insert_with(Vec::new)
        .extend(a.search.iter().cloned());
    r.dns = Some(dns);
    r
}

/// Which operation failed, for the choice of code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Check,
    Status,
}

/// The CNI error for a failed call to the agent.
pub fn client_error(e: ClientError, op: Op) -> Error {
    if op == Op::Status {
        // STATUS has its own answer: ADD would not work now.
        return Error::PluginNotAvailable(e.to_string());
    }
    match e {
        // Nothing was done; the runtime may retry once the agent is back.
        ClientError::NotRunning { .. } | ClientError::Io { .. } => {
            Error::TryAgainLater(e.to_string())
        }
        // The plugin runs as someone the agent does not serve: retrying
        // will not help.
        ClientError::Denied { .. } => internal(e.to_string()),
        ClientError::Protocol(m) => {
            internal(format!("pn-agent answered something unexpected: {m}"))
        }
        ClientError::Refused(e) => match (e.kind, op) {
            (ErrorKind::Unavailable, _) => Error::TryAgainLater(e.message),
            // The configuration names an app (or a type or index) the
            // agent refuses.
            (ErrorKind::Invalid, _) | (ErrorKind::NotFound, Op::Add) => {
                Error::InvalidNetworkConfig(e.message)
            }
            _ => internal(e.message),
        },
    }
}

pub fn internal(details: String) -> Error {
    Error::Custom(INTERNAL, "Internal error".into(), details)
}

#[cfg(test)]
mod tests {
    use pn_api::{error::Error as ApiError, proto::ContainerInfo};

    use super::*;

    fn attachment() -> Attachment {
        let net = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c";
        Attachment {
            container: ContainerInfo {
                id: "x".into(),
                app: "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap(),
                network: net.parse().unwrap(),
                ctype: "web".parse().unwrap(),
                index: 1,
                ip: "10.240.0.2".parse().unwrap(),
                ip6: None,
                host: "h1".into(),
                netns: "/run/netns/c1".into(),
                interface: "eth0".into(),
                host_interface: "pnh0".into(),
                names: vec![],
                published: None,
            },
            mac: "02:00:00:00:00:01".into(),
            mtu: 1420,
            gateway: "169.254.1.1".parse().unwrap(),
            routes: vec!["10.240.0.0/12".parse().unwrap()],
            gateway6: None,
            routes6: vec![],
            nameservers: vec!["169.254.1.1".parse().unwrap()],
            search: vec![format!("{net}.private-network.internal")],
        }
    }

    #[test]
    fn the_result_has_the_interface_address_routes_and_dns() {
        let r = add_result(None, "eth0", "/run/netns/c1", &attachment());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1420,
                                "sandbox": "/run/netns/c1"}],
                "ips": [{"interface": 0, "address": "10.240.0.2/32", "gateway": "169.254.1.1"}],
                "routes": [{"dst": "10.240.0.0/12", "gw": "169.254.1.1"}],
                "dns": {"nameservers": ["169.254.1.1"],
                        "search": ["pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal"]},
            })
        );
    }

    #[test]
    fn a_dual_stack_result_has_both_addresses_and_both_routes() {
        let mut a = attachment();
        a.container.ip6 = Some("fd12:3456:789a::2".parse().unwrap());
        a.gateway6 = Some("fe80::1".parse().unwrap());
        a.routes6 = vec!["::/0".parse().unwrap()];
        let v = serde_json::to_value(add_result(None, "eth0", "/run/netns/c1", &a)).unwrap();
        assert_eq!(
            v["ips"],
            serde_json::json!([
                {"interface": 0, "address": "10.240.0.2/32", "gateway": "169.254.1.1"},
                {"interface": 0, "address": "fd12:3456:789a::2/128", "gateway": "fe80::1"},
            ])
        );
        assert_eq!(
            v["routes"],
            serde_json::json!([
                {"dst": "10.240.0.0/12", "gw": "169.254.1.1"},
                {"dst": "::/0", "gw": "fe80::1"},
            ])
        );
        // cniVersion 1.0: no per-address "version" (0.3/0.4's field).
        assert!(v["ips"][1].get("version").is_none());
    }

    #[test]
    fn a_dual_stack_result_names_the_ipv4_dns_server_only() {
        let mut a = attachment();
        a.container.ip6 = Some("fd12:3456:789a::2".parse().unwrap());
        a.gateway6 = Some("fe80::1".parse().unwrap());
        a.routes6 = vec!["::/0".parse().unwrap()];
        let dns = add_result(None, "eth0", "/run/netns/c1", &a).dns.unwrap();
        assert_eq!(dns.nameservers, vec!["169.254.1.1".to_string()]);
        // What runtimes parse: bare addresses, never a zone.
        assert!(
            dns.nameservers
                .iter()
                .all(|n| n.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()))
        );
    }

    #[test]
    fn a_chained_result_keeps_what_came_before() {
        let prev = add_result(None, "eth0", "/run/netns/c1", &attachment());
        let r = add_result(Some(prev), "eth1", "/run/netns/c1", &attachment());
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.ips[1].interface, Some(1));
        assert_eq!(r.dns.unwrap().nameservers.len(), 2);
    }

    #[test]
    fn agent_errors_map_to_cni_codes() {
        let refused = |kind, op| {
            u32::from(&client_error(
                ClientError::Refused(ApiError::new(kind, "m")),
                op,
            ))
        };
        assert_eq!(refused(ErrorKind::Unavailable, Op::Add), 11);
        assert_eq!(refused(ErrorKind::NotFound, Op::Add), 7);
        assert_eq!(refused(ErrorKind::Invalid, Op::Add), 7);
        assert_eq!(refused(ErrorKind::NotFound, Op::Check), INTERNAL);
        assert_eq!(refused(ErrorKind::Conflict, Op::Add), INTERNAL);
        assert_eq!(refused(ErrorKind::Exhausted, Op::Add), INTERNAL);
        assert_eq!(refused(ErrorKind::Internal, Op::Del), INTERNAL);
        let down = client_error(
            ClientError::NotRunning {
                path: "/run/pn-agent/api.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            Op::Add,
        );
        assert_eq!(u32::from(&down), 11);
        assert!(down.to_string().contains("agent not running"), "{down}");
        let e = client_error(ClientError::Protocol("x".into()), Op::Del);
        assert_eq!(u32::from(&e), INTERNAL);
        let e = client_error(ClientError::Protocol("x".into()), Op::Status);
        assert_eq!(u32::from(&e), 50);
    }
}
