use super::*;

pub(super) fn file(content: &str) -> tempfile_path::TempPath {
    tempfile_path::write(content)
}

pub(super) mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub fn write(content: &str) -> TempPath {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pn-config-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, content).unwrap();
        TempPath(p)
    }
}

#[test]
fn flags_beat_file_beats_defaults() {
    let f = file(
        "host-id = \"from-file\"\ndns-ttl = 9\nstore = \"etcd://10.0.0.1:2379,10.0.0.2:2379\"\n\
         store-insecure = true\nadvertise = \"192.0.2.1:51871\"\nunderlay-iface = \"eth1\"\n",
    );
    let flags = RunSettings {
        host_id: Some("from-flag".into()),
        ..Default::default()
    };
    let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
    assert_eq!(c.host_id.as_str(), "from-flag");
    assert_eq!(c.dns_ttl, 9);
    assert_eq!(
        c.store,
        StoreSpec::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()])
    );
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.dns_listen.to_string(), "169.254.1.1:53");
    assert_eq!(c.pool.to_string(), "10.240.0.0/12");
    assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
}

#[test]
fn edge_settings_from_flags_and_file() {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        s: RunSettings,
    }
    let flags = <Flags as clap::Parser>::try_parse_from([
        "run",
        "--host-id",
        "h",
        "--egress-deny",
        "198.51.100.0/24,2001:db8:bad::/48,192.0.2.64/26",
        "--router-cidr",
        "192.0.2.0/28",
        "--publish-ports",
        "40000-40099",
        "--forward-guard",
        "on",
    ])
    .unwrap()
    .s;
    let c = RunConfig::resolve(flags, None).unwrap();
    assert_eq!(
        c.egress_deny,
        vec![
            "198.51.100.0/24".parse::<Ipv4Net>().unwrap(),
            "192.0.2.64/26".parse().unwrap()
        ]
    );
    // IPv6 ranges go to IPv6's list.
    assert_eq!(
        c.egress_deny6,
        vec!["2001:db8:bad::/48".parse::<Ipv6Net>().unwrap()]
    );
    assert_eq!(
        c.router_cidrs,
        vec!["192.0.2.0/28".parse::<Ipv4Net>().unwrap()]
    );
    assert_eq!(
        c.publish_ports,
        PortRange {
            lo: 40000,
            hi: 40099
        }
    );
    assert_eq!(c.forward_guard, crate::edge::ForwardGuard::On);

    let f = file(
        "host-id = \"h\"\negress-deny = [\"203.0.113.0/24\", \"2001:db8:bad::/48\"]\nrouter-cidr = [\"192.0.2.0/24\"]\npublish-ports = \"31000-31010\"\nforward-guard = \"off\"\n",
    );
    let c = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap();
    assert_eq!(
        c.egress_deny,
        vec!["203.0.113.0/24".parse::<Ipv4Net>().unwrap()]
    );
    assert_eq!(
        c.egress_deny6,
        vec!["2001:db8:bad::/48".parse::<Ipv6Net>().unwrap()]
    );
    assert_eq!(
        c.router_cidrs,
        vec!["192.0.2.0/24".parse::<Ipv4Net>().unwrap()]
    );
    assert_eq!(c.publish_ports.to_string(), "31000-31010");
    assert_eq!(c.forward_guard, crate::edge::ForwardGuard::Off);

    // Defaults: nothing denied beyond the built-in list, no router, the NodePort range.
    let c = RunConfig::resolve(
        RunSettings {
            host_id: Some("h".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert!(c.egress_deny.is_empty() && c.egress_deny6.is_empty() && c.router_cidrs.is_empty());
    assert_eq!(c.forward_guard, crate::edge::ForwardGuard::Auto);
    assert_eq!(
        c.publish_ports,
        PortRange {
            lo: 30000,
            hi: 32767
        }
    );
}

#[test]
fn bad_edge_settings_give_one_clear_line() {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        s: RunSettings,
    }
    for (args, want) in [
        (["--egress-deny", "10.0.0.0/8"], "overlaps the pool"),
        (["--egress-deny", "10.241.0.0/16"], "overlaps the pool"),
        (["--router-cidr", "192.0.2.1/24"], "not a network address"),
        (["--egress-deny", "2001:db8::1/48"], "not a network address"),
        (
            ["--egress-deny", "fd00:1::/32"],
            "overlaps the IPv6 pool fd00:1:2::/48",
        ),
        (["--router-cidr", "10.240.0.0/12"], "overlaps the pool"),
    ] {
        let flags = <Flags as clap::Parser>::try_parse_from(
            ["run", "--host-id", "h", "--pool6", "fd00:1:2::/48"]
                .into_iter()
                .chain(args),
        )
        .unwrap()
        .s;
        let e = RunConfig::resolve(flags, None).unwrap_err().to_string();
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    for args in [
        ["--publish-ports", "32767-30000"],
        ["--publish-ports", "0-10"],
        ["--publish-ports", "30000"],
        ["--egress-deny", "not-a-cidr"],
        ["--router-cidr", "192.0.2.0/33"],
        ["--forward-guard", "yes"],
    ] {
        let e = <Flags as clap::Parser>::try_parse_from(
            ["run", "--host-id", "h"].into_iter().chain(args),
        )
        .err()
        .unwrap_or_else(|| panic!("{args:?} accepted"));
        assert!(e.to_string().contains(args[0]), "{args:?}: {e}");
    }
    let f = file("publish-ports = \"9-1\"\n");
    let e = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap_err();
    assert!(e.to_string().contains("LO-HI"), "{e}");
}

#[test]
fn bad_settings_give_one_clear_line() {
    let f = file("hots-id = \"typo\"\n");
    let e = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap_err();
    assert!(e.to_string().contains("unknown field `hots-id`"), "{e}");
    for (flags, want) in [
        (
            RunSettings {
                host_id: Some("Bad_Host".into()),
                ..Default::default()
            },
            "invalid host id",
        ),
        (
            RunSettings {
                host_id: Some("h".into()),
                store: Some("consul://x".into()),
                ..Default::default()
            },
            "invalid --store",
        ),
        (
            RunSettings {
                host_id: Some("h".into()),
                store: Some("etcd://nohost".into()),
                ..Default::default()
            },
            "invalid etcd endpoint",
        ),
        (
            RunSettings {
                host_id: Some("h".into()),
                mtu: Some(100),
                ..Default::default()
            },
            "invalid --mtu",
        ),
        (
            RunSettings {
                host_id: Some("h".into()),
                host_quota: Some(0),
                ..Default::default()
            },
            "invalid --host-quota",
        ),
    ] {
        let e = RunConfig::resolve(flags, None).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    let e = RunConfig::resolve(
        RunSettings::default(),
        Some(Path::new("/nonexistent/pn.toml")),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("reading config file"), "{e:#}");
}

/// The config file `cargo xtask install` puts in /etc/pn-agent: as
/// shipped (every line a comment) and with every setting uncommented,
/// it is a valid configuration.
#[test]
fn the_installed_default_config_is_valid() {
    let shipped = include_str!("../../../dist/config.toml");
    let f = file(shipped);
    let flags = RunSettings {
        host_id: Some("h1".into()),
        ..Default::default()
    };
    let c = RunConfig::resolve(flags.clone(), Some(&f.0)).unwrap();
    assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
    let uncommented: String = shipped
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv)
                if kv.split_once(" = ").is_some_and(|(k, _)| {
                    k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                }) =>
            {
                kv
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("\nstore = "), "{uncommented}");
    let f = file(&uncommented);
    let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
    assert_eq!(c.host_id.as_str(), "h1", "a flag wins over the file");
    assert_eq!(c.underlay_iface.as_deref(), Some("eth0"));
}

#[test]
fn the_tunnel_cipher_is_a_preference_by_name() {
    use pn_tunnel::aead::Cipher;
    let with = |name: &str| RunSettings {
        host_id: Some("h1".into()),
        tunnel_cipher: Some(name.into()),
        ..Default::default()
    };
    for (name, want) in [
        ("aes256gcm", Cipher::Aes256Gcm),
        ("chacha20poly1305", Cipher::Ring),
        ("rustcrypto", Cipher::RustCrypto),
    ] {
        let c = RunConfig::resolve(with(name), None).unwrap();
        assert_eq!(c.tunnel.cipher, want);
    }
    let c = RunConfig::resolve(with("aes256gcm"), None).unwrap();
    assert_eq!(c.tunnel.aes_hardware, pn_tunnel::aead::aes_hardware());
    refused(with("aes128gcm"), None, "invalid --tunnel-cipher");
}

#[test]
fn ipv6_is_on_by_default_and_its_pool_unique_local() {
    use crate::ipam::Ipv6Mode;
    let h = || RunSettings {
        host_id: Some("h".into()),
        ..Default::default()
    };
    let c = RunConfig::resolve(h(), None).unwrap();
    assert_eq!(c.ipv6, Ipv6Mode::On { pool6: None });
    let c = RunConfig::resolve(
        RunSettings {
            ipv6: Some(Switch::Off),
            ..h()
        },
        None,
    )
    .unwrap();
    assert_eq!(c.ipv6, Ipv6Mode::Off);
    let f = file("host-id = \"h\"\npool6 = \"fd12:3456:789a::/48\"\nipv6 = \"on\"\n");
    let c = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap();
    assert_eq!(
        c.ipv6,
        Ipv6Mode::On {
            pool6: Some("fd12:3456:789a::/48".parse().unwrap())
        }
    );
    for (pool6, want) in [
        ("2001:db8::/48", "invalid --pool6"),
        ("fd12:3456:789a::1/48", "not a network address"),
        ("fd12:3456:789a:1:2::/80", "at least a /64"),
    ] {
        refused(
            RunSettings {
                pool6: Some(pool6.parse().unwrap()),
                ..h()
            },
            None,
            want,
        );
    }
    let f = file("host-id = \"h\"\nipv6 = \"maybe\"\n");
    assert!(RunConfig::resolve(RunSettings::default(), Some(&f.0)).is_err());
    assert_eq!("off".parse::<Switch>(), Ok(Switch::Off));
    assert!("yes".parse::<Switch>().is_err());
}

#[test]
fn the_tunnel_io_switches_from_flags_and_file() {
    let f = file(
        "tunnel-workers = 3\ntunnel-offloads = \"gso,gro\"\ntunnel-spin-us = 40\ntunnel-pin-rx = false\n",
    );
    let flags = RunSettings {
        host_id: Some("h1".into()),
        tunnel_pin: Some(false),
        ..Default::default()
    };
    let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
    let o = &c.tunnel_io;
    assert_eq!(o.workers, 3);
    assert!(!o.tso && o.gso && o.gro && !o.coalesce && !o.pin && !o.pin_rx);
    assert_eq!(o.spin, std::time::Duration::from_micros(40));
    let d = RunConfig::resolve(
        RunSettings {
            host_id: Some("h1".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(d.tunnel_io, pn_tunnel::device::Options::default());
    let with = |s: RunSettings| RunSettings {
        host_id: Some("h1".into()),
        ..s
    };
    for (flags, want) in [
        (
            with(RunSettings {
                tunnel_workers: Some(0),
                ..Default::default()
            }),
            "invalid --tunnel-workers",
        ),
        (
            with(RunSettings {
                tunnel_offloads: Some("tso,lro".into()),
                ..Default::default()
            }),
            "invalid --tunnel-offloads",
        ),
        (
            with(RunSettings {
                tunnel_spin_us: Some(5000),
                ..Default::default()
            }),
            "invalid --tunnel-spin-us",
        ),
    ] {
        refused(flags, None, want);
    }
}

pub(super) fn refused(flags: RunSettings, file: Option<&Path>, want: &str) {
    let e = RunConfig::resolve(flags, file).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}
