//! The control commands: each one request to the running agent over its
//! API socket, and the answer printed as a table or as JSON.

use std::{io::Write, path::Path};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use ipnet::{Ipv4Net, Ipv6Net};
use pn_agent::{
    client::{Client, ClientError},
    error::Error,
    flows::FlowRecord,
    model::{App, Balance, ContainerKey, Egress, Network},
    proto::{AppInfo, ContainerInfo, HostInfo, NetworkInfo, Request, Status},
    render::{status_text, table},
};
use pn_api::cni;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId, parse_index};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

fn print<T: serde::Serialize>(
    out: Output,
    v: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = match out {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(v)?),
        Output::Table => table(),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Create a network; prints its id.
    Create {
        #[arg(long)]
        id: Option<NetworkId>,
        /// Address range (default: the next free /22 of the fleet pool).
        #[arg(long)]
        cidr: Option<Ipv4Net>,
        /// IPv6 range: a /64 of the fleet's IPv6 pool (default: the next free one).
        #[arg(long)]
        cidr6: Option<Ipv6Net>,
        /// Whether its containers reach the world [default: allow].
        #[arg(long)]
        egress: Option<Egress>,
    },
    /// Change a network live (its running containers included).
    Update {
        id: NetworkId,
        /// allow: the world is reached through each host; deny: sealed.
        #[arg(long)]
        egress: Egress,
    },
    List,
    /// Delete a network; with --force, also its applications and containers.
    Delete {
        id: NetworkId,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AppCmd {
    /// Create an application in a network; prints its id.
    Create {
        #[arg(long)]
        network: NetworkId,
        #[arg(long)]
        id: Option<AppId>,
        #[arg(long)]
        name: Option<String>,
        /// Port its `web` containers listen on (`PORT`), where routers are
        /// sent [default: 8080].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        web_port: Option<u16>,
        /// `dns`: the names answer every container; `vip`: one service
        /// address per type, balanced per connection in the kernel.
        #[arg(long, default_value = "dns")]
        balance: Balance,
        /// TCP port the agents probe on each container (every second; three
        /// failures take it out of its service's rotation).
        #[arg(long)]
        health_port: Option<u16>,
    },
    /// Change how an application balances, or its health port.
    Update {
        id: AppId,
        #[arg(long)]
        balance: Option<Balance>,
        #[arg(long)]
        health_port: Option<u16>,
    },
    List {
        #[arg(long)]
        network: Option<NetworkId>,
    },
    Delete {
        id: AppId,
    },
    /// Move an application, running containers included, to another network.
    Move {
        id: AppId,
        #[arg(long)]
        network: NetworkId,
    },
}

#[derive(Subcommand)]
pub(crate) enum HostCmd {
    List,
    /// Remove a (dead) host: its containers and addresses go, peers forget it.
    Remove {
        id: HostId,
    },
}

#[derive(Subcommand)]
pub(crate) enum ContainerCmd {
    /// Attach a network namespace as a container of an application (idempotent).
    Attach {
        #[arg(long)]
        app: AppId,
        #[arg(long = "type")]
        ctype: ContainerType,
        /// Default: the lowest free index of that type.
        #[arg(long, value_parser = parse_index)]
        index: Option<u32>,
        /// Namespace name (as `ip netns`) or path (e.g. /proc/PID/ns/net).
        #[arg(long)]
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "pn0")]
        ifname: String,
    },
    /// Detach a container: removes its interface and frees its address.
    Detach {
        #[arg(long)]
        app: AppId,
        #[arg(long = "type")]
        ctype: ContainerType,
        #[arg(long, value_parser = parse_index)]
        index: u32,
    },
    List {
        #[arg(long)]
        app: Option<AppId>,
        #[arg(long)]
        network: Option<NetworkId>,
    },
}

