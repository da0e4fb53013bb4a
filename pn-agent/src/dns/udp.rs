//! The UDP server loop: one datagram, one answer, sent from the loop itself;
//! forwards run as tasks, each holding a slot of its client's share.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::net::UdpSocket;

use super::{
    Server, cache,
    forward::{Via, from_cache, resolve, servfail},
    limits::Backoff,
    stats::bump,
    zone::Action,
};

pub(super) async fn run(sock: Arc<UdpSocket>, srv: Arc<Server>) {
    let mut buf = vec![0u8; 65535];
    let mut backoff = Backoff::new(srv.limits.accept_backoff);
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(got) => {
                backoff.succeeded();
                got
            }
            Err(e) => {
                bump(&srv.stats.limited.accept_error);
                if backoff.failures() == 0 {
                    log::warn!("DNS over UDP: receiving failed ({e}); pausing while it lasts");
                }
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        let SocketAddr::V4(from4) = from else {
            continue;
        };
        let client = *from4.ip();
        let Some(own) = srv.admit(client) else {
            continue;
        };
        // A name of the world asked again: answered straight from the cache.
        if let Some(q) = cache::question(&buf[..n])
            && let Some(r) = from_cache(&srv, &q, &buf[..n], Via::Udp(q.udp_limit))
        {
            let _ = sock.send_to(&r, from).await;
            continue;
        }
        match srv.responder.answer(own, &buf[..n], true) {
            Action::Reply(r) => {
                let _ = sock.send_to(&r, from).await;
            }
            Action::Drop => {}
            Action::Forward { udp_limit } => {
                let query = buf[..n].to_vec();
                let Some(slot) = srv.forward_slot(client) else {
                    if let Some(r) = servfail(&query) {
                        let _ = sock.send_to(&r, from).await;
                    }
                    continue;
                };
                tokio::spawn(forward(
                    sock.clone(),
                    srv.clone(),
                    slot,
                    query,
                    from4,
                    udp_limit,
                ));
            }
        }
    }
}

async fn forward(
    sock: Arc<UdpSocket>,
    srv: Arc<Server>,
    slot: super::Slot,
    query: Vec<u8>,
    to: SocketAddrV4,
    udp_limit: usize,
) {
    // The client's slot until its answer is sent.
    let _slot = slot;
    if let Some(r) = resolve(&srv, &query, Via::Udp(udp_limit)).await {
        let _ = sock.send_to(&r, to).await;
    }
}
