//! The TCP server loop (RFC 7766). Each connection holds a descriptor, so
//! connections are what a hostile client would pile up: they are refused at
//! accept past the client's share or the total, closed when silent, when
//! old, and after a number of queries; a failing accept (descriptors
//! exhausted) pauses the loop instead of spinning on the error.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::{
    limits::{Backoff, Refusal, Slots},
    pipeline::{Answer, Server, Transport},
    stats::bump,
};

pub(super) async fn run(listener: TcpListener, srv: Arc<Server>) {
    let mut backoff = Backoff::new(srv.limits.accept_backoff);
    let connections = Slots::new(srv.limits.tcp_per_client, srv.limits.tcp_total);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(got) => {
                backoff.succeeded();
                got
            }
            Err(e) => {
                bump(&srv.stats.limited.accept_error);
                if backoff.failures() == 0 {
                    log::warn!(
                        "DNS over TCP: accepting failed ({e}); pausing accepts while it lasts"
                    );
                }
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        // Dropping the stream closes it: strangers and clients past their
        // share are turned away with nothing read.
        let Ok(to) = stream.local_addr() else {
            continue;
        };
        let Some(client) = srv.client(from.ip(), to.ip()) else {
            continue;
        };
        let slot = match connections.try_take(client) {
            Ok(s) => s,
            Err(Refusal::Client) => {
                bump(&srv.stats.limited.tcp_client);
                continue;
            }
            Err(Refusal::Global) => {
                bump(&srv.stats.limited.tcp_global);
                continue;
            }
        };
        let srv = srv.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = Open::new(&srv.stats.tcp_open);
            let end = timeout(srv.limits.tcp_lifetime, connection(stream, client, &srv))
                .await
                .unwrap_or(End::Lifetime);
            let l = &srv.stats.limited;
            match end {
                End::Idle => bump(&l.tcp_idle),
                End::Lifetime => bump(&l.tcp_deadline),
                End::Queries => bump(&l.tcp_queries),
                End::Closed => {}
            }
        });
    }
}

/// Counts a connection open for as long as it lives.
struct Open<'a>(&'a AtomicU64);

impl<'a> Open<'a> {
    fn new(c: &'a AtomicU64) -> Open<'a> {
        c.fetch_add(1, Ordering::Relaxed);
        Open(c)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ended.
enum End {
    /// The client closed it, sent what gets no answer, or was turned away
    /// (detached, over its query rate).
    Closed,
    Idle,
    Lifetime,
    Queries,
}

async fn connection(mut s: TcpStream, client: Ipv4Addr, srv: &Server) -> End {
    let idle = srv.limits.tcp_idle;
    for _ in 0..srv.limits.tcp_queries {
        let len = match timeout(idle, s.read_u16()).await {
            Err(_) => return End::Idle,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(len)) => len,
        };
        let mut msg = vec![0u8; usize::from(len)];
        match timeout(idle, s.read_exact(&mut msg)).await {
            Err(_) => return End::Idle,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
        let reply = match srv.answer(client, &msg, Transport::Tcp) {
            Answer::Silence => None,
            Answer::Now(r) => Some(r),
            Answer::Later(pending) => pending.resolve(srv).await,
        };
        let Some(reply) = reply else {
            return End::Closed;
        };
        if let Some(end) = send(&mut s, &reply, idle).await {
            return end;
        }
    }
    End::Queries
}

/// Writes one framed answer; an end when the connection must close.
async fn send(s: &mut TcpStream, reply: &[u8], idle: Duration) -> Option<End> {
    let Ok(len) = u16::try_from(reply.len()) else {
        return Some(End::Closed);
    };
    // One write, so length and message leave in one segment.
    let mut framed = Vec::with_capacity(reply.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(reply);
    match timeout(idle, s.write_all(&framed)).await {
        // A client that does not read its answers is a silent one.
        Err(_) => Some(End::Idle),
        Ok(Err(_)) => Some(End::Closed),
        Ok(Ok(())) => None,
    }
}
