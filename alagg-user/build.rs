//! Builds the XDP program (`alagg-ebpf`) with the nightly toolchain and bpf-linker, and leaves the
//! object in `OUT_DIR/alagg` for `include_bytes!`.
//!
//! `cargo xtask bootstrap` (run by every xtask command) installs what this needs. With
//! `ALAGG_SKIP_EBPF=1` an empty placeholder is written instead, so that host-only work (unit tests,
//! docs) needs no eBPF toolchain; such a binary says so when asked to attach.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const SKIP: &str = "ALAGG_SKIP_EBPF";
const LINKER_ENV: &str = "CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    println!("cargo:rerun-if-env-changed={LINKER_ENV}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("alagg");
    if env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir
        .parent()
        .context("alagg-user has no parent directory")?;
    let ebpf_dir = workspace.join("alagg-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("alagg-common").display()
    );

    if env::var_os(LINKER_ENV).is_none() {
        let linker = find_bpf_linker().ok_or_else(|| {
            anyhow!(
                "bpf-linker was not found (looked in $CARGO_HOME/alagg-tools/bin and on PATH).\n\
                 Run `cargo xtask bootstrap` to install it and the nightly rust-src it needs, or \
                 build with {SKIP}=1 to leave the XDP program out."
            )
        })?;
        println!("cargo:rerun-if-changed={}", linker.display());
        // SAFETY: build scripts are single-threaded at this point; the variable is read by the
        // child cargo that aya-build spawns below.
        unsafe { env::set_var(LINKER_ENV, &linker) };
    }

    let root_dir = ebpf_dir.to_str().context("alagg-ebpf path is not UTF-8")?;
    let package = aya_build::Package {
        name: "alagg-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
        .context("building the XDP program (alagg-ebpf) failed; `cargo xtask bootstrap` installs its toolchain")
}

/// The bpf-linker that `cargo xtask bootstrap` installs, or one on `PATH`.
fn find_bpf_linker() -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let ours = cargo_home
        .join("alagg-tools")
        .join("bin")
        .join("bpf-linker");
    if ours.is_file() {
        return Some(ours);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|path| path.is_file())
}
