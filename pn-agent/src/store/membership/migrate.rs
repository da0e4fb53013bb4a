//! The move of container records of an older release (`containers/…`, no
//! host in the key) to their host's range (`on/<host>/containers/…`), which
//! etcd's roles can give to that host alone, and of their leases and claims
//! (`ips/…`, `claims/…`) likewise ([`Membership::migrate_leases`]). Run once
//! by the operator (`pn-agent fleet migrate`) after every agent runs this
//! release: agents read both layouts meanwhile, and write the new one.

use super::{Membership, Result, Step, as_read, decode, encode};
use crate::{
    model::{AddressLease, Container},
    store::{
        backend::Op,
        keys::{self, Key},
    },
};

impl Membership {
    /// Moves every legacy container record under its host, each in one
    /// transaction (the new record, its claim, the old record's removal),
    /// so an agent watching sees the container stay. How many moved.
    pub async fn migrate_containers(&self) -> Result<usize> {
        let listing = self.kv.list(keys::CONTAINERS).await?;
        let mut moved = 0;
        for (k, e) in &listing.entries {
            let Some(Key::LegacyContainer(key)) = Key::parse(k) else {
                continue;
            };
            let c: Container = decode(k, e)?;
            let (old, new) = (
                &Key::LegacyContainer(key.clone()),
                &Key::Container(c.host.clone(), key.clone()),
            );
            let claim = AddressLease {
                owner: key.clone(),
                host: c.host.clone(),
                service: false,
            };
            let (c, claim, key) = (&c, &claim, &key);
            let done = self
                .read_modify_write(
                    move |_| {
                        Box::pin(async move {
                            let Some((_, rev)) = self.get_decoded::<Container>(old).await? else {
                                return Ok(Step::Done(false));
                            };
                            // The new record first: a watcher sees it replace
                            // the old one before the old one goes.
                            Ok(Step::write(
                                vec![as_read(old, Some(rev)), as_read(new, None)],
                                vec![
                                    Op::Put(new.to_string(), encode(c)),
                                    Op::Put(
                                        Key::HostClaim(c.host.clone(), key.clone()).into(),
                                        encode(claim),
                                    ),
                                    Op::Delete(old.to_string()),
                                ],
                                |_| true,
                            ))
                        })
                    },
                    || format!("container {key} keeps changing; try again"),
                )
                .await?;
            moved += usize::from(done);
        }
        Ok(moved)
    }
}
