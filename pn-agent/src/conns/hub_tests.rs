//! What the reader makes of the tracker's outcomes: metrics and log records,
//! whatever a batch's size (records past the hub's recent ones are not made
//! unless a `--follow` reader or the trace log wants them).

use super::*;
use pn_common::{ip4, ip4_octets};

const C: pn_common::Ip4 = ip4(10, 240, 0, 2);
const S: pn_common::Ip4 = ip4(10, 240, 0, 3);

/// The client `C` a container of the view (`web-1` of app 1); the
/// server `S` none.
fn view() -> Arc<RwLock<MembershipView>> {
    let c = crate::testing::model::container(1, std::net::Ipv4Addr::from(ip4_octets(C)), "h1");
    let mut v = MembershipView::default();
    v.by_ip.insert(c.ip, c.key.clone());
    v.containers.insert(c.key.clone(), c);
    Arc::new(RwLock::new(v))
}

/// `n` requests of one keep-alive connection, answered and logged.
fn batch(n: usize) -> Vec<Outcome> {
    let key = Key {
        client: C,
        client_port: 40000,
        server: S,
        server_port: 8080,
    };
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Outcome::Responded(track::Answer {
            key,
            method: "GET",
            status: 200,
            duration_ns: 1_000_000,
        }));
        out.push(Outcome::Logged(Request {
            key,
            method: "GET",
            path: format!("/r{i}"),
            status: 200,
            duration_ns: 1_000_000,
            ts_ns: 0,
            bytes: Some(40),
        }));
    }
    out
}

fn path(r: &FlowRecord) -> &str {
    &r.http.as_ref().unwrap().path
}

#[test]
fn a_large_batch_keeps_the_recent_records_and_counts_every_request() {
    let (hub, flows, view) = (ConnHub::default(), FlowHub::default(), view());
    hub.apply(batch(1_500), &view, &flows);
    let recent = flows.recent();
    assert_eq!(recent.len(), 1_000);
    assert_eq!(path(&recent[0]), "/r500");
    assert_eq!(path(&recent[999]), "/r1499");
    let r = &recent[999];
    assert_eq!((r.kind.as_str(), r.proto.as_str()), ("http", "tcp"));
    let c = crate::testing::model::container(1, [10, 240, 0, 2], "h1");
    assert_eq!(r.src_container, Some(c.key.to_string()));
    assert_eq!(r.dst_container, None);
    assert_eq!(r.network, Some(c.network.to_string()));
    assert_eq!(r.http.as_ref().unwrap().response_bytes, Some(40));
    // A small batch after: appended in order, the oldest leave.
    hub.apply(batch(3), &view, &flows);
    let recent = flows.recent();
    assert_eq!(recent.len(), 1_000);
    assert_eq!(path(&recent[996]), "/r1499");
    assert_eq!(path(&recent[999]), "/r2");
    // Every request is counted, whatever was logged.
    let mut reg = Registry::default();
    hub.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("pn_http_requests_total{"))
        .expect("the requests' counter");
    assert!(line.ends_with(" 1503"), "{line}");
    assert!(line.contains("status_class=\"2xx\""), "{line}");
}

#[test]
fn a_follow_reader_gets_every_record_in_order() {
    let (hub, flows, view) = (ConnHub::default(), FlowHub::default(), view());
    let mut rx = flows.subscribe();
    hub.apply(batch(1_500), &view, &flows);
    for i in 0..1_500 {
        let r = rx.try_recv().expect("a record per request");
        assert_eq!(path(&r), format!("/r{i}"));
    }
    assert!(rx.try_recv().is_err());
    assert_eq!(flows.recent().len(), 1_000);
}
