//! The tunnel's I/O around the sans-I/O [`Tunnel`]: a TUN device the host
//! routes remote members to, a UDP socket on the underlay, and three threads
//! (TUN → UDP, UDP → TUN, timers). Plain OS threads: the data path must not
//! wait behind the agent's control-plane tasks.
//!
//! The I/O can stop and hand its descriptors and sessions to a successor
//! ([`Device::stop`], [`Device::export`]), which goes on with them
//! ([`Device::import`], [`Device::run`]): an agent upgrade needs no new
//! handshake. The TUN device is persistent, so it and the routes through it
//! outlive an agent that dies: packets for remote members are dropped there,
//! never routed elsewhere in clear, until the next agent reads it again.

#[cfg(feature = "metrics")]
pub mod metrics;
mod rx;
mod shared;
mod sys;
mod tx;

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub use self::shared::Counters;
use self::shared::{Shared, lock};
use self::sys::{SOCKET_BUFFER, Waker, open_tun, set_int};
use crate::{Clock, Members, PeerId, PeerState, Stats, Tunnel, carry::Carried};

type DataLoop = fn(File, UdpSocket, &Shared);

/// The device's descriptors: a queue of the TUN device and the UDP socket.
pub struct Io {
    pub tun: File,
    pub udp: UdpSocket,
}

impl Io {
    /// Opens (or creates) the persistent TUN device `tun_name` and binds
    /// the UDP socket on `listen`.
    pub fn open(tun_name: &str, listen: SocketAddr) -> std::io::Result<Io> {
        let tun = open_tun(tun_name)
            .map_err(|e| std::io::Error::other(format!("creating TUN {tun_name}: {e}")))?;
        let udp = UdpSocket::bind(listen)
            .map_err(|e| std::io::Error::other(format!("binding the tunnel on {listen}: {e}")))?;
        // Outer packets may be fragmented on an underlay with a smaller
        // MTU than planned (as WireGuard's): the inner path MTU stays right
        // and nothing is lost to a black hole.
        let fd = udp.as_raw_fd();
        set_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        );
        set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1);
        // A coalesced read carries up to 64 datagrams: the default buffers
        // (about 200 KiB) overflow under one TCP stream's burst, and every
        // overflow is a train of inner segments lost. Root may exceed
        // rmem_max (the FORCE options); if not, the plain ones are capped.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if !set_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
                set_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        Ok(Io { tun, udp })
    }
}

/// The threads of a running device.
struct Running {
    io: Io,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    listen: SocketAddr,
}

impl Running {
    /// Stops the threads (at once: they wait on the waker too) and waits
    /// for them: once this returns, nothing of this device reads, seals or
    /// sends any more.
    fn stop(mut self) -> Io {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.io
    }
}

pub struct Device {
    tunnel: Arc<Mutex<Tunnel>>,
    members: Arc<dyn Members + Send + Sync>,
    pub counters: Arc<Counters>,
    running: Mutex<Option<Running>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Device {
    /// A device with no I/O yet: peers can be set, sessions imported; the
    /// threads start with [`Device::run`].
    pub fn new(tunnel: Tunnel, members: Arc<dyn Members + Send + Sync>) -> Device {
        Device {
            tunnel: Arc::new(Mutex::new(tunnel)),
            members,
            counters: Arc::new(Counters::default()),
            running: Mutex::new(None),
        }
    }

    /// Opens the TUN device `tun_name`, binds `listen`, starts the threads.
    /// The caller sets the device up and routes to it.
    pub fn start(
        tun_name: &str,
        listen: SocketAddr,
        tunnel: Tunnel,
        members: Arc<dyn Members + Send + Sync>,
    ) -> std::io::Result<Device> {
        let dev = Device::new(tunnel, members);
        dev.run(Io::open(tun_name, listen)?)?;
        Ok(dev)
    }

    /// Starts the threads on `io` (opened here or handed over).
    pub fn run(&self, io: Io) -> std::io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Err(std::io::Error::other(
                "the tunnel device is already running",
            ));
        }
        let listen = io.udp.local_addr()?;
        let (tun, udp) = (io.tun.try_clone()?, io.udp.try_clone()?);
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new()?);
        let mut threads = Vec::new();
        let shared = Shared {
            tunnel: self.tunnel.clone(),
            members: self.members.clone(),
            counters: self.counters.clone(),
            stop: stop.clone(),
            waker: waker.clone(),
        };
        // TUN → UDP (packets from local containers to remote members) and
        // UDP → TUN, each on its own thread.
        let data_loops: [(&str, DataLoop); 2] =
            [("pn-tun-tx", tx::tx_loop), ("pn-tun-rx", rx::rx_loop)];
        for (name, data_loop) in data_loops {
            let (tun, udp, shared) = (tun.try_clone()?, udp.try_clone()?, shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || data_loop(tun, udp, &shared))?,
            );
        }
        {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("pn-tun-timer".into())
                    .spawn(move || timer_loop(udp, &shared))?,
            );
        }
        drop(tun);
        *running = Some(Running {
            io,
            stop,
            waker,
            threads,
            listen,
        });
        Ok(())
    }

    /// Stops the I/O and gives its descriptors back (`None`: not running).
    pub fn stop(&self) -> Option<Io> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        running.map(Running::stop)
    }

    /// The UDP address the tunnel listens on, while it runs.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.listen)
    }

    /// The sessions for a successor ([`crate::carry`]); call after
    /// [`Device::stop`], so nothing seals meanwhile.
    pub fn export(&self, margin: u64) -> Carried {
        self.lock().export(std::time::Instant::now(), margin)
    }

    /// Takes over a predecessor's sessions (for the peers already set).
    pub fn import(&self, carried: &Carried) -> usize {
        self.lock().import(carried, std::time::Instant::now())
    }

    /// Forgets every session (keeping the peers): after sessions were
    /// exported to a successor that did not take over, they must not be
    /// used again here, whose counters it may have used.
    pub fn forget_sessions(&self) {
        let mut t = self.lock();
        let peers: Vec<(PeerId, [u8; 32], SocketAddr)> = t
            .peer_ids()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|id| t.peer(id).map(|(k, e)| (id, k, e)))
            .collect();
        for (id, key, endpoint) in peers {
            t.remove_peer(id);
            t.set_peer(id, key, endpoint);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tunnel> {
        lock(&self.tunnel)
    }

    /// Makes the peers exactly these (id, public key, endpoint).
    pub fn set_peers(&self, peers: &[(PeerId, [u8; 32], SocketAddr)]) {
        let mut t = self.lock();
        let gone: Vec<PeerId> = t
            .peer_ids()
            .filter(|id| !peers.iter().any(|(p, _, _)| p == id))
            .collect();
        for id in gone {
            t.remove_peer(id);
        }
        for (id, key, endpoint) in peers {
            t.set_peer(*id, *key, *endpoint);
        }
    }

    pub fn peer_state(&self, id: PeerId) -> Option<PeerState> {
        self.lock().peer_state(id, std::time::Instant::now())
    }

    pub fn handshake_stats(&self) -> Stats {
        self.lock().stats.clone()
    }
}

fn timer_loop(udp: UdpSocket, shared: &Shared) {
    let mut out = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        shared.waker.wait(Duration::from_millis(100));
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        {
            lock(&shared.tunnel).tick(Clock::system(), &mut out);
        }
        for (to, d) in out.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}
