//! Offloads between the TUN device and the tunnel, pure: the virtio-net
//! header the TUN device speaks with `IFF_VNET_HDR`, TCP segmentation of the
//! super-packets the kernel hands us (TSO), checksum completion, and TCP
//! coalescing of received segments into super-packets for the kernel (GRO).
//! This is where the big factors of userspace tunnels are: one syscall per
//! 64 KiB instead of one per 1.4 KiB.

/// `struct virtio_net_hdr` (no `num_buffers`), host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_ECN: u8 = 0x80;

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet shorter than its headers")]
    Short,
    #[error("unsupported offload (gso type {0})")]
    Unsupported(u8),
}

/// Ones' complement sum of `data` added to `sum` (not folded).
pub fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum = sum.wrapping_add(w >> 32).wrapping_add(w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn ipv4_header_checksum(ip: &mut [u8]) {
    ip[10] = 0;
    ip[11] = 0;
    let c = !fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Sum of the TCP/UDP pseudo-header of an IPv4 packet.
fn pseudo_sum(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    sum16(&ip[12..20], 0) + u64::from(proto) + l4_len as u64
}

/// Completes a partial checksum (`F_NEEDS_CSUM`): the field already holds
/// the pseudo-header sum; sum from `start` and store the complement.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    if start + offset + 2 > pkt.len() {
        return Err(OffloadError::Short);
    }
    let c = !fold(sum16(&pkt[start..], 0));
    pkt[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Header lengths of an IPv4/TCP packet: (IP header, IP + TCP headers).
fn tcp_headers(pkt: &[u8]) -> Result<(usize, usize), OffloadError> {
    let ihl = usize::from(pkt.first().ok_or(OffloadError::Short)? & 0x0f) * 4;
    let doff = usize::from(pkt.get(ihl + 12).ok_or(OffloadError::Short)? >> 4) * 4;
    if ihl < 20 || doff < 20 || pkt.len() < ihl + doff {
        return Err(OffloadError::Short);
    }
    Ok((ihl, ihl + doff))
}

/// Where the L4 checksum of an IP packet sits: (start, offset) for TCP
/// and UDP, the only protocols whose checksum may travel partial. For
/// IPv6, only right after the fixed header: behind extension headers it is
/// completed before sealing, so the receiver never has to walk them.
pub fn l4_checksum_position(pkt: &[u8]) -> Option<(usize, usize)> {
    let (start, proto) = match *pkt.first()? >> 4 {
        4 => (usize::from(*pkt.first()? & 0x0f) * 4, *pkt.get(9)?),
        6 => (40, *pkt.get(6)?),
        _ => return None,
    };
    match proto {
        6 => Some((start, 16)),
        17 => Some((start, 6)),
        _ => None,
    }
}

/// Turns one read from the TUN device into IPv4 packets ready to seal, each
/// passed to `emit` with whether its TCP/UDP checksum is left partial (from
/// a scratch buffer: copy what you keep). TCP super-packets are cut into
/// MSS-sized segments. Partial checksums are not completed: the AEAD
/// protects the packet, and the receiving kernel completes the checksum only
/// if it ever needs it — computing it here would cost every byte twice.
pub fn segment(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8], bool),
) -> Result<(), OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM == 0 {
                emit(pkt, false);
                return Ok(());
            }
            let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            if l4_checksum_position(pkt) == Some((start, offset)) {
                emit(pkt, true);
            } else {
                // Somewhere the receiver would not look for it: finish it here.
                complete_checksum(pkt, start, offset)?;
                emit(pkt, false);
            }
            Ok(())
        }
        GSO_TCPV4 => {
            let (ihl, headers) = tcp_headers(pkt)?;
            let mss = usize::from(hdr.gso_size).max(1);
            let payload = &pkt[headers..];
            let id = u16::from_be_bytes([pkt[4], pkt[5]]);
            let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
            let flags = pkt[ihl + 13];
            let count = payload.len().div_ceil(mss).max(1);
            for i in 0..count {
                let chunk =
                    &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
                scratch.clear();
                scratch.extend_from_slice(&pkt[..headers]);
                scratch.extend_from_slice(chunk);
                let total = scratch.len();
                let (ip, tcp) = scratch.split_at_mut(ihl);
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                ipv4_header_checksum(ip);
                tcp[4..8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
                // FIN and PSH belong to the last segment, CWR to the first.
                let mut f = flags;
                if i + 1 < count {
                    f &= !(0x01 | 0x08);
                }
                if i > 0 {
                    f &= !0x80;
                }
                tcp[13] = f;
                let pseudo = fold(pseudo_sum(ip, 6, tcp.len()));
                tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
                emit(scratch, true);
            }
            Ok(())
        }
        other => Err(OffloadError::Unsupported(other)),
    }
}

