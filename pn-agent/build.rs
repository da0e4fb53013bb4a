//! Compiles `pn-ebpf` for the BPF target (nightly + bpf-linker, which
//! `cargo xtask` installs) and leaves the object in OUT_DIR for `include_bytes!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    let object = std::path::Path::new(&out_dir).join("pn-ebpf");
    // AYA_BUILD_SKIP=1 (used for lints and host-only unit tests) skips the BPF
    // build; the agent then refuses to start with a clear error.
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true") && !object.exists() {
        std::fs::write(&object, b"").context("writing placeholder eBPF object")?;
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "pn-ebpf")
        .ok_or_else(|| anyhow!("pn-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask build` to install the toolchain)")
}
