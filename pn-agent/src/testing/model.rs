//! Records as a fresh store holds them, for tests that build views and
//! watch streams by hand: ids from a number, network 1 with app 1, `web`
//! containers of app 1, hosts with a tunnel endpoint and a key.

use std::net::{Ipv4Addr, SocketAddr};

use pn_common::ids::{AppId, HostId, NetworkId, Uuid};

use crate::model::{App, Container, ContainerKey, Host, Network};

pub fn net_id(n: u8) -> NetworkId {
    NetworkId(Uuid::from_random_bytes([n; 16]))
}

pub fn app_id(n: u8) -> AppId {
    AppId(Uuid::from_random_bytes([n; 16]))
}

pub fn host_id(id: &str) -> HostId {
    id.parse().unwrap()
}

/// Container `index` of type `ctype` of app `app`.
pub fn key(app: u8, ctype: &str, index: u32) -> ContainerKey {
    ContainerKey {
        app: app_id(app),
        ctype: ctype.parse().unwrap(),
        index,
    }
}

/// Network `n` over `cidr` with network tag `tag`.
pub fn network(n: u8, cidr: &str, tag: u32) -> Network {
    Network {
        id: net_id(n),
        cidr: cidr.parse().unwrap(),
        tag,
        created_at: 0,
        egress: Default::default(),
        cidr6: None,
    }
}

/// App `n` in network `net`: balanced by DNS, web port 8080.
pub fn app(n: u8, net: u8) -> App {
    App {
        id: app_id(n),
        network: net_id(net),
        name: None,
        created_at: 0,
        balance: Default::default(),
        services: Default::default(),
        services6: Default::default(),
        health_port: None,
        web_port: 8080,
    }
}

/// `key`'s record in `network` at `ip` on host `on`, as its agent writes
/// it (namespace `ns<index>`, interface `pn0`).
pub fn member(key: ContainerKey, network: NetworkId, ip: Ipv4Addr, on: &str) -> Container {
    Container {
        host_ifname: key.host_ifname(),
        netns: format!("ns{}", key.index),
        key,
        network,
        ip,
        ip6: None,
        host: host_id(on),
        ifname: "pn0".into(),
        created_at: 0,
        runtime: None,
        unhealthy: false,
        published: None,
    }
}

/// `web-<index>` of app 1 (network 1) at `ip` on host `on`.
pub fn container(index: u32, ip: impl Into<Ipv4Addr>, on: &str) -> Container {
    member(key(1, "web", index), net_id(1), ip.into(), on)
}

/// Host `id` with `peer_id`, its tunnel at `192.0.2.<peer_id>:51871`, its
/// public key made of its name's bytes (hosts of other names hold other
/// keys: the view refuses a key two hosts hold).
pub fn host(id: &str, peer_id: u32) -> Host {
    let addr: SocketAddr = format!("192.0.2.{peer_id}:51871").parse().unwrap();
    let mut key = [0x5a; 32];
    for (i, b) in id.bytes().enumerate() {
        key[i % 32] ^= b;
    }
    Host {
        id: host_id(id),
        advertise: Some(addr),
        public_key: Some(pn_tunnel::keyfile::encode_key(&key)),
        started_at: 0,
        peer_id,
    }
}
