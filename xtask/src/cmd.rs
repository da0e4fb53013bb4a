//! Running commands with their output passed through, failing with one line.

use std::process::Command;

use anyhow::{Context, bail};

/// Runs a named step, saying when it starts and how long it took.
pub fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("xtask: {name}…");
    let t = std::time::Instant::now();
    f().with_context(|| format!("{name} failed"))?;
    eprintln!("xtask: {name}: ok ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo ARGS` with extra environment; the output goes to the terminal.
pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    // The toolchain selector must come first and go through rustup's proxy.
    let cargo = if args.first().is_some_and(|a| a.starts_with('+')) {
        "cargo".to_string()
    } else {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
    };
    run(Command::new(cargo).args(args).envs(env.iter().copied()))
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} exited with {status}");
    }
    Ok(())
}

/// Captured stdout of a command that must succeed.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
