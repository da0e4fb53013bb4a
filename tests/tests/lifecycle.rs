//! Control commands: restart safety, detach, idempotence, and bad input that
//! must give one clear line and leave nothing half-made.

use std::{net::SocketAddr, time::Duration};

use pn_agent::error::ErrorKind;
use pn_tests::{Host, Namespace, eventually, net, scenario::OneApp, unique_prefix};

const SHORT: Duration = Duration::from_millis(800);
const LONG: Duration = Duration::from_secs(5);

fn host_links(host: &Host) -> Vec<String> {
    let out = host.ns.ip(&["-j", "link", "show"]);
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("pnh"))
        .collect()
}

#[test]
fn restart_keeps_everything_and_enforcement_never_stops() {
    let mut host = Host::start(&unique_prefix(), "h1");
    let OneApp { app: a, c1, c2, .. } = OneApp::new(&host, &host, ["web", "web"]);
    let (_, b) = host.network_and_app(&[]);
    let c3 = host.member(&b, "web", "c3");
    let (ip1, ip2) = (c1.addr, c2.addr);
    let before = (
        host.cli_ok(&["network", "list"]),
        host.cli_ok(&["app", "list"]),
        host.cli_ok(&["container", "list"]),
    );
    let _srv = net::tcp_echo_server(&c2, 7000);
    net::tcp_echo(&c1, SocketAddr::from((ip2, 7000)), b"before", LONG).unwrap();
    let forwarded_before = host.packets(&a, "web-1", "forwarded");

    host.stop();
    // The programs stay attached with their maps while no agent runs.
    net::tcp_echo(&c1, SocketAddr::from((ip2, 7000)), b"during", LONG)
        .expect("members talk while the agent is down");
    let _srv1 = net::tcp_echo_server(&c1, 7001);
    assert!(
        net::tcp_echo(&c3, SocketAddr::from((ip1, 7001)), b"x", SHORT).is_err(),
        "isolation must hold while the agent is down"
    );

    host.restart();
    let after = (
        host.cli_ok(&["network", "list"]),
        host.cli_ok(&["app", "list"]),
        host.cli_ok(&["container", "list"]),
    );
    assert_eq!(before, after);
    net::tcp_echo(&c1, SocketAddr::from((ip2, 7000)), b"after", LONG).unwrap();
    assert!(
        net::tcp_echo(&c3, SocketAddr::from((ip1, 7001)), b"x", SHORT).is_err(),
        "isolation after restart"
    );
    // Counters are pinned: they carry over.
    assert!(host.packets(&a, "web-1", "forwarded") > forwarded_before);
    // One pinned link per hook, updated in place by the new agent.
    let pins = std::fs::read_dir(host.bpffs().join("links"))
        .unwrap()
        .count();
    assert_eq!(pins, 6);
    assert_eq!(host_links(&host).len(), 3);
}

