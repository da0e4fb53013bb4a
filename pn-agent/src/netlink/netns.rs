//! Entering a network namespace: a short-lived thread that has entered it
//! (`setns` is per thread), with its own netlink socket bound to it.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::future::BoxFuture;
use rtnetlink::Handle;

use super::error::{NetlinkError, Result};

/// A network namespace, by name (`/run/netns/NAME`, as `ip netns` makes them)
/// or by path (e.g. `/proc/PID/ns/net`).
pub struct Netns {
    file: File,
    pub given: String,
    /// The `ip netns` name, when given by name.
    pub name: Option<String>,
}

impl Netns {
    pub fn path_of(given: &str) -> PathBuf {
        if given.contains('/') {
            PathBuf::from(given)
        } else {
            Path::new("/run/netns").join(given)
        }
    }

    pub fn open(given: &str) -> Result<Netns> {
        if given.is_empty() || given == "." || given == ".." {
            return Err(NetlinkError::NamespaceMissing(format!("{given:?}")));
        }
        let path = Self::path_of(given);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetlinkError::NamespaceMissing(given.into())
            } else {
                NetlinkError::Namespace(given.into(), e)
            }
        })?;
        // Anything can be opened; only an nsfs file of a network namespace can
        // be entered. Checking now gives a clear error instead of a failed setns.
        let probe = std::thread::scope(|s| {
            s.spawn(|| nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET))
                .join()
        });
        match probe {
            Ok(Ok(())) => {}
            _ => {
                return Err(NetlinkError::Namespace(
                    given.into(),
                    std::io::Error::other("not a network namespace"),
                ));
            }
        }
        Ok(Netns {
            file,
            given: given.into(),
            name: (!given.contains('/')).then(|| given.to_string()),
        })
    }

    /// Runs `f` with a netlink handle inside this namespace, on its own thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> BoxFuture<'static, Result<T>> + Send + 'static,
    {
        let file = self
            .file
            .try_clone()
            .map_err(|e| NetlinkError::Namespace(self.given.clone(), e))?;
        let given = self.given.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("pn-netns".into())
            .spawn(move || {
                let result = (|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| NetlinkError::Namespace(given.clone(), std::io::Error::from(e)),
                    )?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| NetlinkError::Other(format!("runtime: {e}")))?;
                    rt.block_on(async move {
                        let (conn, handle, _) = rtnetlink::new_connection()
                            .map_err(|e| NetlinkError::Other(format!("netlink socket: {e}")))?;
                        tokio::spawn(conn);
                        f(handle).await
                    })
                })();
                let _ = tx.send(result);
            })
            .map_err(|e| NetlinkError::Other(format!("thread: {e}")))?;
        rx.await
            .map_err(|_| NetlinkError::Other("namespace worker died".into()))?
    }

    pub(super) fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
