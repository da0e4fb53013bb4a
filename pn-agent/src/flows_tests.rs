use super::*;
use crate::model::{Container, ContainerKey};
use pn_common::{event::EventKind, ip4};

#[test]
fn events_are_named_after_containers() {
    let key = ContainerKey {
        app: "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap(),
        ctype: "web".parse().unwrap(),
        index: 1,
    };
    let mut view = MembershipView::default();
    let c = Container {
        key: key.clone(),
        network: "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c".parse().unwrap(),
        ip: Ipv4Addr::new(10, 240, 0, 1),
        ip6: None,
        host: "h1".parse().unwrap(),
        netns: "c1".into(),
        ifname: "pn0".into(),
        host_ifname: "pnhx".into(),
        created_at: 0,
        runtime: None,
        unhealthy: false,
        published: Some("192.0.2.1:30000".parse().unwrap()),
    };
    view.by_ip.insert(c.ip, key.clone());
    view.containers.insert(key, c);
    let ev = FlowEvent {
        src: ip4(10, 240, 0, 1),
        dst: ip4(10, 240, 4, 1),
        sport: 40000,
        dport: 80,
        proto: 6,
        kind: EventKind::Drop as u8,
        reason: Reason::PolicyDenied as u8,
        direction: Direction::FromContainer as u8,
        bytes: 60,
        ..Default::default()
    };
    let r = FlowRecord::from_event(&ev, &view, 3_723_004);
    assert_eq!(r.kind, "drop");
    assert_eq!(r.reason, "policy_denied");
    assert_eq!(
        r.src_container.as_deref(),
        Some("ap-a71da13f-7c70-4c00-a644-eee8558d8053/web-1")
    );
    assert_eq!(r.dst_container, None);
    assert_eq!(
        r.network.as_deref(),
        Some("pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c")
    );
    let line = r.line();
    assert!(line.starts_with("01:02:03.004 drop"), "{line}");
    assert!(
        line.contains(
            "10.240.0.1:40000 (ap-a71da13f-7c70-4c00-a644-eee8558d8053/web-1) -> 10.240.4.1:80"
        ),
        "{line}"
    );
    // A router through the published port: shown with it.
    let routed = FlowEvent {
        src: ip4(192, 0, 2, 7),
        dst: ip4(10, 240, 0, 1),
        sport: 50000,
        dport: 8080,
        kind: EventKind::NewFlow as u8,
        reason: Reason::Published as u8,
        direction: Direction::ToContainer as u8,
        ..ev
    };
    let r = FlowRecord::from_event(&routed, &view, 0);
    assert_eq!(r.translated.as_deref(), Some("192.0.2.1:30000"));
    assert!(r.line().contains("(via 192.0.2.1:30000)"), "{}", r.line());
    // A connection with the world, as the reader completes it.
    let mut out = FlowRecord::from_event(
        &FlowEvent {
            dst: ip4(203, 0, 113, 10),
            kind: EventKind::NewFlow as u8,
            reason: Reason::Egress as u8,
            ..ev
        },
        &view,
        0,
    );
    assert_eq!(out.translated, None);
    out.translated = Some("192.0.2.1".into());
    assert!(
        out.line().contains("-> 203.0.113.10:80 (as 192.0.2.1)"),
        "{}",
        out.line()
    );
    // Unknown codes from a newer datapath are shown, not dropped.
    let odd = FlowEvent {
        kind: 9,
        reason: 200,
        ..ev
    };
    let r = FlowRecord::from_event(&odd, &view, 0);
    assert_eq!((r.kind.as_str(), r.reason.as_str()), ("kind9", "reason200"));
}

/// A request's line: ends by their container's name, else by address,
/// an IPv6 server's in brackets before its port.
#[test]
fn request_lines_name_both_families() {
    let http = HttpFields {
        method: "GET".into(),
        path: "/x".into(),
        status: 200,
        duration_ms: 1.25,
        response_bytes: Some(42),
    };
    let rec = |src: &str, dst: &str, names: bool| FlowRecord {
        time_ms: 3_723_004,
        kind: "http".into(),
        reason: "forwarded".into(),
        direction: "from_container".into(),
        proto: "tcp".into(),
        src: src.parse().unwrap(),
        sport: 40000,
        dst: dst.parse().unwrap(),
        dport: 8080,
        bytes: 42,
        src_container: names.then(|| "ap-1/api-1".into()),
        dst_container: names.then(|| "ap-2/web-1".into()),
        network: None,
        translated: None,
        http: Some(http.clone()),
    };
    assert_eq!(
        rec("fd00:0:0:1::2", "fd00:0:0:1::3", false).line(),
        "01:02:03.004 fd00:0:0:1::2 -> [fd00:0:0:1::3]:8080 GET /x 200 1.2ms 42B"
    );
    assert_eq!(
        rec("10.240.0.2", "10.240.0.3", false).line(),
        "01:02:03.004 10.240.0.2 -> 10.240.0.3:8080 GET /x 200 1.2ms 42B"
    );
    assert_eq!(
        rec("fd00:0:0:1::2", "fd00:0:0:1::3", true).line(),
        "01:02:03.004 ap-1/api-1 -> ap-2/web-1:8080 GET /x 200 1.2ms 42B"
    );
    // The JSON keeps the addresses as they are.
    let json = serde_json::to_value(rec("fd00:0:0:1::2", "fd00:0:0:1::3", true)).unwrap();
    assert_eq!(json["src"], "fd00:0:0:1::2");
    assert_eq!(json["dst"], "fd00:0:0:1::3");
}
