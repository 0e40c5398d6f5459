//! Installs what building and testing alagg need, when it is missing, and says what to do when it
//! cannot: Debian packages (apt-get, as root), the nightly toolchain with rust-src, bpf-linker
//! built against nightly's own libLLVM (no system LLVM needed), cargo-deb and cargo-fuzz. Tools go under
//! `$CARGO_HOME/alagg-tools/` and are reused by every clone on the machine.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::check;

/// Debian packages: the C side of xsk-rs (libxdp, libbpf), the tools the tests and benchmarks
/// drive, `systemd` for `systemd-analyze verify` of the unit (installed, never booted), what
/// `cargo xtask package` and its test use (`dpkg-dev`: dpkg-shlibdeps, through which cargo-deb
/// finds the libraries the binary links; `man-db` and `groff-base`: the man pages rendered), and
/// the font the benchmark plots are drawn with.
const PACKAGES: &[&str] = &[
    "clang",
    "m4",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "pkg-config",
    "make",
    "iproute2",
    "iptables",
    "nftables",
    "iputils-ping",
    "iperf3",
    "mptcpize",
    "systemd",
    "dpkg-dev",
    "man-db",
    "groff-base",
    "fonts-dejavu-core",
];

/// bpf-linker release line known to build against nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "^0.13";

/// cargo-deb, which makes the Debian package from `[package.metadata.deb]` (`cargo xtask
/// package`); pinned, so that every machine packs alike.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Paths of the tools the other tasks use.
#[derive(Debug)]
pub struct Tools {
    /// bpf-linker for `bpfel-unknown-none`.
    pub bpf_linker: PathBuf,
    /// cargo-deb, [`CARGO_DEB_VERSION`].
    pub cargo_deb: PathBuf,
    /// Where cargo-installed helpers live (`bin/` below it).
    pub root: PathBuf,
}

/// Installs whatever is missing and returns where the tools are.
pub fn run() -> anyhow::Result<Tools> {
    debian_packages()?;
    nightly()?;
    let root = tools_root()?;
    let bpf_linker = bpf_linker(&root)?;
    let cargo_deb = cargo_deb(&root)?;
    Ok(Tools {
        bpf_linker,
        cargo_deb,
        root,
    })
}

/// cargo-deb at [`CARGO_DEB_VERSION`], installed (or replaced) when `root/bin` has no such one.
fn cargo_deb(root: &Path) -> anyhow::Result<PathBuf> {
    let binary = root.join("bin").join("cargo-deb");
    let current = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .any(|word| word == CARGO_DEB_VERSION)
        });
    if !current {
        eprintln!(
            "xtask: installing cargo-deb {CARGO_DEB_VERSION} into {}",
            root.display()
        );
        check(
            Command::new("cargo")
                .args(["install", "--locked", "--force", "cargo-deb", "--version"])
                .arg(format!("={CARGO_DEB_VERSION}"))
                .arg("--root")
                .arg(root),
        )
        .context("installing cargo-deb failed; is crates.io reachable?")?;
    }
    Ok(binary)
}

/// `cargo fuzz`, installed on demand (only the test task needs it).
pub fn cargo_fuzz(tools: &Tools) -> anyhow::Result<PathBuf> {
    let binary = tools.root.join("bin").join("cargo-fuzz");
    if !binary.is_file() {
        eprintln!("xtask: installing cargo-fuzz into {}", tools.root.display());
        check(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--root",
            path_str(&tools.root)?,
        ]))?;
    }
    Ok(binary)
}

fn is_root() -> bool {
    alagg_testbed::is_root()
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "Debian packages missing: {list}\nInstall them with: sudo apt-get update && sudo \
             apt-get install -y {list}"
        );
    }
    eprintln!("xtask: installing Debian packages: {list}");
    check(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed; is a Debian package mirror reachable?")?;
    check(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {list} failed"))?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// The nightly toolchain with rust-src, for `-Z build-std=core` on the BPF target.
fn nightly() -> anyhow::Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain");
        check(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("installing nightly failed; run `rustup toolchain install nightly` by hand")?;
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: adding rust-src to nightly");
        check(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("run `rustup component add rust-src --toolchain nightly` by hand")?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!("`rustup run nightly rustc --print sysroot` failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn tools_root() -> anyhow::Result<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(cargo_home.join("alagg-tools"))
}

/// bpf-linker linked against nightly's own libLLVM, built once per LLVM version. A stable
/// `alagg-tools/bin/bpf-linker` link points at the current one for the user crate's build script.
fn bpf_linker(root: &Path) -> anyhow::Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("nightly ships no libLLVM.so.* in {}", lib.display()))?;
    let version = llvm.trim_start_matches("libLLVM.so.").to_owned();
    let major = version
        .split('.')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read an LLVM major version from {llvm}"))?;
    let dir = root.join(format!("bpf-linker-{version}"));
    let binary = dir.join("bin").join("bpf-linker");
    if !binary.is_file() {
        // bpf-linker finds LLVM through LLVM_PREFIX at build time and RUNPATH <prefix>/lib at
        // run time: a prefix of two links to nightly's library serves both.
        let prefix = dir.join("llvm");
        let prefix_lib = prefix.join("lib");
        fs::create_dir_all(&prefix_lib)?;
        for name in ["libLLVM.so".to_owned(), llvm.clone()] {
            let link = prefix_lib.join(name);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(lib.join(&llvm), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        eprintln!(
            "xtask: building bpf-linker against nightly's LLVM {version} (a few minutes, once)"
        );
        check(
            Command::new("rustup")
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "install",
                    "bpf-linker",
                    "--version",
                ])
                .arg(BPF_LINKER_VERSION)
                .args(["--no-default-features", "--features"])
                .arg(format!("llvm-{major}"))
                .arg("--root")
                .arg(&dir)
                .env("LLVM_PREFIX", &prefix),
        )
        .context("building bpf-linker failed")?;
    }
    let stable = root.join("bin");
    fs::create_dir_all(&stable)?;
    let link = stable.join("bpf-linker");
    if fs::read_link(&link).ok().as_deref() != Some(binary.as_path()) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&binary, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(binary)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