pub(crate) async fn network(path: &Path, out: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create {
            id,
            cidr,
            cidr6,
            egress,
        } => {
            let n: Network = Client::call(
                path,
                &Request::NetworkCreate {
                    id,
                    cidr,
                    cidr6,
                    egress,
                },
            )
            .await?;
            print(out, &n, || format!("{}\n", n.id))
        }
        NetworkCmd::Update { id, egress } => {
            let n: Network = Client::call(path, &Request::NetworkUpdate { id, egress }).await?;
            print(out, &n, || format!("{} egress {}\n", n.id, n.egress))
        }
        NetworkCmd::List => {
            let list: Vec<NetworkInfo> = Client::call(path, &Request::NetworkList).await?;
            print(out, &list, || {
                table(
                    &["ID", "CIDR", "CIDR6", "TAG", "EGRESS", "APPS", "CONTAINERS"],
                    list.iter().map(|n| {
                        vec![
                            n.id.to_string(),
                            n.cidr.to_string(),
                            n.cidr6.map_or_else(|| "-".into(), |c| c.to_string()),
                            n.tag.to_string(),
                            n.egress.to_string(),
                            n.apps.to_string(),
                            n.containers.to_string(),
                        ]
                    }),
                )
            })
        }
        NetworkCmd::Delete { id, force } => {
            let () = Client::call(path, &Request::NetworkDelete { id, force }).await?;
            print(out, &serde_json::json!({ "deleted": id }), String::new)
        }
    }
}

pub(crate) async fn app(path: &Path, out: Output, cmd: AppCmd) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Create {
            network,
            id,
            name,
            web_port,
            balance,
            health_port,
        } => {
            let req = Request::AppCreate {
                network,
                id,
                name,
                web_port,
                balance,
                health_port,
            };
            let a: App = Client::call(path, &req).await?;
            print(out, &a, || format!("{}\n", a.id))
        }
        AppCmd::Update {
            id,
            balance,
            health_port,
        } => {
            let req = Request::AppUpdate {
                id,
                balance,
                health_port,
            };
            let a: App = Client::call(path, &req).await?;
            print(out, &a, || {
                a.services
                    .iter()
                    .map(|(t, ip)| match a.services6.get(t) {
                        Some(ip6) => format!("{t} {ip} {ip6}\n"),
                        None => format!("{t} {ip}\n"),
                    })
                    .collect()
            })
        }
        AppCmd::List { network } => {
            let list: Vec<AppInfo> = Client::call(path, &Request::AppList { network }).await?;
            print(out, &list, || {
                table(
                    &[
                        "ID",
                        "NETWORK",
                        "NAME",
                        "WEB-PORT",
                        "CONTAINERS",
                        "BALANCE",
                        "SERVICES",
                    ],
                    list.iter().map(app_row),
                )
            })
        }
        AppCmd::Delete { id } => {
            let () = Client::call(path, &Request::AppDelete { id }).await?;
            print(out, &serde_json::json!({ "deleted": id }), String::new)
        }
        AppCmd::Move { id, network } => {
            let a: AppInfo = Client::call(path, &Request::AppMove { id, network }).await?;
            print(out, &a, || format!("{} moved to {}\n", a.id, a.network))
        }
    }
}

/// A line of `app list`.
fn app_row(a: &AppInfo) -> Vec<String> {
    let services: Vec<String> = a
        .services
        .iter()
        .map(|s| {
            let conns: u64 = s.counters.iter().map(|c| c.connections).sum();
            let resets: u64 = s.counters.iter().map(|c| c.resets).sum();
            let addr6 = s.addr6.map(|a| format!(",{a}")).unwrap_or_default();
            format!(
                "{}={}{addr6} ({} up, {conns} conns, {resets} resets)",
                s.ctype,
                s.addr,
                s.backends.len()
            )
        })
        .collect();
    vec![
        a.id.to_string(),
        a.network.to_string(),
        a.name.clone().unwrap_or_else(|| "-".into()),
        a.web_port.to_string(),
        a.containers.to_string(),
        a.balance.to_string(),
        if services.is_empty() {
            "-".into()
        } else {
            services.join(" ")
        },
    ]
}

pub(crate) async fn cni_config(
    path: &Path,
    app: AppId,
    ctype: ContainerType,
    name: Option<String>,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(|| cni::default_name(&app, &ctype));
    if !cni::valid_name(&name) {
        return Err(ClientError::Refused(Error::invalid(format!(
            "invalid network name {name:?}: 1 to 255 characters among a-z, A-Z, 0-9, _, . and -, starting with a letter or digit"
        )))
        .into());
    }
    // The app must exist: a configuration naming none would only fail
    // later, in the runtime.
    let apps: Vec<AppInfo> = Client::call(path, &Request::AppList { network: None }).await?;
    if !apps.iter().any(|a| a.id == app) {
        return Err(
            ClientError::Refused(Error::not_found(format!("application {app} not found"))).into(),
        );
    }
    let socket = std::path::absolute(path).unwrap_or(path.to_path_buf());
    let list = cni::network_config_list(&name, &app, &ctype, &socket);
    print(Output::Json, &list, String::new)
}

