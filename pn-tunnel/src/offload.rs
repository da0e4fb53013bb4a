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
pub const GSO_TCPV6: u8 = 4;
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
    #[error("TCP segmentation of IPv6 behind extension headers")]
    ExtensionHeaders,
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

/// Sum of the TCP/UDP pseudo-header of an IPv6 packet (no routing header:
/// the destination is the one in the fixed header).
fn pseudo_sum6(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    sum16(&ip[8..40], 0) + u64::from(proto) + l4_len as u64
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

/// Header lengths of an IPv6/TCP packet whose TCP header follows the fixed
/// header: (IP header, IP + TCP headers). Behind extension headers the
/// segments would need the headers walked and the pseudo-header's
/// destination taken from a routing header: refused (a counted drop) rather
/// than half-done; containers' TCP does not send them.
fn tcp6_headers(pkt: &[u8]) -> Result<(usize, usize), OffloadError> {
    if pkt.len() < 40 + 20 {
        return Err(OffloadError::Short);
    }
    if pkt[6] != 6 {
        return Err(OffloadError::ExtensionHeaders);
    }
    let doff = usize::from(pkt[40 + 12] >> 4) * 4;
    if doff < 20 || pkt.len() < 40 + doff {
        return Err(OffloadError::Short);
    }
    Ok((40, 40 + doff))
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

/// Turns one read from the TUN device into IP packets ready to seal, each
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
            if pkt.first().map(|b| b >> 4) != Some(4) {
                return Err(OffloadError::Unsupported(GSO_TCPV4));
            }
            let (ip_len, headers) = tcp_headers(pkt)?;
            segment_tcp(hdr, pkt, ip_len, headers, scratch, emit);
            Ok(())
        }
        GSO_TCPV6 => {
            if pkt.first().map(|b| b >> 4) != Some(6) {
                return Err(OffloadError::Unsupported(GSO_TCPV6));
            }
            let (ip_len, headers) = tcp6_headers(pkt)?;
            segment_tcp(hdr, pkt, ip_len, headers, scratch, emit);
            Ok(())
        }
        other => Err(OffloadError::Unsupported(other)),
    }
}

/// Cuts a TCP super-packet (IPv4 or IPv6, headers checked by the caller)
/// into `gso_size` segments, each with its own lengths, sequence number and
/// flags, and the pseudo-header sum in the checksum field (partial).
fn segment_tcp(
    hdr: &VnetHdr,
    pkt: &[u8],
    ip_len: usize,
    headers: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8], bool),
) {
    let v6 = pkt[0] >> 4 == 6;
    let mss = usize::from(hdr.gso_size).max(1);
    let payload = &pkt[headers..];
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([
        pkt[ip_len + 4],
        pkt[ip_len + 5],
        pkt[ip_len + 6],
        pkt[ip_len + 7],
    ]);
    let flags = pkt[ip_len + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&pkt[..headers]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let (ip, tcp) = scratch.split_at_mut(ip_len);
        if v6 {
            // IPv6 counts the payload only, and has no header checksum.
            ip[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            ipv4_header_checksum(ip);
        }
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
        let pseudo = if v6 {
            fold(pseudo_sum6(ip, 6, tcp.len()))
        } else {
            fold(pseudo_sum(ip, 6, tcp.len()))
        };
        tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
        emit(scratch, true);
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

/// Coalesces received TCP segments (IPv4 or IPv6) of one flow into a super-packet the
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

/// (IP header, IP + TCP headers) of a segment the coalescer takes: plain
/// TCP over option-less, unfragmented IPv4, or over IPv6 right after the
/// fixed header. The IP header's length tells the versions apart (20 or
/// 40).
fn coalescible(pkt: &[u8]) -> Option<(usize, usize)> {
    match pkt.first()? >> 4 {
        4 => {
            let (ihl, headers) = tcp_headers(pkt).ok()?;
            let fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
            (pkt[9] == 6 && ihl == 20 && !fragment).then_some((ihl, headers))
        }
        6 => tcp6_headers(pkt).ok(),
        _ => None,
    }
}

/// Whether two segments' IP headers differ only in what segmentation
/// changes (lengths, IPv4's id and checksum), for IP headers of `ihl`.
fn same_ip(a: &[u8], b: &[u8], ihl: usize) -> bool {
    if ihl == 40 {
        // Version, class, flow label; next header, hop limit, addresses.
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        // TOS, TTL and protocol, addresses.
        a[1] == b[1] && a[8..10] == b[8..10] && a[12..20] == b[12..20]
    }
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
        let Some((ihl, headers)) = coalescible(pkt) else {
            return false;
        };
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
        let same_flow = ihl == self.ihl
            && headers == self.headers
            && same_ip(pkt, cur, ihl)
            && pkt[ihl..ihl + 4] == cur[self.ihl..self.ihl + 4]
            // Same ack, window and options; flags only ACK (PSH allowed on the last).
            && pkt[ihl + 8..ihl + 12] == cur[self.ihl + 8..self.ihl + 12]
            && pkt[ihl + 14..ihl + 16] == cur[self.ihl + 14..self.ihl + 16]
            && pkt[ihl + 20..headers] == cur[self.ihl + 20..self.headers]
            && flags & !0x08 == cur[self.ihl + 13] & !0x08
            && flags & (0x01 | 0x02 | 0x04 | 0x20) == 0;
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
        let v6 = ihl == 40;
        {
            let ip = &mut self.buf[V..V + ihl];
            if v6 {
                ip[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ipv4_header_checksum(ip);
            }
        }
        let hdr = if self.segments > 1 {
            // The kernel re-segments: it wants the pseudo-header sum in the
            // checksum field and the rest marked for completion.
            let l4_len = total - ihl;
            let ip = &self.buf[V..V + ihl];
            let pseudo = if v6 {
                fold(pseudo_sum6(ip, 6, l4_len))
            } else {
                fold(pseudo_sum(ip, 6, l4_len))
            };
            self.buf[V + ihl + 16..V + ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
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
mod tests;
