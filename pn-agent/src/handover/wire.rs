//! The hand-over's frames on its unix socket: a type byte, a length and the
//! payload, with file descriptors (SCM_RIGHTS) riding on a frame's first
//! byte; and the peer's credentials.

use std::{
    io::{IoSlice, IoSliceMut, Read as _},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};
use zeroize::Zeroizing;

use super::error::HandoverError;

/// Frame types.
pub const HELLO: u8 = 1;
pub const CHALLENGE: u8 = 2;
pub const TAKE: u8 = 3;
pub const STATE: u8 = 4;
pub const TAKEN: u8 = 5;
pub const REFUSED: u8 = 6;

/// Larger frames are refused before anything is allocated (a state of
/// thousands of peers is well under it).
pub const MAX_FRAME: usize = 16 << 20;
/// Descriptors a frame may carry: a TUN queue and a UDP socket per tunnel
/// worker (under the kernel's 253 per message).
pub const MAX_FDS: usize = 2 * pn_tunnel::device::MAX_WORKERS;

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> HandoverError {
    move |e| HandoverError::Io(what, e)
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> HandoverError {
    move |e| HandoverError::Io(what, std::io::Error::from(e))
}

/// Sends one frame, with `fds` attached.
pub fn send(s: &UnixStream, kind: u8, payload: &[u8], fds: &[RawFd]) -> Result<(), HandoverError> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    let iov = [IoSlice::new(&head), IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let total = head.len() + payload.len();
    let mut sent = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(sys("sending a hand-over frame"))?;
    // The descriptors went with the first bytes; the rest is plain data.
    while sent < total {
        let rest: Vec<u8> = head.iter().chain(payload).skip(sent).copied().collect();
        let rest = Zeroizing::new(rest);
        sent += sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&rest)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(sys("sending a hand-over frame"))?;
    }
    Ok(())
}

/// A received frame: its type, payload (wiped on drop) and descriptors.
pub struct Frame {
    pub kind: u8,
    pub payload: Zeroizing<Vec<u8>>,
    pub fds: Vec<OwnedFd>,
}

/// Receives one frame; a closed connection is [`HandoverError::Closed`].
pub fn recv(s: &UnixStream) -> Result<Frame, HandoverError> {
    recv_max(s, MAX_FRAME)
}

/// Receives one frame of at most `max` bytes (requests from a peer not
/// authenticated yet are small: nothing large is allocated for them).
pub fn recv_max(s: &UnixStream, max: usize) -> Result<Frame, HandoverError> {
    let mut head = [0u8; 5];
    let mut fds = Vec::new();
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let n = {
        let mut iov = [IoSliceMut::new(&mut head)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(sys("receiving a hand-over frame"))?;
        for c in msg.cmsgs().map_err(sys("reading a frame's descriptors"))? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    list.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(HandoverError::Protocol("too many descriptors"));
        }
        msg.bytes
    };
    if n == 0 {
        return Err(HandoverError::Closed);
    }
    let mut r = s;
    if n < head.len() {
        r.read_exact(&mut head[n..])
            .map_err(io("receiving a hand-over frame"))?;
    }
    let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(HandoverError::Protocol("frame too large"));
    }
    let mut payload = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut payload)
        .map_err(io("receiving a hand-over frame"))?;
    Ok(Frame {
        kind: head[0],
        payload,
        fds,
    })
}

/// The uid of the process at the other end of the socket.
pub fn peer_uid(s: &UnixStream) -> Result<u32, HandoverError> {
    getsockopt(s, PeerCredentials)
        .map(|c| c.uid())
        .map_err(sys("reading the peer's credentials"))
}

/// Whether a process of `uid` may take part in a hand-over with us: only
/// root, or the user this agent runs as.
pub fn uid_allowed(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}
