//! UDP → TUN: datagrams from peers, read several (possibly coalesced)
//! reads per call, opened outside the tunnel's lock, checked against
//! membership, coalesced and written to the TUN device.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::Ordering,
};

use pn_common::Reason;

use super::{
    msg::{READS, Received, recv_many, write_plain},
    shared::{Counters, Shared, read, write},
    wait::Waiter,
};
use crate::{Clock, Decap, PeerId, check_incoming, offload, wire};

/// Sending peer, tag, inner source and destination (see [`addresses`]).
type IncomingKey = (PeerId, u32, [u8; 33]);

/// The inner packet's version and address bytes, as they are (an IPv4
/// pair fills the first 8 of 32): the batch's check is reused only for the
/// same family and addresses.
fn addresses(packet: &[u8]) -> [u8; 33] {
    let mut k = [0u8; 33];
    let version = packet.first().map_or(0, |b| b >> 4);
    let span = if version == 6 { 8..40 } else { 12..20 };
    if let Some(a) = packet.get(span.clone()) {
        k[0] = version;
        k[1..1 + span.len()].copy_from_slice(a);
    }
    k
}

/// A packet opened for a local member: peer, tag, checksum partial, and
/// where it is (read, start, end).
type Opened = (PeerId, u32, bool, usize, usize, usize);

/// One worker's receiving side and its buffers.
struct Rx<'a> {
    shared: &'a Shared,
    tun_fd: i32,
    bufs: Vec<Vec<u8>>,
    reads: Vec<Received>,
    out: Vec<u8>,
    replies: Vec<(SocketAddr, Vec<u8>)>,
    packets: Vec<Opened>,
    coalescer: offload::Coalescer,
    /// The socket's overflow count at the last read.
    overflow: u32,
}

pub(super) fn rx_loop(tun: File, udp: UdpSocket, shared: &Shared) {
    let counters = &*shared.counters;
    let udp_fd = udp.as_raw_fd();
    let mut waiter = Waiter::new(udp_fd, &shared.waker, shared.options.spin, counters);
    let mut rx = Rx {
        shared,
        tun_fd: tun.as_raw_fd(),
        bufs: (0..READS).map(|_| vec![0u8; 65536]).collect(),
        reads: Vec::with_capacity(READS),
        out: vec![0u8; 256],
        replies: Vec::new(),
        packets: Vec::new(),
        coalescer: offload::Coalescer::default(),
        overflow: 0,
    };
    while !shared.stop.load(Ordering::Relaxed) {
        waiter.spin();
        rx.reads.clear();
        // Blocks until a datagram or the stop signal.
        let got = recv_many(udp_fd, &mut rx.bufs, &mut rx.reads, true);
        waiter.read(got.is_ok());
        if got.is_err() {
            continue;
        }
        counters.udp_reads.fetch_add(1, Ordering::Relaxed);
        let clock = Clock::system();
        for i in 0..rx.reads.len() {
            rx.open(clock, i);
        }
        for (to, d) in rx.replies.drain(..) {
            let _ = udp.send_to(&d, to);
        }
        rx.deliver();
    }
}

impl Rx<'_> {
    /// Opens the datagrams of read `i`, in place.
    fn open(&mut self, clock: Clock, i: usize) {
        let (tunnel, counters) = (&*self.shared.tunnel, &*self.shared.counters);
        let r = &self.reads[i];
        let (n, from) = (r.len, r.from);
        if let Some(d) = r.overflow {
            // The socket's count so far: what grew since the last read.
            counters
                .rx_overflow
                .fetch_add(u64::from(d.wrapping_sub(self.overflow)), Ordering::Relaxed);
            self.overflow = d;
        }
        let seg = r.segment.filter(|g| *g > 0).unwrap_or(n);
        let buf = &mut self.bufs[i];
        // The lock is shared with the other workers, held over the read
        // rather than taken per datagram; only what changes the tunnel
        // (handshakes, a peer switching sessions) takes it alone, the
        // shared hold let go first.
        let mut guard = None;
        let mut at = 0;
        while at < n {
            let end = (at + seg).min(n);
            let datagram = &buf[at..end];
            let shared = guard
                .get_or_insert_with(|| read(tunnel))
                .decapsulate_shared(clock, datagram);
            let prepared = shared.unwrap_or_else(|| {
                guard = None;
                write(tunnel).decapsulate_deferred(clock, from, datagram, &mut self.out)
            });
            let decap = match prepared {
                Ok(opener) if opener.open(&mut buf[at..end]) => {
                    let shared = guard
                        .get_or_insert_with(|| read(tunnel))
                        .opened_shared(&opener, end - at);
                    shared.unwrap_or_else(|| {
                        guard = None;
                        write(tunnel).opened(&opener, end - at)
                    })
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
                    self.packets
                        .push((peer, tag, partial, i, at + start, at + e));
                }
                Decap::Packet { .. } => {}
                Decap::Reply { to, len } => self.replies.push((to, self.out[..len].to_vec())),
                Decap::Cookie { to, len } => {
                    counters.drop(Reason::CookieRequired);
                    self.replies.push((to, self.out[..len].to_vec()));
                }
                Decap::Done => {}
                Decap::Established { flush, .. } => self.replies.extend(flush),
                Decap::Drop(r) => counters.drop(r),
            }
            at = end;
        }
    }

    /// Checks the opened packets against membership and writes them to
    /// the TUN device, coalesced where they can be.
    fn deliver(&mut self) {
        let (members, counters) = (self.shared.members.as_ref(), &*self.shared.counters);
        let coalesce = self.shared.options.coalesce;
        // A batch is mostly one flow's segments: check each pair of
        // addresses (with its tag and peer) once per batch.
        let mut checked: Option<(IncomingKey, Result<(), Reason>)> = None;
        for &(peer, tag, partial, i, start, end) in &self.packets {
            let packet = &self.bufs[i][start..end];
            let addrs = addresses(packet);
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
            if coalesce && self.coalescer.push(packet, partial) {
                continue;
            }
            if !self.coalescer.is_empty() {
                write_super(self.tun_fd, &mut self.coalescer, counters);
                if self.coalescer.push(packet, partial) {
                    continue;
                }
            }
            counters.tun_writes.fetch_add(1, Ordering::Relaxed);
            if write_plain(self.tun_fd, packet, partial) {
                counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                counters
                    .rx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
        }
        if !self.coalescer.is_empty() {
            write_super(self.tun_fd, &mut self.coalescer, counters);
        }
        self.packets.clear();
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

#[cfg(test)]
mod tests {
    use super::addresses;

    #[test]
    fn a_batch_reuses_a_check_only_for_the_same_family_and_addresses() {
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&[0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        v6[24..40].copy_from_slice(&[0xfd, 1, 2, 3, 4, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3]);
        // Another source differing only in its last byte (outside what an
        // IPv4 key would read).
        let mut other = v6.clone();
        other[23] = 9;
        assert_ne!(addresses(&v6), addresses(&other));
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[12..20].copy_from_slice(&v6[12..20]);
        assert_ne!(addresses(&v4), addresses(&v6));
        assert_eq!(addresses(&v4)[1..9], v6[12..20]);
    }
}
