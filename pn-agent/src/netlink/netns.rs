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

    /// Opens a network namespace, off the async workers (a path on a
    /// slow or hung file system must not stall them): see
    /// [`Self::open_blocking`].
    pub async fn open(given: &str) -> Result<Netns> {
        let owned = given.to_string();
        tokio::task::spawn_blocking(move || Self::open_blocking(&owned))
            .await
            .map_err(|e| NetlinkError::Other(format!("opening namespace {given}: {e}")))?
    }

    /// Opens a network namespace without following a link at its last
    /// component (a name under `/run/netns/` or a path the store or a
    /// runtime gave: a link planted there must not make the agent enter
    /// another namespace; `/proc/PID/ns/net`, a link of the kernel's own,
    /// is the one allowed), and checks it is one: a file of nsfs, of a
    /// network namespace (`NS_GET_NSTYPE`), not something else the path
    /// could name.
    pub fn open_blocking(given: &str) -> Result<Netns> {
        if given.is_empty() || given == "." || given == ".." {
            return Err(NetlinkError::NamespaceMissing(format!("{given:?}")));
        }
        let path = Self::path_of(given);
        let file = open_netns_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetlinkError::NamespaceMissing(given.into())
            } else {
                NetlinkError::Namespace(given.into(), e)
            }
        })?;
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

/// `/proc/<pid>/ns/net` (or `/proc/self/…`, `/proc/thread-self/…`): the
/// kernel's magic link to a process's namespace, the one link followed.
fn is_proc_netns(path: &Path) -> bool {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    matches!(
        (
            parts.next().as_deref(),
            parts.next().as_deref(),
            parts.next(),
            parts.next().as_deref(),
            parts.next().as_deref(),
            parts.next()
        ),
        (
            Some("/"),
            Some("proc"),
            Some(_),
            Some("ns"),
            Some("net"),
            None
        )
    )
}

/// Opens `path` as a network namespace file: `O_NOFOLLOW` (but for
/// `/proc/PID/ns/net`) and `O_CLOEXEC`, then nsfs (`fstatfs`) holding a
/// network namespace (`ioctl(NS_GET_NSTYPE)`), on the descriptor opened:
/// nothing can be swapped in between the check and the use.
pub fn open_netns_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // _IO(0xb7, 0x3): the type (CLONE_NEW*) of the namespace of an nsfs fd.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let mut flags = libc::O_CLOEXEC;
    if !is_proc_netns(path) {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("a symbolic link, not a namespace (links are not followed)")
            } else {
                e
            }
        })?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid open descriptor and a buffer the size of the statfs
    // the kernel writes; read only when the call succeeded.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures.
    // SAFETY: initialised by the successful call above.
    let nsfs = rc == 0 && unsafe { st.assume_init() }.f_type as i64 == NSFS_MAGIC;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
    let ns_type = nsfs.then(|| unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) });
    if ns_type != Some(libc::CLONE_NEWNET) {
        return Err(std::io::Error::other("not a network namespace"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_procs_own_netns_links_are_followed() {
        for p in [
            "/proc/1/ns/net",
            "/proc/self/ns/net",
            "/proc/thread-self/ns/net",
        ] {
            assert!(is_proc_netns(Path::new(p)), "{p}");
        }
        for p in [
            "/run/netns/c1",
            "/proc/1/ns/mnt",
            "/proc/1/ns/net/x",
            "/proc/ns/net",
            "/tmp/proc/1/ns/net",
            "proc/1/ns/net",
        ] {
            assert!(!is_proc_netns(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn a_link_a_plain_file_or_another_namespace_kind_is_refused() {
        let dir = std::env::temp_dir().join(format!("pn-netns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // This process's own network namespace is one.
        assert!(open_netns_file(Path::new("/proc/self/ns/net")).is_ok());
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        for bad in [
            link.as_path(),
            plain.as_path(),
            Path::new("/proc/self/ns/mnt"),
        ] {
            let e = open_netns_file(bad).unwrap_err();
            assert!(
                e.to_string().contains("namespace") || e.to_string().contains("link"),
                "{bad:?}: {e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
