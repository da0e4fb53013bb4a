//! etcd's users and roles for a fleet (`pn-agent fleet setup`, `fleet
//! grant-host`), through etcd's auth API as its `root` user: the operator's
//! role writes the whole prefix; each host's role reads it and writes only
//! what [`keys::host_writes`] gives it (its record, its own range, the
//! shared peer id markers); `grant-host` takes back what an older release
//! gave (the shared `ips/` and `claims/`: run it for every host after
//! `fleet migrate`). The certificate's CN is the etcd user.
//! Every step may be run again: what exists already is left as it is.

use etcd_client::{Client, Permission, RoleRevokePermissionOptions, UserAddOptions};
use pn_common::ids::HostId;

use super::{Etcd, prefix_end};
use crate::store::{backend::StoreError, keys};

/// The role each host's user gets: `pn-host-<id>`.
pub fn host_role(host: &HostId) -> String {
    format!("pn-host-{host}")
}

/// The operator's role.
pub const OPERATOR_ROLE: &str = "pn-operator";

/// etcd's answer to adding what exists: not a failure here.
fn exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("already exists")
}

async fn user(c: &mut Client, name: &str) -> Result<(), etcd_client::Error> {
    match c
        .user_add(name, "", Some(UserAddOptions::new().with_no_pwd()))
        .await
    {
        Err(e) if !exists(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Takes back write access to every key under `prefix` (the role keeps
/// reading it: its read of the whole prefix is another permission); what
/// was never granted is left as it is.
async fn revoke(c: &mut Client, role: &str, prefix: &str) -> Result<(), etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let opts = RoleRevokePermissionOptions::new().with_range_end(end);
    match c.role_revoke_permission(role, prefix, Some(opts)).await {
        Err(e) if !e.to_string().contains("not granted") => Err(e),
        _ => Ok(()),
    }
}

async fn role(c: &mut Client, name: &str) -> Result<(), etcd_client::Error> {
    match c.role_add(name).await {
        Err(e) if !exists(&e) => Err(e),
        _ => Ok(()),
    }
}

impl Etcd {
    /// The `root` user (the certificate whose CN is `root` may then do
    /// anything, this command included), the operator's user and role, and
    /// a user and role per host; then authentication on.
    pub async fn setup_roles(&self, operator: &str, hosts: &[HostId]) -> Result<(), StoreError> {
        let all = self.prefix.clone();
        self.read("setting up users and roles", |mut c| {
            let all = all.clone();
            async move {
                user(&mut c, "root").await?;
                c.user_grant_role("root", "root").await?;
                role(&mut c, OPERATOR_ROLE).await?;
                let end = prefix_end(all.as_bytes());
                c.role_grant_permission(
                    OPERATOR_ROLE,
                    Permission::read_write(all.as_bytes()).with_range_end(end),
                )
                .await?;
                user(&mut c, operator).await?;
                c.user_grant_role(operator, OPERATOR_ROLE).await?;
                Ok(())
            }
        })
        .await?;
        for h in hosts {
            self.grant_host(h).await?;
        }
        self.read("enabling authentication", |mut c| async move {
            c.auth_enable().await.map(|_| ())
        })
        .await
    }

    /// User `host` with its role: read the prefix, write its own keys (and
    /// no longer the shared ones an older release let it write).
    pub async fn grant_host(&self, host: &HostId) -> Result<(), StoreError> {
        let all = self.prefix.clone();
        let former: Vec<String> = keys::FORMER_HOST_WRITES
            .iter()
            .map(|p| self.full(p))
            .collect();
        let writes: Vec<(String, bool)> = keys::host_writes(host)
            .into_iter()
            .map(|g| (self.full(&g.key), g.prefix))
            .collect();
        let (name, role_name) = (host.to_string(), host_role(host));
        self.read("granting a host its role", |mut c| {
            let (all, writes, former) = (all.clone(), writes.clone(), former.clone());
            let (name, role_name) = (name.clone(), role_name.clone());
            async move {
                role(&mut c, &role_name).await?;
                let end = prefix_end(all.as_bytes());
                c.role_grant_permission(
                    role_name.as_str(),
                    Permission::read(all.as_bytes()).with_range_end(end),
                )
                .await?;
                for (key, prefix) in writes {
                    let mut p = Permission::read_write(key.as_bytes());
                    if prefix {
                        p = p.with_range_end(prefix_end(key.as_bytes()));
                    }
                    c.role_grant_permission(role_name.as_str(), p).await?;
                }
                for prefix in former {
                    revoke(&mut c, &role_name, &prefix).await?;
                }
                user(&mut c, &name).await?;
                c.user_grant_role(name.as_str(), role_name.as_str()).await?;
                Ok(())
            }
        })
        .await
    }
}
