//! `pn-agent`: the daemon (`run`) and the control commands that talk to it.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use pn_agent::{
    client::{Client, ClientError},
    config::{DEFAULT_API_SOCKET, RunSettings},
    error::{Error, ErrorKind, Kind},
    flows::FlowRecord,
    model::{App, Balance, ContainerKey, Egress, Network},
    proto::{AppInfo, ContainerInfo, HostInfo, NetworkInfo, Request, Status},
    render::{status_text, table},
};
use pn_api::cni;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId, parse_index};

mod daemon;
use daemon::daemon;

#[derive(Parser)]
#[command(
    name = "pn-agent",
    version,
    about = "pn: private networks of containers — host agent and control commands"
)]
struct Cli {
    /// The running agent's control socket [default: /run/pn-agent/api.sock].
    #[arg(long, global = true, env = "PN_API_SOCKET")]
    api_socket: Option<PathBuf>,
    /// Output format of control commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root).
    Run {
        /// TOML file with the same settings as the flags (kebab-case keys).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<RunSettings>,
    },
    /// Private networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Applications (members of one network).
    #[command(subcommand)]
    App(AppCmd),
    /// Containers (network namespaces attached to an application).
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Every DNS name of an application's formation.
    DomainNames {
        #[arg(long)]
        app: AppId,
    },
    /// The CNI network configuration list for an application's containers
    /// of one type (for a runtime's CNI configuration directory).
    CniConfig {
        #[arg(long)]
        app: AppId,
        #[arg(long = "type")]
        ctype: ContainerType,
        /// Network name [default: APP-TYPE].
        #[arg(long)]
        name: Option<String>,
    },
    /// The variables injected into a container.
    Env {
        #[arg(long)]
        app: AppId,
        #[arg(long = "type")]
        ctype: ContainerType,
        #[arg(long, value_parser = parse_index)]
        index: u32,
    },
    /// Hosts of the fleet.
    #[command(subcommand)]
    Host(HostCmd),
    /// Programs attached, endpoints, peers, store and tunnel state.
    Status,
    /// Flow and drop events from the datapath.
    Flows {
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        /// HTTP requests between members, one line each (as a router's log)
        /// instead of flow and drop events.
        #[arg(long)]
        http: bool,
        /// Only events with a container of this app at either end.
        #[arg(long)]
        app: Option<String>,
        /// Only events of this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Tests only: make this namespace's edge rules the JSON `EdgeConfig`
    /// read on stdin (or remove them), without an agent.
    #[command(hide = true)]
    EdgeApply {
        #[arg(long)]
        clear: bool,
        /// Print the nftables JSON document instead of applying it.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network; prints its id.
    Create {
        #[arg(long)]
        id: Option<NetworkId>,
        /// Address range (default: the next free /22 of the fleet pool).
        #[arg(long)]
        cidr: Option<Ipv4Net>,
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
enum AppCmd {
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
enum HostCmd {
    List,
    /// Remove a (dead) host: its containers and addresses go, peers forget it.
    Remove {
        id: HostId,
    },
}

#[derive(Subcommand)]
enum ContainerCmd {
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line: the usage text clap appends is noise for scripts.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(error_kind(&e).exit_code() as u8)
        }
    }
}

/// The kind of a failure, for the exit code: the agent's answer carries it;
/// anything else that fails here is the daemon's own start-up or I/O.
fn error_kind(e: &anyhow::Error) -> ErrorKind {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<ClientError>()
                .map(Kind::kind)
                .or_else(|| c.downcast_ref::<pn_agent::error::Error>().map(Kind::kind))
        })
        .unwrap_or(ErrorKind::Internal)
}

pub(crate) fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.api_socket.clone();
    let path = socket.clone().unwrap_or_else(|| DEFAULT_API_SOCKET.into());
    let out = cli.output;
    match cli.command {
        Command::Run {
            config,
            mut settings,
        } => {
            settings.api_socket = socket;
            daemon(*settings, config).await
        }
        Command::EdgeApply { clear, print } => Ok(pn_agent::edge::apply_stdin(clear, print)?),
        Command::Network(NetworkCmd::Create { id, cidr, egress }) => {
            let n: Network =
                Client::call(&path, &Request::NetworkCreate { id, cidr, egress }).await?;
            print(out, &n, || format!("{}\n", n.id))
        }
        Command::Network(NetworkCmd::Update { id, egress }) => {
            let n: Network = Client::call(&path, &Request::NetworkUpdate { id, egress }).await?;
            print(out, &n, || format!("{} egress {}\n", n.id, n.egress))
        }
        Command::Network(NetworkCmd::List) => {
            let list: Vec<NetworkInfo> = Client::call(&path, &Request::NetworkList).await?;
            print(out, &list, || {
                table(
                    &["ID", "CIDR", "TAG", "EGRESS", "APPS", "CONTAINERS"],
                    list.iter().map(|n| {
                        vec![
                            n.id.to_string(),
                            n.cidr.to_string(),
                            n.tag.to_string(),
                            n.egress.to_string(),
                            n.apps.to_string(),
                            n.containers.to_string(),
                        ]
                    }),
                )
            })
        }
        Command::Network(NetworkCmd::Delete { id, force }) => {
            let () = Client::call(&path, &Request::NetworkDelete { id, force }).await?;
            print(out, &serde_json::json!({ "deleted": id }), String::new)
        }
        Command::App(AppCmd::Create {
            network,
            id,
            name,
            web_port,
            balance,
            health_port,
        }) => {
            let req = Request::AppCreate {
                network,
                id,
                name,
                web_port,
                balance,
                health_port,
            };
            let a: App = Client::call(&path, &req).await?;
            print(out, &a, || format!("{}\n", a.id))
        }
        Command::App(AppCmd::Update {
            id,
            balance,
            health_port,
        }) => {
            let req = Request::AppUpdate {
                id,
                balance,
                health_port,
            };
            let a: App = Client::call(&path, &req).await?;
            print(out, &a, || {
                a.services
                    .iter()
                    .map(|(t, ip)| format!("{t} {ip}\n"))
                    .collect()
            })
        }
        Command::App(AppCmd::List { network }) => {
            let list: Vec<AppInfo> = Client::call(&path, &Request::AppList { network }).await?;
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
                    list.iter().map(|a| {
                        let services: Vec<String> = a
                            .services
                            .iter()
                            .map(|s| {
                                let conns: u64 = s.counters.iter().map(|c| c.connections).sum();
                                let resets: u64 = s.counters.iter().map(|c| c.resets).sum();
                                format!(
                                    "{}={} ({} up, {conns} conns, {resets} resets)",
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
                    }),
                )
            })
        }
        Command::App(AppCmd::Delete { id }) => {
            let () = Client::call(&path, &Request::AppDelete { id }).await?;
            print(out, &serde_json::json!({ "deleted": id }), String::new)
        }
        Command::App(AppCmd::Move { id, network }) => {
            let a: AppInfo = Client::call(&path, &Request::AppMove { id, network }).await?;
            print(out, &a, || format!("{} moved to {}\n", a.id, a.network))
        }
        Command::CniConfig { app, ctype, name } => {
            let name = name.unwrap_or_else(|| cni::default_name(&app, &ctype));
            if !cni::valid_name(&name) {
                return Err(ClientError::Refused(Error::invalid(format!(
                    "invalid network name {name:?}: 1 to 255 characters among a-z, A-Z, 0-9, _, . and -, starting with a letter or digit"
                )))
                .into());
            }
            // The app must exist: a configuration naming none would only
            // fail later, in the runtime.
            let apps: Vec<AppInfo> =
                Client::call(&path, &Request::AppList { network: None }).await?;
            if !apps.iter().any(|a| a.id == app) {
                return Err(ClientError::Refused(Error::not_found(format!(
                    "application {app} not found"
                )))
                .into());
            }
            let socket = std::path::absolute(&path).unwrap_or(path.clone());
            let list = cni::network_config_list(&name, &app, &ctype, &socket);
            print(Output::Json, &list, String::new)
        }
        Command::Container(ContainerCmd::Attach {
            app,
            ctype,
            index,
            netns,
            ifname,
        }) => {
            let c: ContainerInfo = Client::call(
                &path,
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
        Command::Container(ContainerCmd::Detach { app, ctype, index }) => {
            let key = ContainerKey { app, ctype, index };
            let () = Client::call(&path, &Request::ContainerDetach { key: key.clone() }).await?;
            print(
                out,
                &serde_json::json!({ "detached": key.to_string() }),
                String::new,
            )
        }
        Command::Container(ContainerCmd::List { app, network }) => {
            let list: Vec<ContainerInfo> =
                Client::call(&path, &Request::ContainerList { app, network }).await?;
            print(out, &list, || {
                table(
                    &[
                        "ID",
                        "IP",
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
        Command::DomainNames { app } => {
            let names: Vec<String> = Client::call(&path, &Request::DomainNames { app }).await?;
            print(out, &names, || {
                names.iter().map(|n| format!("{n}\n")).collect()
            })
        }
        Command::Env { app, ctype, index } => {
            let key = ContainerKey { app, ctype, index };
            let vars: Vec<(String, String)> = Client::call(&path, &Request::Env { key }).await?;
            let obj: serde_json::Map<String, serde_json::Value> = vars
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            print(out, &obj, || {
                vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
            })
        }
        Command::Host(HostCmd::List) => {
            let list: Vec<HostInfo> = Client::call(&path, &Request::HostList).await?;
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
        Command::Host(HostCmd::Remove { id }) => {
            let () = Client::call(&path, &Request::HostRemove { id: id.clone() }).await?;
            print(out, &serde_json::json!({ "removed": id }), String::new)
        }
        Command::Status => {
            let s: Status = Client::call(&path, &Request::Status).await?;
            print(out, &s, || status_text(&s))
        }
        Command::Flows {
            follow,
            http,
            app,
            network,
        } => {
            let mut c = Client::connect(&path).await?;
            c.send(&Request::Flows { follow }).await?;
            let stdout = std::io::stdout();
            let filter = pn_agent::flows::Filter { http, app, network };
            while let Some(v) = c.next().await? {
                let r: FlowRecord =
                    serde_json::from_value(v.clone()).context("decoding a flow event")?;
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
    }
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
