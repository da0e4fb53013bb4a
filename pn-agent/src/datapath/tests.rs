use pn_common::{
    ip4,
    maps::{Endpoint, Iface, Peer},
};

use super::{ApplyError, Datapath, Scope, State, fake::FakeMaps};

fn local(tag: u32, ifindex: u32) -> Endpoint {
    Endpoint {
        tag,
        ifindex,
        peer: 0,
        flags: 0,
    }
}

fn remote(tag: u32, peer: u32) -> Endpoint {
    Endpoint {
        tag,
        ifindex: 0,
        peer,
        flags: Endpoint::FLAG_REMOTE,
    }
}

/// One local container (10.240.0.2 on ifindex 7) and one remote (10.240.0.3).
fn two() -> State {
    let mut s = State::default();
    s.endpoints.insert(ip4(10, 240, 0, 2), local(1, 7));
    s.endpoints.insert(ip4(10, 240, 0, 3), remote(1, 9));
    s.ifaces.insert(
        7,
        Iface {
            addr: ip4(10, 240, 0, 2),
            tag: 1,
            ..Default::default()
        },
    );
    s.attached.insert("pnhaaa".into());
    s.peers
        .insert(ip4(192, 0, 2, 2), Peer { index: 9, flags: 0 });
    s.tags.insert(1);
    s
}

/// `s` as the kernel holds it: interfaces numbered 1, 2… in ifindex order
/// (the counter slots the datapath gives them from empty), their local
/// endpoints carrying the same rows (`rows.rs`).
fn slotted(mut s: State) -> State {
    for (n, i) in s.ifaces.values_mut().enumerate() {
        i.slot = n as u16 + 1;
    }
    for (idx, i) in &s.ifaces {
        if let Some(ep) = s.endpoints.get_mut(&i.addr).filter(|e| e.ifindex == *idx) {
            ep.peer = u32::from(i.slot);
        }
        if let Some(ep) = s.endpoints6.get_mut(&i.addr6).filter(|e| e.ifindex == *idx) {
            ep.peer = u32::from(i.slot);
        }
    }
    s
}

#[test]
fn counter_slots_are_kept_zeroed_when_new_and_reused_when_freed() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    assert!(dp.maps().calls.contains(&"reset_counters 1".to_string()));
    // A second interface gets the next slot, zeroed.
    let mut more = two();
    let second = Iface {
        addr: ip4(10, 240, 0, 4),
        tag: 1,
        ..Default::default()
    };
    more.ifaces.insert(8, second);
    more.endpoints.insert(ip4(10, 240, 0, 4), local(1, 8));
    dp.apply(&more, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.ifaces[&7].slot, 1, "kept");
    assert_eq!(dp.maps().state.ifaces[&8].slot, 2);
    assert!(dp.maps().calls.contains(&"reset_counters 2".to_string()));
    // The kept slot is not zeroed again.
    assert_eq!(
        dp.maps()
            .calls
            .iter()
            .filter(|c| *c == "reset_counters 1")
            .count(),
        1
    );
    // The first goes; a new container takes its slot, zeroed again.
    let mut swapped = more.clone();
    swapped.ifaces.remove(&7);
    swapped.endpoints.remove(&ip4(10, 240, 0, 2));
    dp.apply(&swapped, &Scope::all()).unwrap();
    dp.maps_mut().calls.clear();
    swapped.ifaces.insert(
        9,
        Iface {
            addr: ip4(10, 240, 0, 5),
            tag: 1,
            ..Default::default()
        },
    );
    dp.apply(&swapped, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.ifaces[&9].slot, 1);
    assert_eq!(dp.maps().state.ifaces[&8].slot, 2);
    assert_eq!(
        dp.maps()
            .calls
            .iter()
            .filter(|c| c.starts_with("reset_counters"))
            .collect::<Vec<_>>(),
        ["reset_counters 1"]
    );
    // The same interface under a new address starts from 0 as well.
    dp.maps_mut().calls.clear();
    swapped.ifaces.get_mut(&8).unwrap().addr = ip4(10, 240, 0, 6);
    dp.apply(&swapped, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.ifaces[&8].slot, 2);
    assert!(dp.maps().calls.contains(&"reset_counters 2".to_string()));
}

