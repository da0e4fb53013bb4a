//! The hosts of the fleet.

use pn_common::ids::HostId;

use super::{Membership, MembershipError, Result, encode};
use crate::{
    model::Host,
    store::{
        backend::Op,
        keys::{self, Key},
    },
};

impl Membership {
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.list_decoded(keys::HOSTS).await
    }

    pub async fn put_host(&self, h: &Host) -> Result<i64> {
        self.kv
            .txn(
                vec![],
                vec![Op::Put(Key::Host(h.id.clone()).into(), encode(h))],
            )
            .await?
            .ok_or_else(|| MembershipError::Conflict("host registration failed".into()))
    }

    /// Removes a host from the fleet: its containers (and their addresses),
    /// any address it still holds, then its record. The other agents drop its
    /// endpoints and its tunnel as the deletions reach them.
    pub async fn remove_host(&self, id: &HostId) -> Result<i64> {
        let host_key = &Key::Host(id.clone());
        if self.kv.get(&host_key.to_string()).await?.is_none() {
            return Err(MembershipError::NotFound(format!("host {id}")));
        }
        for c in self
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.host == *id)
        {
            self.delete_container(&c.key).await?;
        }
        for (net, ip, lease) in self.leases_of_host(id).await? {
            self.release_address(&net, ip, &lease.owner).await?;
        }
        self.kv
            .txn(vec![], vec![Op::Delete(host_key.to_string())])
            .await?
            .ok_or_else(|| MembershipError::Conflict("host removal failed".into()))
    }
}
