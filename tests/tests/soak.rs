//! A short soak (`pn-soak`, as `cargo xtask soak` runs a long one): random
//! faults from a fresh seed on a three-host fleet, every invariant checked.
//! On failure its output names the seed that replays it.

#[test]
fn a_short_soak_breaks_no_invariant() {
    let out = std::env::temp_dir().join(format!("pn-test-{}-soak", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pn-soak"));
    cmd.args([
        "--seconds",
        "45",
        "--label",
        "cargo xtask test (short)",
        "--out",
    ])
    .arg(&out);
    if let Some(seed) = std::env::var_os("PN_SOAK_SEED") {
        cmd.arg("--seed").arg(seed);
    }
    let status = cmd.status().expect("running pn-soak");
    let report = std::fs::read_to_string(out.join("RELIABILITY.md")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "the soak broke an invariant:\n{report}");
    assert!(report.contains("**0 invariant violations**"), "{report}");
}
