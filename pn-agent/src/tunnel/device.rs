//! The tunnel's I/O around the sans-I/O [`Tunnel`]: a TUN device the host
//! routes remote members to, a UDP socket on the underlay, and three threads
//! (TUN → UDP, UDP → TUN, timers). Plain OS threads: the data path must not
//! wait behind the agent's control-plane tasks.

use std::{
    fs::File,
    io::Read,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use pn_common::Reason;

use super::{
    Clock, Decap, Encap, Members, PeerId, PeerState, Sealer, Tunnel, check_incoming, offload,
    route_outgoing, wire,
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
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel may hand us TCP super-packets with partial checksums,
        // and take them from us: the segmentation happens once, in bulk.
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
        if libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }
}

/// Socket buffer each way of the tunnel's UDP socket (as wireguard-go's).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Sets an int socket option; whether the kernel took it.
fn set_int(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt with a valid int option on a descriptor we own.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        ) == 0
    }
}

/// A panic in one thread must not take the tunnel down with it: the state
/// is consistent between calls.
fn lock(tunnel: &Mutex<Tunnel>) -> MutexGuard<'_, Tunnel> {
    tunnel.lock().unwrap_or_else(|p| p.into_inner())
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
        let data_loops: [(&str, DataLoop); 2] = [("pn-tun-tx", tx_loop), ("pn-tun-rx", rx_loop)];
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

    pub fn handshake_stats(&self) -> super::Stats {
        self.lock().stats.clone()
    }
}

const BUF: usize = 65536 + wire::OVERHEAD;
/// Datagrams sent with one `sendmsg` (UDP segmentation offload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

fn sockaddr(to: SocketAddr) -> Option<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = to else {
        return None;
    };
    Some(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    })
}

/// A message header over one address and one buffer (no control data yet).
fn msghdr(addr: &mut libc::sockaddr_in, iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

/// Sends `buf` as datagrams of `segment` bytes (the last may be shorter)
/// with one syscall.
fn send_segments(fd: i32, buf: &[u8], segment: usize, to: SocketAddr) -> std::io::Result<()> {
    let Some(mut addr) = sockaddr(to) else {
        return Err(std::io::Error::other("IPv6 underlay not supported"));
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE has no preconditions.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; every pointer below outlives the call.
    unsafe {
        let mut msg = msghdr(&mut addr, &mut iov);
        if buf.len() > segment {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one (possibly coalesced) read: length, source, and the size of
/// each datagram in it when the kernel coalesced several (UDP GRO).
fn recv_segments(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<usize>)> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; every pointer outlives the call; cmsg
    // walking stays within `control` as the macros check.
    unsafe {
        let mut msg = msghdr(&mut addr, &mut iov);
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut gso = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                gso = Some(
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) as usize,
                );
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ));
        Ok((n as usize, from, gso))
    }
}

/// Datagrams waiting to leave in one `sendmsg`: same destination, same
/// size (but the last). Sealed just before they leave, outside the lock.
struct Batch {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter: nothing may follow it.
    closed: bool,
    /// Datagrams not sealed yet (offset, length).
    unsealed: Vec<(usize, usize, Sealer)>,
    /// Inner bytes carried, for the counters.
    inner: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: Vec::with_capacity(GSO_MAX_BYTES + BUF),
            to: None,
            segment: 0,
            count: 0,
            closed: false,
            unsealed: Vec::with_capacity(GSO_MAX_SEGMENTS),
            inner: 0,
        }
    }

    /// Whether a datagram of `len` bytes to `to` may join the batch.
    fn fits(&self, to: SocketAddr, len: usize) -> bool {
        self.count == 0
            || (self.to == Some(to)
                && !self.closed
                && len <= self.segment
                && self.count < GSO_MAX_SEGMENTS
                && self.buf.len() + len <= GSO_MAX_BYTES)
    }

    /// Takes the datagram written at `buf[start..start + len]`.
    fn push(
        &mut self,
        start: usize,
        len: usize,
        to: SocketAddr,
        sealer: Option<Sealer>,
        inner: usize,
    ) {
        if let Some(sealer) = sealer {
            self.unsealed.push((start, len, sealer));
        }
        if self.count == 0 {
            self.to = Some(to);
            self.segment = len;
        } else if len < self.segment {
            self.closed = true;
        }
        self.count += 1;
        self.inner += inner as u64;
    }

    fn seal_and_send(&mut self, fd: i32, counters: &Counters) {
        for (at, len, sealer) in self.unsealed.drain(..) {
            sealer.seal(&mut self.buf[at..at + len]);
        }
        if let Some(to) = self.to
            && self.count > 0
            && send_segments(fd, &self.buf, self.segment, to).is_ok()
        {
            counters.udp_sends.fetch_add(1, Ordering::Relaxed);
            counters
                .tx_packets
                .fetch_add(self.count as u64, Ordering::Relaxed);
            counters.tx_bytes.fetch_add(self.inner, Ordering::Relaxed);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
        self.to = None;
        self.inner = 0;
    }
}

