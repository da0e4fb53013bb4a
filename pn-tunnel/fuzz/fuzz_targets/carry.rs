//! The state a successor agent reads (`carry`): arbitrary bytes never
//! panic, and what decodes encodes back to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pn_tunnel::carry::Carried;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Carried::decode(data) {
        assert_eq!(&c.encode()[..], data);
    }
});
