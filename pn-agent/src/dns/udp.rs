//! The UDP server loop: queries taken by the batch (every one waiting, in
//! one system call), each answered from the cache or the zone in the loop
//! itself, the answers sent together in one more; forwards run as tasks,
//! each holding a slot of its client's share.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::{io::Interest, net::UdpSocket};

use super::{
    batch::{Inbox, Outbox},
    limits::Backoff,
    pipeline::{Answer, Server, Transport},
    stats::bump,
};

pub(super) async fn run(sock: Arc<UdpSocket>, srv: Arc<Server>) {
    let mut inbox = Inbox::default();
    let mut outbox = Outbox::default();
    let mut backoff = Backoff::new(srv.limits.accept_backoff);
    loop {
        match sock
            .async_io(Interest::READABLE, || inbox.receive(&*sock))
            .await
        {
            Ok(_) => backoff.succeeded(),
            Err(e) => {
                bump(&srv.stats.limited.accept_error);
                if backoff.failures() == 0 {
                    log::warn!("DNS over UDP: receiving failed ({e}); pausing while it lasts");
                }
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        }
        for (got, msg) in inbox.iter() {
            let Some(from) = got.from else {
                continue;
            };
            if got.cut {
                // Longer than any query we answer: not even its header is
                // worth reading as the client meant it.
                bump(&srv.stats.malformed);
                continue;
            }
            answer(&sock, &srv, from, msg, &mut outbox);
        }
        if !outbox.is_empty() {
            let _ = sock
                .async_io(Interest::WRITABLE, || outbox.send(&*sock))
                .await;
        }
    }
}

/// What one query gets: an answer now (queued in `outbox`), a forward in a
/// task of its own, or nothing.
fn answer(
    sock: &Arc<UdpSocket>,
    srv: &Arc<Server>,
    from: SocketAddrV4,
    msg: &[u8],
    outbox: &mut Outbox,
) {
    match srv.answer(*from.ip(), msg, Transport::Udp) {
        Answer::Silence => {}
        Answer::Now(r) => outbox.push(r, from),
        Answer::Later(pending) => {
            let (sock, srv) = (sock.clone(), srv.clone());
            tokio::spawn(async move {
                if let Some(r) = pending.resolve(&srv).await {
                    let _ = sock.send_to(&r, SocketAddr::V4(from)).await;
                }
                // The client's slot until its answer is sent.
                drop(pending);
            });
        }
    }
}