/// The vnet header for one received packet: "complete the checksum if you
/// need it" when it travelled partial, else "already checked" (the tunnel
/// authenticated every byte).
pub fn receive_header(pkt: &[u8], partial: bool) -> VnetHdr {
    match l4_checksum_position(pkt).filter(|_| partial) {
        Some((start, offset)) => VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start as u16,
            csum_offset: offset as u16,
            ..VnetHdr::default()
        },
        None => VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        },
    }
}

/// Coalesces received TCP/IPv4 segments of one flow into a super-packet the
/// kernel accepts from the TUN device with a GSO header (the reverse of
/// [`segment`]), so it crosses the stack once.
#[derive(Default)]
pub struct Coalescer {
    /// The super-packet being built, in place for the TUN device: room for
    /// the vnet header, then IP + TCP headers, then payloads (one copy of
    /// the payload on the way, not two).
    buf: Vec<u8>,
    ihl: usize,
    headers: usize,
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// The first segment's checksum travelled partial.
    partial: bool,
}

/// The kernel's limit for a GSO packet, minus room for headers.
const MAX_SUPER: usize = 65_000;

/// Where the packet starts in [`Coalescer`]'s buffer.
const V: usize = VNET_HDR_LEN;

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Adds `pkt` if it continues the current flow; false when it does not
    /// fit (the caller flushes, then adds again).
    pub fn push(&mut self, pkt: &[u8], partial: bool) -> bool {
        // IPv6 passes as it is (its header would read as a bogus IPv4 one).
        if pkt.first().map(|b| b >> 4) != Some(4) {
            return false;
        }
        let Ok((ihl, headers)) = tcp_headers(pkt) else {
            return false;
        };
        if pkt[9] != 6 || ihl != 20 || u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
            // Only plain TCP over option-less IPv4, unfragmented.
            return false;
        }
        let payload = pkt.len() - headers;
        let flags = pkt[ihl + 13];
        let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
        if self.segments == 0 {
            // SYN, FIN, RST, URG or no payload: pass as they are.
            if payload == 0 || flags & (0x01 | 0x02 | 0x04 | 0x20) != 0 {
                return false;
            }
            self.buf.clear();
            self.buf.resize(V, 0);
            self.buf.extend_from_slice(pkt);
            self.ihl = ihl;
            self.headers = headers;
            self.mss = payload;
            self.segments = 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            self.partial = partial;
            return true;
        }
        let cur = &self.buf[V..];
        let same_flow = headers == self.headers
            && pkt[12..20] == cur[12..20]
            && pkt[ihl..ihl + 4] == cur[self.ihl..self.ihl + 4]
            // Same ack, window and options; flags only ACK (PSH allowed on the last).
            && pkt[ihl + 8..ihl + 12] == cur[self.ihl + 8..self.ihl + 12]
            && pkt[ihl + 14..ihl + 16] == cur[self.ihl + 14..self.ihl + 16]
            && pkt[ihl + 20..headers] == cur[self.ihl + 20..self.headers]
            && flags & !0x08 == cur[self.ihl + 13] & !0x08
            && flags & (0x01 | 0x02 | 0x04 | 0x20) == 0
            && pkt[1] == cur[1]
            && pkt[8] == cur[8];
        let last_was_full = (cur.len() - self.headers) == self.mss * self.segments;
        if !same_flow
            || seq != self.next_seq
            || payload == 0
            || payload > self.mss
            || !last_was_full
            || cur.len() + payload > MAX_SUPER
            || cur[self.ihl + 13] & 0x08 != 0
        {
            return false;
        }
        self.buf.extend_from_slice(&pkt[headers..]);
        // Carry PSH of the newest segment.
        self.buf[V + self.ihl + 13] |= flags & 0x08;
        self.segments += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        true
    }

    /// Completes the vnet header and packet for the TUN device and starts
    /// over; the returned bytes are valid until the next push.
    pub fn flush(&mut self) -> &[u8] {
        let total = self.buf.len() - V;
        let ihl = self.ihl;
        {
            let ip = &mut self.buf[V..V + ihl];
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ipv4_header_checksum(ip);
        }
        let hdr = if self.segments > 1 {
            // The kernel re-segments: it wants the pseudo-header sum in the
            // checksum field and the rest marked for completion.
            let l4_len = total - ihl;
            let pseudo = fold(pseudo_sum(&self.buf[V..V + ihl], 6, l4_len));
            self.buf[V + ihl + 16..V + ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: self.headers as u16,
                gso_size: self.mss as u16,
                csum_start: ihl as u16,
                csum_offset: 16,
            }
        } else {
            receive_header(&self.buf[V..], self.partial)
        };
        hdr.write(&mut self.buf[..V]);
        self.segments = 0;
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet with a correct checksum and `payload` bytes.
    fn tcp_packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 240, 0, 1]);
        p[16..20].copy_from_slice(&[10, 240, 0, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        ipv4_header_checksum(&mut p[..20]);
        let c = !fold(sum16(&p[20..], pseudo_sum(&p[..20], 6, p.len() - 20)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn checksums_ok(p: &[u8]) -> bool {
        fold(sum16(&p[..20], 0)) == 0xffff
            && fold(sum16(&p[20..], pseudo_sum(&p[..20], 6, p.len() - 20))) == 0xffff
    }

    #[test]
    fn the_vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1396,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn super_packets_are_cut_into_valid_segments() {
        let payload: Vec<u8> = (0..3500u32).map(|i| i as u8).collect();
        let mut big = tcp_packet(1000, 0x18, &payload); // ACK|PSH
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        segment(&hdr, &mut big, &mut Vec::new(), |s, partial| {
            assert!(partial);
            out.push(s.to_vec())
        })
        .unwrap();
        assert_eq!(out.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in out.iter_mut().enumerate() {
            complete_checksum(s, 20, 16).unwrap();
            assert!(checksums_ok(s), "segment {i}");
            assert_eq!(
                u32::from_be_bytes([s[24], s[25], s[26], s[27]]),
                1000 + 1400 * i as u32
            );
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + i as u16);
            assert_eq!(s[33] & 0x08 != 0, i == 2, "PSH only on the last");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut p = tcp_packet(1, 0x10, b"hello");
        // What the kernel hands over: the pseudo-header sum in the field.
        let pseudo = fold(pseudo_sum(&p[..20], 6, p.len() - 20));
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        segment(&hdr, &mut p, &mut Vec::new(), |s, partial| {
            out.push((s.to_vec(), partial))
        })
        .unwrap();
        assert!(out[0].1, "travels partial");
        let mut done = out[0].0.clone();
        complete_checksum(&mut done, 20, 16).unwrap();
        assert!(checksums_ok(&done));
        // A checksum somewhere unusual is completed before it leaves.
        let mut q = p.clone();
        let odd = VnetHdr {
            csum_start: 22,
            ..hdr
        };
        let mut got = Vec::new();
        segment(&odd, &mut q, &mut Vec::new(), |s, partial| {
            got.push((s.to_vec(), partial))
        })
        .unwrap();
        assert!(!got[0].1);
        assert_eq!(
            segment(
                &VnetHdr { gso_type: 4, ..hdr },
                &mut p,
                &mut Vec::new(),
                |_, _| {}
            ),
            Err(OffloadError::Unsupported(4))
        );
        assert_eq!(
            segment(
                &VnetHdr { gso_type: 1, ..hdr },
                &mut p[..30].to_vec(),
                &mut Vec::new(),
                |_, _| {}
            ),
            Err(OffloadError::Short)
        );
    }

    #[test]
    fn consecutive_segments_coalesce_and_segment_back() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let mut c = Coalescer::default();
        let segs: Vec<Vec<u8>> = payload
            .chunks(1000)
            .enumerate()
            .map(|(i, ch)| tcp_packet(5000 + 1000 * i as u32, if i == 3 { 0x18 } else { 0x10 }, ch))
            .collect();
        for s in &segs {
            assert!(c.push(s, true));
        }
        let out = c.flush().to_vec();
        let hdr = VnetHdr::parse(&out).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1000, 40)
        );
        // What the kernel would do with it: segment it again.
        let mut back = Vec::new();
        let mut pkt = out[VNET_HDR_LEN..].to_vec();
        complete_checksum(&mut pkt, 20, 16).unwrap();
        segment(&hdr, &mut pkt, &mut Vec::new(), |s, _| {
            back.push(s.to_vec())
        })
        .unwrap();
        assert_eq!(back.len(), 4);
        for (a, b) in back.iter().zip(&segs) {
            assert_eq!(&a[24..28], &b[24..28]);
            assert_eq!(&a[40..], &b[40..]);
        }
    }

    #[test]
    fn only_the_same_flow_in_order_coalesces() {
        let mut c = Coalescer::default();
        assert!(c.push(&tcp_packet(0, 0x10, &[1; 100]), false));
        assert!(!c.push(&tcp_packet(500, 0x10, &[1; 100]), false), "gap");
        assert!(!c.push(&tcp_packet(100, 0x11, &[1; 100]), false), "FIN");
        assert!(
            !c.push(&tcp_packet(100, 0x10, &[1; 200]), false),
            "bigger than the first"
        );
        let mut other = tcp_packet(100, 0x10, &[1; 100]);
        other[16..20].copy_from_slice(&[10, 240, 0, 9]);
        assert!(!c.push(&other, false), "other flow");
        assert!(
            c.push(&tcp_packet(100, 0x10, &[1; 50]), false),
            "a short one ends it"
        );
        assert!(
            !c.push(&tcp_packet(150, 0x10, &[1; 50]), false),
            "nothing after a short one"
        );
        let mut fresh = Coalescer::default();
        assert!(
            !fresh.push(&tcp_packet(0, 0x02, &[]), false),
            "SYN passes alone"
        );
        assert!(
            !fresh.push(&tcp_packet(0, 0x10, &[]), false),
            "pure ACK passes alone"
        );
        c.flush();
        assert!(c.is_empty());
    }
}

#[cfg(test)]
mod receive_tests {
    use super::*;

    #[test]
    fn receive_headers_say_what_to_do_with_the_checksum() {
        let mut tcp = vec![0u8; 40];
        tcp[0] = 0x45;
        tcp[9] = 6;
        assert_eq!(
            receive_header(&tcp, true),
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 16,
                ..VnetHdr::default()
            }
        );
        assert_eq!(receive_header(&tcp, false).flags, F_DATA_VALID);
        let mut udp = tcp.clone();
        udp[9] = 17;
        assert_eq!(receive_header(&udp, true).csum_offset, 6);
        let mut tcp6 = vec![0u8; 60];
        tcp6[0] = 0x65; // a traffic class whose nibble reads as an IHL of 20
        tcp6[6] = 6;
        tcp6[9] = 6;
        assert_eq!(receive_header(&tcp6, true).csum_start, 40);
        assert!(
            !Coalescer::default().push(&tcp6, true),
            "IPv6 is not coalesced"
        );
        let mut icmp = tcp;
        icmp[9] = 1;
        assert_eq!(
            receive_header(&icmp, true).flags,
            F_DATA_VALID,
            "ICMP never travels partial"
        );
    }
}
