//! The CLI's side of the control API: connect, send a request, read typed
//! answers; failures keep their kind so the CLI picks its exit code by it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use crate::{
    error::{Error, ErrorKind, Kind},
    proto::{Request, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent not running: cannot connect to {path}: {source}")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The socket's permissions keep the caller out (it is the agent's
    /// user's and root's only).
    #[error(
        "not allowed to use the agent's API on {path} (root or the agent's user only): {source}"
    )]
    Denied {
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
    Refused(Error),
}

impl Kind for ClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NotRunning { .. } => ErrorKind::Unavailable,
            ClientError::Denied { .. } => ErrorKind::Denied,
            ClientError::Io { .. } | ClientError::Protocol(_) => ErrorKind::Internal,
            ClientError::Refused(e) => e.kind,
        }
    }
}

/// A connection to the agent.
pub struct Client {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|source| {
            let path = path.into();
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ClientError::Denied { path, source }
            } else {
                ClientError::NotRunning { path, source }
            }
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
