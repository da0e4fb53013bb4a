//! Makes sure the machine has what building and testing pn need, installing
//! only what is missing (so the second run costs a few cheap checks):
//! - the nightly toolchain's `rust-src` (the eBPF crate builds `core` itself);
//! - `bpf-linker` 0.13, built against the nightly's own libLLVM;
//! - the Debian packages the tests and benchmarks use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: network tools for the tests (iproute2, ping, tcpdump,
/// dig), the real servers they start (etcd, nginx), load generators for the
/// benchmarks (iperf3, dnsperf), the nftables baseline, bpftool, `wg`
/// to configure the boringtun baseline, `openssl` to make the certificates of
/// the etcd TLS tests (the commands README documents), and the reference
/// container runtime of the CNI tests (podman with runc, the CNI reference
/// plugins it expects, and a static busybox for the containers' root
/// filesystem).
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "dnsutils",
    "tcpdump",
    "etcd-server",
    "etcd-client",
    "nginx-light",
    "curl",
    "nftables",
    "dnsperf",
    "bpftool",
    "wireguard-tools",
    "openssl",
    "podman",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
];

/// Debian packages only the benchmarks use: the tunnels pn is compared with
/// (wireguard-go, nebula) and the packet generator that floods strangers
/// (`trafgen`, from netsniff-ng).
pub const BENCH_PACKAGES: &[&str] = &["wireguard-go", "nebula", "netsniff-ng"];

pub fn bench_packages() -> anyhow::Result<()> {
    install_missing(BENCH_PACKAGES)
}

/// The userspace WireGuard the tunnel benchmark compares against.
pub fn boringtun() -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    if Path::new(&home).join(".cargo/bin/boringtun-cli").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing boringtun-cli (the WireGuard baseline of the benchmarks)");
    cmd::run(Command::new("cargo").args(["install", "boringtun-cli", "--locked"]))
}

/// Debian packages the build itself needs: etcd's client compiles etcd's
/// protobuf definitions, which takes `protoc` and the well-known types.
pub const BUILD_PACKAGES: &[&str] = &["protobuf-compiler", "libprotobuf-dev"];

pub fn toolchain() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    install_missing(BUILD_PACKAGES)
}

fn rust_src() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is required (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for the nightly toolchain");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(
                    "bpf-linker {}",
                    &BPF_LINKER_VERSION[..BPF_LINKER_VERSION.rfind('.').unwrap_or(0)]
                ))
        })
}

/// LLVM major version from `rustc -vV` output ("LLVM version: 22.1.2").
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The nightly's libLLVM file: the soname the linker binary will ask for
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`), not the `libLLVM-22-…` alias.
pub fn pick_libllvm(names: &[String]) -> Option<&String> {
    names
        .iter()
        .filter(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        .max()
}

fn prefix_dir(major: u32) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    // Lasting: the linker keeps an rpath to this directory.
    Ok(Path::new(&home).join(format!(".local/share/pn/llvm-{major}")))
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let vv = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major =
        llvm_major(&vv).context("cannot read the nightly's LLVM version from `rustc -vV`")?;
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let names: Vec<String> = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let lib = pick_libllvm(&names)
        .with_context(|| format!("no libLLVM.so.*-nightly in {}", libdir.display()))?;
    let prefix = prefix_dir(major)?;
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", lib.as_str()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(libdir.join(lib), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    // An installed linker whose library link was lost works again now.
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Which of `packages` dpkg does not have installed.
fn missing_packages(packages: &[&str]) -> anyhow::Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(packages)
        .output()
        .context("running dpkg-query (this bootstrap expects Debian or Ubuntu)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|p| {
            !stdout
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [**p, "ii"])
        })
        .map(|p| p.to_string())
        .collect())
}

pub fn packages() -> anyhow::Result<()> {
    install_missing(PACKAGES)
}

fn install_missing(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        cmd::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    apt(&args)?;
    let still = missing_packages(packages)?;
    if !still.is_empty() {
        bail!(
            "packages still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly (abc 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn picks_the_soname_not_the_alias() {
        let names: Vec<String> = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            pick_libllvm(&names).map(String::as_str),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(pick_libllvm(&names[..2]), None);
    }
}
