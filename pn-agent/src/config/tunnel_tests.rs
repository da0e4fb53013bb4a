//! `--tunnel-notrack` and `--tc-memo` from flags and file.

use crate::config::{RunConfig, RunSettings};

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    s: RunSettings,
}

fn flags(args: &[&str]) -> Result<RunSettings, clap::Error> {
    let mut all = vec!["run", "--host-id", "h1"];
    all.extend_from_slice(args);
    <Flags as clap::Parser>::try_parse_from(all).map(|f| f.s)
}

fn file(content: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "pn-config-notrack-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, content).unwrap();
    p
}

fn resolve(args: &[&str], content: Option<&str>) -> anyhow::Result<RunConfig> {
    let path = content.map(file);
    let got = RunConfig::resolve(flags(args).unwrap(), path.as_deref());
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
    got
}

#[test]
fn the_tunnel_notrack_switch_is_off_unless_given() {
    assert!(!resolve(&[], None).unwrap().tunnel_io.notrack);
    assert!(
        resolve(&["--tunnel-notrack"], None)
            .unwrap()
            .tunnel_io
            .notrack
    );
    assert!(
        resolve(&["--tunnel-notrack", "true"], None)
            .unwrap()
            .tunnel_io
            .notrack
    );
    assert!(
        resolve(&[], Some("tunnel-notrack = true\n"))
            .unwrap()
            .tunnel_io
            .notrack
    );
    // The flag beats the file.
    assert!(
        !resolve(
            &["--tunnel-notrack", "false"],
            Some("tunnel-notrack = true\n")
        )
        .unwrap()
        .tunnel_io
        .notrack
    );
}

#[test]
fn a_bad_tunnel_notrack_value_is_refused_by_name() {
    let e = flags(&["--tunnel-notrack", "yes"]).expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("--tunnel-notrack"), "{text}");
    let e = resolve(&[], Some("tunnel-notrack = \"yes\"\n")).expect_err("refused");
    let text = format!("{e:#}");
    assert!(text.contains("tunnel-notrack"), "{text}");
    assert!(text.contains("boolean"), "{text}");
}

/// `--tc-memo` (`pn_common::memo`), a boolean switch parsed as
/// `--tunnel-notrack` is: off unless given, by flag or file, the flag first.
#[test]
fn the_tc_memo_switch_is_off_unless_given() {
    assert!(!resolve(&[], None).unwrap().tc_memo);
    assert!(resolve(&["--tc-memo"], None).unwrap().tc_memo);
    assert!(resolve(&["--tc-memo", "true"], None).unwrap().tc_memo);
    assert!(!resolve(&["--tc-memo", "false"], None).unwrap().tc_memo);
    assert!(resolve(&[], Some("tc-memo = true\n")).unwrap().tc_memo);
    assert!(!resolve(&[], Some("tc-memo = false\n")).unwrap().tc_memo);
    // The flag beats the file.
    assert!(
        !resolve(&["--tc-memo", "false"], Some("tc-memo = true\n"))
            .unwrap()
            .tc_memo
    );
    assert!(
        resolve(&["--tc-memo", "true"], Some("tc-memo = false\n"))
            .unwrap()
            .tc_memo
    );
}

#[test]
fn a_bad_tc_memo_value_is_refused_by_name() {
    let e = flags(&["--tc-memo", "yes"]).expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("--tc-memo"), "{text}");
    let e = resolve(&[], Some("tc-memo = \"yes\"\n")).expect_err("refused");
    let text = format!("{e:#}");
    assert!(text.contains("tc-memo"), "{text}");
    assert!(text.contains("boolean"), "{text}");
}
