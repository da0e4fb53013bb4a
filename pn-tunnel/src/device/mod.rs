//! The tunnel's I/O around the sans-I/O [`Tunnel`]: a multiqueue TUN device
//! the host routes remote members to, UDP sockets on the underlay sharing
//! one address, and per worker (one per CPU allowed, by default) a queue, a
//! socket and two threads (TUN → UDP, UDP → TUN); one timer thread. Plain
//! OS threads: the data path must not wait behind the agent's control-plane
//! tasks. The workers share the sessions under the tunnel's shared lock
//! (atomic send counters, a replay window locked per session); only what
//! changes the tunnel takes it alone.
//!
//! The I/O can stop and hand its descriptors and sessions to a successor
//! ([`Device::stop`], [`Device::export`]), which goes on with them
//! ([`Device::import`], [`Device::run`]): an agent upgrade needs no new
//! handshake. The TUN device is persistent, so it and the routes through it
//! outlive an agent that dies: packets for remote members are dropped there,
//! never routed elsewhere in clear, until the next agent reads it again.

mod io;
#[cfg(feature = "metrics")]
pub mod metrics;
mod msg;
mod options;
mod rx;
mod shared;
mod sys;
#[cfg(test)]
mod tests;
mod tx;
mod wait;

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, RwLock, RwLockWriteGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub use self::io::{Io, Queue};
pub use self::options::{MAX_WORKERS, OFFLOADS, Options};
pub use self::shared::Counters;
use self::shared::{Shared, read, write};
pub use self::sys::allowed_cpus;
use self::sys::{
    Waker, accept_stop_signal, install_stop_signal, interrupt, pin_to, set_blocking, set_int,
    set_tun_offload,
};
use crate::{Clock, Members, PeerId, PeerState, Stats, Tunnel, carry::Carried};

type DataLoop = fn(File, UdpSocket, &Shared);

/// The threads of a running device.
struct Running {
    io: Io,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    listen: SocketAddr,
}

impl Running {
    /// Stops the threads (at once: the timer waits on the waker, the data
    /// threads block in their reads, which a signal ends) and waits for
    /// them: once this returns, nothing of this device reads, seals or
    /// sends any more.
    fn stop(mut self) -> Io {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.wake();
        // A signal that comes before a thread enters its read is lost (the
        // read then blocks): again, until every thread saw the flag.
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                interrupt(t);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.io
    }
}

