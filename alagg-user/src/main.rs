//! The `alagg` command line.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use alagg::{
    config::{self, Config, IoMode},
    control::{self, ControlServer},
    datapath::{Datapath, DatapathConfig, LinkIo, LinkPlan, wait_readable},
    host::{HostSetup, QueueSpec, Recovery, default_tun_address, journal_path, recover},
    metrics::MetricsServer,
    nfqueue::{Batch, NfQueue, QueueOptions, Verdict},
    signals::TermSignals,
    xdp::{AttachMode, XdpSteering},
};
use alagg_common::DEFAULT_ETHERTYPE;
use alagg_proto::ReceiverConfig;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// alagg: aggregate several Ethernet links into one that survives the loss of any of them.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on standard error: `human` lines or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such
    /// as `alagg=debug`). Default: `RUST_LOG` when set, else `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator in the foreground until SIGINT or SIGTERM.
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
    /// Validate a configuration and this host, and print what `up` would do.
    ///
    /// Exits non-zero when the file is invalid or the host is not ready (missing or down
    /// interfaces, no privileges, missing tools).
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
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
    let filter = match &cli.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("alagg: error: --log-level / RUST_LOG: {error}");
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
        Command::Up { config } => up(&config),
        Command::Check { config } => check(&config),
        Command::Down { config } => down(&config),
        Command::Status { config, tun, json } => status(config.as_deref(), tun, json),
        Command::Steal { queue } => steal(queue),
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

fn datapath_config(config: &Config) -> DatapathConfig {
    let links = config
        .links
        .iter()
        .map(|link| LinkPlan {
            interface: link.interface.clone(),
            peer_mac: link.peer_mac.0,
            xdp_mode: match link.xdp_mode {
                config::XdpMode::Auto => AttachMode::Auto,
                config::XdpMode::Native => AttachMode::Native,
                config::XdpMode::Generic => AttachMode::Generic,
            },
            io: match link.io {
                IoMode::Xdp => LinkIo::Xdp,
                IoMode::AfPacket => LinkIo::Packet,
            },
        })
        .collect();
    let protocol = &config.protocol;
    let receiver = ReceiverConfig {
        dedup_window: protocol.dedup_window as usize,
        reorder_capacity: protocol.reorder_capacity as usize,
        hold_time: protocol.hold(),
        ..ReceiverConfig::default()
    };
    DatapathConfig {
        links,
        destinations: config.capture.destinations.clone(),
        ethertype: protocol.ethertype,
        tun_name: config.tun.name.clone(),
        tun_address: default_tun_address(),
        tun_mtu: config.tun.mtu,
        coalesce: config.tun.coalesce,
        queue: QueueSpec {
            first: config.capture.queue,
            count: config.capture.queues,
            bypass: config.capture.fail_open,
            cpu_fanout: config.capture.spread == config::Spread::Cpu,
            tcp: config.capture.gso_queue(),
        },
        queue_max_len: config.capture.queue_max_len,
        receiver,
        bundle: config.scheduler.bundle,
        pin: config.cpu.pin,
        cores: config.cpu.cores.clone(),
        busy_poll: config.cpu.busy_poll(),
    }
}

