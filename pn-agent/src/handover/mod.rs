//! Handing a running agent's place to its successor (a restart, an
//! upgrade), as Envoy's hot restart and HAProxy's seamless reload do: the
//! successor starts while the predecessor runs, gets everything ready, then
//! takes the tunnel's TUN queues and UDP sockets (SCM_RIGHTS) and its live
//! sessions (keys, counters, replay windows) over `STATE_DIR/handover.sock`;
//! the predecessor stops its I/O before it exports and exits once the
//! successor confirms. The gap on the tunnel is the hand-over itself: no
//! handshake, no packet of the kernel's queues lost.
//!
//! The exchange (frames of `wire`):
//! 1. successor → `HELLO` (protocol, the state version it reads, a nonce);
//! 2. predecessor → `CHALLENGE` (its protocol, the state version it will
//!    hand over — the successor's when it writes that one too, else its
//!    own —, its nonce, its proof of the host key over both nonces) or
//!    `REFUSED`;
//! 3. successor (once ready) → `TAKE` (mode, its proof over both nonces);
//! 4. predecessor → `STATE` (the sessions; the descriptors attached) or
//!    `REFUSED`; with mode "stop" (the successor cannot read this state
//!    version) an empty state: the successor starts afresh;
//! 5. successor → `TAKEN`; the predecessor exits.
//!
//! Who may ask: the socket is the owner's only (0600), the peer's uid must
//! be root or the agent's own (SO_PEERCRED), and both sides prove they hold
//! the host's static key (`proof`), bound to fresh nonces: a forged or
//! replayed request is refused, logged, and changes nothing. The state
//! never touches the disk; a successor that gets nothing usable (refused,
//! predecessor gone, other version) starts clean.

mod error;
mod lock;
pub mod proof;
pub mod service;
pub mod state;
pub mod wire;

