//! `cargo xtask test`: every check CI makes, in the order that fails fastest.

use std::process::Command;

use anyhow::bail;

use crate::{bootstrap, cargo, check, root};

/// Runs the checks. `fuzz` adds the short fuzz run.
pub fn run(fuzz: bool) -> anyhow::Result<()> {
    if !alagg_testbed::is_root() {
        bail!(
            "the test suite includes privileged end-to-end tests (network namespaces, XDP, \
             AF_XDP, NFQUEUE, TUN): run it as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    let tools = bootstrap::run()?;

    step("cargo fmt --check");
    check(cargo(&tools).args(["fmt", "--all", "--", "--check"]))?;

    step("clippy, host crates (with xtask's `docs` feature, which `package` builds)");
    check(cargo(&tools).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "xtask/docs",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("clippy, the XDP program for bpfel-unknown-none");
    check(
        Command::new("rustup")
            .current_dir(root())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "alagg-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/ebpf-clippy",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;

    step("the Debian package, from the debug binary (for its end-to-end test)");
    let deb = crate::package::run(true)?;

    step("unit, property and privileged end-to-end tests");
    check(
        cargo(&tools)
            .args([
                "test",
                "--workspace",
                "--features",
                "xtask/docs",
                "--no-fail-fast",
            ])
            .env("ALAGG_DEB", &deb),
    )?;

    if fuzz {
        crate::test::fuzz(&tools)?;
    }
    step("all checks passed");
    Ok(())
}

/// A short run of every fuzz target, when the fuzz crate is present.
fn fuzz(tools: &bootstrap::Tools) -> anyhow::Result<()> {
    let dir = root().join("fuzz");
    if !dir.join("Cargo.toml").is_file() {
        return Ok(());
    }
    step("short fuzz run");
    let cargo_fuzz = bootstrap::cargo_fuzz(tools)?;
    let list = Command::new("rustup")
        .current_dir(&dir)
        .args(["run", "nightly"])
        .arg(&cargo_fuzz)
        .arg("list")
        .output()?;
    if !list.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
    }
    for target in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let seeds = dir.join("seeds").join(target);
        let corpus = root().join("target").join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut command = Command::new("rustup");
        command
            .current_dir(&dir)
            .args(["run", "nightly"])
            .arg(&cargo_fuzz)
            .args(["run", target])
            .arg(&corpus);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        command.args(["--", &format!("-max_total_time={}", fuzz_seconds(target))]);
        check(&mut command)?;
    }
    Ok(())
}

/// Seconds of the short run per target: the protocol's parser and receiver longest, the
/// host-side parsers of alagg-packet (IP admission, NFQUEUE messages, the TUN's offloads),
/// smaller and faster per input, 12 s each (four of them: 48 s).
fn fuzz_seconds(target: &str) -> u32 {
    match target {
        "parse" | "receive" => 20,
        _ => 12,
    }
}

fn step(what: &str) {
    eprintln!("\n==> xtask test: {what}");
}
