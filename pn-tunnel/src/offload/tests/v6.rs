//! TCP segmentation of IPv6 super-packets (`GSO_TCPV6`), checked against a
//! checksum computed here independently of the module's own sums.

use super::super::*;

const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An IPv6/TCP packet with a 12-byte option block (timestamps) and the
/// checksum field holding the pseudo-header sum, as the kernel hands over a
/// super-packet; `next` is the fixed header's next header.
fn tcp6_packet(seq: u32, flags: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let tcp_len = 32 + payload.len();
    let mut p = vec![0u8; 40 + 32];
    p[0] = 0x60 | 0x0a; // traffic class 0xa5, flow label 0x12345
    p[1] = 0x51;
    p[2] = 0x23;
    p[3] = 0x45;
    p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&SRC);
    p[24..40].copy_from_slice(&DST);
    let t = &mut p[40..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&99u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    p.extend_from_slice(payload);
    p
}

/// RFC 8200 §8.1: the TCP checksum over the IPv6 pseudo-header, written
/// out plainly (16-bit words, 32-bit accumulator).
fn tcp6_checksum_valid(p: &[u8]) -> bool {
    let tcp = &p[40..];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&p[8..40]);
    bytes.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 6]);
    bytes.extend_from_slice(tcp);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn tso6(gso_size: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        hdr_len: 72,
        gso_size,
        csum_start: 40,
        csum_offset: 16,
    }
}