use std::{
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt as _, net::UnixListener, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use pn_tunnel::device::Io;
use zeroize::Zeroizing;

pub use self::error::HandoverError;
pub use self::lock::StateLock;
use self::proof::{NONCE_LEN, Nonce, PROOF_LEN, ProofKey};

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "handover.sock";
/// Version of this exchange.
pub const PROTOCOL: u32 = 1;
const MAGIC: &[u8; 12] = b"pn-handover\0";
/// Ask for the tunnel (the normal case)…
pub const MODE_TAKE: u8 = 0;
/// …or only that the predecessor steps aside (its state cannot be read).
pub const MODE_STOP: u8 = 1;
/// The largest frame a successor sends.
const SMALL_FRAME: usize = 256;
/// How long either side waits for the other's next frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The version of the state this binary hands over and reads (it reads
/// older ones too: [`state::readable`]).
pub fn state_version() -> u32 {
    state::version()
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

fn timeouts(s: &UnixStream) -> Result<(), HandoverError> {
    s.set_read_timeout(Some(FRAME_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(FRAME_TIMEOUT)))
        .map_err(|e| HandoverError::Io("setting socket timeouts", e))
}

fn nonce() -> Result<Nonce, HandoverError> {
    proof::nonce().map_err(|e| HandoverError::Io("drawing a nonce", e))
}

fn expect(frame: &wire::Frame, kind: u8) -> Result<(), HandoverError> {
    if frame.kind == wire::REFUSED {
        return Err(HandoverError::Refused(
            String::from_utf8_lossy(&frame.payload).into_owned(),
        ));
    }
    if frame.kind != kind {
        return Err(HandoverError::Protocol("unexpected frame"));
    }
    Ok(())
}

/// What the successor gets: the tunnel's descriptors (when it has one) and
/// the encoded sessions.
pub struct Handed {
    pub io: Option<Io>,
    pub state: Zeroizing<Vec<u8>>,
}

/// The tunnel's descriptors: a TUN queue and a UDP socket per worker of
/// the predecessor (one pair from an agent with one worker).
fn io_from(fds: Vec<OwnedFd>) -> Result<Option<Io>, HandoverError> {
    if fds.is_empty() {
        return Ok(None);
    }
    Io::from_fds(fds)
        .map(Some)
        .ok_or(HandoverError::Protocol("unexpected descriptors"))
}

/// The successor's end: connected to the running agent, which proved it
/// holds the host key.
pub struct Predecessor {
    stream: UnixStream,
    key: ProofKey,
    hello: Nonce,
    challenge: Nonce,
    /// Its state is one this binary reads (this binary's, or an older
    /// envelope of the same tunnel format).
    pub compatible: bool,
}

impl Predecessor {
    /// Connects to the agent of `state_dir`. `Ok(None)`: none answers
    /// (none runs, or it crashed): start clean.
    pub fn connect(
        state_dir: &Path,
        host_private: &[u8; 32],
    ) -> Result<Option<Predecessor>, HandoverError> {
        let stream = match UnixStream::connect(socket_path(state_dir)) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(HandoverError::Io("connecting to the running agent", e)),
        };
        timeouts(&stream)?;
        let uid = wire::peer_uid(&stream)?;
        if !wire::uid_allowed(uid, nix::unistd::geteuid().as_raw()) {
            return Err(HandoverError::Credentials(uid));
        }
        let key = ProofKey::new(host_private);
        let hello = nonce()?;
        let c = hello_exchange(&stream, &hello)?;
        if !ProofKey::verify(&key.predecessor(&hello, &c.nonce), &c.proof) {
            return Err(HandoverError::Forged);
        }
        Ok(Some(Predecessor {
            stream,
            key,
            hello,
            challenge: c.nonce,
            compatible: state::readable(c.state_version),
        }))
    }

    /// Asks for the tunnel (or, when its state is of another version, only
    /// that it step aside). The predecessor's I/O is stopped when this
    /// returns: go on at once, then confirm with [`Predecessor::taken`].
    pub fn take(&mut self) -> Result<Handed, HandoverError> {
        let mode = if self.compatible {
            MODE_TAKE
        } else {
            MODE_STOP
        };
        let proof = self.key.successor(&self.challenge, &self.hello, mode);
        let f = take_exchange(&self.stream, mode, &proof)?;
        let io = io_from(f.fds)?;
        Ok(Handed {
            io,
            state: f.payload,
        })
    }

    /// Confirms the take-over; then waits (up to `wait`) for the
    /// predecessor to exit.
    pub fn taken(self, wait: Duration) -> Result<(), HandoverError> {
        wire::send(&self.stream, wire::TAKEN, &[], &[])?;
        self.stream
            .set_read_timeout(Some(wait))
            .map_err(|e| HandoverError::Io("setting socket timeouts", e))?;
        match wire::recv(&self.stream) {
            Err(HandoverError::Closed) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(HandoverError::Protocol("unexpected frame after TAKEN")),
        }
    }
}

/// The predecessor's answer to a `HELLO`.
pub struct Challenge {
    pub state_version: u32,
    pub nonce: Nonce,
    pub proof: [u8; PROOF_LEN],
}

/// Sends `HELLO` with `hello` on a connected hand-over socket and reads the
/// `CHALLENGE` (the first step of [`Predecessor::connect`]; public for the
/// tests that play an attacker).
pub fn hello_exchange(s: &UnixStream, hello: &Nonce) -> Result<Challenge, HandoverError> {
    let mut msg = Vec::with_capacity(MAGIC.len() + 8 + NONCE_LEN);
    msg.extend_from_slice(MAGIC);
    msg.extend_from_slice(&PROTOCOL.to_be_bytes());
    msg.extend_from_slice(&state_version().to_be_bytes());
    msg.extend_from_slice(hello);
    wire::send(s, wire::HELLO, &msg, &[])?;
    let f = wire::recv(s)?;
    expect(&f, wire::CHALLENGE)?;
    let p = &f.payload[..];
    if p.len() != 8 + NONCE_LEN + PROOF_LEN {
        return Err(HandoverError::Protocol("bad challenge"));
    }
    Ok(Challenge {
        state_version: u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")),
        nonce: p[8..8 + NONCE_LEN].try_into().expect("32 bytes"),
        proof: p[8 + NONCE_LEN..].try_into().expect("32 bytes"),
    })
}

/// Sends `TAKE` (`mode` and `proof`) and reads the answer: the state
/// frame, or the refusal as an error.
pub fn take_exchange(
    s: &UnixStream,
    mode: u8,
    proof: &[u8; PROOF_LEN],
) -> Result<wire::Frame, HandoverError> {
    let mut msg = vec![mode];
    msg.extend_from_slice(proof);
    wire::send(s, wire::TAKE, &msg, &[])?;
    let f = wire::recv(s)?;
    expect(&f, wire::STATE)?;
    Ok(f)
}

/// What the predecessor's agent does when asked (implemented by the agent,
/// so this module knows nothing of it).
pub trait Handing: Send + Sync {
    /// Stops the tunnel's I/O and returns its descriptors and sessions,
    /// encoded in state `version` (one `state::readable`).
    fn freeze(&self, version: u32) -> (Option<Io>, Zeroizing<Vec<u8>>);
    /// The hand-over failed after `freeze`: go on with `io`, but without
    /// the sessions, which the successor may have used.
    fn resume(&self, io: Option<Io>);
}

/// The predecessor's end: `STATE_DIR/handover.sock`, answered on its own
/// thread, one successor at a time. `done` fires once a successor took over
/// (the agent then exits).
pub fn offer(
    state_dir: &Path,
    host_private: &[u8; 32],
    handing: Arc<dyn Handing>,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<(), HandoverError> {
    let path = socket_path(state_dir);
    // Ours: the caller holds the state directory's lock.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| HandoverError::Io("binding", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| HandoverError::Io("restricting the hand-over socket", e))?;
    let key = ProofKey::new(host_private);
    std::thread::Builder::new()
        .name("pn-handover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                match serve_one(&stream, &key, handing.as_ref()) {
                    Ok(()) => {
                        log::info!("handed over to the successor; exiting");
                        let _ = done.send(());
                        // Keeps the connection open until the process
                        // exits: its end tells the successor we are gone.
                        std::mem::forget(stream);
                        return;
                    }
                    Err(HandoverError::Closed) => {
                        log::info!("a successor left before taking over");
                    }
                    Err(e) => log::warn!("refused a hand-over request: {e}"),
                }
            }
        })
        .map_err(|e| HandoverError::Io("starting the hand-over thread", e))?;
    Ok(())
}

