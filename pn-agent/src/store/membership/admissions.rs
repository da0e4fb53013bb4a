//! Which hosts may run which app's containers: the operator's one record.

use pn_common::ids::{AppId, HostId};

use super::{Membership, Result, Step, as_read, encode};
use crate::{
    model::Admissions,
    store::{backend::Op, keys::Key},
};

impl Membership {
    pub async fn admissions(&self) -> Result<Admissions> {
        Ok(self
            .get_decoded(&Key::Admissions)
            .await?
            .map(|(a, _)| a)
            .unwrap_or_default())
    }

    /// Admits `hosts` to run `app`'s containers (or, with `revoke`, takes
    /// them out), and turns the check on: from then on every app runs only
    /// on the hosts admitted to it.
    pub async fn admit(&self, app: &AppId, hosts: &[HostId], revoke: bool) -> Result<Admissions> {
        self.change_admissions(|a| {
            let set = a.apps.entry(*app).or_default();
            for h in hosts {
                if revoke {
                    set.remove(h);
                } else {
                    set.insert(h.clone());
                }
            }
            a.enforced = true;
        })
        .await
    }

    /// Admits each host to the apps it runs containers of now, and turns
    /// the check on: what `fleet setup` does to a fleet that had none, so
    /// nothing running is refused.
    pub async fn admit_running(&self) -> Result<Admissions> {
        let running = self.containers().await?;
        self.change_admissions(|a| {
            for c in &running {
                a.apps.entry(c.key.app).or_default().insert(c.host.clone());
            }
            a.enforced = true;
        })
        .await
    }

    async fn change_admissions(
        &self,
        change: impl Fn(&mut Admissions) + Send + Sync,
    ) -> Result<Admissions> {
        let key = &Key::Admissions;
        let change = &change;
        self.read_modify_write(
            move |_| {
                Box::pin(async move {
                    let (mut a, rev) = match self.get_decoded::<Admissions>(key).await? {
                        Some((a, rev)) => (a, Some(rev)),
                        None => (Admissions::default(), None),
                    };
                    change(&mut a);
                    Ok(Step::write(
                        vec![as_read(key, rev)],
                        vec![Op::Put(key.to_string(), encode(&a))],
                        move |_| a,
                    ))
                })
            },
            || "the admissions keep changing; try again".into(),
        )
        .await
    }
}