#[test]
fn ipv6_super_packets_are_cut_into_valid_segments() {
    let payload: Vec<u8> = (0..3501u32).map(|i| (i * 13) as u8).collect();
    let mut big = tcp6_packet(0xffff_fc00, 0x19, 6, &payload); // FIN|PSH|ACK
    let mut out = Vec::new();
    segment(&tso6(1400), &mut big, &mut Vec::new(), |s, partial| {
        assert!(partial, "travels partial");
        out.push(s.to_vec())
    })
    .unwrap();
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, s) in out.iter_mut().enumerate() {
        let len = if i < 2 { 1400 } else { 701 };
        assert_eq!(s.len(), 72 + len, "segment {i}");
        assert_eq!(
            usize::from(u16::from_be_bytes([s[4], s[5]])),
            32 + len,
            "payload length of segment {i}"
        );
        assert_eq!(s[..4], big[..4], "version, class and flow label kept");
        assert_eq!(s[6..40], big[6..40], "next header, hop limit, addresses");
        assert_eq!(
            u32::from_be_bytes([s[44], s[45], s[46], s[47]]),
            0xffff_fc00u32.wrapping_add(1400 * i as u32),
            "sequence number of segment {i} (wrapping)"
        );
        let last = i == 2;
        assert_eq!(s[53] & 0x01 != 0, last, "FIN only on the last");
        assert_eq!(s[53] & 0x08 != 0, last, "PSH only on the last");
        assert!(s[53] & 0x10 != 0, "ACK on all");
        assert_eq!(s[60..72], big[60..72], "options kept");
        assert_eq!(receive_header(s, true).csum_start, 40);
        complete_checksum(s, 40, 16).unwrap();
        assert!(tcp6_checksum_valid(s), "checksum of segment {i}");
        joined.extend_from_slice(&s[72..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn an_ipv6_super_packet_of_one_segment_stays_whole() {
    let payload = [7u8; 1000];
    let mut p = tcp6_packet(5, 0x18, 6, &payload);
    let mut out = Vec::new();
    segment(&tso6(1400), &mut p, &mut Vec::new(), |s, _| {
        out.push(s.to_vec())
    })
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 72 + 1000);
    assert_eq!(out[0][53], 0x18);
    complete_checksum(&mut out[0], 40, 16).unwrap();
    assert!(tcp6_checksum_valid(&out[0]));
}

#[test]
fn what_ipv6_segmentation_does_not_handle_is_refused() {
    let mut emitted = 0;
    let mut cut =
        |hdr: VnetHdr, p: &mut [u8]| segment(&hdr, p, &mut Vec::new(), |_, _| emitted += 1);
    // Hop-by-hop options between the fixed header and TCP.
    let mut ext = tcp6_packet(1, 0x10, 0, &[1; 3000]);
    assert_eq!(
        cut(tso6(1400), &mut ext),
        Err(OffloadError::ExtensionHeaders)
    );
    let mut ok = tcp6_packet(1, 0x10, 6, &[1; 3000]);
    assert_eq!(cut(tso6(1400), &mut ok[..50]), Err(OffloadError::Short));
    let v4_type = VnetHdr {
        gso_type: GSO_TCPV4,
        ..tso6(1400)
    };
    assert_eq!(
        cut(v4_type, &mut ok),
        Err(OffloadError::Unsupported(GSO_TCPV4)),
        "an IPv6 packet labelled TCPv4"
    );
    let mut v4 = ok.clone();
    v4[0] = 0x45;
    assert_eq!(
        cut(tso6(1400), &mut v4),
        Err(OffloadError::Unsupported(GSO_TCPV6)),
        "an IPv4 packet labelled TCPv6"
    );
    assert_eq!(emitted, 0, "nothing half-done leaves");
}

#[test]
fn ipv6_segments_coalesce_and_segment_back() {
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let segs: Vec<Vec<u8>> = payload
        .chunks(1000)
        .enumerate()
        .map(|(i, ch)| {
            let flags = if i == 3 { 0x18 } else { 0x10 };
            tcp6_packet(5000 + 1000 * i as u32, flags, 6, ch)
        })
        .collect();
    let mut c = Coalescer::default();
    for s in &segs {
        assert!(c.push(s, true));
    }
    let out = c.flush().to_vec();
    let hdr = VnetHdr::parse(&out).unwrap();
    assert_eq!(
        (hdr.gso_type, hdr.gso_size, hdr.hdr_len, hdr.csum_start),
        (GSO_TCPV6, 1000, 72, 40)
    );
    let mut pkt = out[VNET_HDR_LEN..].to_vec();
    assert_eq!(usize::from(u16::from_be_bytes([pkt[4], pkt[5]])), 32 + 4000);
    // What the kernel would do with it: segment it again.
    let mut back = Vec::new();
    segment(&hdr, &mut pkt, &mut Vec::new(), |s, _| {
        back.push(s.to_vec())
    })
    .unwrap();
    assert_eq!(back.len(), 4);
    for (a, b) in back.iter_mut().zip(&segs) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a[..16], b[..16]);
        assert_eq!(a[44..48], b[44..48], "sequence number");
        assert_eq!(a[53], b[53], "flags");
        assert_eq!(a[72..], b[72..]);
        complete_checksum(a, 40, 16).unwrap();
        assert!(tcp6_checksum_valid(a));
    }
}

#[test]
fn only_the_same_ipv6_flow_coalesces() {
    let mut c = Coalescer::default();
    assert!(c.push(&tcp6_packet(0, 0x10, 6, &[1; 100]), false));
    let mut label = tcp6_packet(100, 0x10, 6, &[1; 100]);
    label[3] ^= 1;
    assert!(!c.push(&label, false), "other flow label");
    let mut addr = tcp6_packet(100, 0x10, 6, &[1; 100]);
    addr[39] = 9;
    assert!(!c.push(&addr, false), "other destination");
    assert!(
        !c.push(&tcp6_packet(100, 0x10, 0, &[1; 100]), false),
        "extension headers"
    );
    assert!(!c.push(&tcp6_packet(300, 0x10, 6, &[1; 100]), false), "gap");
    assert!(c.push(&tcp6_packet(100, 0x10, 6, &[1; 100]), false));
    let hdr = VnetHdr::parse(c.flush()).unwrap();
    assert_eq!(hdr.gso_type, GSO_TCPV6);
    let mut fresh = Coalescer::default();
    assert!(
        !fresh.push(&tcp6_packet(0, 0x02, 6, &[]), false),
        "SYN passes alone"
    );
}
