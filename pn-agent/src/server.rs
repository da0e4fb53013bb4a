//! The agent's side of the control API: accepts connections on the API
//! socket until the process ends, one request per connection, and answers
//! with the agent's result or its typed error.
//!
//! The API can attach anything to any network, so who may use it is checked
//! twice: the socket is created readable and writable by the agent's user
//! only (the umask is set before the bind: there is no moment where the
//! file exists with wider rights), and every connection's peer credentials
//! (`SO_PEERCRED`) must be root's or the agent's user's — a socket whose
//! mode someone widened, or a descriptor passed on, does not let anyone else
//! in.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use nix::{
    sys::stat::{Mode, umask},
    unistd::geteuid,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    agent::Agent,
    error::Error,
    proto::{MAX_REQUEST, Request, Response},
};

/// A label set of `pn_api_requests_total`.
pub type ApiLabels = Vec<(&'static str, String)>;

/// The API's metrics, counted as requests come.
#[derive(Clone, Default)]
pub struct ApiMetrics {
    pub api_requests: Family<ApiLabels, Counter>,
    /// API connections refused by who the peer is (its credentials).
    pub api_refused: Counter,
}

impl ApiMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "pn_api_requests",
            "Control API requests, per command and result",
            self.api_requests.clone(),
        );
        r.register(
            "pn_api_refused",
            "Control API connections refused: the peer is neither root nor the agent's user",
            self.api_refused.clone(),
        );
    }
}

/// Binds the socket (refusing to steal it from a live agent).
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another agent is already running on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // The mode comes from the umask at bind: 0600. The umask is the
    // process's, so it is restored at once; the bind happens at start or
    // at a hand-over, when nothing else of the agent creates files.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    bound.with_context(|| format!("binding the API socket {}", path.display()))
}

/// Who may use the API: root, and the user the agent runs as.
pub fn allowed(peer_uid: u32, agent_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == agent_uid
}

/// How long a refused peer may take to send its request, which is read and
/// discarded so that it gets the refusal rather than a broken pipe.
const REFUSED_DRAIN: Duration = Duration::from_secs(1);