#[test]
fn a_full_apply_reaches_the_state_and_a_second_one_does_nothing() {
    let mut dp = Datapath::new(FakeMaps::default());
    let ch = dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().state, slotted(two()));
    assert_eq!((ch.set, ch.attached), (5, 1));
    let calls = dp.maps().calls.len();
    let ch = dp.apply(&two(), &Scope::all()).unwrap();
    assert!(ch.is_empty(), "{ch:?}");
    // Only the read of the kernel, no write.
    assert_eq!(dp.maps().calls[calls..], ["read"]);
}

/// Issue 25: a link an apply attaches is an interface that carries traffic
/// already (after a start from empty maps, every one): its programs go on
/// over full tables, never before its entries.
#[test]
fn links_go_on_after_entries_and_come_off_after_them() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    let calls = &dp.maps().calls;
    let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(at("set_iface 7") < at("attach pnhaaa"), "{calls:?}");
    assert!(
        at("set_endpoint 10.240.0.2") < at("attach pnhaaa"),
        "{calls:?}"
    );
    dp.maps_mut().calls.clear();
    dp.apply(&State::default(), &Scope::all()).unwrap();
    let calls = &dp.maps().calls;
    assert_eq!(calls.last().unwrap(), "detach pnhaaa", "{calls:?}");
    // A local container that goes takes its connections with the outside.
    assert!(calls.contains(&"forget_conns 10.240.0.2".to_string()));
    assert!(!calls.contains(&"forget_conns 10.240.0.3".to_string()));
    assert_eq!(dp.maps().state, State::default());
}

#[test]
fn a_full_apply_repairs_what_changed_behind_the_agents_back() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    // Someone (an older agent, a crash half-way) left an extra entry and
    // removed one of ours.
    dp.maps_mut()
        .state
        .endpoints
        .insert(ip4(10, 240, 0, 99), local(1, 8));
    dp.maps_mut().state.endpoints.remove(&ip4(10, 240, 0, 3));
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().state, slotted(two()));
}

#[test]
fn a_scoped_apply_touches_only_its_entries() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    dp.maps_mut().calls.clear();
    // A third container appears: the desired state of its scope alone.
    let mut want = State::default();
    want.endpoints.insert(ip4(10, 240, 0, 4), remote(1, 9));
    let ch = dp
        .apply(&want, &Scope::entries([ip4(10, 240, 0, 4)], [], false))
        .unwrap();
    assert_eq!((ch.set, ch.removed), (1, 0));
    assert_eq!(dp.maps().calls, ["set_endpoint 10.240.0.4"]);
    assert_eq!(dp.maps().state.endpoints.len(), 3);
    // It goes: removed, the others stay.
    dp.maps_mut().calls.clear();
    dp.apply(
        &State::default(),
        &Scope::entries([ip4(10, 240, 0, 4)], [], false),
    )
    .unwrap();
    assert_eq!(dp.maps().calls, ["remove_endpoint 10.240.0.4"]);
    assert_eq!(dp.maps().state.endpoints.len(), 2);
    // An address of the scope the kernel never had: nothing to remove.
    dp.maps_mut().calls.clear();
    dp.apply(
        &State::default(),
        &Scope::entries([ip4(10, 240, 0, 9)], [], false),
    )
    .unwrap();
    assert!(dp.maps().calls.is_empty(), "{:?}", dp.maps().calls);
    assert_eq!(dp.maps().state.peers.len(), 1, "underlay out of scope");
}

#[test]
fn programs_of_pinned_links_are_replaced_once_per_process() {
    // A previous agent left its links pinned: the kernel already holds them.
    let mut dp = Datapath::new(FakeMaps {
        state: slotted(two()),
        ..Default::default()
    });
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().calls, ["read", "attach pnhaaa"]);
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().calls, ["read", "attach pnhaaa", "read"]);
}

