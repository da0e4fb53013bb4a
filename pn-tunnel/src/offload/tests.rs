//! Tests of the offloads, sans I/O.

mod v4 {
    use super::super::*;

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
                &VnetHdr { gso_type: 3, ..hdr },
                &mut p,
                &mut Vec::new(),
                |_, _| {}
            ),
            Err(OffloadError::Unsupported(3))
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

mod v6;

mod receive {
    use super::super::*;

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
            "IPv6 TCP without a valid TCP header is not coalesced"
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
