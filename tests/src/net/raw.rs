//! Hand-made packets and frames (any source, any checksum), and sending
//! them from inside a namespace past the kernel's own stack: what the
//! attacker tests forge.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::namespace::Namespace;

pub(super) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet with any source address, protocol and payload.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram (checksum 0: allowed over IPv4) inside an IPv4 packet.
pub fn udp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    ipv4_packet(src, dst, 17, &udp)
}

/// Sends a hand-made IPv4 packet from inside `ns` (raw socket, header
/// included: the kernel keeps the source we wrote).
pub fn send_raw_ipv4(ns: &Namespace, packet: Vec<u8>) -> std::io::Result<()> {
    ns.run(move || {
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        // SAFETY: plain socket syscalls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let r = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r < 0 { Err(err) } else { Ok(()) }
        }
    })
}

/// Sends a whole Ethernet frame out of `ifname` inside `ns` (AF_PACKET).
pub fn send_frame(ns: &Namespace, ifname: &str, frame: Vec<u8>) -> std::io::Result<()> {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    ns.run(move || {
        // SAFETY: plain socket syscalls on a descriptor we own and close.
        unsafe {
            let ifindex = libc::if_nametoindex(ifname.as_ptr());
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let r = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r < 0 { Err(err) } else { Ok(()) }
        }
    })
}

/// ICMPv6's or UDP's checksum over IPv6 (RFC 8200 §8.1): `l4` with its
/// checksum field zeroed.
pub fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + l4.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(l4);
    checksum(&pseudo)
}

/// An Ethernet frame carrying an IPv6 packet (any source, hop limit 255:
/// what a link's neighbour discovery needs) with `next` and `l4` after the
/// fixed header; `l4`'s checksum (at `sum_at`, if any) is filled in.
#[allow(clippy::too_many_arguments)]
pub fn ipv6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    mut l4: Vec<u8>,
    sum_at: Option<usize>,
) -> Vec<u8> {
    if let Some(at) = sum_at {
        l4[at] = 0;
        l4[at + 1] = 0;
        let sum = checksum6(src, dst, next, &l4);
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}
