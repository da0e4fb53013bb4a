//! The control API between the CLI and the running agent: one JSON request
//! per line on a Unix socket, one JSON response line back (or a stream of
//! lines for `flows --follow`). The socket is the agent's only control surface
//! and is root-only (mode 0600).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use pn_common::ids::{AppId, ContainerType, HostId, NetworkId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use crate::model::ContainerKey;

/// Longest request line accepted (a request is a few hundred bytes).
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    NetworkCreate {
        id: Option<NetworkId>,
        cidr: Option<Ipv4Net>,
    },
    NetworkList,
    NetworkDelete {
        id: NetworkId,
        force: bool,
    },
    AppCreate {
        network: NetworkId,
        id: Option<AppId>,
        name: Option<String>,
    },
    AppList {
        network: Option<NetworkId>,
    },
    AppDelete {
        id: AppId,
    },
    ContainerAttach {
        app: AppId,
        #[serde(rename = "type")]
        ctype: ContainerType,
        index: Option<u32>,
        netns: String,
        ifname: String,
    },
    ContainerDetach {
        #[serde(flatten)]
        key: ContainerKey,
    },
    ContainerList {
        app: Option<AppId>,
        network: Option<NetworkId>,
    },
    DomainNames {
        app: AppId,
    },
    Env {
        #[serde(flatten)]
        key: ContainerKey,
    },
    Status,
    Flows {
        follow: bool,
    },
    HostList,
    HostRemove {
        id: HostId,
    },
}

impl Request {
    /// Name for logs and metrics.
    pub fn command(&self) -> &'static str {
        match self {
            Request::NetworkCreate { .. } => "network-create",
            Request::NetworkList => "network-list",
            Request::NetworkDelete { .. } => "network-delete",
            Request::AppCreate { .. } => "app-create",
            Request::AppList { .. } => "app-list",
            Request::AppDelete { .. } => "app-delete",
            Request::ContainerAttach { .. } => "container-attach",
            Request::ContainerDetach { .. } => "container-detach",
            Request::ContainerList { .. } => "container-list",
            Request::DomainNames { .. } => "domain-names",
            Request::Env { .. } => "env",
            Request::Status => "status",
            Request::Flows { .. } => "flows",
            Request::HostList => "host-list",
            Request::HostRemove { .. } => "host-remove",
        }
    }
}

/// `{"ok": …}` or `{"error": "one line"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkInfo {
    pub id: NetworkId,
    pub cidr: Ipv4Net,
    pub tag: u32,
    pub apps: usize,
    pub containers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AppInfo {
    pub id: AppId,
    pub network: NetworkId,
    #[serde(default)]
    pub name: Option<String>,
    pub containers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    /// `ap-…/type-index`.
    pub id: String,
    pub app: AppId,
    pub network: NetworkId,
    #[serde(rename = "type")]
    pub ctype: ContainerType,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub host: String,
    pub netns: String,
    pub interface: String,
    pub host_interface: String,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub id: HostId,
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    pub containers: usize,
    /// The host this agent runs on.
    pub this: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub host: String,
    pub version: String,
    pub store: StoreStatus,
    pub datapath: DatapathStatus,
    pub endpoints: EndpointCounts,
    pub peers: Vec<PeerStatus>,
    pub dns: String,
    pub tunnel: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    pub backend: String,
    pub reachable: bool,
    pub revision: i64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Records read from the store and refused, by reason.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatapathStatus {
    pub bpffs: PathBuf,
    pub programs: Vec<String>,
    /// Host-side interfaces with both programs attached.
    pub attached_interfaces: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointCounts {
    pub local: usize,
    pub remote: usize,
    pub in_maps: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub host: String,
    #[serde(default)]
    pub advertise: Option<String>,
    pub containers: usize,
    pub tunnel: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent not running: cannot connect to {path}: {source}")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent sent a response this CLI does not understand: {0}")]
    Protocol(String),
    /// The agent refused the request; the message is for the user as is.
    #[error("{0}")]
    Refused(String),
}

/// A connection to the agent.
pub struct Client {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.into(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(Client {
            path: path.into(),
            reader: BufReader::new(r),
            writer: w,
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        let path = self.path.clone();
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| ClientError::Io { path, source })
    }

    /// Next response line; `None` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        let mut line = String::new();
        let n = {
            let path = self.path.clone();
            self.reader
                .read_line(&mut line)
                .await
                .map_err(|source| ClientError::Io { path, source })?
        };
        if n == 0 {
            return Ok(None);
        }
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::Ok(v)) => Ok(Some(v)),
            Ok(Response::Error(e)) => Err(ClientError::Refused(e)),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    /// One request, one typed answer.
    pub async fn call<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ClientError> {
        let mut c = Client::connect(path).await?;
        c.send(req).await?;
        let v = c.next().await?.ok_or_else(|| {
            (c.io())(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ))
        })?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The agent side: accepts connections on the API socket until the process ends.
pub mod server {
    use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

    use anyhow::{Context as _, bail};
    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::{UnixListener, UnixStream},
    };

    use super::{MAX_REQUEST, Request, Response};
    use crate::{
        agent::{Agent, ApiError},
        metrics::AgentMetrics,
    };

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
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the API socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        Ok(listener)
    }

    pub async fn serve(listener: UnixListener, agent: Arc<Agent>, metrics: AgentMetrics) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
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

    async fn write(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        Ok(())
    }

    async fn handle(
        stream: UnixStream,
        agent: Arc<Agent>,
        metrics: AgentMetrics,
    ) -> anyhow::Result<()> {
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
            return write(&mut w, &Response::Error(msg.into())).await;
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
                return write(&mut w, &Response::Error(format!("bad request: {e}"))).await;
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
                log::info!("{command} refused: {e}");
                Response::Error(e.0)
            }
        };
        write(&mut w, &resp).await
    }

    fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
        serde_json::to_value(v).map_err(|e| ApiError(format!("encoding the answer: {e}")))
    }

    async fn dispatch(agent: &Agent, req: Request) -> Result<serde_json::Value, ApiError> {
        match req {
            Request::NetworkCreate { id, cidr } => json(agent.create_network(id, cidr).await?),
            Request::NetworkList => json(agent.list_networks()),
            Request::NetworkDelete { id, force } => json(agent.delete_network(&id, force).await?),
            Request::AppCreate { network, id, name } => {
                json(agent.create_app(&network, id, name).await?)
            }
            Request::AppList { network } => json(agent.list_apps(network.as_ref())),
            Request::AppDelete { id } => json(agent.delete_app(&id).await?),
            Request::ContainerAttach {
                app,
                ctype,
                index,
                netns,
                ifname,
            } => json(agent.attach(&app, ctype, index, &netns, &ifname).await?),
            Request::ContainerDetach { key } => json(agent.detach(&key).await?),
            Request::ContainerList { app, network } => {
                json(agent.list_containers(app.as_ref(), network.as_ref()))
            }
            Request::DomainNames { app } => json(agent.domain_names(&app)?),
            Request::Env { key } => json(agent.env(&key)?),
            Request::Status => json(agent.status()),
            Request::Flows { .. } => Err(ApiError("flows is served as a stream".into())),
            Request::HostList => json(agent.list_hosts()),
            Request::HostRemove { id } => json(agent.remove_host(&id).await?),
        }
    }
}
