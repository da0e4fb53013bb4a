//! What names a container across the fleet, and the names derived from it
//! (DNS names, the host-side interface), so the agent and every client
//! derive them the same way.

use pn_common::{
    ids::{AppId, ContainerType, NetworkId},
    names,
};
use serde::{Deserialize, Serialize};

/// (app, type, index): what names a container, fleet-wide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerKey {
    pub app: AppId,
    #[serde(rename = "type")]
    pub ctype: ContainerType,
    pub index: u32,
}

impl ContainerKey {
    /// The smallest key of an app (for range scans).
    pub fn first_of(app: AppId) -> ContainerKey {
        ContainerKey {
            app,
            ctype: "a".parse().expect("valid type"),
            index: 0,
        }
    }

    /// `web-1`: the container's name inside its app (`PN_CONTAINER`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.ctype, self.index)
    }

    /// Every DNS name of the container in `network`, most specific first.
    pub fn dns_names(&self, network: &NetworkId) -> Vec<String> {
        let mut out = vec![
            names::container_name(network, &self.app, &self.ctype, self.index),
            names::type_name(network, &self.app, &self.ctype),
        ];
        if names::Selector::Web.matches(&self.ctype, self.index) {
            out.push(names::app_name(network, &self.app));
        }
        out
    }

    /// The host-side end of its veth pair: derived from the key alone
    /// (≤ 15 bytes, [`HOST_IF_PREFIX`]), so every agent names it the same
    /// and a record can only name an interface the agent itself made.
    pub fn host_ifname(&self) -> String {
        let h = fnv1a64(self.to_string().as_bytes());
        format!("{HOST_IF_PREFIX}{:011x}", h & ((1 << 44) - 1))
    }
}

/// Prefix of host-side veth names; anything with it belongs to the agent.
pub const HOST_IF_PREFIX: &str = "pnh";

/// FNV-1a, 64 bits: stable across versions and machines, unlike std's
/// hasher, for names derived from records.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl std::fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}-{}", self.app, self.ctype, self.index)
    }
}

/// How a container runtime names an attachment it asked for through the CNI
/// plugin: its container id and the network configuration's name (the CNI
/// spec identifies an attachment by these and the interface name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuntimeRef {
    /// `CNI_CONTAINERID`.
    pub id: String,
    /// The network configuration's `name`.
    pub network: String,
}

/// A runtime's container id or network name that breaks the CNI spec's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} {value:?}: 1 to 255 characters among a-z, A-Z, 0-9, _, . and -, starting with a letter or digit"
)]
pub struct RuntimeRefError {
    pub what: &'static str,
    pub value: String,
}

impl RuntimeRef {
    /// The rule the CNI spec gives for container ids and network names.
    pub fn check(&self) -> Result<(), RuntimeRefError> {
        let ok = crate::cni::valid_name;
        if !ok(&self.id) {
            return Err(RuntimeRefError {
                what: "container id",
                value: self.id.clone(),
            });
        }
        if !ok(&self.network) {
            return Err(RuntimeRefError {
                what: "network name",
                value: self.network.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn key(t: &str, i: u32) -> ContainerKey {
        ContainerKey {
            app: "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap(),
            ctype: t.parse().unwrap(),
            index: i,
        }
    }

    #[test]
    fn host_interface_names_are_short_stable_and_distinct() {
        let a = key("web", 1).host_ifname();
        assert_eq!(a, key("web", 1).host_ifname());
        // The names of running fleets: changing the hash renames every veth.
        assert_eq!(a, "pnh3c95385eaac");
        assert!(a.len() <= 15 && a.starts_with(HOST_IF_PREFIX), "{a}");
        let all: HashSet<_> = (1..500).map(|i| key("web", i).host_ifname()).collect();
        assert_eq!(all.len(), 499);
    }

    #[test]
    fn dns_names_follow_the_contract() {
        let net: NetworkId = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c".parse().unwrap();
        assert_eq!(
            key("web", 1).dns_names(&net),
            [
                "1.web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "web.ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
                "ap-a71da13f-7c70-4c00-a644-eee8558d8053.pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c.private-network.internal.",
            ]
        );
        assert_eq!(key("worker", 2).dns_names(&net).len(), 2);
    }

    #[test]
    fn runtime_refs_follow_the_cni_rule() {
        let r = |id: &str, network: &str| RuntimeRef {
            id: id.into(),
            network: network.into(),
        };
        assert!(r("2f0c6d3a9b1e", "pn-web").check().is_ok());
        assert!(r("a_b.c-d", "N1").check().is_ok());
        for (id, net) in [
            ("", "n"),
            ("-a", "n"),
            ("a b", "n"),
            ("a", ""),
            ("a", "n/1"),
        ] {
            assert!(r(id, net).check().is_err(), "{id:?} {net:?}");
        }
        assert!(r(&"a".repeat(256), "n").check().is_err());
    }
}
