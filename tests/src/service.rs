//! A stand-in for systemd as far as the agent sees it: the notify socket
//! (`NOTIFY_SOCKET`: `READY=1`, `FDSTORE=1`, `FDSTOREREMOVE=1`) and the file
//! descriptor store whose descriptors the next start receives
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`), as a unit with
//! `FileDescriptorStoreMax=` would give them on `systemctl restart`.

use std::{
    io::IoSliceMut,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{net::UnixDatagram, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

type Store = Arc<Mutex<Vec<(String, OwnedFd)>>>;

pub struct ServiceManager {
    pub socket: PathBuf,
    store: Store,
    /// Every notification received, in order.
    pub messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServiceManager {
    pub fn new(socket: &Path) -> ServiceManager {
        let _ = std::fs::remove_file(socket);
        let sock = UnixDatagram::bind(socket).expect("binding the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let store: Store = Arc::default();
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, messages, stop) = (store.clone(), messages.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut buf = [0u8; 4096];
                    let mut cmsg = nix::cmsg_space!([RawFd; 129]);
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let Ok(msg) = recvmsg::<()>(
                        sock.as_raw_fd(),
                        &mut iov,
                        Some(&mut cmsg),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    ) else {
                        continue;
                    };
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(list) = c {
                                // SAFETY: installed for us by the kernel.
                                fds.extend(
                                    list.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    let n = msg.bytes;
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let field = |k: &str| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(k).map(str::to_string))
                    };
                    let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
                    let mut st = store.lock().unwrap();
                    if field("FDSTOREREMOVE=").as_deref() == Some("1") {
                        st.retain(|(n, _)| *n != name);
                    } else if field("FDSTORE=").as_deref() == Some("1") {
                        st.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
                    }
                    drop(st);
                    messages.lock().unwrap().push(text);
                }
            })
        };
        ServiceManager {
            socket: socket.to_path_buf(),
            store,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// Names of the descriptors in the store.
    pub fn stored(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The command that starts `cmd` as the service's main process: the
    /// notify socket, and the stored descriptors as fds 3… with their
    /// names and the process's own pid (`sh` execs what follows, so the pid
    /// it reports is the agent's).
    pub fn command(&self, cmd: &Command) -> Command {
        let st = self.store.lock().unwrap();
        let fds: Vec<RawFd> = st.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = st.iter().map(|(n, _)| n.as_str()).collect();
        let mut c = Command::new("sh");
        c.arg("-c");
        if fds.is_empty() {
            c.arg(r#"exec "$@""#);
        } else {
            c.arg(r#"LISTEN_PID=$$ exec "$@""#)
                .env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        c.arg("sh").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.env("NOTIFY_SOCKET", &self.socket);
        // SAFETY: only dup2/fcntl between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // Out of the way first, then in place at 3, 4, 5…
                let high: Vec<RawFd> = fds
                    .iter()
                    .map(|fd| libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100))
                    .collect();
                for (i, fd) in high.iter().enumerate() {
                    if *fd < 0 || libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        c
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
