//! `alagg up`: the aggregator in the foreground until SIGINT, SIGTERM or another terminating
//! signal ([`TERMINATING`](crate::host::signals::TERMINATING)).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use alagg_proto::{ReceiverConfig, auth::SiteKey};
use anyhow::{Context as _, bail};

use crate::{
    config::{self, Config, FecSetting},
    engine::transmit::{FecPlan, FecPolicy},
    host::{QueueSpec, default_tun_address, signals::TermSignals},
    link::LinkPlan,
    ops::{
        control::ControlServer,
        metrics::MetricsServer,
        notify::{self, Notifier},
    },
    port::Schedule,
    runtime::{Datapath, DatapathConfig},
    sys::LinkEvents,
};

/// The configuration's links as the runtime (and the frame loop) opens them.
pub(super) fn link_plans(config: &Config) -> Vec<LinkPlan> {
    config
        .links
        .iter()
        .enumerate()
        .map(|(i, link)| LinkPlan {
            interface: link.interface.clone(),
            peer_mac: link.peer_mac,
            xdp_mode: link.xdp_mode,
            io: link.io,
            priority: link.priority.unwrap_or(i as u32),
            rate_cap_bps: u64::from(link.rate_mbit) * 1_000_000,
        })
        .collect()
}

/// What the runtime runs with, from a validated configuration and its key (`[auth]`).
fn datapath_config(config: &Config, key: Option<SiteKey>) -> DatapathConfig {
    let links = link_plans(config);
    let protocol = &config.protocol;
    let receiver = ReceiverConfig {
        dedup_window: protocol.dedup_window as usize,
        reorder_capacity: protocol.reorder_capacity as usize,
        hold_time: protocol.hold(),
        release_passed_gaps: protocol.links_keep_order,
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
        fwmark: config.capture.fwmark,
        receiver,
        scheduler: config.scheduler.mode.scheduler(),
        bundle: config.scheduler.bundle,
        fec: fec_plan(&config.scheduler),
        pin: config.cpu.pin,
        cores: config.cpu.cores.clone(),
        busy_poll: config.cpu.busy_poll(),
        run_to_completion: config
            .cpu
            .run_to_completion(usize::from(config.capture.queues), config.cpu.usable_cpus()),
        auth: key.map(|key| (key, config.auth.as_ref().is_some_and(|a| a.encrypt))),
    }
}

/// The `STATUS=` line while up: each link and its state, e.g. `up; links: eth1 up, eth2 down`.
fn link_status(snapshot: &crate::ops::snapshot::Snapshot) -> String {
    let links: Vec<String> = snapshot
        .links
        .iter()
        .map(|l| format!("{} {}", l.interface, l.status))
        .collect();
    format!("up; links: {}", links.join(", "))
}