fn refuse(s: &UnixStream, e: HandoverError) -> HandoverError {
    let _ = wire::send(s, wire::REFUSED, e.to_string().as_bytes(), &[]);
    e
}

fn serve_one(s: &UnixStream, key: &ProofKey, handing: &dyn Handing) -> Result<(), HandoverError> {
    timeouts(s)?;
    let uid = wire::peer_uid(s)?;
    if !wire::uid_allowed(uid, nix::unistd::geteuid().as_raw()) {
        return Err(refuse(s, HandoverError::Credentials(uid)));
    }
    let f = wire::recv_max(s, SMALL_FRAME)?;
    let p = &f.payload[..];
    if f.kind != wire::HELLO || p.len() != MAGIC.len() + 8 + NONCE_LEN || &p[..12] != MAGIC {
        return Err(refuse(
            s,
            HandoverError::Protocol("not a hand-over request"),
        ));
    }
    let protocol = u32::from_be_bytes(p[12..16].try_into().expect("4 bytes"));
    if protocol != PROTOCOL {
        return Err(refuse(s, HandoverError::Protocol("other protocol version")));
    }
    // An older successor gets the state it reads (an upgrade rolled back
    // keeps its sessions too).
    let version = state::version_for(u32::from_be_bytes(p[16..20].try_into().expect("4 bytes")));
    let hello: Nonce = p[20..].try_into().expect("32 bytes");
    let challenge = nonce()?;
    let mut msg = Vec::with_capacity(8 + NONCE_LEN + PROOF_LEN);
    msg.extend_from_slice(&PROTOCOL.to_be_bytes());
    msg.extend_from_slice(&version.to_be_bytes());
    msg.extend_from_slice(&challenge);
    msg.extend_from_slice(&key.predecessor(&hello, &challenge));
    wire::send(s, wire::CHALLENGE, &msg, &[])?;
    // The successor prepares before it asks: wait as long as a start takes.
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| HandoverError::Io("setting socket timeouts", e))?;
    let f = wire::recv_max(s, SMALL_FRAME)?;
    timeouts(s)?;
    if f.kind != wire::TAKE || f.payload.len() != 1 + PROOF_LEN {
        return Err(refuse(s, HandoverError::Protocol("expected TAKE")));
    }
    let mode = f.payload[0];
    if !ProofKey::verify(&key.successor(&challenge, &hello, mode), &f.payload[1..]) {
        return Err(refuse(s, HandoverError::Forged));
    }
    let (io, state) = match mode {
        MODE_TAKE => handing.freeze(version),
        MODE_STOP => (None, Zeroizing::new(Vec::new())),
        _ => return Err(refuse(s, HandoverError::Protocol("unknown mode"))),
    };
    let fds: Vec<i32> = io.iter().flat_map(Io::fds).collect();
    let confirmed = wire::send(s, wire::STATE, &state, &fds)
        .and_then(|()| wire::recv_max(s, SMALL_FRAME))
        .and_then(|f| match f.kind {
            wire::TAKEN => Ok(()),
            _ => Err(HandoverError::Protocol("expected TAKEN")),
        });
    drop(state);
    match confirmed {
        Ok(()) => Ok(()),
        Err(e) => {
            if mode == MODE_TAKE {
                log::warn!(
                    "the successor did not confirm the hand-over ({e}); going on with new sessions"
                );
                handing.resume(io);
            }
            Err(e)
        }
    }
}