#[test]
fn a_failed_apply_is_finished_by_the_next() {
    let mut dp = Datapath::new(FakeMaps {
        fail_on: Some("set_endpoint 10.240.0.3"),
        ..Default::default()
    });
    assert!(dp.apply(&two(), &Scope::all()).is_err());
    assert_ne!(dp.maps().state, slotted(two()));
    dp.maps_mut().fail_on = None;
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().state, slotted(two()));
}

#[test]
fn attach_now_is_not_done_twice() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.attach_now("pnhaaa").unwrap();
    dp.apply(
        &two(),
        &Scope::entries([ip4(10, 240, 0, 2)], ["pnhaaa".into()], true),
    )
    .unwrap();
    let attaches = dp
        .maps()
        .calls
        .iter()
        .filter(|c| c.starts_with("attach"))
        .count();
    assert_eq!(attaches, 1);
}

#[test]
fn the_deny_list_is_its_own_scope_added_before_removed() {
    let mut dp = Datapath::new(FakeMaps::default());
    let mut want = two();
    want.egress_deny.insert((ip4(169, 254, 0, 0), 16), 1);
    want.egress_deny.insert((ip4(192, 168, 50, 1), 32), 2);
    dp.apply(&want, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state, slotted(want.clone()));
    // A container's change leaves the list alone.
    dp.maps_mut().calls.clear();
    dp.apply(
        &State::default(),
        &Scope::entries([ip4(10, 240, 0, 9)], [], false),
    )
    .unwrap();
    assert!(dp.maps().calls.is_empty(), "{:?}", dp.maps().calls);
    // The host's address changed: the list alone is replaced, the new
    // range in before the old one goes.
    let mut list = State::default();
    list.egress_deny.insert((ip4(169, 254, 0, 0), 16), 1);
    list.egress_deny.insert((ip4(192, 168, 50, 2), 32), 2);
    dp.maps_mut().calls.clear();
    let ch = dp.apply(&list, &Scope::edge()).unwrap();
    assert_eq!((ch.set, ch.removed), (1, 1));
    assert_eq!(
        dp.maps().calls,
        ["set_deny 192.168.50.2/32", "remove_deny 192.168.50.1/32"]
    );
    assert_eq!(dp.maps().state.endpoints.len(), 2, "entries out of scope");
    assert_eq!(dp.maps().state.egress_deny, list.egress_deny);
}

/// After a restart into other map layouts the new maps start empty: the
/// links an earlier agent left switch to this agent's programs only once
/// the maps hold their entries, as a new interface gets its programs.
#[test]
fn links_of_an_earlier_agent_switch_after_the_entries_are_set() {
    let mut kernel = FakeMaps::default();
    kernel.state.attached.insert("pnhaaa".into());
    let mut dp = Datapath::new(kernel);
    let mut want = two();
    want.attached.insert("pnhnew".into());
    dp.apply(&want, &Scope::all()).unwrap();
    let calls = &dp.maps().calls;
    let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(at("set_iface 7") < at("attach pnhnew"), "{calls:?}");
    assert!(at("set_iface 7") < at("attach pnhaaa"), "{calls:?}");
    assert!(
        at("set_endpoint 10.240.0.2") < at("attach pnhaaa"),
        "{calls:?}"
    );
    assert_eq!(dp.maps().state, slotted(want));
}