fn up(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    require_root()?;
    let signals = TermSignals::block().context("blocking SIGINT/SIGTERM")?;
    for (i, link) in config.links.iter().enumerate() {
        tracing::info!(
            link = i,
            interface = link.interface,
            peer_mac = %link.peer_mac,
            io = ?link.io,
            xdp_mode = ?link.xdp_mode,
            "plan: link"
        );
    }
    let destinations: Vec<String> = config
        .capture
        .destinations
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        destinations = destinations.join(","),
        scheduler = ?config.scheduler.mode,
        queue = config.capture.queue,
        fail_open = config.capture.fail_open,
        hold_ms = config.protocol.hold_ms,
        "plan: capture"
    );
    let mut datapath = Datapath::start(&datapath_config(&config))
        .with_context(|| format!("starting alagg with {}", path.display()))?;
    let shown_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let snapshot = datapath.snapshot_source(&shown_path.display().to_string());
    let socket = control::socket_path(&config.tun.name);
    let _control = ControlServer::start(&socket, snapshot)
        .with_context(|| format!("opening the control socket {}", socket.display()))?;
    let _metrics = match config.metrics {
        Some(metrics) => Some(
            MetricsServer::start(
                metrics.listen,
                datapath.snapshot_source(&shown_path.display().to_string()),
            )
            .with_context(|| format!("{}: [metrics]", path.display()))?,
        ),
        None => None,
    };
    let links: Vec<&str> = config.links.iter().map(|l| l.interface.as_str()).collect();
    tracing::info!(
        links = links.join(","),
        destinations = config.capture.destinations.len(),
        tun = config.tun.name,
        control = %socket.display(),
        "alagg is up"
    );
    // Links are looked at twice a second: down, gone and back are acted on and logged once.
    let mut failed = false;
    while signals.wait(Duration::from_millis(500)).is_none() {
        datapath.monitor();
        if !datapath.workers_alive() {
            tracing::error!("a worker thread stopped unexpectedly; shutting down");
            failed = true;
            break;
        }
    }
    tracing::info!("stopping");
    let counters = datapath.counters();
    let captured = counters.captured.load(Relaxed);
    let delivered = counters.delivered.load(Relaxed);
    let coalesced = counters.coalesced.load(Relaxed);
    let rejected_source = counters.rejected_source.load(Relaxed);
    let rejected_malformed = counters.rejected_malformed.load(Relaxed);
    let per_link: Vec<String> = config
        .links
        .iter()
        .zip(&counters.links)
        .map(|(link, c)| {
            format!(
                "{}:tx={},rx={},first={},foreign={}",
                link.interface,
                c.tx_frames.load(Relaxed),
                c.rx_frames.load(Relaxed),
                c.first.load(Relaxed),
                c.rx_foreign.load(Relaxed)
            )
        })
        .collect();
    let stats = datapath.stop();
    println!(
        "summary: captured={captured} delivered={delivered} duplicates={} too_old={} \
         reordered={} lost={} malformed={} rejected_source={rejected_source} \
         rejected_malformed={rejected_malformed} epoch_changes={} bundles={} \
         coalesced={coalesced} links={}",
        stats.dedup.discarded,
        stats.dedup.rogue,
        stats.reorder.reordered,
        stats.reorder.lost,
        stats.malformed + stats.bad_version + stats.unknown_type,
        stats.epoch_changes,
        stats.bundles,
        per_link.join(";"),
    );
    tracing::info!("alagg stopped");
    if failed {
        bail!("alagg stopped because a worker thread failed (see the log above)");
    }
    Ok(())
}

fn status(config: Option<&Path>, tun: Option<String>, json: bool) -> anyhow::Result<()> {
    let tun = match (config, tun) {
        (Some(path), _) => Config::load(path)?.tun.name,
        (None, Some(tun)) => {
            config::check_interface_name(&tun).map_err(|e| anyhow::anyhow!("--tun: {e}"))?;
            tun
        }
        (None, None) => config::DEFAULT_TUN_NAME.to_owned(),
    };
    let snapshot = control::query(&control::socket_path(&tun))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        println!("{}", snapshot.render_text());
    }
    Ok(())
}

/// The bare capture loop the benchmarks compare `alagg up` with: the same NFQUEUE socket,
/// batches and batch verdicts, no encapsulation and no transmission.
fn steal(queue: u16) -> anyhow::Result<()> {
    require_root()?;
    let signals = TermSignals::block().context("blocking SIGINT/SIGTERM")?;
    let mut nfqueue = NfQueue::open(queue, &QueueOptions::default())?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (stolen, batches) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut batch = Batch::new(alagg::datapath::CAPTURE_BATCH);
            let (mut stolen, mut batches) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                match nfqueue.recv_batch(&mut batch) {
                    Ok(0) | Err(_) => {
                        wait_readable(nfqueue.fd().as_raw_fd(), Duration::from_millis(100));
                    }
                    Ok(n) => {
                        if let Some(last) = batch.last_id() {
                            let _ = nfqueue.verdict_batch(last, Verdict::Drop);
                        }
                        stolen += n as u64;
                        batches += 1;
                    }
                }
            }
            (stolen, batches)
        });
        while signals.wait(Duration::from_millis(200)).is_none() && !worker.is_finished() {}
        stop.store(true, Relaxed);
        worker.join().unwrap_or_default()
    });
    println!("stolen={stolen} batches={batches}");
    Ok(())
}

