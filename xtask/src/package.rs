//! `cargo xtask package`: the Debian package of alagg, made by cargo-deb from
//! `[package.metadata.deb]` in alagg-user/Cargo.toml (which lists the files and says why each
//! goes where). This task does what cargo-deb cannot: it builds the binary with its XDP program
//! (the eBPF toolchain from bootstrap), and generates the man pages and shell completions from
//! the clap definition ([`crate::docs`]) into [`GENERATED`], where the metadata's assets take
//! them from; then cargo-deb packs without building (`--no-build`).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{bootstrap, cargo, check, root};

/// Where the generated man pages and completions go, from the workspace root; the assets in
/// alagg-user/Cargo.toml name the same directory.
const GENERATED: &str = "target/alagg-deb";

/// Builds the package and returns its path: `target/debian/alagg_<version>-1_<arch>.deb` from
/// the release binary, or with `debug` `target/debian-debug/...` from the debug binary (what
/// `cargo xtask test` checks: quick to build, the same files around a slower binary; not for
/// installing).
pub fn run(debug: bool) -> anyhow::Result<PathBuf> {
    let tools = bootstrap::run()?;
    crate::build_with(&tools, !debug)?;

    let generated = root().join(GENERATED);
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("removing {}", generated.display()))?;
    }
    // The generators need the alagg library: a second xtask build, with the `docs` feature.
    check(
        cargo(&tools)
            .args([
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--features",
                "docs",
                "--",
                "docs",
            ])
            .arg(&generated),
    )?;

    let out = root()
        .join("target")
        .join(if debug { "debian-debug" } else { "debian" });
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for stale in debs(&out)? {
        fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
    }
    let mut command = Command::new(&tools.cargo_deb);
    command
        .current_dir(root())
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tools.bpf_linker)
        // --strip: the release profile keeps line tables (for the benchmarks' profiles); the
        // package ships the binary without them.
        .args([
            "--package",
            "alagg-user",
            "--no-build",
            "--strip",
            "--output",
        ])
        .arg(&out);
    if debug {
        // cargo-deb maps the assets' `target/release/` onto the profile's directory. It warns that
        // a later release may refuse the dev profile; the pinned 3.8.0 packs it.
        command.args(["--profile", "dev", "--fast"]);
    }
    check(&mut command)?;
    let made = debs(&out)?;
    let [deb] = made.as_slice() else {
        bail!(
            "cargo-deb left not one alagg_*.deb in {}: {made:?}",
            out.display()
        );
    };
    eprintln!("xtask: package: {}", deb.display());
    Ok(deb.clone())
}

/// The `alagg_*.deb` files in `dir`.
fn debs(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("alagg_") && name.ends_with(".deb") {
            found.push(path);
        }
    }
    Ok(found)
}
