//! `cargo xtask`: the project's own commands. Each one first makes sure the
//! machine has what it needs (see `bootstrap`), so a fresh machine gets from a
//! clean clone to a running agent or a passing test suite with one command.

mod bootstrap;
mod cmd;
mod install;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "pn's build, run and test commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages, nothing else.
    Bootstrap,
    /// Build the agent (and its eBPF programs) and the CNI plugin.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run `pn-agent run` (root); arguments after `--` go to the agent.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks against the alternatives, written to BENCHMARKS.md (root).
    Bench {
        /// Shorter runs (the whole suite in a few minutes).
        #[arg(long)]
        quick: bool,
        /// Only this scenario (policy, strangers, scale, dns, tunnel, edge).
        #[arg(long)]
        only: Option<String>,
    },
    /// Build (release) and install the agent, the CNI plugin, a systemd unit
    /// and a default config file (root), and start the agent.
    Install {
        /// Place the files under this directory instead, and start nothing.
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// The debug build instead of the release one.
        #[arg(long)]
        debug: bool,
    },
    /// Stop the agent and remove what `install` placed, its pins, the
    /// gateway interface and its routes (root).
    Uninstall {
        /// Remove the files under this directory only.
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Also remove the agent's state (embedded store, host key).
        #[arg(long)]
        purge: bool,
        /// The agent's config file, for its pin directory, socket and state
        /// directory [default: /etc/pn-agent/config.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Random faults on a three-host fleet under traffic, every invariant
    /// checked; the figures go to RELIABILITY.md (root). Exits non-zero on
    /// any violation, with the seed that replays it.
    Soak {
        /// How long faults keep coming.
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        /// The seed of the faults (a fresh one, printed, when not given).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// fmt, clippy (host and BPF target), unit and integration tests (root);
    /// arguments after `--` go to `cargo test` (e.g. a test name filter).
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` needs root: it loads eBPF programs and creates network namespaces"
        );
    }
    Ok(())
}

fn agent_binary(release: bool) -> PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("pn-agent")
}

/// The agent and the CNI plugin (`pn`), built together.
fn build_agent(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "-p", "pn-agent", "-p", "pn-cni"];
    if release {
        args.push("--release");
    }
    cmd::cargo(&args, &[])
}

fn run(cli: Cli) -> anyhow::Result<()> {
    std::env::set_current_dir(workspace_root()).context("entering the workspace")?;
    match cli.command {
        Command::Bootstrap => {
            bootstrap::toolchain()?;
            bootstrap::packages()
        }
        Command::Build { release } => {
            bootstrap::toolchain()?;
            build_agent(release)
        }
        Command::Run { release, args } => {
            require_root("run")?;
            bootstrap::toolchain()?;
            build_agent(release)?;
            let bin = agent_binary(release);
            eprintln!("xtask: starting {} run {}", bin.display(), args.join(" "));
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&bin)
                .arg("run")
                .args(&args)
                .exec();
            Err(err).with_context(|| format!("executing {}", bin.display()))
        }
        Command::Install { destdir, debug } => install(destdir, debug),
        Command::Uninstall {
            destdir,
            purge,
            config,
        } => uninstall(destdir, purge, config),
        Command::Bench { quick, only } => bench(quick, only),
        Command::Test { args } => test(args),
        Command::Soak { minutes, seed } => soak(minutes, seed),
    }
}

fn install(destdir: Option<PathBuf>, debug: bool) -> anyhow::Result<()> {
    if destdir.is_none() {
        require_root("install")?;
    }
    bootstrap::toolchain()?;
    cmd::step("building", || build_agent(!debug))?;
    let agent = agent_binary(!debug);
    let root = destdir.unwrap_or_else(|| PathBuf::from("/"));
    for f in install::place(&root, &agent, &agent.with_file_name("pn"))? {
        eprintln!("xtask: installed {}", f.display());
    }
    if root == std::path::Path::new("/") {
        install::activate();
    }
    Ok(())
}

fn uninstall(destdir: Option<PathBuf>, purge: bool, config: Option<PathBuf>) -> anyhow::Result<()> {
    let root = match destdir {
        Some(d) => d,
        None => {
            require_root("uninstall")?;
            let path = config.unwrap_or_else(|| PathBuf::from("/").join(install::CONFIG));
            let config = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
            };
            install::teardown(&install::agent_paths(&config)?, purge)?;
            PathBuf::from("/")
        }
    };
    for f in install::remove_files(&root)? {
        eprintln!("xtask: removed {}", f.display());
    }
    Ok(())
}

fn bench(quick: bool, only: Option<String>) -> anyhow::Result<()> {
    require_root("bench")?;
    bootstrap::toolchain()?;
    bootstrap::packages()?;
    bootstrap::bench_packages()?;
    bootstrap::boringtun()?;
    cmd::step("building release binaries", || {
        cmd::cargo(
            &[
                "build",
                "--release",
                "-p",
                "pn-agent",
                "-p",
                "pn-tests",
                "--bin",
                "pn-agent",
                "--bin",
                "pn-bench",
            ],
            &[],
        )
    })?;
    let agent = agent_binary(true);
    let bench = workspace_root().join("target/release/pn-bench");
    let mut c = std::process::Command::new(&bench);
    if quick {
        c.arg("--quick");
    }
    if let Some(o) = &only {
        c.args(["--only", o]);
    }
    c.arg("--out")
        .arg(workspace_root())
        .env("PN_AGENT_BIN", &agent);
    cmd::step("benchmarks", || cmd::run(&mut c))
}

fn soak(minutes: f64, seed: Option<u64>) -> anyhow::Result<()> {
    require_root("soak")?;
    bootstrap::toolchain()?;
    bootstrap::packages()?;
    cmd::step("building the agent and the soak", || {
        build_agent(false)?;
        cmd::cargo(&["build", "-p", "pn-tests", "--bin", "pn-soak"], &[])
    })?;
    let mut c = std::process::Command::new(workspace_root().join("target/debug/pn-soak"));
    c.args(["--minutes", &minutes.to_string()]);
    if let Some(s) = seed {
        c.args(["--seed", &s.to_string()]);
    }
    c.arg("--out")
        .arg(workspace_root())
        .env("PN_AGENT_BIN", agent_binary(false));
    cmd::step("soak", || cmd::run(&mut c))
}

fn test(args: Vec<String>) -> anyhow::Result<()> {
    require_root("test")?;
    bootstrap::toolchain()?;
    bootstrap::packages()?;
    cmd::step("formatting", || {
        cmd::cargo(&["fmt", "--all", "--", "--check"], &[])
    })?;
    cmd::step("lints (host)", || {
        cmd::cargo(
            &[
                "clippy",
                "--workspace",
                "--exclude",
                "pn-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    })?;
    cmd::step("lints (eBPF programs)", || {
        cmd::cargo(
            &[
                "+nightly",
                "clippy",
                "-p",
                "pn-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    })?;
    cmd::step("building the agent", || build_agent(false))?;
    let bin = agent_binary(false);
    let plugin = bin.with_file_name("pn");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let plugin = plugin.to_str().context("non-UTF-8 path")?;
    let mut test_args = vec!["test", "--workspace", "--exclude", "pn-ebpf"];
    if !args.is_empty() {
        test_args.push("--");
        test_args.extend(args.iter().map(String::as_str));
    }
    cmd::step("unit and integration tests", || {
        cmd::cargo(&test_args, &[("PN_AGENT_BIN", bin), ("PN_CNI_BIN", plugin)])
    })
}
