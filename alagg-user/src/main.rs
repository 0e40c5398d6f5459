//! The `alagg` command line.

use std::{process::ExitCode, time::Duration};

use alagg::{
    signals::TermSignals,
    xdp::{AttachMode, XdpSteering},
};
use alagg_common::DEFAULT_ETHERTYPE;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// alagg: aggregate several Ethernet links into one that survives the loss of any of them.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "N")]
        seconds: Option<u64>,
    },
}

/// XDP attach mode on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Native mode where the driver supports it, generic otherwise.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl From<Mode> for AttachMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => AttachMode::Auto,
            Mode::Native => AttachMode::Native,
            Mode::Generic => AttachMode::Generic,
        }
    }
}

fn parse_ethertype_arg(text: &str) -> Result<String, String> {
    parse_ethertype(text).map(|_| text.to_owned())
}

fn parse_ethertype(text: &str) -> Result<u16, String> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    let value = u16::from_str_radix(digits, 16)
        .map_err(|_| format!("{text:?} is not a 16-bit hexadecimal ethertype such as 0x88b5"))?;
    if value < 0x0600 {
        return Err(format!(
            "{text} is a length, not an ethertype: ethertypes start at 0x0600 (IEEE 802.3 clause 3.2.6)"
        ));
    }
    Ok(value)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("alagg: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attach {
            interfaces,
            ethertype,
            mode,
            seconds,
        } => attach(&interfaces, &ethertype, mode.into(), seconds),
    }
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("alagg needs root (CAP_NET_ADMIN and CAP_BPF) to attach XDP: run it with sudo");
    }
    Ok(())
}

fn attach(
    interfaces: &[String],
    ethertype: &str,
    mode: AttachMode,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    require_root()?;
    let ethertype = parse_ethertype(ethertype).map_err(anyhow::Error::msg)?;
    let signals = TermSignals::block().context("blocking SIGINT/SIGTERM")?;
    let mut steering = XdpSteering::load().context("loading the XDP program")?;
    for (link, interface) in (0u32..).zip(interfaces) {
        let got = steering.attach(interface, link, ethertype, mode)?;
        tracing::info!(interface, mode = ?got, ethertype = format!("{ethertype:#06x}"), "XDP attached");
    }
    println!("attached to {}; Ctrl-C to detach", interfaces.join(", "));
    let deadline = seconds.map(|s| std::time::Instant::now() + Duration::from_secs(s));
    loop {
        let signal = signals.wait(Duration::from_secs(1));
        let line = steering
            .counters()?
            .iter()
            .map(|(action, counter)| format!("{}={}", action.name(), counter.packets))
            .collect::<Vec<_>>()
            .join(" ");
        println!("{line}");
        if signal.is_some() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
    }
    for interface in interfaces {
        steering.detach(interface)?;
    }
    println!("detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethertypes_parse_in_hex_and_reject_lengths() {
        assert_eq!(parse_ethertype("0x88b5"), Ok(0x88b5));
        assert_eq!(parse_ethertype("88B5"), Ok(0x88b5));
        assert!(parse_ethertype("0x05dc").is_err());
        assert!(parse_ethertype("zz").is_err());
        assert!(parse_ethertype("0x1ffff").is_err());
    }
}