fn tx_loop(mut tun: File, udp: UdpSocket, shared: &Shared) {
    let (tunnel, members, counters, stop) = (
        &*shared.tunnel,
        shared.members.as_ref(),
        &*shared.counters,
        &*shared.stop,
    );
    let mut pkt = vec![0u8; 65536 + offload::VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(2048);
    let mut handshakes: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut batch = Batch::new();
    let tun_fd = tun.as_raw_fd();
    let udp_fd = udp.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        if !readable(tun_fd, 200) {
            continue;
        }
        let n = match tun.read(&mut pkt) {
            Ok(n) if n > offload::VNET_HDR_LEN => n,
            _ => continue,
        };
        counters.tun_reads.fetch_add(1, Ordering::Relaxed);
        let Some(hdr) = offload::VnetHdr::parse(&pkt) else {
            continue;
        };
        let (_, packet) = pkt[..n].split_at_mut(offload::VNET_HDR_LEN);
        let clock = Clock::system();
        // Every segment carries the super-packet's addresses: route once.
        let route = route_outgoing(packet, members);
        let result = offload::segment(&hdr, packet, &mut scratch, |seg, partial| {
            let flags = if partial { wire::FLAG_CSUM_PARTIAL } else { 0 };
            let (peer, tag) = match route {
                Ok(r) => r,
                Err(r) => {
                    counters.drop(r);
                    return;
                }
            };
            let need = seg.len() + wire::DATA_MIN_LEN;
            let start = batch.buf.len();
            batch.buf.resize(start + need.max(wire::INIT_LEN), 0);
            // Locked per datagram and only to write it: the sealing happens
            // at the send, outside the lock, so the other direction (the
            // acknowledgements) never waits behind it.
            let (encap, sealer) = lock(tunnel).encapsulate_deferred(
                clock,
                peer,
                tag,
                flags,
                seg,
                &mut batch.buf[start..],
            );
            match encap {
                Encap::Send { to, len } => {
                    batch.buf.truncate(start + len);
                    if batch.fits(to, len) {
                        batch.push(start, len, to, sealer, seg.len());
                    } else {
                        // Move it out, send what was there, start anew.
                        let unsealed = batch.buf.split_off(start);
                        batch.seal_and_send(udp_fd, counters);
                        batch.buf.extend_from_slice(&unsealed);
                        batch.push(0, len, to, sealer, seg.len());
                    }
                }
                Encap::Handshake { to, len } => {
                    handshakes.push((to, batch.buf[start..start + len].to_vec()));
                    batch.buf.truncate(start);
                }
                Encap::Queued => batch.buf.truncate(start),
                Encap::Drop(r) => {
                    batch.buf.truncate(start);
                    counters.drop(r);
                }
            }
        });
        if result.is_err() {
            counters.drop(Reason::Malformed);
        }
        batch.seal_and_send(udp_fd, counters);
        for (to, d) in handshakes.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}

/// Writes one packet to the TUN device behind its vnet header.
fn write_plain(tun_fd: i32, packet: &[u8], partial: bool) -> bool {
    let mut hdr = [0u8; offload::VNET_HDR_LEN];
    offload::receive_header(packet, partial).write(&mut hdr);
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        },
    ];
    // SAFETY: two valid iovecs over live buffers.
    unsafe { libc::writev(tun_fd, iov.as_ptr(), 2) >= 0 }
}

