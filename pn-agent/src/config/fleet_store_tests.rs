//! The fleet's settings: the store (plain text or TLS) and the tunnel
//! it needs, from flags and file.

use super::tests::{file, refused};
use super::*;

fn fleet(store: &str) -> RunSettings {
    RunSettings {
        host_id: Some("h1".into()),
        store: Some(store.into()),
        advertise: Some("192.0.2.1:51871".parse().unwrap()),
        underlay_iface: Some("eth1".into()),
        store_insecure: Some(true),
        ..Default::default()
    }
}

#[test]
fn plain_text_to_a_store_off_this_host_is_refused_unless_insecure() {
    let plain = |store: &str| RunSettings {
        store_insecure: None,
        ..fleet(store)
    };
    for store in [
        "etcd://10.0.0.1:2379",
        "etcd://127.0.0.1:2379,10.0.0.2:2379",
        "etcd://etcd.example:2379",
        "etcd://[fd00::1]:2379",
    ] {
        refused(plain(store), None, "is plain text and unauthenticated, and");
    }
    let e = RunConfig::resolve(plain("etcd://10.0.0.2:2379"), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("10.0.0.2:2379 is not on this host's loopback"),
        "{e}"
    );
    for store in [
        "etcd://127.0.0.1:2379",
        "etcd://127.0.0.5:2379,localhost:2379",
        "etcd://[::1]:2379",
    ] {
        assert!(RunConfig::resolve(plain(store), None).is_ok(), "{store}");
    }
    // The flag, alone on the command line, or `false` to say no.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        s: RunSettings,
    }
    let parse = |extra: &[&str]| {
        let mut args = vec!["run", "--store", "etcd://10.0.0.1:2379", "--host-id", "h1"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--advertise", "192.0.2.1:51871", "--underlay-iface", "eth1"]);
        <Flags as clap::Parser>::try_parse_from(args).unwrap().s
    };
    assert!(RunConfig::resolve(parse(&["--store-insecure"]), None).is_ok());
    let e = RunConfig::resolve(parse(&["--store-insecure", "false"]), None).unwrap_err();
    assert!(
        e.to_string().contains("--store-insecure on a test bed"),
        "{e}"
    );
    // TLS needs no flag, wherever the store is.
    let tls = RunSettings {
        etcd_cacert: Some("/ca.pem".into()),
        etcd_cert: Some("/h1.pem".into()),
        etcd_key: Some("/h1.key".into()),
        ..plain("etcds://10.0.0.1:2379")
    };
    assert!(RunConfig::resolve(tls, None).is_ok());
}

