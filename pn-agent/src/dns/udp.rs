//! The UDP server loop: one datagram, one answer, sent from the loop itself;
//! forwards run as tasks, each holding a slot of its client's share.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::UdpSocket;

use super::{
    limits::Backoff,
    pipeline::{Answer, Server, Transport},
    stats::bump,
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
        match srv.answer(*from4.ip(), &buf[..n], Transport::Udp) {
            Answer::Silence => {}
            Answer::Now(r) => {
                let _ = sock.send_to(&r, from).await;
            }
            Answer::Later(pending) => {
                let (sock, srv) = (sock.clone(), srv.clone());
                tokio::spawn(async move {
                    if let Some(r) = pending.resolve(&srv).await {
                        let _ = sock.send_to(&r, from).await;
                    }
                    // The client's slot until its answer is sent.
                    drop(pending);
                });
            }
        }
    }
}
