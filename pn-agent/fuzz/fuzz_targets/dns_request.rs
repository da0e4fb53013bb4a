//! Arbitrary bytes as a DNS query from a member (of an open or a sealed
//! network), over UDP and over TCP: the server answers with a well-formed
//! response that fits the transport, forwards (never for a sealed network),
//! or drops; it never panics.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, LazyLock},
};

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use pn_agent::dns::{
    Directory, DnsStats, Member,
    zone::{Action, EDNS_UDP_MAX, PLAIN_UDP_MAX, Responder},
};
use pn_common::{
    ids::{AppId, NetworkId, Uuid},
    names::{RecordQuery, Selector},
};

fn net() -> NetworkId {
    NetworkId(Uuid::from_random_bytes([1; 16]))
}
fn app() -> AppId {
    AppId(Uuid::from_random_bytes([2; 16]))
}

/// One app of network NET with 300 `web` containers, each with an IPv6
/// address too (answers too long for a datagram), and one `worker` without.
struct Fixed;

impl Directory for Fixed {
    fn member(&self, _: Ipv4Addr) -> Option<Member> {
        Some(Member {
            network: net(),
            sealed: false,
        })
    }
    fn resolve(&self, q: &RecordQuery, out: &mut Vec<IpAddr>) -> bool {
        if q.network != net() || q.app != app() {
            return false;
        }
        let before = out.len();
        let webs = (0..300u32).flat_map(|i| {
            [
                IpAddr::V4(Ipv4Addr::from(0x0af0_0000 + i)),
                IpAddr::V6(Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0002 + u128::from(i))),
            ]
        });
        match &q.selector {
            Selector::Web => out.extend(webs),
            Selector::Type(t) if t.as_str() == "web" => out.extend(webs),
            Selector::Container(t, 1) if t.as_str() == "worker" => {
                out.push(Ipv4Addr::new(10, 240, 1, 1).into())
            }
            _ => {}
        }
        out.len() > before
    }
}

// TTL 5 s, with upstreams (names of the world are forwarded).
static RESPONDER: LazyLock<Responder> =
    LazyLock::new(|| Responder::new(5, true, Arc::new(Fixed), Arc::new(DnsStats::default())));

fuzz_target!(|data: &[u8]| {
    for (udp, sealed) in [(true, false), (false, false), (true, true)] {
        let from = Member {
            network: net(),
            sealed,
        };
        match RESPONDER.answer(from, data, udp) {
            Action::Reply(bytes) => {
                let max = if udp { usize::from(EDNS_UDP_MAX) } else { usize::from(u16::MAX) };
                assert!(bytes.len() <= max, "{} bytes over {}", bytes.len(), if udp { "UDP" } else { "TCP" });
                let m = Message::from_vec(&bytes).expect("our own answer parses");
                assert_eq!(m.metadata.message_type, MessageType::Response);
                assert_eq!(&bytes[..2], &data[..2], "the query's id");
            }
            Action::Forward { udp_limit } => {
                assert!(!sealed, "a sealed network's query forwarded");
                assert!((PLAIN_UDP_MAX..=usize::from(EDNS_UDP_MAX)).contains(&udp_limit));
            }
            Action::Drop => {}
        }
    }
});
