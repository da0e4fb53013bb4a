use super::*;

fn m(tag: u32, peer: Option<u32>) -> Member {
    Member { tag, peer }
}

fn state() -> AgentState {
    AgentState {
        members: vec![
            (Ipv4Addr::new(10, 240, 0, 2), m(3, None)),
            (Ipv4Addr::new(10, 240, 0, 9), m(3, Some(7))),
        ],
        members6: vec![
            ("fd12:3456:789a:1::2".parse().unwrap(), m(3, None)),
            ("fd12:3456:789a:1::9".parse().unwrap(), m(3, Some(7))),
        ],
        tunnel: Carried::default(),
    }
}

/// The bytes the release before IPv6 was handed over wrote (envelope 1),
/// spelled out here rather than by the encoder under test.
fn envelope_1(s: &AgentState) -> Vec<u8> {
    let mut b = b"PNAS".to_vec();
    b.extend_from_slice(&((1u32 << 16) | carry::VERSION).to_be_bytes());
    b.extend_from_slice(&(s.members.len() as u32).to_be_bytes());
    for (ip, m) in &s.members {
        b.extend_from_slice(&ip.octets());
        b.extend_from_slice(&m.tag.to_be_bytes());
        b.extend_from_slice(&m.peer.unwrap_or(0).to_be_bytes());
    }
    b.extend_from_slice(&s.tunnel.encode());
    b
}

#[test]
fn the_envelope_round_trips_both_families_and_refuses_damage() {
    let s = state();
    let b = s.encode();
    let back = AgentState::decode(&b).unwrap();
    assert_eq!(back.members, s.members);
    assert_eq!(back.members6, s.members6);
    assert_eq!(*back.tunnel.encode(), *s.tunnel.encode());
    for cut in 0..b.len() {
        assert!(AgentState::decode(&b[..cut]).is_err(), "cut at {cut}");
    }
    let mut other = b.to_vec();
    other[7] ^= 1;
    assert!(matches!(
        AgentState::decode(&other),
        Err(CarryError::Version(_))
    ));
    // A count larger than the bytes behind it.
    let mut long = b.to_vec();
    let at6 = 12 + s.members.len() * ENTRY4;
    long[at6..at6 + 4].copy_from_slice(&1000u32.to_be_bytes());
    assert!(AgentState::decode(&long).is_err());
}

#[test]
fn an_older_predecessors_envelope_decodes_without_ipv6_members() {
    let s = state();
    let back = AgentState::decode(&envelope_1(&s)).unwrap();
    assert_eq!(back.members, s.members);
    assert!(back.members6.is_empty());
    let b = envelope_1(&s);
    for cut in 0..b.len() {
        assert!(AgentState::decode(&b[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn an_older_successor_gets_the_envelope_it_reads() {
    let s = state();
    let v1 = (1 << 16) | carry::VERSION;
    assert_eq!(version_for(v1), v1);
    assert_eq!(*s.encode_as(v1), envelope_1(&s));
    // Its own, or one it does not know (a newer envelope, another tunnel
    // format): this agent's.
    assert_eq!(version_for(version()), version());
    assert_eq!(version_for((3 << 16) | carry::VERSION), version());
    assert_eq!(version_for((2 << 16) | (carry::VERSION + 1)), version());
    assert!(!readable((2 << 16) | (carry::VERSION + 1)));
    assert!(!readable(carry::VERSION));
    assert_eq!(*s.encode_as(0), *s.encode());
}
