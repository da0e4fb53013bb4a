//! The benchmark harness runs one short iteration of every scenario, so it
//! cannot rot. No timing is asserted: benchmarks are not tests.

#[test]
fn every_benchmark_scenario_runs() {
    let out = std::env::temp_dir().join(format!("pn-test-{}-bench", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pn-bench"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .status()
        .expect("running pn-bench");
    let md = std::fs::read_to_string(out.join("BENCHMARKS.md")).unwrap_or_default();
    let json = std::fs::read_to_string(out.join("BENCHMARKS.json")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "pn-bench --smoke failed");
    for title in [
        "Policy overhead",
        "Connection and request tracking",
        "Dropping strangers",
        "Scale of membership",
        "## DNS",
        "The edge",
        "Restarts, upgrades and crashes",
        // The kernel's own limits at pn's hooks (floor.rs).
        "an empty TC program at the same hooks during the stream (the floor)",
        "pn's programs over the floor during the ping-pong",
        "a drop-everything TC program at the member's veth egress (the ceiling)",
        "a drop-everything XDP program (generic mode) on the underlay (the ceiling)",
        // pn's programs on a crafted segment, warm (testrun.rs).
        "pn's programs over the empty one on one member-to-member TCP segment",
    ] {
        assert!(
            md.contains(title),
            "{title} missing from BENCHMARKS.md:\n{md}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["machine"]["mode"], "smoke");
}