pub(crate) async fn container(path: &Path, out: Output, cmd: ContainerCmd) -> anyhow::Result<()> {
    match cmd {
        ContainerCmd::Attach {
            app,
            ctype,
            index,
            netns,
            ifname,
        } => {
            let c: ContainerInfo = Client::call(
                path,
                &Request::ContainerAttach {
                    app,
                    ctype,
                    index,
                    netns,
                    ifname,
                },
            )
            .await?;
            // The contract: attach always prints JSON.
            print(Output::Json, &c, String::new)
        }
        ContainerCmd::Detach { app, ctype, index } => {
            let key = ContainerKey { app, ctype, index };
            let () = Client::call(path, &Request::ContainerDetach { key: key.clone() }).await?;
            print(
                out,
                &serde_json::json!({ "detached": key.to_string() }),
                String::new,
            )
        }
        ContainerCmd::List { app, network } => {
            let list: Vec<ContainerInfo> =
                Client::call(path, &Request::ContainerList { app, network }).await?;
            print(out, &list, || {
                table(
                    &[
                        "ID",
                        "IP",
                        "IP6",
                        "HOST",
                        "NETNS",
                        "INTERFACE",
                        "HOST-INTERFACE",
                        "PUBLISHED",
                    ],
                    list.iter().map(|c| {
                        vec![
                            c.id.clone(),
                            c.ip.to_string(),
                            c.ip6.map_or_else(|| "-".into(), |ip| ip.to_string()),
                            c.host.clone(),
                            c.netns.clone(),
                            c.interface.clone(),
                            c.host_interface.clone(),
                            c.published.map_or_else(|| "-".into(), |p| p.to_string()),
                        ]
                    }),
                )
            })
        }
    }
}

pub(crate) async fn host(path: &Path, out: Output, cmd: HostCmd) -> anyhow::Result<()> {
    match cmd {
        HostCmd::List => {
            let list: Vec<HostInfo> = Client::call(path, &Request::HostList).await?;
            print(out, &list, || {
                table(
                    &["ID", "ADVERTISE", "CONTAINERS", ""],
                    list.iter().map(|h| {
                        vec![
                            h.id.to_string(),
                            h.advertise.clone().unwrap_or_else(|| "-".into()),
                            h.containers.to_string(),
                            if h.this {
                                "(this host)".into()
                            } else {
                                String::new()
                            },
                        ]
                    }),
                )
            })
        }
        HostCmd::Remove { id } => {
            let () = Client::call(path, &Request::HostRemove { id: id.clone() }).await?;
            print(out, &serde_json::json!({ "removed": id }), String::new)
        }
    }
}

pub(crate) async fn domain_names(path: &Path, out: Output, app: AppId) -> anyhow::Result<()> {
    let names: Vec<String> = Client::call(path, &Request::DomainNames { app }).await?;
    print(out, &names, || {
        names.iter().map(|n| format!("{n}\n")).collect()
    })
}

pub(crate) async fn env(path: &Path, out: Output, key: ContainerKey) -> anyhow::Result<()> {
    let vars: Vec<(String, String)> = Client::call(path, &Request::Env { key }).await?;
    let obj: serde_json::Map<String, serde_json::Value> = vars
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    print(out, &obj, || {
        vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    })
}

pub(crate) async fn status(path: &Path, out: Output) -> anyhow::Result<()> {
    let s: Status = Client::call(path, &Request::Status).await?;
    print(out, &s, || status_text(&s))
}

/// Prints flow and drop events (or HTTP requests) as the agent sends them,
/// until it stops or the reader goes away.
pub(crate) async fn flows(
    path: &Path,
    out: Output,
    follow: bool,
    filter: pn_agent::flows::Filter,
) -> anyhow::Result<()> {
    let mut c = Client::connect(path).await?;
    c.send(&Request::Flows { follow }).await?;
    let stdout = std::io::stdout();
    while let Some(v) = c.next().await? {
        let r: FlowRecord = serde_json::from_value(v.clone()).context("decoding a flow event")?;
        if !filter.admits(&r) {
            continue;
        }
        let line = match out {
            Output::Json => serde_json::to_string(&v)?,
            Output::Table => r.line(),
        };
        let mut lock = stdout.lock();
        if writeln!(lock, "{line}")
            .and_then(|()| lock.flush())
            .is_err()
        {
            // Reader went away (e.g. `| head`): not an error.
            return Ok(());
        }
    }
    Ok(())
}
