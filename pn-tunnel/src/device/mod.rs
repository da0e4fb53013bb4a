//! The tunnel's I/O around the sans-I/O [`Tunnel`]: a TUN device the host
//! routes remote members to, a UDP socket on the underlay, and three threads
//! (TUN → UDP, UDP → TUN, timers). Plain OS threads: the data path must not
//! wait behind the agent's control-plane tasks.

mod rx;
mod sys;
mod tx;

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use pn_common::Reason;

use self::sys::{SOCKET_BUFFER, open_tun, set_int};
use crate::{Clock, Members, PeerId, PeerState, Stats, Tunnel};

/// What the data path did, for metrics: packets and bytes each way, and
/// drops per reason.
#[derive(Debug)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; Reason::COUNT],
    /// Syscalls per direction: how well batching works (packets per call).
    pub tun_reads: AtomicU64,
    pub udp_sends: AtomicU64,
    pub udp_reads: AtomicU64,
    pub tun_writes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            tun_reads: AtomicU64::new(0),
            udp_sends: AtomicU64::new(0),
            udp_reads: AtomicU64::new(0),
            tun_writes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    fn drop(&self, r: Reason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A panic in one thread must not take the tunnel down with it: the state
/// is consistent between calls.
fn lock(tunnel: &Mutex<Tunnel>) -> MutexGuard<'_, Tunnel> {
    tunnel.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the data threads share.
#[derive(Clone)]
struct Shared {
    tunnel: Arc<Mutex<Tunnel>>,
    members: Arc<dyn Members + Send + Sync>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

type DataLoop = fn(File, UdpSocket, &Shared);

pub struct Device {
    tunnel: Arc<Mutex<Tunnel>>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub listen: SocketAddr,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Device {
    /// Creates the TUN device `tun_name`, binds `listen`, starts the threads.
    /// The caller sets the device up and routes to it.
    pub fn start(
        tun_name: &str,
        listen: SocketAddr,
        tunnel: Tunnel,
        members: Arc<dyn Members + Send + Sync>,
    ) -> std::io::Result<Device> {
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
        let listen = udp.local_addr()?;
        let tunnel = Arc::new(Mutex::new(tunnel));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let shared = Shared {
            tunnel: tunnel.clone(),
            members,
            counters: counters.clone(),
            stop: stop.clone(),
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
            let (tunnel, stop) = (tunnel.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("pn-tun-timer".into())
                    .spawn(move || timer_loop(udp, &tunnel, &stop))?,
            );
        }
        drop(tun);
        Ok(Device {
            tunnel,
            counters,
            stop,
            threads,
            listen,
        })
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

fn timer_loop(udp: UdpSocket, tunnel: &Mutex<Tunnel>, stop: &AtomicBool) {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        {
            lock(tunnel).tick(Clock::system(), &mut out);
        }
        for (to, d) in out.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}