pub async fn serve(listener: UnixListener, agent: Arc<Agent>, metrics: ApiMetrics) {
    let agent_uid = geteuid().as_raw();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().map(|c| c.uid());
                match uid {
                    Ok(uid) if allowed(uid, agent_uid) => {}
                    _ => {
                        metrics.api_refused.inc();
                        tokio::spawn(refuse(stream, uid.ok(), agent_uid));
                        continue;
                    }
                }
                let agent = agent.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, agent, metrics).await {
                        log::debug!("API connection: {e:#}");
                    }
                });
            }
            Err(e) => {
                log::error!("API socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers a peer that may not use the API with one error, nothing read
/// but its request (bounded in size and time, then dropped).
async fn refuse(stream: UnixStream, uid: Option<u32>, agent_uid: u32) {
    let who = uid.map_or_else(|| "a peer of unknown uid".into(), |u| format!("uid {u}"));
    let only = if agent_uid == 0 {
        "root only".to_string()
    } else {
        format!("root and uid {agent_uid} only")
    };
    log::warn!("API: refused {who} ({only})");
    let (r, mut w) = stream.into_split();
    let err = Error::denied(format!(
        "permission denied: {who} may not use the agent's API ({only})"
    ));
    let drain = async {
        let mut sink = Vec::new();
        let _ = r.take(MAX_REQUEST as u64).read_to_end(&mut sink).await;
    };
    let _ = tokio::time::timeout(REFUSED_DRAIN, async {
        let _ = write(&mut w, &Response::Error(err)).await;
        let _ = w.shutdown().await;
        drain.await;
    })
    .await;
}

async fn write(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    Ok(())
}

async fn handle(stream: UnixStream, agent: Arc<Agent>, metrics: ApiMetrics) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.ends_with('\n') {
        let msg = if line.len() >= MAX_REQUEST {
            "bad request: longer than 64 KiB"
        } else {
            "bad request: incomplete line"
        };
        return write(&mut w, &Response::Error(Error::invalid(msg))).await;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            metrics
                .api_requests
                .get_or_create(&vec![
                    ("command", "invalid".into()),
                    ("result", "error".into()),
                ])
                .inc();
            return write(
                &mut w,
                &Response::Error(Error::invalid(format!("bad request: {e}"))),
            )
            .await;
        }
    };
    let command = req.command();
    if let Request::Flows { follow } = req {
        metrics
            .api_requests
            .get_or_create(&vec![("command", command.into()), ("result", "ok".into())])
            .inc();
        let mut rx = agent.flows.subscribe();
        for rec in agent.flows.recent() {
            write(&mut w, &Response::Ok(serde_json::to_value(rec)?)).await?;
        }
        if !follow {
            return Ok(());
        }
        loop {
            match rx.recv().await {
                Ok(rec) => write(&mut w, &Response::Ok(serde_json::to_value(rec)?)).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    log::debug!("flows client lagged by {n} events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    let result = dispatch(&agent, req).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics
        .api_requests
        .get_or_create(&vec![
            ("command", command.into()),
            ("result", outcome.into()),
        ])
        .inc();
    let resp = match result {
        Ok(v) => Response::Ok(v),
        Err(e) => {
            log::info!("{command} refused ({}): {e}", e.kind);
            Response::Error(e)
        }
    };
    write(&mut w, &resp).await
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("encoding the answer: {e}")))
}

async fn dispatch(agent: &Agent, req: Request) -> Result<serde_json::Value, Error> {
    match req {
        Request::NetworkCreate {
            id,
            cidr,
            cidr6,
            egress,
        } => json(agent.create_network(id, cidr, cidr6, egress).await?),
        Request::NetworkUpdate { id, egress } => json(agent.update_network(&id, egress).await?),
        Request::NetworkList => json(agent.list_networks()),
        Request::NetworkDelete { id, force } => json(agent.delete_network(&id, force).await?),
        Request::AppCreate {
            network,
            id,
            name,
            web_port,
            balance,
            health_port,
        } => json(
            agent
                .create_app(&network, id, name, web_port, balance, health_port)
                .await?,
        ),
        Request::AppUpdate {
            id,
            balance,
            health_port,
        } => json(agent.update_app(&id, balance, health_port).await?),
        Request::AppList { network } => json(agent.list_apps(network.as_ref())),
        Request::AppDelete { id } => json(agent.delete_app(&id).await?),
        Request::AppMove { id, network } => json(agent.move_app(&id, &network).await?),
        Request::ContainerAttach {
            app,
            ctype,
            index,
            netns,
            ifname,
        } => json(agent.attach(&app, ctype, index, &netns, &ifname).await?),
        Request::ContainerDetach { key } => json(agent.detach(&key).await?),
        Request::CniAdd {
            app,
            ctype,
            index,
            netns,
            ifname,
            runtime,
        } => json(
            agent
                .cni_add(&app, ctype, index, &netns, &ifname, runtime)
                .await?,
        ),
        Request::CniDel {
            app,
            ifname,
            runtime,
        } => json(agent.cni_del(&app, &ifname, &runtime).await?),
        Request::CniCheck {
            app,
            netns,
            ifname,
            runtime,
        } => json(agent.cni_check(&app, &netns, &ifname, &runtime).await?),
        Request::CniGc {
            app,
            network,
            valid,
        } => json(agent.cni_gc(&app, &network, &valid).await?),
        Request::ContainerList { app, network } => {
            json(agent.list_containers(app.as_ref(), network.as_ref()))
        }
        Request::DomainNames { app } => json(agent.domain_names(&app)?),
        Request::Env { key } => json(agent.env(&key)?),
        Request::Status => json(agent.status()),
        Request::Flows { .. } => Err(Error::internal("flows is served as a stream")),
        Request::HostList => json(agent.list_hosts()),
        Request::HostRemove { id } => json(agent.remove_host(&id).await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_agents_user_only() {
        assert!(allowed(0, 0));
        assert!(!allowed(1000, 0));
        assert!(!allowed(65534, 0));
        // An agent run as its own user (with capabilities): that user and root.
        assert!(allowed(0, 990));
        assert!(allowed(990, 990));
        assert!(!allowed(1000, 990));
    }

    #[tokio::test]
    async fn the_socket_is_never_wider_than_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("pn-api-bind-{}", std::process::id()));
        let path = dir.join("api.sock");
        let listener = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600);
        // The process's umask is back to what it was.
        let now = umask(Mode::from_bits_truncate(0o022));
        umask(now);
        assert_ne!(now.bits() & 0o177, 0o177, "umask left at 0177");
    }
}
