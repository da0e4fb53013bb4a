//! The tunnel's I/O around the sans-I/O [`Tunnel`]: a TUN device the host
//! routes remote members to, a UDP socket on the underlay, and three threads
//! (TUN → UDP, UDP → TUN, timers). Plain OS threads: the data path must not
//! wait behind the agent's control-plane tasks.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use pn_common::Reason;

use super::{
    Clock, Decap, Encap, Members, PeerId, PeerState, Tunnel, check_incoming, route_outgoing, wire,
};

/// What the data path did, for metrics: packets and bytes each way, and
/// drops per reason.
#[derive(Debug)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; Reason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Counters {
    fn drop(&self, r: Reason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens a TUN device named `name` (no packet info header).
fn open_tun(name: &str) -> std::io::Result<File> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() > 15 {
        return Err(std::io::Error::other("interface name too long"));
    }
    // SAFETY: plain syscalls; the descriptor is owned by the File below.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let file = File::from_raw_fd(fd);
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }
}

/// Waits until `fd` is readable or `ms` pass (so threads notice a stop).
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

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
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: setsockopt with a valid int option on our socket.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&dont as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            );
        }
        let listen = udp.local_addr()?;
        let tunnel = Arc::new(Mutex::new(tunnel));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            // TUN → UDP: packets from local containers to remote members.
            let (tun, udp) = (tun.try_clone()?, udp.try_clone()?);
            let (tunnel, members, counters, stop) = (
                tunnel.clone(),
                members.clone(),
                counters.clone(),
                stop.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("pn-tun-tx".into())
                    .spawn(move || {
                        tx_loop(tun, udp, &tunnel, members.as_ref(), &counters, &stop)
                    })?,
            );
        }
        {
            let (tun, udp) = (tun.try_clone()?, udp.try_clone()?);
            let (tunnel, members, counters, stop) = (
                tunnel.clone(),
                members.clone(),
                counters.clone(),
                stop.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("pn-tun-rx".into())
                    .spawn(move || {
                        rx_loop(tun, udp, &tunnel, members.as_ref(), &counters, &stop)
                    })?,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Tunnel> {
        self.tunnel.lock().unwrap_or_else(|p| p.into_inner())
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

    pub fn handshake_stats(&self) -> super::Stats {
        self.lock().stats.clone()
    }
}

const BUF: usize = 65536 + wire::OVERHEAD;

fn tx_loop(
    mut tun: File,
    udp: UdpSocket,
    tunnel: &Mutex<Tunnel>,
    members: &dyn Members,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut pkt = vec![0u8; 65536];
    let mut out = vec![0u8; BUF];
    let fd = tun.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        if !readable(fd, 200) {
            continue;
        }
        let n = match tun.read(&mut pkt) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let packet = &pkt[..n];
        let (peer, tag) = match route_outgoing(packet, members) {
            Ok(r) => r,
            Err(r) => {
                counters.drop(r);
                continue;
            }
        };
        let action = {
            let mut t = tunnel.lock().unwrap_or_else(|p| p.into_inner());
            t.encapsulate(Clock::system(), peer, tag, packet, &mut out)
        };
        match action {
            Encap::Send { to, len } => {
                if udp.send_to(&out[..len], to).is_ok() {
                    counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                    counters.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Encap::Handshake { to, len } => {
                let _ = udp.send_to(&out[..len], to);
            }
            Encap::Queued => {}
            Encap::Drop(r) => counters.drop(r),
        }
    }
}

fn rx_loop(
    mut tun: File,
    udp: UdpSocket,
    tunnel: &Mutex<Tunnel>,
    members: &dyn Members,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; BUF];
    let mut out = vec![0u8; 256];
    let fd = udp.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        if !readable(fd, 200) {
            continue;
        }
        let (n, from) = match udp.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let action = {
            let mut t = tunnel.lock().unwrap_or_else(|p| p.into_inner());
            t.decapsulate(Clock::system(), from, &mut buf[..n], &mut out)
        };
        match action {
            Decap::Packet {
                peer,
                tag,
                start,
                end,
            } => {
                if start == end {
                    continue;
                }
                let packet = &buf[start..end];
                match check_incoming(packet, tag, peer, members) {
                    Ok(()) => {
                        if tun.write(packet).is_ok() {
                            counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                            counters
                                .rx_bytes
                                .fetch_add(packet.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Err(r) => counters.drop(r),
                }
            }
            Decap::Reply { to, len } => {
                let _ = udp.send_to(&out[..len], to);
            }
            Decap::Established { flush, .. } => {
                for (to, d) in flush {
                    if udp.send_to(&d, to).is_ok() {
                        counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                        counters
                            .tx_bytes
                            .fetch_add((d.len() - wire::DATA_MIN_LEN) as u64, Ordering::Relaxed);
                    }
                }
            }
            Decap::Drop(r) => counters.drop(r),
        }
    }
}

fn timer_loop(udp: UdpSocket, tunnel: &Mutex<Tunnel>, stop: &AtomicBool) {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        {
            let mut t = tunnel.lock().unwrap_or_else(|p| p.into_inner());
            t.tick(Clock::system(), &mut out);
        }
        for (to, d) in out.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}
