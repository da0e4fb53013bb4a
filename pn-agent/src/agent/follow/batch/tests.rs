//! Batches against the event-by-event converge they replace: the same
//! kernel state from the same stream of events, in far fewer applies.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::*;
use crate::{
    agent::reconcile::{Local, desired},
    datapath::{Datapath, State, fake::FakeMaps},
    store::{WatchEvent, view::MembershipView},
    testing::model::{self, app_id, container, host_id as host, net_id},
};

fn key(index: u32) -> ContainerKey {
    model::key(1, "web", index)
}

struct Events {
    out: Vec<WatchEvent>,
    rev: i64,
}

impl Events {
    fn put<T: serde::Serialize>(&mut self, key: Key, value: &T) -> &mut Self {
        self.rev += 1;
        self.out.push(WatchEvent::Put {
            key: key.to_string(),
            value: serde_json::to_string(value).unwrap(),
            rev: self.rev,
        });
        self
    }

    fn delete(&mut self, key: Key) -> &mut Self {
        self.rev += 1;
        self.out.push(WatchEvent::Delete {
            key: key.to_string(),
            rev: self.rev,
        });
        self
    }

    /// A container's record, after its leases (as its host writes them).
    fn container(&mut self, c: Container) -> &mut Self {
        let lease = crate::model::AddressLease {
            owner: c.key.clone(),
            host: c.host.clone(),
            service: false,
        };
        let ips = std::iter::once(std::net::IpAddr::V4(c.ip)).chain(c.ip6.map(Into::into));
        for ip in ips {
            self.put(Key::HostIp(c.host.clone(), c.network, ip), &lease);
        }
        self.put(Key::Container(c.host.clone(), c.key.clone()), &c)
    }

    fn host(&mut self, id: &str, peer_id: u32) -> &mut Self {
        self.put(Key::Host(host(id)), &model::host(id, peer_id))
    }
}

/// A network and its app, this host `a`, hosts `b` and `c`, then changes
/// of every kind: containers registered, moved to another address, to
/// another host, deleted and re-created, an address given up by one and
/// taken by another, a local container (with and without its interface),
/// a host that comes after its containers and one that goes.
fn stream() -> Vec<WatchEvent> {
    let mut e = Events {
        out: Vec::new(),
        rev: 0,
    };
    e.put(
        Key::Network(net_id(1)),
        &model::network(1, "10.240.0.0/22", 3),
    )
    .put(Key::App(app_id(1)), &model::app(1, 1))
    .host("a", 1)
    .host("b", 2);
    for i in 1..=20u8 {
        e.container(container(u32::from(i), [10, 240, 0, 10 + i], "b"));
    }
    e.container(container(30, [10, 240, 0, 100], "a"))
        .container(container(31, [10, 240, 0, 101], "a"))
        // Attached again elsewhere, then changed (the second flushes the
        // first); an address changed in place is refused.
        .delete(Key::Container(host("b"), key(1)))
        .container(container(1, [10, 240, 1, 1], "b"))
        .container(Container {
            unhealthy: true,
            ..container(1, [10, 240, 1, 1], "b")
        })
        .container(container(1, [10, 240, 1, 2], "b"))
        // Deleted, its address taken by another.
        .delete(Key::Container(host("b"), key(2)))
        .container(container(21, [10, 240, 0, 12], "b"))
        // Deleted and re-created elsewhere.
        .delete(Key::Container(host("b"), key(3)))
        .container(container(3, [10, 240, 1, 3], "b"))
        // Containers of a host not known yet (refused a peer), then the host.
        .container(container(40, [10, 240, 2, 1], "c"))
        .container(container(41, [10, 240, 2, 2], "c"))
        .host("c", 3)
        .container(container(42, [10, 240, 2, 3], "c"))
        // One moves from b to c: detached, attached again (a record
        // rewritten to name another host is refused).
        .container(container(6, [10, 240, 0, 16], "c"))
        .delete(Key::Container(host("b"), key(4)))
        .container(container(4, [10, 240, 0, 14], "c"))
        // An address claimed twice: the second is refused.
        .container(container(43, [10, 240, 0, 15], "c"))
        .delete(Key::Host(host("b")))
        .container(container(5, [10, 240, 0, 15], "b"));
    // A lease between them changes nothing.
    e.put(Key::Ip(net_id(1), Ipv4Addr::new(10, 240, 3, 1)), &"lease");
    e.out
}

