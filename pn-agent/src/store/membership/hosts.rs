//! The hosts of the fleet, and their peer ids: the number a host has in
//! every agent's datapath and tunnel. Each id is claimed by a key of its own
//! (`peers/<n>`, created only if absent), so two hosts never hold the same
//! one, whatever their names hash to.

use std::collections::BTreeSet;

use pn_common::ids::HostId;

use super::{Membership, MembershipError, Result, Step, as_read, encode};
use crate::{
    model::Host,
    store::{
        backend::{Cond, Op},
        keys::{self, Key},
    },
};

impl Membership {
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.list_decoded(keys::HOSTS).await
    }

    /// Peer ids in use, and those `host` holds. In use: claimed, or held
    /// by another host's record (claims are shared: one another host
    /// deleted must not give a new host an id a running host has).
    async fn peer_claims(&self, host: &HostId) -> Result<(BTreeSet<u32>, Vec<(u32, i64)>)> {
        let mut used: BTreeSet<u32> = self
            .kv
            .list(keys::HOSTS)
            .await?
            .entries
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Host>(&e.value).ok())
            .filter(|h| h.id != *host)
            .map(|h| h.peer_id)
            .collect();
        let mut held = Vec::new();
        for (k, e) in self.kv.list(keys::PEERS).await?.entries {
            let Some(Key::Peer(n)) = Key::parse(&k) else {
                continue;
            };
            used.insert(n);
            // A claim that does not decode is someone else's: its id stays used.
            if serde_json::from_str::<HostId>(&e.value).is_ok_and(|h| h == *host) {
                held.push((n, e.mod_rev));
            }
        }
        Ok((used, held))
    }

    /// Registers a host, or registers it again: it keeps the peer id it
    /// holds, or gets the lowest free one. `h.peer_id` is ignored; the
    /// stored record (with its peer id) is returned.
    pub async fn register_host(&self, h: &Host) -> Result<(Host, i64)> {
        let host_key = &Key::Host(h.id.clone());
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let host_rev = self.kv.get(&host_key.to_string()).await?.map(|e| e.mod_rev);
                    let mut conds = vec![as_read(host_key, host_rev)];
                    let mut ops = Vec::new();
                    let (used, held) = self.peer_claims(&h.id).await?;
                    let peer_id = match held.first() {
                        Some(&(n, rev)) => {
                            conds.push(as_read(&Key::Peer(n), Some(rev)));
                            n
                        }
                        None => {
                            let n =
                                (1..=u32::MAX).find(|n| !used.contains(n)).ok_or_else(|| {
                                    MembershipError::Exhausted("no peer id left".into())
                                })?;
                            conds.push(as_read(&Key::Peer(n), None));
                            ops.push(Op::Put(Key::Peer(n).into(), encode(&h.id)));
                            n
                        }
                    };
                    let host = Host {
                        peer_id,
                        ..h.clone()
                    };
                    ops.push(Op::Put(host_key.to_string(), encode(&host)));
                    Ok(Step::write(conds, ops, move |rev| (host, rev)))
                })
            },
            || format!("registering host {}: too much contention; try again", h.id),
        )
        .await
    }

    /// Removes a host from the fleet: its containers (and their addresses),
    /// any address it still holds, then its record and its peer id. The
    /// other agents drop its endpoints and its tunnel as the deletions reach
    /// them.
    pub async fn remove_host(&self, id: &HostId) -> Result<i64> {
        let host_key = &Key::Host(id.clone());
        if self.kv.get(&host_key.to_string()).await?.is_none() {
            return Err(MembershipError::NotFound(format!("host {id}")));
        }
        // With etcd roles, only some hosts may delete another's record. A
        // transaction whose condition never holds writes nothing, but etcd
        // checks its permissions all the same: a refusal comes now, before
        // any of the host's containers is removed.
        self.kv
            .txn(
                vec![Cond::ModRev(host_key.to_string(), -1)],
                vec![Op::Delete(host_key.to_string())],
            )
            .await?;
        for c in self
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.host == *id)
        {
            self.delete_container(&c.key).await?;
        }
        for (net, ip, lease) in self.leases_of_host(id).await? {
            self.release_address(id, &net, ip, &lease.owner).await?;
        }
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (_, held) = self.peer_claims(id).await?;
                    let mut conds: Vec<_> = held
                        .iter()
                        .map(|&(n, rev)| as_read(&Key::Peer(n), Some(rev)))
                        .collect();
                    let mut ops: Vec<_> = held
                        .iter()
                        .map(|&(n, _)| Op::Delete(Key::Peer(n).into()))
                        .collect();
                    if let Some(e) = self.kv.get(&host_key.to_string()).await? {
                        conds.push(as_read(host_key, Some(e.mod_rev)));
                        ops.push(Op::Delete(host_key.to_string()));
                    }
                    Ok(Step::write(conds, ops, |rev| rev))
                })
            },
            || format!("host {id} keeps changing; try again"),
        )
        .await
    }
}
