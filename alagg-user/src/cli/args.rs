//! The command line of the `alagg` binary as clap types, in the library so that build-time
//! tools (`cargo xtask package`: man pages, shell completions) see the very definition the
//! binary parses with ([`command`]). `main.rs` parses it and calls the commands of [`super`].

use std::path::PathBuf;

use alagg_common::DEFAULT_ETHERTYPE;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use super::XdpMode;

/// alagg: aggregate several Ethernet links into one that survives the loss of any of them.
#[derive(Debug, Parser)]
#[command(name = "alagg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on standard error: `human` lines or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such
    /// as `alagg=debug`). Default: `RUST_LOG` when set, else `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the aggregator in the foreground until SIGINT or SIGTERM (or SIGHUP, SIGQUIT).
    ///
    /// Prepares the host (TUN device, a route per destination through it, iptables/ip6tables
    /// NFQUEUE rules, rp_filter on the TUN, XDP on every link), carries the traffic, and on exit
    /// removes exactly what it added. Needs root.
    Up {
        /// The configuration file (TOML; see config/alagg.example.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove what an `alagg up` that crashed or was killed left behind.
    ///
    /// Undoes the changes `up` recorded for this configuration's TUN device (routes, addresses,
    /// capture rules), removes stale capture rules and XDP programs named `alagg` left on the
    /// links. Refuses while that `alagg up` still runs; safe to run twice; a no-op on a clean
    /// host.
    Down {
        /// The configuration file the instance was started with.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Apply a changed configuration to a running instance without restarting it.
    ///
    /// Checks FILE, the file the instance runs from, then asks the instance (SIGHUP, as
    /// `systemctl reload alagg@NAME` does) to read it again. What it can change while running,
    /// the [scheduler] table (mode, fec, fec_timeout_us, bundle), it applies at once: packet
    /// numbering, the duplicate window and the reorder buffer go on, so no flow sees a gap. A
    /// change to any other table is refused, with the reason in the instance's log, and the
    /// instance goes on as it was.
    Reload {
        /// The configuration file the instance was started with, changed.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running instance's links and counters, like `wg show`.
    ///
    /// Asks the `alagg up` of this host (and network namespace) whose TUN device is given by
    /// --tun, or by the configuration's `[tun] name`, over its control socket
    /// (/run/alagg/<tun>.sock, root only). Per link: state, frames and bytes sent and received,
    /// drops, and the share of packets whose first copy came over it; then the engine's
    /// counters (IEEE 802.1CB names), capture, delivery and XDP counters.
    Status {
        /// The configuration file the instance was started with (for its TUN name).
        #[arg(short, long, value_name = "FILE", conflicts_with = "tun")]
        config: Option<PathBuf>,
        /// The instance's TUN device name (default alagg0).
        #[arg(long, value_name = "NAME")]
        tun: Option<String>,
        /// Print the counters as one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark baseline: steal every packet queued to an NFQUEUE, as `up` captures them but
    /// sending nothing. Runs until SIGINT/SIGTERM, then prints `stolen=N batches=M`.
    #[command(hide = true)]
    Steal {
        /// The NFQUEUE number to bind.
        #[arg(long)]
        queue: u16,
    },
    /// Benchmark baseline: send alagg data frames on every link of a configuration as fast as
    /// one thread can, with the sockets `up` uses (AF_XDP, or AF_PACKET where `io` says so) and
    /// nothing else: no capture, engine or TUN. `sink` on the peer counts them.
    ///
    /// Each frame is what `up` sends, in redundant mode, for one UDP datagram of --size bytes
    /// (an IPv4 packet of size + 28 bytes in one data frame), the same on every link. Stops
    /// after --seconds or on SIGINT/SIGTERM and prints one JSON line: frames sent in all and
    /// per link. Needs root.
    #[command(hide = true)]
    Blast {
        /// The configuration file whose `[[link]]`s to send on.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// UDP payload bytes of the datagram each frame carries.
        #[arg(long, value_name = "BYTES", default_value_t = 64)]
        size: usize,
        /// How long to send.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        seconds: f64,
    },
    /// Benchmark baseline: receive alagg frames on every link of a configuration through alagg's
    /// XDP program and AF_XDP sockets (as `up` does) and count them, nothing else: the peer of
    /// `blast`.
    ///
    /// Logs `frame sink ready` once its sockets are open; after --seconds or on SIGINT/SIGTERM
    /// prints one JSON line: data frames and bytes received in all and per link, frames that
    /// were not alagg data frames, and what the sockets dropped. Detaches XDP on exit. Needs
    /// root.
    #[command(hide = true)]
    Sink {
        /// The configuration file whose `[[link]]`s to receive on.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Stop after this many seconds instead of waiting for SIGINT/SIGTERM.
        #[arg(long, value_name = "SECONDS")]
        seconds: Option<f64>,
    },
    /// Validate a configuration and this host, and print what `up` would do.
    ///
    /// Exits non-zero when the file is invalid or the host is not ready (missing or down
    /// interfaces, no privileges, missing tools).
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new random key for `[auth] key_file` on standard output, like `wg genkey`.
    ///
    /// The same key goes on both hosts: `(umask 077; alagg genkey > /etc/alagg/site.key)`
    /// (the umask keeps the file 0600 from the start), then copy it to the peer the same way
    /// and name it in `[auth] key_file`.
    Genkey,
    /// Attach alagg's XDP program to interfaces and show what it does with their frames.
    ///
    /// Frames of the alagg ethertype are steered to AF_XDP sockets (none are opened by this
    /// command, so they pass to the kernel and are counted as such); everything else passes
    /// untouched. Runs until Ctrl-C or --seconds, then detaches. Needs root.
    Attach {
        /// Interface to attach to; repeat for several.
        #[arg(short, long = "interface", required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
        /// Ethertype of alagg frames, e.g. 0x88b5.
        #[arg(long, default_value_t = format!("{DEFAULT_ETHERTYPE:#06x}"), value_parser = parse_ethertype_arg)]
        ethertype: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
        mode: XdpMode,
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "N")]
        seconds: Option<u64>,
    },
}

fn parse_ethertype_arg(text: &str) -> Result<String, String> {
    super::parse_ethertype(text).map(|_| text.to_owned())
}

/// The `alagg` command line as a [`clap::Command`], for man pages and shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}