#[test]
fn detach_removes_the_interface_and_frees_the_address_and_attach_is_idempotent() {
    let host = Host::start(&unique_prefix(), "h1");
    let (_, a) = host.network_and_app(&[]);
    let c1 = host.member(&a, "web", "c1");
    let again = host.attach(&a, "web", &c1);
    assert_eq!(c1.attached, again, "attach twice is the same container");
    assert_eq!(host.container_count(), 1);
    assert!(
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", c1.name))
            .unwrap()
            .contains("nameserver 169.254.1.1")
    );
    host.cli_ok(&[
        "container",
        "detach",
        "--app",
        &a,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    assert!(host_links(&host).is_empty(), "host side removed");
    assert!(
        c1.exec(&["ip", "link", "show", "pn0"]).status.code() != Some(0),
        "container side removed"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{}/resolv.conf", c1.name)).exists());
    assert_eq!(host.container_count(), 0);
    let c2 = host.member(&a, "worker", "c2");
    assert_eq!(c2.addr, c1.addr, "the freed address is handed out again");
    let out = host.cli(&[
        "container",
        "detach",
        "--app",
        &a,
        "--type",
        "web",
        "--index",
        "1",
    ]);
    out.assert_error(ErrorKind::NotFound, "not found");
}

#[test]
fn a_deleted_namespace_is_cleaned_up_and_force_delete_removes_everything() {
    let mut host = Host::start(&unique_prefix(), "h1");
    let OneApp {
        net: net_a, c1, c2, ..
    } = OneApp::new(&host, &host, ["web", "worker"]);
    // The container dies with the agent down: its veth goes with the namespace.
    host.stop();
    drop(c1);
    host.restart();
    assert!(eventually(LONG, || host.container_count() == 1));
    assert_eq!(host_links(&host).len(), 1);
    let out = host.cli(&["network", "delete", &net_a]);
    out.assert_error(ErrorKind::Conflict, "--force");
    host.cli_ok(&["network", "delete", &net_a, "--force"]);
    assert!(
        host.json(&["network", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(host.json(&["app", "list"]).as_array().unwrap().is_empty());
    assert!(host_links(&host).is_empty());
    assert!(c2.exec(&["ip", "link", "show", "pn0"]).status.code() != Some(0));
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_nothing_half_made() {
    let p = unique_prefix();
    let host = Host::start(&p, "h1");
    let (small, a) = host.network_and_app(&["--cidr", "10.241.0.0/30"]);
    let _c1 = host.member(&a, "web", "c1");
    let _c2 = host.member(&a, "web", "c2");
    let c3 = Namespace::new(&format!("{p}-c3"));
    let snapshot = || {
        (
            host.cli_ok(&["network", "list"]),
            host.cli_ok(&["app", "list"]),
            host.cli_ok(&["container", "list"]),
            host_links(&host),
        )
    };
    let before = snapshot();
    let unknown_app = "ap-00000000-0000-4000-8000-000000000000";
    let unknown_net = "pn-00000000-0000-4000-8000-000000000000";
    for (args, says, kind) in [
        // Exhausted range: a /30 has two addresses.
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "web",
                "--netns",
                &c3.name,
            ],
            "no free address",
            ErrorKind::Exhausted,
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                unknown_app,
                "--type",
                "web",
                "--netns",
                &c3.name,
            ],
            "not found",
            ErrorKind::NotFound,
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "web",
                "--netns",
                "pt-no-such-ns",
            ],
            "namespace pt-no-such-ns not found",
            ErrorKind::NotFound,
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "web",
                "--netns",
                "/etc/hostname",
            ],
            "not a network namespace",
            ErrorKind::Invalid,
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "web",
                "--netns",
                &c3.name,
                "--ifname",
                "bad/name",
            ],
            "invalid interface name",
            ErrorKind::Invalid,
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "web",
                "--index",
                "1",
                "--netns",
                &c3.name,
            ],
            "already attached",
            ErrorKind::Conflict,
        ),
        (
            vec!["app", "create", "--network", unknown_net],
            "not found",
            ErrorKind::NotFound,
        ),
        (
            vec!["network", "create", "--cidr", "10.241.0.0/29"],
            "overlaps",
            ErrorKind::Conflict,
        ),
        (
            vec!["network", "create", "--cidr", "10.241.0.1/24"],
            "not a network address",
            ErrorKind::Invalid,
        ),
        (
            vec!["network", "create", "--id", &small],
            "already exists",
            ErrorKind::Conflict,
        ),
        (
            vec!["app", "delete", &a],
            "detach them first",
            ErrorKind::Conflict,
        ),
        (
            vec!["network", "delete", unknown_net],
            "not found",
            ErrorKind::NotFound,
        ),
        (
            vec!["env", "--app", &a, "--type", "web", "--index", "9"],
            "not found",
            ErrorKind::NotFound,
        ),
    ] {
        let out = host.cli(&args);
        out.assert_error(kind, says);
        assert_eq!(out.code, kind.exit_code(), "{args:?}");
    }
    // Malformed arguments never reach the agent: usage errors, exit 2.
    for (args, says) in [
        (
            vec!["app", "create", "--network", "pn-123"],
            "invalid network id",
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                "ap-zz",
                "--type",
                "web",
                "--netns",
                "x",
            ],
            "invalid application id",
        ),
        (
            vec![
                "container",
                "attach",
                "--app",
                &a,
                "--type",
                "Web_1",
                "--netns",
                "x",
            ],
            "invalid container type",
        ),
        (
            vec![
                "container",
                "detach",
                "--app",
                &a,
                "--type",
                "web",
                "--index",
                "0",
            ],
            "invalid container index",
        ),
        (
            vec!["network", "create", "--cidr", "10.0.0.0/33"],
            "invalid value",
        ),
        (vec!["container", "frobnicate"], "unrecognized subcommand"),
    ] {
        let out = host.cli(&args);
        out.assert_one_line_error(says);
        assert_eq!(out.code, 2, "{args:?}");
    }
    assert_eq!(before, snapshot(), "a failed command changed something");
    assert!(
        c3.exec(&["ip", "link", "show", "pn0"]).status.code() != Some(0),
        "no interface left in the namespace"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{}/resolv.conf", c3.name)).exists());
    // No agent behind the socket.
    let out = pn_tests::Cli::from(
        std::process::Command::new(pn_tests::agent_bin())
            .args(["--api-socket", "/nonexistent/pn.sock", "status"])
            .output()
            .unwrap(),
    );
    out.assert_error(ErrorKind::Unavailable, "agent not running");
    // A second agent on the same socket or state dir is refused.
    let second = host.ns.exec(&[
        pn_tests::agent_bin().to_str().unwrap(),
        "--api-socket",
        host.api_socket().to_str().unwrap(),
        "run",
        "--host-id",
        "h1",
        "--state-dir",
        "/tmp/pn-unused-state",
    ]);
    let second = pn_tests::Cli::from(second);
    second.assert_one_line_error("already running");
    let _ = std::fs::remove_dir_all("/tmp/pn-unused-state");
    // Garbage on the API socket is refused, and the agent keeps serving.
    let sock = host.api_socket();
    let reply = host.ns.run(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.write_all(b"{\"cmd\":\"network-create\",\"cidr\":\"banana\"}\n")
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    });
    assert!(
        reply.contains(r#""error":{"kind":"invalid","message":"bad request"#),
        "{reply}"
    );
    host.cli_ok(&["status"]);
}
