//! DNS for the zone `private-network.internal.`, served by every agent on its
//! gateway address, answering from the membership the agent follows.
//!
//! A client is identified by its source address, and only attached
//! containers are served: a query from any other address (the underlay's
//! neighbours, the host itself) gets nothing at all, not even REFUSED. A
//! member gets answers only for the network its container belongs to.
//! Names of another network — existing or not, well-formed or not — get
//! REFUSED, so membership never leaks; unknown names of its own network get
//! NXDOMAIN; known names asked for another type than A get NOERROR with no
//! answer. Everything outside the zone is relayed to the host's upstream
//! resolvers, so containers keep resolving the world.
//!
//! Containers are untrusted: what each one can take of the server (TCP
//! connections, forwards in flight, queries per second) is bounded per
//! client and in total ([`Limits`]), every bound hit is counted
//! ([`DnsStats`]), and a failing `accept` pauses instead of spinning.
//!
//! Names of the world are answered from a cache of forwarded answers kept
//! for their TTL (negative ones too, RFC 2308), and identical questions in
//! flight share one upstream query.
//!
//! The parts: `pipeline` answers one query whatever the transport (admit,
//! cache, zone, forward), `zone` answers from the membership (no I/O),
//! `forward` relays to upstreams, `cache` keeps their answers (no I/O),
//! `upstream` asks one upstream over UDP through sockets each shared by a
//! few queries, `coalesce` shares questions in flight, `limits` keeps the
//! bounds' books, `udp` and `tcp` are the server loops (framing and their
//! own bounds; `batch` takes and sends UDP datagrams by the batch),
//! `v6` the IPv6 sockets (the gateway `fe80::1` on every container link),
//! `stats` the counters. Dependencies point one way: this module only
//! starts the parts, and none of them uses it.
//!
//! hickory-proto does the wire format. The server loops are ours:
//! hickory-server answers from zones (catalogs and authorities), while every
//! answer here depends on who asks, and the forwarding is a plain relay.

mod batch;
mod cache;
mod coalesce;
mod forward;
mod limits;
mod metrics;
mod pipeline;
mod stats;
mod tcp;
mod udp;
mod upstream;
mod v6;
pub mod zone;

#[cfg(test)]
mod tests;

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

pub use cache::CacheLimits;
pub use forward::{UPSTREAM_TIMEOUT, upstreams_from_resolv_conf};
pub use limits::{Limits, descriptor_limit};
pub use stats::{CacheStats, DnsStats, LimitStats};
pub use zone::{Directory, Member};

use crate::error::{ErrorKind, Kind};
use pipeline::Server;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: SocketAddrV4,
    /// Also over IPv6, on the same port, for queries addressed to this
    /// address (the gateway `fe80::1`; see `v6`). None: IPv4 only.
    pub gateway6: Option<Ipv6Addr>,
    pub ttl: u32,
    /// Resolvers for names outside the zone, tried in order.
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS server on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("marking the DNS server's {proto} socket as the agent's (SO_MARK): {source}")]
    Mark {
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Kind for DnsError {
    fn kind(&self) -> ErrorKind {
        match self {
            DnsError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                ErrorKind::Conflict
            }
            DnsError::Bind { .. } | DnsError::Mark { .. } => ErrorKind::Internal,
        }
    }
}

/// A running server; stops when dropped.
pub struct DnsHandle {
    tasks: Vec<JoinHandle<()>>,
    pub local_udp: SocketAddr,
    pub local_tcp: SocketAddr,
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Marks what a socket sends as the agent's own: a container's program
/// admits DNS answers from the gateway's address only with this mark, so
/// no other process on the host can answer in the agent's name.
fn mark(sock: &impl std::os::fd::AsFd, proto: &'static str) -> Result<(), DnsError> {
    use nix::sys::socket::{setsockopt, sockopt::Mark};
    setsockopt(sock, Mark, &pn_common::edge::MARK_GATEWAY).map_err(|e| DnsError::Mark {
        proto,
        source: e.into(),
    })
}

/// Starts the server with the default [`Limits`], fitted to the process's
/// descriptor limit.
pub async fn serve(
    cfg: DnsConfig,
    dir: Arc<dyn Directory>,
    stats: Arc<DnsStats>,
) -> Result<DnsHandle, DnsError> {
    let limits = Limits::default().fit_descriptors(descriptor_limit().unwrap_or(1024));
    serve_with(cfg, limits, dir, stats).await
}

pub async fn serve_with(
    cfg: DnsConfig,
    limits: Limits,
    dir: Arc<dyn Directory>,
    stats: Arc<DnsStats>,
) -> Result<DnsHandle, DnsError> {
    let bind_err = |addr, proto| {
        move |source| DnsError::Bind {
            addr,
            proto,
            source,
        }
    };
    let listen = SocketAddr::V4(cfg.listen);
    // TCP on the same port as UDP. Asked for port 0, the kernel picks UDP's
    // port, and TCP's may be taken (a connection of another process): then
    // another pick, a few times.
    let mut picks = 0;
    let (udp, local_udp, tcp) = loop {
        let udp = UdpSocket::bind(cfg.listen)
            .await
            .map_err(bind_err(listen, "udp"))?;
        let local_udp = udp.local_addr().map_err(bind_err(listen, "udp"))?;
        let tcp_addr = SocketAddrV4::new(*cfg.listen.ip(), local_udp.port());
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => break (udp, local_udp, tcp),
            Err(e)
                if cfg.listen.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && picks < 16 =>
            {
                picks += 1;
            }
            Err(e) => return Err(bind_err(tcp_addr.into(), "tcp")(e)),
        }
    };
    let local_tcp = tcp.local_addr().map_err(bind_err(local_udp, "tcp"))?;
    mark(&udp, "udp")?;
    // Accepted connections inherit the listener's mark.
    mark(&tcp, "tcp")?;
    let ipv6 = match cfg.gateway6 {
        Some(_) => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, local_udp.port()));
            let udp6 = v6::udp(local_udp.port()).map_err(bind_err(any6, "udp"))?;
            let tcp6 = v6::tcp(local_udp.port()).map_err(bind_err(any6, "tcp"))?;
            mark(&udp6, "udp")?;
            mark(&tcp6, "tcp")?;
            Some((Arc::new(udp6), tcp6))
        }
        None => None,
    };
    log::info!(
        "DNS on {local_udp}: per client at most {} TCP connections ({} in all), {} forwards in flight ({} in all), {} queries/s",
        limits.tcp_per_client,
        limits.tcp_total,
        limits.forwards_per_client,
        limits.forwards_total,
        limits.queries_per_sec
    );
    let server = Arc::new(Server::new(
        limits,
        cfg.ttl,
        cfg.upstreams,
        cfg.gateway6,
        dir,
        stats,
    ));
    // One UDP loop per core (up to 4) on the same socket: answers from the
    // zone and the cache are computed in the loop, so one loop would keep
    // the server to one core.
    let udp = Arc::new(udp);
    let loops = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let mut tasks: Vec<JoinHandle<()>> = (0..loops)
        .map(|_| tokio::spawn(udp::run(udp.clone(), server.clone())))
        .collect();
    if let Some((udp6, tcp6)) = ipv6 {
        tasks.push(tokio::spawn(v6::run_udp(udp6, server.clone())));
        tasks.push(tokio::spawn(tcp::run(tcp6, server.clone())));
    }
    tasks.push(tokio::spawn(tcp::run(tcp, server)));
    Ok(DnsHandle {
        tasks,
        local_udp,
        local_tcp,
    })
}
