//! `pn-agent`: the daemon (`run`) and the control commands that talk to it.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use pn_agent::{
    client::ClientError,
    config::RunSettings,
    error::{ErrorKind, Kind},
    model::ContainerKey,
};
use pn_api::DEFAULT_API_SOCKET;
use pn_common::ids::{AppId, ContainerType, parse_index};

// The allocator (see the `mimalloc` feature in Cargo.toml for why); with
// both features, mimalloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod control;
mod daemon;
mod fleet;
mod report;
use control::{AppCmd, ContainerCmd, HostCmd, NetworkCmd, Output};
use daemon::daemon;
use report::one_line;

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
    /// The operator's commands, straight to etcd: roles, admissions, migration.
    Fleet {
        #[command(flatten)]
        store: fleet::StoreArgs,
        #[command(subcommand)]
        cmd: fleet::FleetCmd,
    },
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
        Command::Network(cmd) => control::network(&path, out, cmd).await,
        Command::App(cmd) => control::app(&path, out, cmd).await,
        Command::CniConfig { app, ctype, name } => {
            control::cni_config(&path, app, ctype, name).await
        }
        Command::Container(cmd) => control::container(&path, out, cmd).await,
        Command::DomainNames { app } => control::domain_names(&path, out, app).await,
        Command::Env { app, ctype, index } => {
            control::env(&path, out, ContainerKey { app, ctype, index }).await
        }
        Command::Host(cmd) => control::host(&path, out, cmd).await,
        Command::Fleet { store, cmd } => fleet::fleet(store, cmd).await,
        Command::Status => control::status(&path, out).await,
        Command::Flows {
            follow,
            http,
            app,
            network,
        } => {
            let filter = pn_agent::flows::Filter { http, app, network };
            control::flows(&path, out, follow, filter).await
        }
    }
}
