//! `cargo xtask`: what cargo alone cannot do for alagg. Toolchain bootstrap, building the binary
//! with its XDP program, the full test run that CI makes, the demo, and running `alagg` as root.

mod bench;
mod bootstrap;
mod budget;
mod demo;
mod docs;
mod package;
mod plot;
mod test;
mod testbed;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// alagg's project tasks.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need and is missing: Debian packages, nightly's
    /// rust-src, bpf-linker (built against nightly's own LLVM), cargo-deb, cargo-fuzz.
    Bootstrap,
    /// Build the `alagg` binary with its embedded XDP program.
    Build {
        /// Build with optimisations (target/release/alagg).
        #[arg(long)]
        release: bool,
    },
    /// Everything CI checks: formatting, clippy (host and eBPF), unit, property and privileged
    /// end-to-end tests (the Debian package's among them), and a short fuzz run. Needs root for
    /// the privileged tests.
    Test {
        /// Skip the fuzz run (for quick local iterations; CI never skips it).
        #[arg(long)]
        no_fuzz: bool,
    },
    /// The Debian package: target/debian/alagg_<version>-1_<arch>.deb with the release binary,
    /// the systemd unit template, the example configurations, man pages (section 8) and bash,
    /// zsh and fish completions. Install it with `dpkg -i`.
    Package {
        /// Package the debug binary into target/debian-debug/ instead (for the tests; quicker).
        #[arg(long)]
        debug: bool,
    },
    /// Write the man pages and shell completions into DIR (only in an xtask built with the
    /// `docs` feature, as `package` runs it).
    #[command(hide = true)]
    Docs {
        /// Output directory: DIR/man/*.8, DIR/completions/*.
        dir: PathBuf,
    },
    /// The main job on a built-in default: two test hosts joined by three links, `alagg up` on
    /// both, ping, a TCP transfer, `alagg status`, a link cut and lossy links with nothing lost.
    /// Needs root.
    Demo,
    /// Build (release) and run `alagg` with the given arguments, e.g. `cargo xtask run -- --help`.
    Run {
        /// Arguments for `alagg`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Two test hosts in network namespaces joined by impairable links, left in place for trying
    /// `alagg up` by hand: `up [--links N] [--force]`, `down`. Needs root.
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
    /// Whole-system benchmarks on the testbed: alagg over 1, 2 and 3 links side by side with the
    /// direct path and the bare NFQUEUE capture loop (UDP pps, TCP, ping), and on rate-limited
    /// and lossy links, side by side with kernel MPTCP. Writes target/bench/results.{json,md} and
    /// PNG charts. Needs root.
    Bench {
        /// Shorter runs (about a minute) for a quick look; figures are noisier.
        #[arg(long)]
        quick: bool,
        /// Only draw the charts again from target/bench/results.json.
        #[arg(long, conflicts_with_all = ["quick", "only"])]
        replot: bool,
        /// Measure only the configurations whose name contains TEXT, e.g. "alagg 2 links" (also
        /// matches its variants), "direct", "veth:"; several separated by `|`, and `=NAME` for
        /// exactly one ("=alagg 2 links|stripe"). Tables and charts then show only those.
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Attach the XDP program to interfaces and show its counters: `alagg attach`.
    Attach {
        /// Interfaces to attach to.
        #[arg(required = true)]
        interfaces: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Bootstrap => bootstrap::run().map(|_| ()),
        Task::Build { release } => build(release).map(|_| ()),
        Task::Test { no_fuzz } => test::run(!no_fuzz),
        Task::Package { debug } => package::run(debug).map(|_| ()),
        Task::Docs { dir } => {
            for path in docs::generate(&dir)? {
                eprintln!("xtask: wrote {}", path.display());
            }
            Ok(())
        }
        Task::Demo => demo::run(),
        Task::Bench { replot: true, .. } => bench::replot(),
        Task::Bench { quick, only, .. } => bench::run(quick, only.as_deref()),
        Task::Run { args } => run_alagg(&args),
        Task::Testbed { action } => testbed::run(action),
        Task::Attach { interfaces } => {
            let mut args = vec!["attach".to_owned()];
            for interface in interfaces {
                args.push("--interface".to_owned());
                args.push(interface);
            }
            run_alagg(&args)
        }
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A `cargo` command in the workspace root with the eBPF toolchain on hand.
fn cargo(tools: &bootstrap::Tools) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tools.bpf_linker);
    command
}

/// Runs `command`, failing with its command line when it fails.
fn check(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Bootstraps, builds `alagg` and returns the path of the binary.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    build_with(&bootstrap::run()?, release)
}

/// Builds `alagg` with the bootstrapped `tools` and returns the path of the binary.
fn build_with(tools: &bootstrap::Tools, release: bool) -> anyhow::Result<PathBuf> {
    let mut command = cargo(tools);
    command.args(["build", "--package", "alagg-user", "--bin", "alagg"]);
    if release {
        command.arg("--release");
    }
    check(&mut command)?;
    let profile = if release { "release" } else { "debug" };
    Ok(root().join("target").join(profile).join("alagg"))
}

fn run_alagg(args: &[String]) -> anyhow::Result<()> {
    let binary = build(true)?;
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("could not start {}", binary.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