#[test]
fn a_fleet_store_needs_the_tunnel() {
    for (advertise, underlay, want) in [
        (false, false, "needs --advertise and --underlay-iface"),
        (true, false, "needs --underlay-iface"),
        (false, true, "needs --advertise: without the tunnel"),
    ] {
        let mut flags = fleet("etcd://10.0.0.1:2379");
        if !advertise {
            flags.advertise = None;
        }
        if !underlay {
            flags.underlay_iface = None;
        }
        refused(flags, None, want);
    }
    assert!(RunConfig::resolve(fleet("etcd://10.0.0.1:2379"), None).is_ok());
    // The embedded store is one host: no tunnel needed.
    let c = RunConfig::resolve(
        RunSettings {
            host_id: Some("h1".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(c.store, StoreSpec::Embedded);
}

#[test]
fn an_ipv6_advertise_is_taken() {
    let v6 = RunSettings {
        advertise: Some("[2001:db8::1]:51871".parse().unwrap()),
        ..fleet("etcd://10.0.0.1:2379")
    };
    let c = RunConfig::resolve(v6.clone(), None).unwrap();
    assert_eq!(c.advertise, Some("[2001:db8::1]:51871".parse().unwrap()));
    // From the file as well (the scope id of a link-local one is dropped
    // with it: refused below).
    let f = file("advertise = \"[2001:db8::7]:4000\"\n");
    let alone = RunSettings {
        host_id: Some("h1".into()),
        ..Default::default()
    };
    let c = RunConfig::resolve(alone, Some(&f.0)).unwrap();
    assert_eq!(c.advertise, Some("[2001:db8::7]:4000".parse().unwrap()));
    // Addresses peers cannot reach are refused at start.
    for (bad, why) in [
        ("[::]:51871", "the unspecified address"),
        ("[::1]:51871", "loopback"),
        ("[ff02::1]:51871", "multicast"),
        ("[fe80::1%2]:51871", "link-local"),
        ("[2001:db8::1]:0", "port 0"),
    ] {
        let s = RunSettings {
            advertise: Some(bad.parse().unwrap()),
            ..v6.clone()
        };
        refused(s, None, why);
    }
    // An IPv4-mapped address is its IPv4 address.
    let mapped = RunSettings {
        advertise: Some("[::ffff:192.0.2.1]:51871".parse().unwrap()),
        ..v6
    };
    let c = RunConfig::resolve(mapped, None).unwrap();
    assert_eq!(c.advertise, Some("192.0.2.1:51871".parse().unwrap()));
}

#[test]
fn tls_needs_all_three_files_and_plain_text_none() {
    let with = |store: &str, cacert: bool, cert: bool, key: bool| RunSettings {
        etcd_cacert: cacert.then(|| "/ca.pem".into()),
        etcd_cert: cert.then(|| "/h1.pem".into()),
        etcd_key: key.then(|| "/h1.key".into()),
        ..fleet(store)
    };
    refused(
        with("etcds://10.0.0.1:2379", false, false, false),
        None,
        "needs --etcd-cacert, --etcd-cert and --etcd-key (missing --etcd-cacert, --etcd-cert, --etcd-key)",
    );
    refused(
        with("etcds://10.0.0.1:2379", true, true, false),
        None,
        "(missing --etcd-key)",
    );
    // Certificates with a plain-text or embedded store would be a silent
    // downgrade: refused.
    refused(
        with("etcd://10.0.0.1:2379", true, true, true),
        None,
        "--etcd-cacert, --etcd-cert, --etcd-key given but --store etcd://… is plain text",
    );
    refused(
        with("embedded", false, true, false),
        None,
        "--etcd-cert given but --store is embedded",
    );
    refused(
        with("https://10.0.0.1:2379", true, true, true),
        None,
        "invalid --store",
    );
    // The files themselves are read by `store::etcd` (tls/tests.rs).
    let c = RunConfig::resolve(with("etcds://10.0.0.1:2379", true, true, true), None).unwrap();
    assert!(matches!(c.store, StoreSpec::EtcdTls(..)));
}

#[test]
fn tls_settings_come_from_the_file_too() {
    let f = file(
        "store = \"etcds://10.0.0.1:2379,10.0.0.2:2379\"\netcd-cacert = \"/ca.crt\"\n\
         etcd-cert = \"/h1.crt\"\netcd-key = \"/h1.key\"\nadvertise = \"192.0.2.1:51871\"\n\
         underlay-iface = \"eth1\"\nhost-id = \"h1\"\n",
    );
    let tls = |key: &str| {
        StoreSpec::EtcdTls(
            vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
            TlsFiles {
                cacert: "/ca.crt".into(),
                cert: "/h1.crt".into(),
                key: key.into(),
            },
        )
    };
    let c = RunConfig::resolve(RunSettings::default(), Some(&f.0)).unwrap();
    assert_eq!(c.store, tls("/h1.key"));
    // A flag beats the file here too.
    let flags = RunSettings {
        etcd_key: Some("/other.key".into()),
        ..Default::default()
    };
    let c = RunConfig::resolve(flags, Some(&f.0)).unwrap();
    assert_eq!(c.store, tls("/other.key"));
}