fn down(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    require_root()?;
    let tun = &config.tun.name;
    let journal = journal_path(tun);
    let mut done = Vec::new();
    match recover(&journal)? {
        Recovery::Live { pid } => bail!(
            "alagg is running for {} (pid {pid}); stop it with `kill {pid}` (SIGTERM), it cleans \
             up after itself",
            path.display()
        ),
        Recovery::Clean => {}
        Recovery::Undone { changes, errors } => {
            done.push(format!("undid {changes} recorded change(s)"));
            for error in errors {
                eprintln!("alagg: warning: {error}");
            }
        }
    }
    if Path::new(&format!("/sys/class/net/{tun}")).exists() {
        // A TUN device alagg creates lives only as long as its process: one that exists
        // belongs to a live process.
        bail!("TUN device {tun} exists: an alagg (or another program) still runs with it");
    }
    let mut host = HostSetup::new();
    if host.remove_stale_capture(tun) {
        done.push(format!("removed capture rules of {tun}"));
    }
    for link in &config.links {
        match detach_stale_xdp(&link.interface) {
            Ok(true) => done.push(format!("detached XDP from {}", link.interface)),
            Ok(false) => {}
            Err(error) => eprintln!("alagg: warning: {}: {error}", link.interface),
        }
    }
    if done.is_empty() {
        println!("nothing to clean up for {}", path.display());
    } else {
        println!(
            "cleaned up after alagg for {}: {}",
            path.display(),
            done.join("; ")
        );
    }
    Ok(())
}

/// Detaches an XDP program named `alagg` that a netlink attachment left on `interface` (bpf_link
/// attachments end with their process by themselves). Returns whether one was there.
fn detach_stale_xdp(interface: &str) -> anyhow::Result<bool> {
    let output = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", interface])
        .output()?;
    let shown = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !shown.contains("prog/xdp") || !shown.contains("name alagg") {
        return Ok(false);
    }
    for mode in ["xdp", "xdpgeneric"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", interface, mode, "off"])
            .status();
    }
    Ok(true)
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "{} is valid. alagg up would:\n{}",
        path.display(),
        config.plan()
    );
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not running as root: `alagg up` needs root (CAP_NET_ADMIN, CAP_BPF)".into());
    }
    for link in &config.links {
        let dir = format!("/sys/class/net/{}", link.interface);
        match std::fs::read_to_string(format!("{dir}/operstate")) {
            Err(_) => problems.push(format!(
                "link {}: no such interface (check `ip link`)",
                link.interface
            )),
            Ok(state) if state.trim() == "down" => problems.push(format!(
                "link {}: interface is down (`ip link set {} up`)",
                link.interface, link.interface
            )),
            Ok(_) => {
                let queues = alagg::datapath::interface_queues(&link.interface);
                let workers = usize::from(config.capture.queues);
                if link.io == IoMode::Xdp && workers > queues {
                    problems.push(format!(
                        "link {}: capture.queues = {workers} needs a queue per capture worker, \
                         the interface has {queues} (`ethtool -L`, or io = \"af_packet\")",
                        link.interface
                    ));
                }
            }
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        problems.push("/dev/net/tun is missing: load the tun module".into());
    }
    for tool in ["ip", "iptables", "ip6tables"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            problems.push(format!(
                "`{tool}` is not installed (Debian: iproute2, iptables)"
            ));
        }
    }
    if config.tun.coalesce && !alagg::tun::gso_udp_supported() {
        println!(
            "note: UDP coalescing (tun.coalesce) needs Linux 6.9 or later; on this kernel ({}) \
             every packet is written to the TUN alone",
            alagg::tun::kernel_release()
        );
    }
    if problems.is_empty() {
        println!("host: ready");
        Ok(())
    } else {
        bail!("the host is not ready:\n  {}", problems.join("\n  "))
    }
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