struct Kernel {
    dp: Datapath<FakeMaps>,
    members: BTreeMap<Ipv4Addr, pn_tunnel::Member>,
    applies: usize,
}

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            dp: Datapath::new(FakeMaps::default()),
            members: BTreeMap::new(),
            applies: 0,
        }
    }

    /// What `Agent::converge` does with a desired state (the members as
    /// `MemberTable::apply` sets them).
    fn converge(&mut self, v: &MembershipView, t: &Touched) {
        let me = host("a");
        // Container 30 has its interface; 31's is gone.
        let links: BTreeMap<String, u32> = [(key(30).host_ifname(), 7)].into();
        let local = Local {
            host: &me,
            edge: None,
        };
        let want = desired(v, &local, &links, t);
        let scope = want.scope.clone().unwrap();
        self.dp.apply(&want.datapath, &scope).unwrap();
        match &want.addrs {
            None => self.members = want.members.clone(),
            Some(addrs) => {
                for a in addrs {
                    match want.members.get(a) {
                        Some(m) => self.members.insert(*a, *m),
                        None => self.members.remove(a),
                    };
                }
            }
        }
        self.applies += 1;
    }

    fn state(&self) -> (State, BTreeMap<Ipv4Addr, pn_tunnel::Member>) {
        (self.dp.maps().state.clone(), self.members.clone())
    }
}

/// The agent before batches: one converge per change.
fn one_by_one(events: &[WatchEvent]) -> Kernel {
    let mut v = MembershipView::default();
    let mut k = Kernel::new();
    for ev in events {
        let touched = match v.apply(ev) {
            Ok(Change::ContainerPut { new, old }) => {
                let mut t = vec![*new];
                t.extend(old.map(|o| *o));
                Touched::Containers(t)
            }
            Ok(Change::ContainerDeleted(c)) => Touched::Containers(vec![*c]),
            Ok(Change::Network(id)) => Touched::Network(id),
            Ok(Change::App) => Touched::Fleet,
            Ok(Change::Host) => Touched::All,
            _ => continue,
        };
        k.converge(&v, &touched);
    }
    k
}

/// As `follow_store` does it, with batches of at most `max` containers.
fn batched(events: &[WatchEvent], max: usize) -> Kernel {
    let mut v = MembershipView::default();
    let mut k = Kernel::new();
    let mut batch = Batch::default();
    let flush = |b: &mut Batch, k: &mut Kernel, v: &MembershipView| {
        if let Some(t) = b.take() {
            k.converge(v, &t);
        }
    };
    for ev in events {
        let (WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. }) = ev else {
            continue;
        };
        let step = batch.step(key);
        if matches!(step, Step::FlushThenJoin | Step::Alone) {
            flush(&mut batch, &mut k, &v);
        }
        let Ok(change) = v.apply(ev) else {
            continue;
        };
        match (step, change) {
            (Step::Join | Step::FlushThenJoin, c) => batch.add(c),
            (Step::Alone, Change::Network(id)) => k.converge(&v, &Touched::Network(id)),
            (Step::Alone, Change::Host) => k.converge(&v, &Touched::All),
            (Step::Alone, _) => k.converge(&v, &Touched::Fleet),
            (Step::Skip, _) => {}
        }
        if batch.keys.len() >= max {
            flush(&mut batch, &mut k, &v);
        }
    }
    flush(&mut batch, &mut k, &v);
    k
}