#[test]
fn a_failed_write_does_not_stop_the_others_and_every_failure_is_reported() {
    let mut dp = Datapath::new(FakeMaps {
        fail_on: Some("set_endpoint"),
        ..Default::default()
    });
    let Err(ApplyError::Writes { done, failed }) = dp.apply(&two(), &Scope::all()) else {
        panic!("both endpoints fail");
    };
    let failed: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        failed,
        [
            "fake failure: set_endpoint 10.240.0.2",
            "fake failure: set_endpoint 10.240.0.3"
        ]
    );
    // Every other write was made, in order; the new link of the failed
    // apply is on (failing closed beats running unfiltered).
    assert_eq!((done.set, done.attached), (3, 1));
    let mut rest = slotted(two());
    rest.endpoints.clear();
    assert_eq!(dp.maps().state, rest);
    // Removals go on too when sets fail, and detaches after them.
    dp.maps_mut().fail_on = Some("remove_iface");
    let Err(ApplyError::Writes { done, failed }) = dp.apply(&State::default(), &Scope::all())
    else {
        panic!("the interface fails");
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((done.removed, done.detached), (2, 1));
    assert_eq!(dp.maps().state.ifaces.len(), 1);
    assert!(dp.maps().state.attached.is_empty());
    // The next apply retries what failed, and only that.
    dp.maps_mut().fail_on = None;
    dp.maps_mut().calls.clear();
    dp.apply(&State::default(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().calls, ["read", "remove_iface 7"]);
    assert_eq!(dp.maps().state, State::default());
}

#[test]
fn a_scoped_apply_retries_its_failed_removal() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    dp.maps_mut().fail_on = Some("forget_conns");
    let scope = Scope::entries([ip4(10, 240, 0, 2)], [], false);
    assert!(dp.apply(&State::default(), &scope).is_err());
    // No full apply in between: the copy still holds the entry.
    dp.maps_mut().fail_on = None;
    dp.maps_mut().calls.clear();
    dp.apply(&State::default(), &scope).unwrap();
    assert_eq!(
        dp.maps().calls,
        ["remove_endpoint 10.240.0.2", "forget_conns 10.240.0.2"]
    );
}

/// Links of an earlier agent switch to this agent's programs only once the
/// maps hold every entry: not while a set fails.
#[test]
fn pinned_links_wait_for_every_set() {
    let mut kernel = FakeMaps {
        fail_on: Some("set_peer"),
        ..Default::default()
    };
    kernel.state.attached.insert("pnhaaa".into());
    let mut dp = Datapath::new(kernel);
    assert!(dp.apply(&two(), &Scope::all()).is_err());
    assert!(!dp.maps().calls.contains(&"attach pnhaaa".to_string()));
    dp.maps_mut().fail_on = None;
    dp.apply(&two(), &Scope::all()).unwrap();
    assert!(dp.maps().calls.contains(&"attach pnhaaa".to_string()));
    assert_eq!(dp.maps().state, slotted(two()));
}

fn ula(host: u8) -> pn_common::Ip6 {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfd, 0x12]);
    a[15] = host;
    a
}

#[test]
fn ipv6_endpoints_follow_their_scope() {
    let mut dp = Datapath::new(FakeMaps::default());
    let mut want = two();
    want.endpoints6.insert(ula(2), local(1, 7));
    want.endpoints6.insert(ula(3), remote(1, 9));
    want.ifaces.get_mut(&7).unwrap().addr6 = ula(2);
    dp.apply(&want, &Scope::all()).unwrap();
    // The local one with its interface's counter row, as the IPv4 one.
    assert_eq!(dp.maps().state.endpoints6, slotted(want.clone()).endpoints6);
    assert_eq!(dp.maps().state.endpoints6[&ula(2)].row(), 1);
    assert_eq!(dp.maps().state.ifaces[&7].addr6, ula(2));
    assert!(
        dp.maps()
            .calls
            .contains(&"set_endpoint6 fd12::2".to_string())
    );
    // A scope naming no IPv6 address leaves them alone, even gone from `want`.
    dp.maps_mut().calls.clear();
    let mut gone = want.clone();
    gone.endpoints6.clear();
    dp.apply(&gone, &Scope::entries([ip4(10, 240, 0, 3)], [], false))
        .unwrap();
    assert_eq!(dp.maps().state.endpoints6.len(), 2);
    // Named, the remote one goes and nothing else is touched.
    let scope = Scope::entries([ip4(10, 240, 0, 3)], [], false).with_addrs6([ula(3)]);
    gone.endpoints6.insert(ula(2), local(1, 7));
    dp.apply(&gone, &scope).unwrap();
    assert_eq!(
        dp.maps().state.endpoints6.keys().collect::<Vec<_>>(),
        [&ula(2)]
    );
    assert!(
        dp.maps()
            .calls
            .contains(&"remove_endpoint6 fd12::3".to_string())
    );
    assert!(
        !dp.maps()
            .calls
            .iter()
            .any(|c| c.starts_with("set_endpoint6"))
    );
    // A full apply repairs what the kernel lost.
    dp.maps_mut().state.endpoints6.clear();
    dp.apply(&want, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.endpoints6, slotted(want).endpoints6);
}