/// Runs the aggregator with the configuration at `path` until SIGINT, SIGTERM (or SIGHUP,
/// SIGQUIT and the other terminating signals), then tears
/// down and prints a one-line summary of the counters.
pub fn up(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    super::require_root()?;
    let key = match &config.auth {
        Some(auth) => Some(config::key::read_key(&auth.key_file)?),
        None => {
            tracing::warn!(
                "frames are not authenticated: anyone on a link can inject packets (add [auth] \
                 with a key from `alagg genkey`, see docs/PROTOCOL.md)"
            );
            None
        }
    };
    let (problems, warnings) = super::judge_memory(&config, super::HostMemory::this_machine());
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("; "));
    }
    for warning in warnings
        .into_iter()
        .chain(super::judge_frames(&config, super::interface_mtu))
    {
        tracing::warn!("{warning}");
    }
    let signals = TermSignals::block().context("blocking the termination signals")?;
    let stamps_file = crate::stamps::start_from_env();
    if let Some(file) = &stamps_file {
        tracing::info!(
            file = %file.display(),
            "stamping every packet for a latency budget ({}); written when alagg stops",
            crate::stamps::ENV
        );
    }
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
    let notifier = Notifier::from_env();
    if notifier.is_active() {
        tracing::info!("telling the service manager of readiness and status (NOTIFY_SOCKET)");
    }
    notifier.status("starting: preparing the host, XDP, AF_XDP sockets, NFQUEUE and TUN");
    let mut datapath = Datapath::start(&datapath_config(&config, key))
        .with_context(|| format!("starting alagg with {}", path.display()))?;
    let shown_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let snapshot = datapath.snapshot_source(&shown_path.display().to_string());
    let socket = crate::ops::control::socket_path(&config.tun.name);
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
    // Datapath::start returned: capture rules, routes, XDP, sockets and every worker are in
    // place, so packets to the destinations are carried from here on.
    let snapshot = datapath.snapshot_source(&shown_path.display().to_string());
    let mut shown_status = link_status(&snapshot());
    notifier.ready(&shown_status);
    // The watchdog is fed on the loop's regular looks (every 500 ms, a quarter of the shortest
    // WatchdogSec= this takes, 2 s), and only while every worker's heartbeat rises.
    let watchdog = notify::watchdog_from_env();
    if let Some(interval) = watchdog {
        tracing::info!(?interval, "systemd watchdog on");
    }
    let mut beats = datapath.heartbeats();
    let mut running = config.clone();
    // Links are looked at twice a second, and at once when the kernel reports a change of an
    // interface (carrier lost, set down, removed): down, gone and back are acted on and logged
    // once. Signals are looked at every WAKE.
    const WAKE: Duration = Duration::from_millis(50);
    const LOOK_EVERY: Duration = Duration::from_millis(500);
    let events = LinkEvents::open()
        .inspect_err(|error| {
            tracing::warn!(
                %error,
                "no link notifications (netlink): links are looked at twice a second only"
            );
        })
        .ok();
    let mut looked = Instant::now();
    let mut fed = Instant::now();
    let mut failed = false;
    loop {
        let changed = match &events {
            Some(events) => events.wait(WAKE),
            None => {
                std::thread::sleep(WAKE);
                false
            }
        };
        if let Some(signal) = signals.wait(Duration::ZERO) {
            if signal == libc::SIGHUP {
                notifier.tell("RELOADING=1");
                reload(path, &mut running, &datapath);
                notifier.tell(&format!("READY=1\nSTATUS={shown_status}"));
                continue;
            }
            tracing::info!(signal, "signal received");
            break;
        }
        if !changed && looked.elapsed() < LOOK_EVERY {
            continue;
        }
        looked = Instant::now();
        datapath.monitor();
        if !datapath.workers_alive() {
            tracing::error!("a worker thread stopped unexpectedly; shutting down");
            failed = true;
            break;
        }
        // Not on a look a link notification brought early: an idle worker turns only every
        // 100 ms.
        if watchdog.is_some() && fed.elapsed() >= LOOK_EVERY {
            fed = Instant::now();
            if notify::workers_progressed(&mut beats, datapath.heartbeats()) {
                notifier.watchdog();
            } else {
                tracing::warn!("a worker made no turn in 500 ms; the watchdog is not fed");
            }
        }
        let status = link_status(&snapshot());
        if status != shown_status {
            notifier.status(&status);
            shown_status = status;
        }
    }
    tracing::info!("stopping");
    notifier.stopping("stopping: removing capture rules, routes, XDP and TUN");
    // Taken after the workers stopped: the receive thread publishes its last counters then.
    let summary = datapath.snapshot_source(&shown_path.display().to_string());
    let _final_engine = datapath.stop();
    println!("{}", summary().render_summary());
    if let Some(file) = &stamps_file {
        match crate::stamps::dump(file) {
            Ok(count) => tracing::info!(count, file = %file.display(), "latency stamps written"),
            Err(error) => {
                tracing::warn!(%error, file = %file.display(), "writing the latency stamps")
            }
        }
    }
    tracing::info!("alagg stopped");
    if failed {
        bail!("alagg stopped because a worker thread failed (see the log above)");
    }
    Ok(())
}

/// FEC as the transmit stage runs it (`[scheduler] fec`), `None` when off.
fn fec_plan(scheduler: &config::SchedulerConfig) -> Option<FecPlan> {
    let policy = match scheduler.fec() {
        FecSetting::Off => return None,
        FecSetting::Fixed(params) => FecPolicy::Fixed(params),
        FecSetting::Auto => FecPolicy::Auto,
    };
    Some(FecPlan {
        policy,
        timeout: Duration::from_micros(u64::from(scheduler.fec_timeout_us)),
    })
}

/// SIGHUP (`alagg reload`, `systemctl reload`): reads `path` again and applies what can change
/// while alagg runs, the `[scheduler]` table, to every capture worker; numbering, the duplicate
/// window and the reorder buffer go on, so no flow sees a gap. A file that does not load, or
/// that changes anything else, is refused with the reason, and alagg goes on as it was.
fn reload(path: &Path, running: &mut Config, datapath: &Datapath) {
    tracing::info!(config = %path.display(), "reloading the configuration (SIGHUP)");
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(error) => {
            tracing::warn!(
                %error,
                "reload refused: the file does not load; still running the previous configuration"
            );
            return;
        }
    };
    if let Some(section) = not_live(running, &new) {
        tracing::warn!(
            "reload refused: {section} changed, which alagg cannot apply while it runs \
             (restart it: systemctl restart, or alagg down and up); still running the previous \
             configuration"
        );
        return;
    }
    if new.scheduler == running.scheduler {
        tracing::info!("reload: nothing changed");
        return;
    }
    datapath.reschedule(&Schedule {
        scheduler: new.scheduler.mode.scheduler(),
        bundle: new.scheduler.bundle,
        fec: fec_plan(&new.scheduler),
    });
    tracing::info!(
        mode = %new.scheduler.mode,
        fec = %new.scheduler.fec(),
        bundle = new.scheduler.bundle,
        "reloaded: [scheduler] applied; numbering, duplicate window and reorder buffer go on"
    );
    *running = new;
}

/// The first table of `new` that differs from `old` other than `[scheduler]`, which alagg
/// cannot change while it runs.
fn not_live(old: &Config, new: &Config) -> Option<&'static str> {
    let differs = [
        (old.capture != new.capture, "[capture]"),
        (old.tun != new.tun, "[tun]"),
        (old.protocol != new.protocol, "[protocol]"),
        (old.links != new.links, "[[link]]"),
        (old.cpu != new.cpu, "[cpu]"),
        (old.metrics != new.metrics, "[metrics]"),
        (old.auth != new.auth, "[auth]"),
    ];
    differs.into_iter().find(|(d, _)| *d).map(|(_, s)| s)
}