#[test]
fn batches_reach_the_state_one_converge_per_change_reaches() {
    let events = stream();
    let one = one_by_one(&events);
    let all = batched(&events, MAX_CONTAINERS);
    assert_eq!(all.state(), one.state());
    // Every batch size gives the same kernel.
    for max in [1, 2, 3, 7] {
        assert_eq!(
            batched(&events, max).state(),
            one.state(),
            "batches of {max}"
        );
    }
    // What the stream leaves: c's containers, 30 with its interface, 31
    // without (a member, not an endpoint).
    let (state, members) = all.state();
    let ep = |a: [u8; 4]| {
        state
            .endpoints
            .get(&crate::model::to_ip4(Ipv4Addr::from(a)))
    };
    assert!(ep([10, 240, 2, 3]).is_some_and(|e| e.is_remote() && e.peer == 3));
    assert!(ep([10, 240, 0, 14]).is_some_and(|e| e.peer == 3));
    // A container written after its host went has no peer: no entry.
    assert!(ep([10, 240, 0, 15]).is_none());
    assert!(ep([10, 240, 0, 100]).is_some_and(|e| e.ifindex == 7));
    assert!(ep([10, 240, 0, 101]).is_none());
    assert!(members.contains_key(&Ipv4Addr::new(10, 240, 0, 101)));
    // Far fewer applies: the run of 20 registrations is one.
    assert!(
        all.applies * 2 < one.applies,
        "{} vs {}",
        all.applies,
        one.applies
    );
}

/// The kernel after the stream is what one full converge of the final view
/// gives: a host that comes after its containers gives them endpoints, a
/// host that goes takes its containers' endpoints with it.
#[test]
fn the_stream_leaves_what_a_full_converge_of_its_view_gives() {
    let events = stream();
    let after = batched(&events, MAX_CONTAINERS);
    let mut v = MembershipView::default();
    for ev in &events {
        let _ = v.apply(ev);
    }
    let mut fresh = Kernel::new();
    fresh.converge(&v, &Touched::All);
    assert_eq!(after.state(), fresh.state());
    let (state, _) = after.state();
    let ep = |a: [u8; 4]| {
        state
            .endpoints
            .get(&crate::model::to_ip4(Ipv4Addr::from(a)))
    };
    // 40 and 41 were written before their host c.
    assert!(ep([10, 240, 2, 1]).is_some_and(|e| e.peer == 3));
    assert!(ep([10, 240, 2, 2]).is_some_and(|e| e.peer == 3));
    // Container 6 was on b, which went.
    assert!(ep([10, 240, 0, 16]).is_none());
}

#[test]
fn a_container_changed_twice_flushes_the_batch_first() {
    let mut b = Batch::default();
    let k = Key::Container(host("b"), key(1)).to_string();
    assert_eq!(b.step(&k), Step::Join);
    b.add(Change::ContainerPut {
        new: Box::new(container(1, [10, 240, 0, 2], "b")),
        old: None,
    });
    assert_eq!(b.step(&k), Step::FlushThenJoin);
    assert_eq!(
        b.step(&Key::Container(host("b"), key(2)).to_string()),
        Step::Join
    );
    assert!(!b.is_empty());
    assert!(matches!(b.take(), Some(Touched::Containers(t)) if t.len() == 1));
    assert!(b.is_empty() && b.take().is_none());
    assert_eq!(b.step(&k), Step::Join);
}

#[test]
fn records_other_than_containers_go_alone_and_leases_are_skipped() {
    let b = Batch::default();
    assert_eq!(b.step(&Key::Network(net_id(1)).to_string()), Step::Alone);
    assert_eq!(b.step(&Key::App(app_id(1)).to_string()), Step::Alone);
    assert_eq!(b.step(&Key::Host(host("b")).to_string()), Step::Alone);
    let lease = Key::Ip(net_id(1), Ipv4Addr::new(10, 240, 0, 2)).to_string();
    assert_eq!(b.step(&lease), Step::Skip);
    assert_eq!(b.step(&Key::Claim(key(1)).to_string()), Step::Skip);
    let own = Key::HostIp(host("b"), net_id(1), Ipv4Addr::new(10, 240, 0, 3).into());
    assert_eq!(b.step(&own.to_string()), Step::Skip);
    assert_eq!(
        b.step(&Key::HostClaim(host("b"), key(1)).to_string()),
        Step::Skip
    );
    assert_eq!(b.step("pool"), Step::Skip);
    // A key in another spelling is no key of the layout.
    let upper = Key::Container(host("b"), key(1)).to_string().to_uppercase();
    assert_eq!(b.step(&upper), Step::Skip);
}

#[test]
fn a_revision_is_applied_once_its_last_event_is() {
    assert_eq!(settled(5, Some(5)), None);
    assert_eq!(settled(5, Some(6)), Some(5));
    assert_eq!(settled(5, None), Some(5));
}