#[test]
fn the_ipv6_deny_list_follows_the_edge_scope_and_local_ipv6_members_take_their_connections() {
    let ula = |last: u8| {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = last;
        a
    };
    let mut dp = Datapath::new(FakeMaps::default());
    let mut want = two();
    want.egress_deny6.insert(
        ([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 10),
        1,
    );
    want.egress_deny6.insert((ula(1), 128), 2);
    want.endpoints6.insert(ula(9), local(1, 7));
    dp.apply(&want, &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.egress_deny6, want.egress_deny6);
    // The host's address changed: the new range in before the old goes.
    let mut list = State::default();
    list.egress_deny6.insert(
        ([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 10),
        1,
    );
    list.egress_deny6.insert((ula(2), 128), 2);
    dp.maps_mut().calls.clear();
    dp.apply(&list, &Scope::edge()).unwrap();
    assert_eq!(
        dp.maps().calls,
        ["set_deny6 fd00::2/128", "remove_deny6 fd00::1/128"]
    );
    // A local member that goes forgets its IPv6 connections with the world.
    dp.maps_mut().calls.clear();
    dp.apply(&State::default(), &Scope::all()).unwrap();
    assert!(
        dp.maps()
            .calls
            .contains(&"forget_conns6 fd00::9".to_string()),
        "{:?}",
        dp.maps().calls
    );
}

/// `PN_PEERS6` follows the underlay's scope as `PN_PEERS` does.
#[test]
fn ipv6_peers_are_written_and_removed_with_the_underlay() {
    let mut dp = Datapath::new(FakeMaps::default());
    let mut want = two();
    let b6 = "2001:db8::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    want.peers6.insert(b6, Peer { index: 7, flags: 0 });
    dp.apply(&want, &Scope::all()).unwrap();
    assert!(
        dp.maps()
            .calls
            .contains(&"set_peer6 2001:db8::2".to_string())
    );
    assert_eq!(dp.maps().state.peers6[&b6].index, 7);
    // Out of the underlay's scope: left alone.
    want.peers6.clear();
    dp.apply(&want, &Scope::entries([], [], false)).unwrap();
    assert_eq!(dp.maps().state.peers6.len(), 1);
    dp.maps_mut().calls.clear();
    dp.apply(&want, &Scope::underlay()).unwrap();
    assert_eq!(dp.maps().calls, ["remove_peer6 2001:db8::2"]);
    assert!(dp.maps().state.peers6.is_empty());
}

#[test]
fn local_endpoints_carry_their_interfaces_counter_rows() {
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    let (mine, theirs) = (ip4(10, 240, 0, 2), ip4(10, 240, 0, 3));
    assert_eq!(dp.maps().state.endpoints[&mine].row(), 1);
    assert_eq!(dp.maps().state.endpoints[&theirs].peer, 9, "a peer, no row");
    // An entry an earlier agent wrote (no row) gets it at a full apply.
    dp.maps_mut().state.endpoints.get_mut(&mine).unwrap().peer = 0;
    dp.apply(&two(), &Scope::all()).unwrap();
    assert_eq!(dp.maps().state.endpoints[&mine].row(), 1);
    // The interface under a new address takes a new row: its endpoint
    // follows in the same apply.
    let mut moved = two();
    moved.endpoints.remove(&mine);
    moved.ifaces.get_mut(&7).unwrap().addr = ip4(10, 240, 0, 4);
    moved.endpoints.insert(ip4(10, 240, 0, 4), local(1, 7));
    let mut dp = Datapath::new(FakeMaps::default());
    dp.apply(&two(), &Scope::all()).unwrap();
    dp.apply(&moved, &Scope::all()).unwrap();
    let slot = dp.maps().state.ifaces[&7].slot;
    assert_eq!(dp.maps().state.endpoints[&ip4(10, 240, 0, 4)].row(), slot);
}

#[path = "memo_tests.rs"]
mod memo;
