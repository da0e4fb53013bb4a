//! The edge's settings: `--publish-ports`, `--forward-guard`, and the
//! ranges of `--egress-deny`, `--router-cidr` and `--router-cidr6`.

use anyhow::bail;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `--publish-ports` [default: 30000-32767, Kubernetes' NodePort range,
/// which platforms already keep free of host services].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            lo: 30000,
            hi: 32767,
        }
    }
}

impl PortRange {
    pub const fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    pub const fn len(&self) -> usize {
        (self.hi - self.lo) as usize + 1
    }

    pub const fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected LO-HI, two ports from 1 to 65535 with LO <= HI");
        let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `--egress-deny` and `--router-cidr` ranges: network addresses, outside
/// the pool (members are governed by their networks, not by these lists).
fn outside_pool(flag: &str, nets: Vec<Ipv4Net>, pool: Ipv4Net) -> anyhow::Result<Vec<Ipv4Net>> {
    for n in &nets {
        if n.trunc() != *n {
            bail!(
                "invalid --{flag} {n}: not a network address (did you mean {}?)",
                n.trunc()
            );
        }
        if n.contains(&pool.network()) || pool.contains(&n.network()) {
            bail!("invalid --{flag} {n}: overlaps the pool {pool}");
        }
    }
    Ok(nets)
}

/// `--forward-guard`: whether the forward hook drops forwarded traffic that
/// is not pn's (neither in nor out of pn's interfaces, nor part of a
/// connection already open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardGuard {
    /// As the edge's `forwarding::decide` found: on when pn turned forwarding on, off when the
    /// host forwarded before (something else relies on it).
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for ForwardGuard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ForwardGuard::Auto),
            "on" => Ok(ForwardGuard::On),
            "off" => Ok(ForwardGuard::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

impl std::fmt::Display for ForwardGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForwardGuard::Auto => "auto",
            ForwardGuard::On => "on",
            ForwardGuard::Off => "off",
        })
    }
}

/// `--egress-deny`, `--router-cidr` and `--router-cidr6`, checked.
pub(super) struct EdgeRanges {
    pub egress_deny: Vec<Ipv4Net>,
    /// `--egress-deny`'s IPv6 ranges.
    pub egress_deny6: Vec<Ipv6Net>,
    pub router_cidrs: Vec<Ipv4Net>,
    pub router_cidrs6: Vec<Ipv6Net>,
}

/// The flags as given; `pool6`: `--pool6`, if given (the fleet's may be
/// the store's, known only later).
pub(super) struct EdgeFlags {
    pub egress_deny: Option<Vec<IpNet>>,
    pub router_cidr: Option<Vec<Ipv4Net>>,
    pub router_cidr6: Option<Vec<Ipv6Net>>,
}

pub(super) fn edge_ranges(
    flags: EdgeFlags,
    pool: Ipv4Net,
    pool6: Option<Ipv6Net>,
) -> anyhow::Result<EdgeRanges> {
    let (mut deny4, mut deny6) = (Vec::new(), Vec::new());
    for n in flags.egress_deny.unwrap_or_default() {
        match n {
            IpNet::V4(n) => deny4.push(n),
            IpNet::V6(n) => deny6.push(n),
        }
    }
    let egress_deny = outside_pool("egress-deny", deny4, pool)?;
    let egress_deny6 = outside_pool6(deny6, pool6)?;
    let router_cidrs = outside_pool("router-cidr", flags.router_cidr.unwrap_or_default(), pool)?;
    let router_cidrs6 = flags.router_cidr6.unwrap_or_default();
    if let Some(n) = router_cidrs6.iter().find(|n| n.trunc() != **n) {
        bail!("invalid --router-cidr6 {n}: not a network address");
    }
    Ok(EdgeRanges {
        egress_deny,
        egress_deny6,
        router_cidrs,
        router_cidrs6,
    })
}

/// `--egress-deny`'s IPv6 ranges: network addresses, outside `--pool6`
/// when it is given (members are governed by their networks).
fn outside_pool6(nets: Vec<Ipv6Net>, pool6: Option<Ipv6Net>) -> anyhow::Result<Vec<Ipv6Net>> {
    for n in &nets {
        if n.trunc() != *n {
            bail!(
                "invalid --egress-deny {n}: not a network address (did you mean {}?)",
                n.trunc()
            );
        }
        if let Some(pool6) = pool6
            && (n.contains(&pool6.network()) || pool6.contains(&n.network()))
        {
            bail!("invalid --egress-deny {n}: overlaps the IPv6 pool {pool6}");
        }
    }
    Ok(nets)
}
