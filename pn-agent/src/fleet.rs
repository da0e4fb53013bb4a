//! `pn-agent fleet …`: the operator's commands that go straight to etcd
//! with the certificate given (no agent): users and roles (as etcd's
//! `root`), which hosts may run which app, and the move of an older
//! release's container records under their hosts (as the operator).

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use pn_agent::{
    config::StoreSpec,
    error::Error,
    store::{Membership, etcd::Etcd},
};
use pn_common::ids::{AppId, HostId};

#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The fleet's etcd: etcds://HOST:PORT[,…] (or etcd://, plain text).
    #[arg(long)]
    store: String,
    #[arg(long)]
    etcd_cacert: Option<PathBuf>,
    /// `root`'s certificate for `setup` and `grant-host`, the operator's
    /// for `admit` and `migrate`.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    #[arg(long, default_value = "/pn/")]
    etcd_prefix: String,
}

#[derive(Subcommand)]
pub(crate) enum FleetCmd {
    /// As etcd's root: the root user, the operator's user and role, a user
    /// and role per host; authentication on; then every host admitted to
    /// the apps it runs now, and admissions enforced.
    Setup {
        /// The operator's etcd user (its certificate's CN).
        #[arg(long, default_value = "pn-operator")]
        operator: String,
        /// A host of the fleet (its certificate's CN is its --host-id).
        #[arg(long = "host")]
        hosts: Vec<HostId>,
    },
    /// As etcd's root: a host that joins the fleet gets its user and role
    /// (again: its role no longer writes what an older release let it).
    GrantHost { host: HostId },
    /// As the operator: hosts that may run an app's containers (or, with
    /// --revoke, may no longer).
    Admit {
        app: AppId,
        #[arg(required = true)]
        hosts: Vec<HostId>,
        #[arg(long)]
        revoke: bool,
    },
    /// As the operator: container records, address leases and claims of an
    /// older release moved under their hosts (once every agent runs this
    /// release); then `grant-host` for each host.
    Migrate,
}

fn etcd(a: &StoreArgs) -> anyhow::Result<Etcd> {
    let mut prefix = a.etcd_prefix.clone();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let spec = StoreSpec::parse(
        &a.store,
        a.etcd_cacert.clone(),
        a.etcd_cert.clone(),
        a.etcd_key.clone(),
    )
    .map_err(|e| Error::invalid(format!("{e:#}")))?;
    Ok(match spec {
        StoreSpec::Embedded => {
            return Err(Error::invalid("fleet commands are for an etcd store").into());
        }
        StoreSpec::Etcd(endpoints) => Etcd::new(endpoints, prefix),
        StoreSpec::EtcdTls(endpoints, files) => {
            Etcd::with_tls(endpoints, prefix, files).map_err(|e| Error::invalid(e.to_string()))?
        }
    })
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::unavailable(e.to_string())
}

pub(crate) async fn fleet(store: StoreArgs, cmd: FleetCmd) -> anyhow::Result<()> {
    let etcd = Arc::new(etcd(&store)?);
    let membership = Membership::new(etcd.clone());
    match cmd {
        FleetCmd::Setup { operator, hosts } => {
            etcd.setup_roles(&operator, &hosts)
                .await
                .map_err(store_error)
                .context("setting up etcd's users and roles")?;
            let a = membership.admit_running().await.map_err(store_error)?;
            println!(
                "roles set up for {} host(s); authentication on; {} app(s) admitted",
                hosts.len(),
                a.apps.len()
            );
        }
        FleetCmd::GrantHost { host } => {
            etcd.grant_host(&host).await.map_err(store_error)?;
            println!("host {host} may write its own records");
        }
        FleetCmd::Admit { app, hosts, revoke } => {
            let a = membership
                .admit(&app, &hosts, revoke)
                .await
                .map_err(store_error)?;
            let on: Vec<String> = a
                .apps
                .get(&app)
                .into_iter()
                .flatten()
                .map(|h| h.to_string())
                .collect();
            println!("app {app} runs on: {}", on.join(" "));
        }
        FleetCmd::Migrate => {
            let n = membership.migrate_containers().await.map_err(store_error)?;
            println!("{n} container record(s) moved under their hosts");
            let l = membership.migrate_leases().await.map_err(store_error)?;
            println!(
                "{l} address lease(s) and claim(s) moved under their hosts; \
                 `fleet grant-host` (as root) for each host now takes back its \
                 write access to the shared ips/ and claims/"
            );
        }
    }
    Ok(())
}
