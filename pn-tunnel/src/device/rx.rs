//! UDP → TUN: datagrams from peers, opened outside the tunnel's lock,
//! checked against membership, coalesced and written to the TUN device.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::Ordering,
};

use pn_common::Reason;

use super::{
    msg::{Received, recv_segments, write_plain},
    shared::{Counters, Shared, read, write},
    wait::Waiter,
};
use crate::{Clock, Decap, PeerId, check_incoming, offload, wire};

/// Sending peer, tag, inner source and destination.
type IncomingKey = (PeerId, u32, [u8; 8]);

pub(super) fn rx_loop(tun: File, udp: UdpSocket, shared: &Shared) {
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
    let mut waiter = Waiter::new(udp_fd, &shared.waker, shared.options.spin, counters);
    let coalesce = shared.options.coalesce;
    let mut overflow = 0u32;
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
        if !waiter.wait() {
            continue;
        }
        let Ok(Received {
            len: n,
            from,
            segment,
            overflow: dropped,
        }) = recv_segments(udp_fd, &mut buf)
        else {
            continue;
        };
        counters.udp_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = dropped {
            // The socket's count so far: what grew since the last read.
            counters
                .rx_overflow
                .fetch_add(u64::from(d.wrapping_sub(overflow)), Ordering::Relaxed);
            overflow = d;
        }
        let seg = segment.filter(|g| *g > 0).unwrap_or(n);
        {
            let clock = Clock::system();
            let mut at = 0;
            while at < n {
                let end = (at + seg).min(n);
                // The lock is held to look up and to record, not to open,
                // and shared with the other workers but for what changes
                // the tunnel (handshakes, a peer switching sessions).
                let datagram = &buf[at..end];
                let shared = read(tunnel).decapsulate_shared(clock, datagram);
                let prepared = shared.unwrap_or_else(|| {
                    write(tunnel).decapsulate_deferred(clock, from, datagram, &mut out)
                });
                let decap = match prepared {
                    Ok(opener) if opener.open(&mut buf[at..end]) => {
                        let shared = read(tunnel).opened_shared(&opener, end - at);
                        shared.unwrap_or_else(|| write(tunnel).opened(&opener, end - at))
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
                    Decap::Cookie { to, len } => {
                        counters.drop(Reason::CookieRequired);
                        replies.push((to, out[..len].to_vec()));
                    }
                    Decap::Done => {}
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
            if coalesce && coalescer.push(packet, partial) {
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