pub struct Device {
    tunnel: Arc<RwLock<Tunnel>>,
    members: Arc<dyn Members + Send + Sync>,
    pub counters: Arc<Counters>,
    options: Options,
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
    pub fn new(
        tunnel: Tunnel,
        members: Arc<dyn Members + Send + Sync>,
        options: Options,
    ) -> Device {
        Device {
            tunnel: Arc::new(RwLock::new(tunnel)),
            members,
            counters: Arc::new(Counters::default()),
            options,
            running: Mutex::new(None),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Opens the TUN device `tun_name` (a queue per worker), binds
    /// `listen`, starts the threads. The caller sets the device up and
    /// routes to it.
    pub fn start(
        tun_name: &str,
        listen: SocketAddr,
        tunnel: Tunnel,
        members: Arc<dyn Members + Send + Sync>,
        options: Options,
    ) -> std::io::Result<Device> {
        let workers = options.worker_count();
        let dev = Device::new(tunnel, members, options);
        dev.run(Io::open(tun_name, listen, workers)?)?;
        Ok(dev)
    }

    /// Opens the device's descriptors as its options say.
    pub fn open(&self, tun_name: &str, listen: SocketAddr) -> std::io::Result<Io> {
        Io::open(tun_name, listen, self.options.worker_count())
    }

    /// Starts the threads on `io` (opened here or handed over: with fewer
    /// queues than workers wanted, it gets more when the device and socket
    /// allow): a worker per queue, a thread each way.
    pub fn run(&self, mut io: Io) -> std::io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Err(std::io::Error::other(
                "the tunnel device is already running",
            ));
        }
        io.widen(self.options.worker_count());
        let listen = io.local_addr()?;
        install_stop_signal()?;
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new()?);
        let shared = Shared {
            tunnel: self.tunnel.clone(),
            members: self.members.clone(),
            counters: self.counters.clone(),
            stop: stop.clone(),
            waker: waker.clone(),
            options: self.options.clone(),
        };
        let cpus = self.placement(io.queues.len());
        let mut threads = Vec::new();
        let started = self.start_workers(&io, &shared, &cpus, &mut threads);
        let timer = started.and_then(|()| {
            let (udp, shared) = (io.queues[0].udp.try_clone()?, shared.clone());
            std::thread::Builder::new()
                .name("pn-tun-timer".into())
                .spawn(move || timer_loop(udp, &shared))
        });
        let timer = match timer {
            Ok(t) => t,
            Err(e) => {
                // Nothing half-started stays behind.
                Running {
                    io,
                    stop,
                    waker,
                    threads,
                    listen,
                }
                .stop();
                return Err(e);
            }
        };
        threads.push(timer);
        let workers = io.queues.len();
        self.counters
            .workers
            .store(workers as u64, Ordering::Relaxed);
        log::info!(
            "tunnel I/O: {workers} worker(s){}; {}",
            match cpus.is_empty() {
                true => String::new(),
                false => format!(" on CPUs {cpus:?}"),
            },
            self.options.describe()
        );
        *running = Some(Running {
            io,
            stop,
            waker,
            threads,
            listen,
        });
        Ok(())
    }

    /// The CPU of each worker when they are pinned: its sending thread's,
    /// its receiving thread's with `pin_rx`, and its socket gets what that
    /// CPU received either way (none: one worker, or pinning off, or more
    /// workers than CPUs allowed).
    fn placement(&self, workers: usize) -> Vec<usize> {
        let cpus = allowed_cpus();
        if !self.options.pin || workers < 2 || workers > cpus.len() {
            return Vec::new();
        }
        cpus.into_iter().take(workers).collect()
    }

    /// Sets each queue's switches and starts its two threads: TUN → UDP
    /// (packets from local containers to remote members) and UDP → TUN.
    fn start_workers(
        &self,
        io: &Io,
        shared: &Shared,
        cpus: &[usize],
        threads: &mut Vec<JoinHandle<()>>,
    ) -> std::io::Result<()> {
        set_tun_offload(&io.queues[0].tun, self.options.tso)?;
        for (i, q) in io.queues.iter().enumerate() {
            let fd = q.udp.as_raw_fd();
            set_blocking(fd);
            set_blocking(q.tun.as_raw_fd());
            set_int(fd, libc::SOL_UDP, libc::UDP_GRO, self.options.gro as i32);
            set_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
            let cpu = cpus.get(i).copied();
            if let Some(cpu) = cpu {
                // What this CPU received goes to this worker's socket.
                set_int(fd, libc::SOL_SOCKET, libc::SO_INCOMING_CPU, cpu as i32);
            }
            // The receiving thread stays on its CPU only if asked (`pin_rx`).
            let data_loops: [(&str, DataLoop, Option<usize>); 2] = [
                ("pn-tun-tx", tx::tx_loop, cpu),
                (
                    "pn-tun-rx",
                    rx::rx_loop,
                    cpu.filter(|_| self.options.pin_rx),
                ),
            ];
            for (name, data_loop, cpu) in data_loops {
                let (tun, udp, shared) = (q.tun.try_clone()?, q.udp.try_clone()?, shared.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("{name}{i}"))
                        .spawn(move || {
                            accept_stop_signal();
                            if let Some(cpu) = cpu {
                                pin_to(cpu);
                            }
                            data_loop(tun, udp, &shared)
                        })?,
                );
            }
        }
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
        read(&self.tunnel).export(std::time::Instant::now(), margin)
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

    fn lock(&self) -> RwLockWriteGuard<'_, Tunnel> {
        write(&self.tunnel)
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
        read(&self.tunnel).peer_state(id, std::time::Instant::now())
    }

    pub fn handshake_stats(&self) -> Stats {
        read(&self.tunnel).stats.clone()
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
            write(&shared.tunnel).tick(Clock::system(), &mut out);
        }
        for (to, d) in out.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}
