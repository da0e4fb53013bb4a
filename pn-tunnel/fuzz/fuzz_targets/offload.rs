//! Arbitrary bytes as reads from the TUN device (vnet header + packet) and
//! as received packets to coalesce: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pn_tunnel::offload::{Coalescer, VNET_HDR_LEN, VnetHdr, segment};

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let mut pkt = data[VNET_HDR_LEN..].to_vec();
    let mut scratch = Vec::new();
    let mut segments = Vec::new();
    let _ = segment(&hdr, &mut pkt, &mut scratch, |s, partial| segments.push((s.to_vec(), partial)));
    let mut c = Coalescer::default();
    for (s, partial) in segments.iter().chain(std::iter::once(&(data.to_vec(), false))) {
        if !c.push(s, *partial) && !c.is_empty() {
            c.flush();
            let _ = c.push(s, *partial);
        }
    }
    if !c.is_empty() {
        c.flush();
    }
});
