//! What a host record must be before the view takes it in: a tunnel
//! endpoint other hosts can reach, a public key and a peer id that are its
//! own. A host that copies another's key or points at loopback cuts off
//! only itself.

use std::net::{IpAddr, SocketAddr};

use pn_common::ids::HostId;

use super::{
    checks::same_id,
    refusals::{Reject, Rejected},
    state::MembershipView,
};
use crate::model::Host;

type Result<T = ()> = std::result::Result<T, Rejected>;

impl MembershipView {
    /// `created`: the revision the record was created at. `Ok(Some(o))`:
    /// the record is taken, and host `o` (younger) loses the key it shares.
    pub(super) fn check_host(
        &self,
        key: &str,
        id: &HostId,
        h: &Host,
        created: i64,
    ) -> Result<Option<HostId>> {
        same_id(key, id, &h.id)?;
        if let Some(a) = h.advertise
            && !self.endpoint_ok(a)
        {
            return Err(Rejected::new(
                key,
                Reject::Endpoint,
                format!("{a} cannot be a tunnel endpoint"),
            ));
        }
        if h.public_key.is_some() && h.key_bytes().is_none() {
            return Err(Rejected::new(
                key,
                Reject::HostKey,
                "the public key is not 32 bytes of base64",
            ));
        }
        if h.peer_id == 0 {
            return Err(Rejected::new(
                key,
                Reject::PeerId,
                "no peer id (registered by an older agent?)",
            ));
        }
        if let Some(other) = self
            .hosts
            .values()
            .find(|o| o.id != h.id && o.peer_id == h.peer_id)
        {
            return Err(Rejected::new(
                key,
                Reject::PeerId,
                format!("peer id {} is host {}'s", h.peer_id, other.id),
            ));
        }
        self.check_key_unique(key, h, created)
    }

    /// A public key is one host's: of two records holding it, the older
    /// (by creation) keeps it, so a host that copies another's key cuts
    /// only itself off, whatever order the records are read in.
    fn check_key_unique(&self, key: &str, h: &Host, created: i64) -> Result<Option<HostId>> {
        let Some(pk) = &h.public_key else {
            return Ok(None);
        };
        let Some(other) = self
            .hosts
            .values()
            .find(|o| o.id != h.id && o.public_key.as_ref() == Some(pk))
        else {
            return Ok(None);
        };
        let theirs = self.host_revs.get(&other.id).map_or(i64::MIN, |r| r.0);
        if (theirs, &other.id) < (created, &h.id) {
            return Err(Rejected::new(
                key,
                Reject::KeyTaken,
                format!(
                    "its public key is host {}'s, whose record is older",
                    other.id
                ),
            ));
        }
        Ok(Some(other.id.clone()))
    }

    /// A unicast address and a port other hosts can send datagrams to: not
    /// loopback or link-local (each host would reach itself), not
    /// multicast, broadcast or unspecified, not inside the pool (the
    /// containers' addresses).
    fn endpoint_ok(&self, a: SocketAddr) -> bool {
        if a.port() == 0 {
            return false;
        }
        match a.ip().to_canonical() {
            IpAddr::V4(ip) => {
                !(ip.is_unspecified()
                    || ip.is_loopback()
                    || ip.is_link_local()
                    || ip.is_multicast()
                    || ip.is_broadcast()
                    || self.pool.contains(&ip))
            }
            // IPv6: unicast, and in no network's /64 (the members' IPv6
            // addresses; the fleet's IPv6 pool is unique local, which an
            // underlay may be too, so only what networks hold is refused).
            IpAddr::V6(ip) => {
                !(ip.is_unspecified()
                    || ip.is_loopback()
                    || ip.is_unicast_link_local()
                    || ip.is_multicast()
                    || self
                        .networks
                        .values()
                        .any(|n| n.cidr6.is_some_and(|c| c.contains(&ip))))
            }
        }
    }
}
