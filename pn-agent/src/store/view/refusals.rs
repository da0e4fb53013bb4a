//! How many records the view refused, by kind of record and reason: what
//! `pn_store_records_refused_total{kind,reason}` and `status` show; the
//! reasons, and a refusal as the log words it.

use std::collections::BTreeMap;

use crate::store::keys;

/// Why a record was refused: the label of the `rejected` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// The value is not a record of its kind.
    Undecodable,
    /// Not a key of the layout, or the record's own id is not its key's.
    Key,
    /// A network range the rules refuse (outside the pool, special, …).
    Range,
    /// A network range overlapping another network's.
    Overlap,
    /// A network tag that is zero or another network's.
    Tag,
    /// A known record that changes what never changes after creation: a
    /// network's range or tag; a container's host, namespace or interface,
    /// its network (but to its app's, when the app moves) or its address
    /// (but with its network).
    Immutable,
    /// An app or container of a network the view does not have.
    UnknownNetwork,
    /// A container of an app the view does not have.
    UnknownApp,
    /// An application name the rules refuse.
    AppName,
    /// A container address outside its network's range, or reserved.
    Address,
    /// A container or service address another container or service holds.
    AddressTaken,
    /// A service address outside its network's range, or reserved, or
    /// given to two types of the app.
    Service,
    /// A host-side interface other than the one derived from the key.
    HostInterface,
    /// An interface name inside the namespace the rules refuse.
    Interface,
    /// A namespace that is neither a name nor a path.
    Netns,
    /// A tunnel endpoint no host can have: not unicast, loopback,
    /// link-local, or inside the pool.
    Endpoint,
    /// A public key that is not 32 bytes of base64.
    HostKey,
    /// A public key an older host record holds.
    KeyTaken,
    /// A peer id that is zero or another host's.
    PeerId,
    /// An app's web port of 0.
    WebPort,
    /// A publication no host can make: not a `web` container, port 0, an
    /// address that is not a unicast one, or a port of its host another
    /// container holds.
    Published,
    /// A container record under one host's range naming another host (the
    /// writer is the host whose range it is).
    WrongHost,
    /// A container of an app its host was not admitted to (`admissions`).
    NotAdmitted,
    /// A container key an older record of another host holds.
    ContainerTaken,
    /// A container beyond its host's quota (`--host-quota`).
    Quota,
    /// A container address its host holds no lease of
    /// (`on/<host>/ips/<network>/<address>`, or a shared one of an older
    /// release): the allocator would give it to another host's container.
    NotLeased,
}

impl Reject {
    pub const ALL: [Reject; 26] = [
        Reject::Undecodable,
        Reject::Key,
        Reject::Range,
        Reject::Overlap,
        Reject::Tag,
        Reject::Immutable,
        Reject::UnknownNetwork,
        Reject::UnknownApp,
        Reject::AppName,
        Reject::Address,
        Reject::AddressTaken,
        Reject::Service,
        Reject::HostInterface,
        Reject::Interface,
        Reject::Netns,
        Reject::Endpoint,
        Reject::HostKey,
        Reject::KeyTaken,
        Reject::PeerId,
        Reject::WebPort,
        Reject::Published,
        Reject::WrongHost,
        Reject::NotAdmitted,
        Reject::ContainerTaken,
        Reject::Quota,
        Reject::NotLeased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Undecodable => "undecodable",
            Reject::Key => "key",
            Reject::Range => "range",
            Reject::Overlap => "overlap",
            Reject::Tag => "tag",
            Reject::Immutable => "immutable",
            Reject::UnknownNetwork => "unknown_network",
            Reject::UnknownApp => "unknown_app",
            Reject::AppName => "app_name",
            Reject::Address => "address",
            Reject::AddressTaken => "address_taken",
            Reject::Service => "service_address",
            Reject::HostInterface => "host_interface",
            Reject::Interface => "interface",
            Reject::Netns => "netns",
            Reject::Endpoint => "endpoint",
            Reject::HostKey => "host_key",
            Reject::KeyTaken => "host_key_taken",
            Reject::PeerId => "peer_id",
            Reject::WebPort => "web_port",
            Reject::Published => "published",
            Reject::WrongHost => "wrong_host",
            Reject::NotAdmitted => "not_admitted",
            Reject::ContainerTaken => "container_taken",
            Reject::Quota => "quota",
            Reject::NotLeased => "not_leased",
        }
    }
}

/// A record the view refused, and why (one line for the log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store record {key} refused ({}): {why}", reject.as_str())]
pub struct Rejected {
    pub key: String,
    pub reject: Reject,
    pub why: String,
}

impl Rejected {
    pub fn new(key: &str, reject: Reject, why: impl ToString) -> Self {
        Rejected {
            key: key.to_string(),
            reject,
            why: why.to_string(),
        }
    }
}

/// Refusals since the agent started (each version of a record counted once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals(BTreeMap<(&'static str, &'static str), u64>);

impl Refusals {
    /// Counts one refusal of the record at `key`.
    pub fn count(&mut self, key: &str, reject: Reject) {
        *self.0.entry((kind_of(key), reject.as_str())).or_default() += 1;
    }

    /// `(kind, reason, count)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.0.iter().map(|((k, r), n)| (*k, *r, *n))
    }

    /// Totals by reason, whatever the kind (`status`).
    pub fn by_reason(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (_, reason, n) in self.iter() {
            *out.entry(reason).or_default() += n;
        }
        out
    }

    /// Refusals for `reason`, all kinds together.
    pub fn reason(&self, reason: &str) -> u64 {
        self.iter()
            .filter(|(_, r, _)| *r == reason)
            .map(|(_, _, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The kind of record a key holds, as the counter's label says it.
pub fn kind_of(key: &str) -> &'static str {
    use keys::Key;
    match Key::parse(key) {
        Some(Key::HostIp(..) | Key::Ip(..) | Key::Ip6(..)) => return "lease",
        Some(Key::HostClaim(..) | Key::Claim(_)) => return "claim",
        Some(Key::Peer(_)) => return "peer",
        _ => {}
    }
    [
        (keys::NETWORKS, "network"),
        (keys::APPS, "app"),
        (keys::CONTAINERS, "container"),
        (keys::ON, "container"),
        (keys::HOSTS, "host"),
        (keys::ADMISSIONS, "admissions"),
    ]
    .into_iter()
    .find(|(p, _)| key.starts_with(p))
    .map_or("other", |(_, k)| k)
}

/// What became of a host record's change, for the agent's converges
/// (`pn_store_host_updates_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostUpdate {
    /// A full converge ran for it (and for the changes it waited with).
    Converged,
    /// It waited for the next period's converge (`follow`).
    Coalesced,
    /// It changed nothing agents use (a re-registration): no converge.
    Unchanged,
}

impl HostUpdate {
    pub fn as_str(self) -> &'static str {
        match self {
            HostUpdate::Converged => "converged",
            HostUpdate::Coalesced => "coalesced",
            HostUpdate::Unchanged => "unchanged",
        }
    }
}

/// Host record changes since the agent started, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostUpdates(BTreeMap<HostUpdate, u64>);

impl HostUpdates {
    pub fn count(&mut self, u: HostUpdate) {
        *self.0.entry(u).or_default() += 1;
    }

    pub fn get(&self, u: HostUpdate) -> u64 {
        self.0.get(&u).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().map(|(u, n)| (u.as_str(), *n))
    }
}
