//! Every decision the datapath takes names one reason. This list is shared by
//! the programs (which count per reason), the metrics (`reason` label) and the
//! CLI (`flows`), so a drop means the same thing everywhere.

/// Why a packet was passed or dropped. Values are stable: they are the counter
/// keys in the pinned maps, which outlive an agent upgrade.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Passed: from a container to a member of its own network.
    Forwarded = 0,
    /// Passed: toward a container, from a member of its network.
    Delivered = 1,
    /// Passed: ARP between a container (its own address) and its gateway.
    Arp = 2,
    /// Passed: DNS or ICMP between a container and the agent's gateway address.
    Gateway = 3,
    /// Dropped: destination is not a member of the sender's network.
    PolicyDenied = 4,
    /// Dropped: source address is not the one assigned to the interface.
    SpoofedSource = 5,
    /// Dropped: IP protocol other than TCP, UDP and ICMP.
    ProtoDenied = 6,
    /// Dropped: neither IPv4 nor ARP.
    UnsupportedL3 = 7,
    /// Dropped: toward a container, from a source outside its network.
    NotMember = 8,
    /// Dropped: headers too short or inconsistent to be judged.
    Malformed = 9,
    /// Dropped: the interface is not (or no longer) a known endpoint; fail closed.
    UnknownInterface = 10,
    /// Dropped on the underlay: tunnel packet from a host that is not a peer.
    UnknownPeer = 11,
    /// Dropped on the underlay: tunnel packet carrying no local network's tag.
    UnknownTag = 12,
    /// Dropped on the underlay: clear-text packet addressed to a member.
    CleartextToMember = 13,
    /// Passed on the underlay: tunnel packet from a peer, for a local network.
    Tunnel = 14,
    /// Tunnel (agent): a data packet whose counter was already seen, or too old.
    Replayed = 15,
    /// Tunnel (agent): authentication of a data packet failed.
    DecryptFailed = 16,
    /// Tunnel (agent): no live session for the receiver index.
    UnknownSession = 17,
    /// Tunnel (agent): handshake from an unknown key, replayed, or invalid.
    HandshakeRejected = 18,
    /// Tunnel (agent): handshake over the per-source rate limit.
    RateLimited = 19,
    /// Tunnel (agent): inner source not hosted by the sending peer.
    WrongHost = 20,
    /// Tunnel (agent): tag does not match the inner addresses' network.
    TagMismatch = 21,
    /// Tunnel (agent): nowhere to send a packet (no remote member, no peer key).
    NoRoute = 22,
    /// Tunnel (agent): waiting for a handshake with too many packets queued.
    QueueFull = 23,
    /// Tunnel (agent): handshake message whose mac1 is wrong (its sender does
    /// not know our public key), or a cookie reply that does not open.
    BadMac = 24,
    /// Tunnel (agent): under load, an initiation without a valid cookie
    /// (mac2): answered with a cookie reply, no DH done.
    CookieRequired = 25,
    /// Passed: between a container and the world (a destination outside the
    /// pool, translated to its host's address), both directions.
    Egress = 26,
    /// Dropped: from a container toward what is never the world (the host's
    /// addresses, loopback, link-local, multicast, broadcast, the underlay's
    /// subnet, the store, `--egress-deny`), or anything outside a sealed
    /// network.
    EgressDenied = 27,
    /// Passed: between a published `web` container and a router that came
    /// through the host's published port, both directions.
    Published = 28,
    /// Dropped: toward a container, through its published port, from a
    /// source that is not a router.
    NotRouter = 29,
    /// Dropped: toward a remote member while no tunnel is up (the agent is
    /// stopped or restarting): never in clear text on the underlay.
    NoTunnel = 30,
    /// Dropped: toward a container, a DNS answer from the gateway's address
    /// that the agent's own sockets did not send (it lacks their mark): another
    /// process on the host posing as the agent's DNS.
    ForgedGateway = 31,
    /// Dropped: ARP other than a container asking (or answering) its gateway
    /// under its own address and MAC, or the host's gateway answering
    /// (or asking) the container's own address.
    ArpDenied = 32,
    /// Passed: neighbour discovery between a container (its own addresses)
    /// and its gateway `fe80::1`, IPv6's twin of `arp`.
    Nd = 33,
    /// Dropped: neighbour discovery other than a container soliciting its
    /// gateway (or answering it) under its own addresses and MAC, or the
    /// host's gateway soliciting (or answering) the container: IPv6's twin
    /// of `arp_denied`.
    NdDenied = 34,
    /// Dropped: a new connection of a container that already holds its
    /// share (`--conn-share`) of a connection table (`PN_CONNS`,
    /// `PN_CONNS6`, `PN_LB_CONNS`, `PN_LB6_CONNS`): it cannot crowd other containers'
    /// connections out of the table.
    ConnQuota = 35,
}

