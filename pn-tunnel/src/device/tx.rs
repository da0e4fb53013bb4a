//! TUN → UDP: packets from local containers, segmented, sealed outside the
//! tunnel's lock, and sent in batches of one `sendmsg`.

use std::{
    fs::File,
    io::Read,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::Ordering,
};

use pn_common::Reason;

use super::{
    msg::{send_each, send_segments},
    shared::{Counters, Shared, read, write},
    wait::Waiter,
};
use crate::{Clock, Encap, Sealer, offload, route_outgoing, wire};

const BUF: usize = 65536 + wire::OVERHEAD;
/// Datagrams sent with one `sendmsg` (UDP segmentation offload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Datagrams waiting to leave in one call: same destination and, with
/// segmentation (one `sendmsg`), same size but the last; without it (one
/// `sendmmsg`), any sizes. Sealed just before they leave, outside the lock.
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
    /// Where each datagram is (start, length).
    bounds: Vec<(usize, usize)>,
    /// UDP segmentation is on.
    gso: bool,
}

impl Batch {
    fn new(gso: bool) -> Batch {
        Batch {
            buf: Vec::with_capacity(GSO_MAX_BYTES + BUF),
            to: None,
            segment: 0,
            count: 0,
            closed: false,
            unsealed: Vec::with_capacity(GSO_MAX_SEGMENTS),
            inner: 0,
            bounds: Vec::with_capacity(GSO_MAX_SEGMENTS),
            gso,
        }
    }

    /// Whether a datagram of `len` bytes to `to` may join the batch.
    fn fits(&self, to: SocketAddr, len: usize) -> bool {
        self.count == 0
            || (self.to == Some(to)
                && (!self.gso || (!self.closed && len <= self.segment))
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
        self.bounds.push((start, len));
    }

    fn seal_and_send(&mut self, fd: i32, counters: &Counters) {
        for (at, len, sealer) in self.unsealed.drain(..) {
            sealer.seal(&mut self.buf[at..at + len]);
        }
        let sent = |to| match self.gso {
            true => send_segments(fd, &self.buf, self.segment, to),
            false => send_each(fd, &self.buf, &self.bounds, to),
        };
        if let Some(to) = self.to
            && self.count > 0
            && sent(to).is_ok()
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
        self.bounds.clear();
    }
}

pub(super) fn tx_loop(mut tun: File, udp: UdpSocket, shared: &Shared) {
    let (tunnel, members, counters, stop) = (
        &*shared.tunnel,
        shared.members.as_ref(),
        &*shared.counters,
        &*shared.stop,
    );
    let mut waiter = Waiter::new(
        tun.as_raw_fd(),
        &shared.waker,
        shared.options.spin,
        counters,
    );
    let mut pkt = vec![0u8; 65536 + offload::VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(2048);
    let mut handshakes: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut batch = Batch::new(shared.options.gso);
    let udp_fd = udp.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        waiter.spin();
        // Blocks (the queue's descriptor is blocking) until a packet or the
        // stop signal.
        let got = tun.read(&mut pkt);
        waiter.read(got.is_ok());
        let n = match got {
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
        let mut guard = None;
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
            // The lock is shared with the other workers (the counter is
            // atomic), held over the super-packet rather than taken per
            // datagram. Only what changes the tunnel (no session yet, a
            // renewal due) takes it alone, the shared hold let go first.
            let out = &mut batch.buf[start..];
            let shared = guard
                .get_or_insert_with(|| read(tunnel))
                .encapsulate_shared(clock, peer, tag, flags, seg, out);
            let (encap, sealer) = match shared {
                Some(done) => done,
                None => {
                    guard = None;
                    write(tunnel).encapsulate_deferred(clock, peer, tag, flags, seg, out)
                }
            };
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
        drop(guard);
        if result.is_err() {
            counters.drop(Reason::Malformed);
        }
        batch.seal_and_send(udp_fd, counters);
        for (to, d) in handshakes.drain(..) {
            let _ = udp.send_to(&d, to);
        }
    }
}