/// Sending peer, tag, inner source and destination.
type IncomingKey = (PeerId, u32, [u8; 8]);

fn rx_loop(tun: File, udp: UdpSocket, shared: &Shared) {
    let (tunnel, members, counters, stop) = (
        &*shared.tunnel,
        shared.members.as_ref(),
        &*shared.counters,
        &*shared.stop,
    );
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 256];
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut packets: Vec<(PeerId, u32, bool, usize, usize)> = Vec::new();
    let mut coalescer = offload::Coalescer::default();
    let udp_fd = udp.as_raw_fd();
    let tun_fd = tun.as_raw_fd();
    let deliver = |pkt: &[u8], partial: bool| {
        counters.tun_writes.fetch_add(1, Ordering::Relaxed);
        if write_plain(tun_fd, pkt, partial) {
            counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            counters
                .rx_bytes
                .fetch_add(pkt.len() as u64, Ordering::Relaxed);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if !readable(udp_fd, 200) {
            continue;
        }
        let (n, from, gso) = match recv_segments(udp_fd, &mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        counters.udp_reads.fetch_add(1, Ordering::Relaxed);
        let seg = gso.filter(|g| *g > 0).unwrap_or(n);
        {
            let clock = Clock::system();
            let mut at = 0;
            while at < n {
                let end = (at + seg).min(n);
                // The lock is held to look up and to record, not to open:
                // the other direction never waits behind the cipher.
                let prepared =
                    lock(tunnel).decapsulate_deferred(clock, from, &buf[at..end], &mut out);
                let decap = match prepared {
                    Ok(opener) if opener.open(&mut buf[at..end]) => {
                        lock(tunnel).opened(&opener, end - at)
                    }
                    Ok(_) => Decap::Drop(Reason::DecryptFailed),
                    Err(done) => done,
                };
                match decap {
                    Decap::Packet {
                        flags,
                        peer,
                        tag,
                        start,
                        end: e,
                    } if start < e => {
                        let partial = flags & wire::FLAG_CSUM_PARTIAL != 0;
                        packets.push((peer, tag, partial, at + start, at + e));
                    }
                    Decap::Packet { .. } => {}
                    Decap::Reply { to, len } => replies.push((to, out[..len].to_vec())),
                    Decap::Established { flush, .. } => replies.extend(flush),
                    Decap::Drop(r) => counters.drop(r),
                }
                at = end;
            }
        }
        for (to, d) in replies.drain(..) {
            let _ = udp.send_to(&d, to);
        }
        // A batch is mostly one flow's segments: check each pair of
        // addresses (with its tag and peer) once per batch.
        let mut checked: Option<(IncomingKey, Result<(), Reason>)> = None;
        for &(peer, tag, partial, start, end) in &packets {
            let packet = &buf[start..end];
            let addrs: [u8; 8] = packet
                .get(12..20)
                .and_then(|a| a.try_into().ok())
                .unwrap_or_default();
            let verdict = match checked {
                Some((k, v)) if k == (peer, tag, addrs) => v,
                _ => {
                    let v = check_incoming(packet, tag, peer, members);
                    checked = Some(((peer, tag, addrs), v));
                    v
                }
            };
            if let Err(r) = verdict {
                counters.drop(r);
                continue;
            }
            if coalescer.push(packet, partial) {
                continue;
            }
            if !coalescer.is_empty() {
                write_super(tun_fd, &mut coalescer, counters);
                if coalescer.push(packet, partial) {
                    continue;
                }
            }
            deliver(packet, partial);
        }
        if !coalescer.is_empty() {
            write_super(tun_fd, &mut coalescer, counters);
        }
        packets.clear();
    }
}

fn write_super(tun_fd: i32, c: &mut offload::Coalescer, counters: &Counters) {
    let out = c.flush();
    let len = out.len();
    counters.tun_writes.fetch_add(1, Ordering::Relaxed);
    // SAFETY: writing a live buffer to our descriptor.
    if unsafe { libc::write(tun_fd, out.as_ptr().cast(), len) } >= 0 {
        counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        counters
            .rx_bytes
            .fetch_add((len - offload::VNET_HDR_LEN) as u64, Ordering::Relaxed);
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