impl Reason {
    /// Number of reasons; counter arrays are sized by it.
    pub const COUNT: usize = 36;

    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Forwarded,
        Reason::Delivered,
        Reason::Arp,
        Reason::Gateway,
        Reason::PolicyDenied,
        Reason::SpoofedSource,
        Reason::ProtoDenied,
        Reason::UnsupportedL3,
        Reason::NotMember,
        Reason::Malformed,
        Reason::UnknownInterface,
        Reason::UnknownPeer,
        Reason::UnknownTag,
        Reason::CleartextToMember,
        Reason::Tunnel,
        Reason::Replayed,
        Reason::DecryptFailed,
        Reason::UnknownSession,
        Reason::HandshakeRejected,
        Reason::RateLimited,
        Reason::WrongHost,
        Reason::TagMismatch,
        Reason::NoRoute,
        Reason::QueueFull,
        Reason::BadMac,
        Reason::CookieRequired,
        Reason::Egress,
        Reason::EgressDenied,
        Reason::Published,
        Reason::NotRouter,
        Reason::NoTunnel,
        Reason::ForgedGateway,
        Reason::ArpDenied,
        Reason::Nd,
        Reason::NdDenied,
        Reason::ConnQuota,
    ];

    pub const fn from_u8(v: u8) -> Option<Reason> {
        if (v as usize) < Reason::COUNT {
            Some(Reason::ALL[v as usize])
        } else {
            None
        }
    }

    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::Forwarded
                | Reason::Delivered
                | Reason::Arp
                | Reason::Nd
                | Reason::Gateway
                | Reason::Tunnel
                | Reason::Egress
                | Reason::Published
        )
    }

    /// The name used in metrics labels, CLI output and docs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::Delivered => "delivered",
            Reason::Arp => "arp",
            Reason::Gateway => "gateway",
            Reason::PolicyDenied => "policy_denied",
            Reason::SpoofedSource => "spoofed_source",
            Reason::ProtoDenied => "proto_denied",
            Reason::UnsupportedL3 => "unsupported_l3",
            Reason::NotMember => "not_member",
            Reason::Malformed => "malformed",
            Reason::UnknownInterface => "unknown_interface",
            Reason::UnknownPeer => "unknown_peer",
            Reason::UnknownTag => "unknown_tag",
            Reason::CleartextToMember => "cleartext_to_member",
            Reason::Tunnel => "tunnel",
            Reason::Replayed => "replayed",
            Reason::DecryptFailed => "decrypt_failed",
            Reason::UnknownSession => "unknown_session",
            Reason::HandshakeRejected => "handshake_rejected",
            Reason::RateLimited => "rate_limited",
            Reason::WrongHost => "wrong_host",
            Reason::TagMismatch => "tag_mismatch",
            Reason::NoRoute => "no_route",
            Reason::QueueFull => "queue_full",
            Reason::BadMac => "bad_mac",
            Reason::CookieRequired => "cookie_required",
            Reason::Egress => "egress",
            Reason::EgressDenied => "egress_denied",
            Reason::Published => "published",
            Reason::NotRouter => "not_router",
            Reason::NoTunnel => "no_tunnel",
            Reason::ForgedGateway => "forged_gateway",
            Reason::ArpDenied => "arp_denied",
            Reason::Nd => "nd",
            Reason::NdDenied => "nd_denied",
            Reason::ConnQuota => "conn_quota",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_dense_and_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of place");
            assert_eq!(Reason::from_u8(i as u8), Some(*r));
            assert_eq!(Reason::from_name(r.as_str()), Some(*r));
        }
        assert_eq!(Reason::from_u8(Reason::COUNT as u8), None);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT);
    }

    #[test]
    fn only_the_pass_reasons_pass() {
        let passes: Vec<_> = Reason::ALL.iter().filter(|r| !r.is_drop()).collect();
        assert_eq!(
            passes,
            [
                &Reason::Forwarded,
                &Reason::Delivered,
                &Reason::Arp,
                &Reason::Gateway,
                &Reason::Tunnel,
                &Reason::Egress,
                &Reason::Published,
                &Reason::Nd,
            ]
        );
    }
}
