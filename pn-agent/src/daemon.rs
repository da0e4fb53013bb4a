//! `pn-agent run`: the daemon's process around the library's `Agent` — the
//! state directory's lock or a predecessor's hand-over, the service
//! manager's notices, the API socket and metrics, signals. Part of the
//! binary, not of the library.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pn_agent::config::{RunConfig, RunSettings, StoreSpec};

use crate::report::one_line;

/// Raises the soft descriptor limit to the hard one: the default soft limit
/// (often 1024) is low for a daemon holding sockets for many containers; the
/// DNS server sizes its own bounds from the result.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("raising the descriptor limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("reading the descriptor limit: {e}"),
    }
}

/// The settings of this run. Every error in them is the command line's or
/// the file's to fix; the certificate files are read now, so a wrong one is
/// one line before anything starts.
fn resolve(
    settings: RunSettings,
    file: Option<&Path>,
) -> Result<RunConfig, pn_agent::error::Error> {
    RunConfig::resolve(settings, file)
        .and_then(|cfg| {
            if let StoreSpec::EtcdTls(_, files) = &cfg.store {
                files.check()?;
            }
            Ok(cfg)
        })
        .map_err(|e| pn_agent::error::Error::invalid(one_line(&e)))
}

pub(crate) async fn daemon(settings: RunSettings, config: Option<PathBuf>) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let cfg = resolve(settings, config.as_deref())?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("pn-agent run needs root (it loads eBPF programs and configures interfaces)");
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    // A tunnel the service manager kept across a restart (systemd's fd store).
    let stored = pn_agent::handover::service::take();
    // The state directory is one agent's; a running one hands its place
    // over (an upgrade, a restart that starts the next one first).
    let (lock, predecessor) = match pn_agent::handover::StateLock::try_take(&cfg.state_dir)? {
        Some(lock) => (Some(lock), None),
        None => {
            // The running agent created it.
            let key = pn_tunnel::keyfile::host_key(&cfg.state_dir)?;
            match pn_agent::handover::Predecessor::connect(&cfg.state_dir, &key.private)? {
                Some(p) => (None, Some(p)),
                None => anyhow::bail!(
                    "another agent is using state dir {} (and offers no hand-over)",
                    cfg.state_dir.display()
                ),
            }
        }
    };
    raise_descriptor_limit();
    let listener = match predecessor {
        None => Some(pn_agent::server::bind(&cfg.api_socket).await?),
        Some(_) => None,
    };
    log::info!(
        "pn-agent {} starting: host {}, store {:?}, bpffs {}{}",
        env!("CARGO_PKG_VERSION"),
        cfg.host_id,
        cfg.store,
        cfg.bpffs.display(),
        if predecessor.is_some() {
            ", taking over from the running agent"
        } else {
            ""
        }
    );
    let agent = pn_agent::agent::Agent::start(cfg.clone(), predecessor, stored).await?;
    // With a predecessor, `start` returned once it was gone.
    let _lock = match lock {
        Some(l) => l,
        None => {
            pn_agent::handover::StateLock::take(&cfg.state_dir, std::time::Duration::from_secs(10))?
        }
    };
    let listener = match listener {
        Some(l) => l,
        None => pn_agent::server::bind(&cfg.api_socket).await?,
    };
    let (handed_tx, handed_rx) = tokio::sync::oneshot::channel();
    let host_key = pn_tunnel::keyfile::host_key(&cfg.state_dir)?;
    pn_agent::handover::offer(&cfg.state_dir, &host_key.private, agent.clone(), handed_tx)?;
    drop(host_key);
    let api_metrics = pn_agent::server::ApiMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    api_metrics.register(&mut registry);
    agent.register_metrics(&mut registry);
    let metrics_listener = tokio::spawn(pn_agent::metrics::serve(cfg.metrics_listen, registry));
    tokio::spawn(pn_agent::server::serve(
        listener,
        agent.clone(),
        api_metrics,
    ));
    log::info!(
        "ready: API {}, metrics http://{}/metrics",
        cfg.api_socket.display(),
        cfg.metrics_listen
    );
    pn_agent::handover::service::notify("READY=1", &[]);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Ok(()) = handed_rx => {
            // The successor runs: it owns the API socket's path now.
            return Ok(());
        }
        r = metrics_listener => {
            let _ = std::fs::remove_file(&cfg.api_socket);
            return match r {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("metrics server stopped")),
            };
        }
    }
    pn_agent::handover::service::notify("STOPPING=1", &[]);
    let _ = std::fs::remove_file(&cfg.api_socket);
    // A tunnel that waits with the service manager keeps its packets queued
    // for the next agent; otherwise it goes with this process, and the
    // programs drop (and count) traffic to remote members until one is up.
    if !agent.leave_tunnel_with_service_manager() {
        agent.stopping();
    }
    log::info!("stopping; the programs stay attached and keep enforcing the last state");
    Ok(())
}
