//! The service manager's side of a restart (systemd's protocol: `sd_notify`
//! and its file descriptor store). `systemctl restart` stops the agent
//! before it starts the next one, so there is no predecessor to talk to;
//! instead the stopping agent leaves its tunnel with the service manager
//! (`FDSTORE=1`: each worker's TUN queue and UDP socket, and a sealed memfd holding
//! the state — memory, never a file), which gives them to the next start
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`). The next agent takes them, removes
//! them from the store at once (`FDSTOREREMOVE=1`) and empties the memfd,
//! so a later crash never resumes an old state (whose nonces were used).
//! The unit needs `Type=notify`, `NotifyAccess=main` and
//! `FileDescriptorStoreMax=` of at least 2 × workers + 1 (129 for the
//! most workers).

use std::{
    io::IoSlice,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixDatagram,
    },
};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use pn_tunnel::device::Io;
use zeroize::Zeroizing;

/// The name the tunnel's descriptors are stored under.
pub const FD_NAME: &str = "pn-tunnel";

/// The service manager's socket, when the agent runs under one.
fn notify_addr() -> Option<UnixAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    match bytes.first() {
        Some(b'@') => UnixAddr::new_abstract(&bytes[1..]).ok(),
        Some(b'/') => UnixAddr::new(path.as_os_str()).ok(),
        _ => None,
    }
}

pub fn under_service_manager() -> bool {
    notify_addr().is_some()
}

/// Sends `state` (e.g. `READY=1`) with `fds` to the service manager; false
/// when there is none or it could not be reached.
pub fn notify(state: &str, fds: &[RawFd]) -> bool {
    let Some(addr) = notify_addr() else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let iov = [IoSlice::new(state.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )
    .is_ok()
}

/// Leaves the tunnel's descriptors and `state` with the service manager
/// for the next start.
pub fn store(io: &Io, state: &[u8]) -> std::io::Result<()> {
    let memfd = sealed_memfd(state)?;
    let mut fds = io.fds();
    fds.push(memfd.as_raw_fd());
    if notify(&format!("FDSTORE=1\nFDNAME={FD_NAME}\n"), &fds) {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the service manager took no descriptors",
        ))
    }
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A memfd holding `bytes`, sealed against growing and writing (it may
/// still be emptied by whoever reads it).
fn sealed_memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        let fd = check(libc::memfd_create(
            c"pn-agent-state".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        ))?;
        let fd = OwnedFd::from_raw_fd(fd);
        let mut at = 0;
        while at < bytes.len() {
            let n = libc::write(
                fd.as_raw_fd(),
                bytes[at..].as_ptr().cast(),
                bytes.len() - at,
            );
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            at += n as usize;
        }
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        ))?;
        Ok(fd)
    }
}

/// Reads a memfd whole, then empties it (the state is used once).
fn consume(fd: &OwnedFd) -> std::io::Result<Zeroizing<Vec<u8>>> {
    // SAFETY: an all-zero stat is a valid value (integers only).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a live struct.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    let len = usize::try_from(st.st_size)
        .unwrap_or(0)
        .min(super::wire::MAX_FRAME);
    let mut out = Zeroizing::new(vec![0u8; len]);
    let mut at = 0;
    while at < len {
        // SAFETY: reading into the rest of a live buffer.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                out[at..].as_mut_ptr().cast(),
                len - at,
                at as libc::off_t,
            )
        };
        if n <= 0 {
            break;
        }
        at += n as usize;
    }
    out.truncate(at);
    // SAFETY: shrinking a memfd we were given (not sealed against it).
    unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
    Ok(out)
}

/// What the service manager handed this start: the tunnel's descriptors
/// and the state, read once.
pub struct Stored {
    pub io: Io,
    pub state: Zeroizing<Vec<u8>>,
}

/// Takes the tunnel's descriptors the service manager passed (if any) and
/// removes them from its store.
pub fn take() -> Option<Stored> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: usize = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let mut ours = Vec::new();
    for i in 0..n.min(64) {
        let fd = 3 + i as RawFd;
        // Those not ours are left as they are.
        if names.get(i) == Some(&FD_NAME) {
            // SAFETY: fds 3.. were passed to this process (sd_listen_fds).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: as above, and each is owned once.
            ours.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={FD_NAME}\n"), &[]);
    // Each worker's TUN queue and socket, then the state.
    let memfd = ours.pop()?;
    let io = Io::from_fds(ours)?;
    let state = consume(&memfd).ok()?;
    Some(Stored { io, state })
}
