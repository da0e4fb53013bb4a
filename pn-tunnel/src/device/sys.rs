//! The system calls of the device's set-up: the TUN device and its
//! queues, the UDP sockets and their options, the CPUs the workers run on,
//! the waits of the loops and the signal that ends them.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
};

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a queue of the TUN device `name` (no packet info header), creating
/// it if needed, and makes it persistent: it stays (with its routes, and
/// dropping what is routed to it) when no agent holds it. `multi`: a queue
/// of a multiqueue device (each further open adds a queue; the kernel
/// spreads flows over them); a device created without it (by an older
/// agent) refuses it, and the caller falls back to one queue.
pub(super) fn open_tun(name: &str, multi: bool) -> std::io::Result<File> {
    if name.len() > 15 {
        return Err(std::io::Error::other("interface name too long"));
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi {
        flags |= libc::IFF_MULTI_QUEUE;
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
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }
}

/// The name of the device a TUN queue belongs to, and whether it is a
/// multiqueue one (a handed-over queue says which device to add to).
pub(super) fn tun_of(tun: &File) -> std::io::Result<(String, bool)> {
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills a live ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((name, req.flags as libc::c_int & libc::IFF_MULTI_QUEUE != 0))
}

/// The TUN device's offloads (device-wide, so any queue sets them): with
/// them the kernel hands us TCP super-packets (IPv4 and IPv6) with partial
/// checksums, and takes them from us: the segmentation happens once, in
/// bulk. Without TSO6, IPv6 TCP crossed one segment per read.
pub(super) fn set_tun_offload(tun: &File, on: bool) -> std::io::Result<()> {
    let offloads = if on {
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    } else {
        0
    };
    // SAFETY: an ioctl with an integer argument on our descriptor.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds a UDP socket of the tunnel on `listen`, sharing the address with
/// the other workers' (SO_REUSEPORT: each worker has its own receive queue).
/// An IPv6 one is IPv6 only: the host's peers all advertise IPv6 then, and
/// an IPv4 sender must not reach it as an IPv4-mapped address.
pub(super) fn bind_udp(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.bind(&listen.into())?;
    Ok(s.into())
}

/// The CPUs this process may run on (its affinity: a cgroup's cpuset or
/// `taskset` narrow it), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity of this thread into a live set.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Keeps the calling thread on `cpu` (a worker stays where its socket's
/// datagrams are received).
pub(super) fn pin_to(cpu: usize) -> bool {
    // SAFETY: an all-zero cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET within the set's size (checked by the caller's list).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity of this thread from a live set.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Socket buffer each way of the tunnel's UDP socket (as wireguard-go's).
pub(super) const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Sets an int socket option; whether the kernel took it.
pub(super) fn set_int(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
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

/// Wakes the device's threads at once when it stops (an eventfd, which
/// stays readable once written: every thread sees it).
pub(super) struct Waker(std::os::fd::OwnedFd);

impl Waker {
    pub(super) fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a valid descriptor nobody else owns.
        Ok(Waker(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn wake(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until woken or `d` passes.
    pub(super) fn wait(&self, d: std::time::Duration) {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, d.as_millis() as i32) };
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// The signal that ends a data thread's blocking read when the device
/// stops (a real-time one: nothing else in the agent uses it, and its
/// default action is never taken, the handler being set first).
fn stop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

extern "C" fn on_stop_signal(_: libc::c_int) {}

/// Sets (for the whole process, once) the handler of [`stop_signal`]: a
/// handler that does nothing, without `SA_RESTART`, so a read it
/// interrupts returns `EINTR` and the loop sees the stop flag.
pub(super) fn install_stop_signal() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    let done = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags);
        // the handler is an async-signal-safe function that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(stop_signal(), &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    done.map_err(std::io::Error::from_raw_os_error)
}

/// Makes `fd` blocking (the data threads sleep in their reads; a
/// descriptor handed over keeps the flags its predecessor left).
pub(super) fn set_blocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK != 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Lets [`stop_signal`] reach the calling thread (a thread inherits its
/// creator's blocked signals; a blocked one would never end the read).
pub(super) fn accept_stop_signal() {
    // SAFETY: an all-zero sigset_t is valid; sigemptyset and sigaddset fill
    // it; pthread_sigmask changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, stop_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Interrupts thread `t` (a blocking read in it returns `EINTR`); a thread
/// that ended but was not joined yet takes it harmlessly.
pub(super) fn interrupt(t: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread is not joined (the handle is borrowed), so its
    // pthread_t is valid; the signal's handler is installed.
    unsafe { libc::pthread_kill(t.as_pthread_t() as libc::pthread_t, stop_signal()) };
}

/// Waits until `fd` is readable, the waker is woken, or `ms` pass.
pub(super) fn readable(fd: i32, waker: &Waker, ms: i32) -> bool {
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds.
    let ready = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } > 0;
    // Any event but the waker's (an error too: the read that follows
    // reports and clears it, rather than a poll that returns at once again).
    ready && p[0].revents != 0 && p[1].revents == 0
}
