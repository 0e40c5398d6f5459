//! The runtime of `alagg up`: the one place that wires the stages together. [`Datapath::start`]
//! prepares the host and starts the worker threads in named steps; [`Datapath::monitor`]
//! watches the links ([`monitor`]); [`Datapath::stop`] tears everything down in order.
//!
//! Threads and what each owns (no lock on the per-packet path):
//! - a capture thread per NFQUEUE queue (`capture.queues` workers): its NFQUEUE sockets (the
//!   queue and, with GSO, its TCP queue) in a capture stage ([`crate::capture`]), and a
//!   transmit stage ([`crate::engine::transmit`]) with a [`Sender`] drawing numbers from the
//!   one sequence space all workers share (an atomic counter), the scheduler, a bundler and the
//!   transmit half of its own socket on every link (AF_XDP on the interface's queue of the
//!   worker's number);
//! - the receive thread: the receive half of every link's sockets and the [`Receiver`] in the
//!   receive stage ([`crate::engine::receive`]), and the TUN device in the delivery stage
//!   ([`crate::deliver`]);
//! - the caller's thread: starts and stops the others, watches the links and reads the shared
//!   counters ([`Datapath::snapshot_source`]).
//!
//! Each worker runs its stage in [`worker::run`]. Counters: per-packet counters are relaxed
//! atomics ([`crate::counters`]); the receive engine's own are copied into a mutex every
//! [`crate::engine::receive::PUBLISH_INTERVAL`] (never per packet), and the XDP program's by
//! the monitor, so a status query never reaches into a worker.
//!
//! Shutdown order: capture rules first (no new packets are queued), then the workers stop and
//! are joined (the receive thread first; it finishes its turn and writes what it coalesced;
//! packets still held for reordering are not delivered), then XDP is detached and the TUN
//! closed.

mod monitor;

#[cfg(test)]
mod path_tests;
pub(crate) mod worker;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use alagg_proto::{
    Admission, AnyScheduler, LinkState, Receiver, ReceiverConfig, Sender,
    auth::{FrameKey, Keyring, SiteKey},
    stats::RxStats,
    wire,
};
use ipnet::IpNet;

use crate::{
    capture::{
        Capture,
        nfqueue::{CaptureQueue, NfQueue, NfQueueError, QueueOptions},
    },
    counters::Counters,
    deliver::{
        self, Delivery,
        tun::{Tun, TunError},
    },
    engine::{
        receive::{Receive, RxLink},
        transmit::{FecPlan, Transmit, TxLink},
    },
    host::{HostError, HostSetup, QueueSpec, Recovery, journal_path, lock_path, recover},
    link::{self, IoMode, LinkError, LinkPlan, LinkRx, LinkTx, xdp::XdpSteering, xsk::XskConfig},
    ops::snapshot::Snapshot,
    port::LinkControl,
};
use monitor::MonitoredLink;

/// The link control the runtime and the stages share.
type Control = LinkControl<LinkRx, LinkTx>;

/// Everything `alagg up` runs with, resolved from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct DatapathConfig {
    /// The links, in configuration order; a link's index is its id on the wire.
    pub(crate) links: Vec<LinkPlan>,
    /// The peer's networks: captured when sent, accepted as sources when received.
    pub(crate) destinations: Vec<IpNet>,
    /// Ethertype of alagg frames.
    pub(crate) ethertype: u16,
    /// TUN device name.
    pub(crate) tun_name: String,
    /// Address given to the TUN device.
    pub(crate) tun_address: IpNet,
    /// MTU of the TUN device and of the routes through it; `None`: the smallest link MTU less
    /// alagg's header.
    pub(crate) tun_mtu: Option<u32>,
    /// Join consecutive UDP datagrams of a flow into one GSO write to the TUN
    /// ([`crate::deliver::offload`]), where the kernel supports it.
    pub(crate) coalesce: bool,
    /// NFQUEUE numbers and fail-open.
    pub(crate) queue: QueueSpec,
    /// Packets the kernel queues for alagg before fail-open (or drop) applies.
    pub(crate) queue_max_len: u32,
    /// Mark bits for packets to the destinations with fail-open (`capture.fwmark`).
    pub(crate) fwmark: u32,
    /// Engine settings.
    pub(crate) receiver: ReceiverConfig,
    /// Which links each packet goes on: each capture worker gets a copy of this one.
    pub(crate) scheduler: AnyScheduler,
    /// Pack small packets captured together into one frame per link.
    pub(crate) bundle: bool,
    /// Forward error correction, when on.
    pub(crate) fec: Option<FecPlan>,
    /// Pin the capture workers and the receive thread to cores.
    pub(crate) pin: bool,
    /// Cores to pin to, in order (the capture workers, then receive); `None`: the first ones.
    pub(crate) cores: Option<Vec<usize>>,
    /// How long each worker keeps looking at its queue or rings (yielding the CPU in between)
    /// after its last packet before it sleeps in `poll(2)`. While traffic flows the workers
    /// then rarely sleep, so the kernel need not wake them for every burst: a wake-up (an IPI
    /// to another core, dear in a VM) costs more than a short spin; longer spins keep sparse
    /// traffic's latency low at the cost of CPU.
    pub(crate) busy_poll: Duration,
    /// Run to completion: the receive stage runs on the first capture worker's thread, after
    /// its capture stage in every turn ([`worker::Joined`]), instead of on a thread of its own.
    pub(crate) run_to_completion: bool,
    /// `[auth]`: the site key, and whether payloads are encrypted too.
    pub(crate) auth: Option<(SiteKey, bool)>,
}

/// Errors starting the datapath. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// A link could not be opened.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The XDP program could not be loaded.
    #[error(transparent)]
    Xdp(#[from] link::xdp::XdpError),
    /// The TUN device could not be made.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// A host change (route, rule, sysctl) failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// NFQUEUE could not be bound.
    #[error(transparent)]
    Queue(#[from] NfQueueError),
    /// A thread could not be started.
    #[error("starting the {0} thread failed: {1}")]
    Thread(String, io::Error),
    /// The engine settings are inconsistent.
    #[error("engine settings: {0}")]
    Engine(#[from] alagg_proto::ConfigError),
}

/// A running datapath. [`Datapath::stop`] (or drop) tears it down.
#[derive(Debug)]
pub(crate) struct Datapath {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// The receive thread; `None` when the receive stage runs on the first capture worker's
    /// thread (run to completion), or once stopped.
    receive: Option<JoinHandle<RxStats>>,
    /// The capture workers, in order; the one that runs the receive stage too returns its
    /// final counters.
    capture: Vec<JoinHandle<Option<RxStats>>>,
    /// Stopped and torn down already.
    stopped: bool,
    /// Each worker's heartbeat ([`worker::run`]): the receive thread's, then the capture
    /// workers' in order.
    beats: Vec<Arc<AtomicU64>>,
    host: HostSetup,
    steering: Option<XdpSteering>,
    tun: Option<Tun>,
    links: Vec<MonitoredLink>,
    control: Arc<Control>,
    ethertype: u16,
    started: Instant,
    /// alagg frames the XDP program found no socket for, as last seen (`None` before the first
    /// look: frames passed while the sockets were being opened do not count), and when that was
    /// last warned about.
    no_socket: (Option<u64>, Option<Instant>),
}

/// This start's epoch: the wall-clock time in milliseconds and 16 random bits
/// (`docs/PROTOCOL.md`), so a restarted alagg is told apart from its past, and epochs order by
/// start.
fn new_epoch() -> u64 {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 2];
    if !crate::sys::random_bytes(&mut random) {
        // Without the syscall the time alone still differs between starts.
        random = [0, 1];
    }
    wire::epoch(unix_ms, u16::from_ne_bytes(random))
}

/// The sockets of every link, split between the threads.
struct OpenLinks {
    /// For the receive thread.
    rx: Vec<RxLink<LinkRx>>,
    /// Per capture worker, in link order.
    tx: Vec<Vec<TxLink<LinkTx>>>,
}

impl Datapath {
    /// Prepares the host and starts the threads. On error, whatever was done is undone (by
    /// the drop of what was made so far: the host setup's journal, XDP, the TUN).
    pub(crate) fn start(config: &DatapathConfig) -> Result<Self, UpError> {
        let interfaces = config
            .links
            .iter()
            .map(|l| link::interface(&l.interface))
            .collect::<Result<Vec<_>, _>>()?;
        let xsk_config = XskConfig::default();
        let link_states: Vec<LinkState> = interfaces
            .iter()
            .enumerate()
            .zip(&config.links)
            .map(|((i, found), plan)| LinkState {
                priority: plan.priority,
                rate_cap_bps: plan.rate_cap_bps,
                // At most 16 links (the configuration's bound): an id fits a byte.
                ..LinkState::new(
                    i as u8,
                    found.mtu.min(link::frame_room(plan.io, &xsk_config)),
                )
            })
            .collect();
        let min_mtu = link_states.iter().map(|l| l.mtu).min().unwrap_or(1500);
        // By default a packet of the TUN's MTU fills one frame: header and, with [auth], tag;
        // with FEC, room for the member extension and for the parity frame around its shard.
        let tag = if config.auth.is_some() {
            wire::TAG_LEN
        } else {
            0
        };
        let fec = if config.fec.is_some() {
            wire::FEC_OVERHEAD
        } else {
            0
        };
        let tun_mtu = config
            .tun_mtu
            .unwrap_or((min_mtu - wire::DATA_HEADER_LEN - tag - fec) as u32);
        // Made here, before any change to the host, so that a bad configuration changes nothing.
        let mut receiver =
            Receiver::new(&config.receiver)?.with_health(config.links.len(), worker::clock());
        if let Some((site, _)) = &config.auth {
            receiver = receiver.with_keyring(Keyring::new(site.clone()));
        }

        let (tun, mut host) = Self::claim_tun(config)?;
        // The XDP program only where a link uses it: AF_PACKET links need none.
        let mut steering = if config.links.iter().any(|l| l.io == IoMode::Xdp) {
            Some(XdpSteering::load()?)
        } else {
            None
        };
        let workers = usize::from(config.queue.count.max(1));
        let links = Self::open_links(config, &interfaces, steering.as_mut(), workers)?;

        host.prepare_tun(tun.name(), tun_mtu, config.tun_address)?;
        for destination in &config.destinations {
            host.route(destination, tun.name(), tun_mtu)?;
        }
        host.rules(tun.name(), &config.destinations, config.fwmark)?;

        let control = Arc::new(Control::new(config.links.len(), workers));
        let counters = Arc::new(Counters::new(config.links.len(), workers));
        let receiver = admitting(receiver, &config.destinations, &counters);
        let queues = Self::open_queues(config, workers)?;
        let shared = Shared {
            counters: Arc::clone(&counters),
            control: Arc::clone(&control),
            stop: Arc::new(AtomicBool::new(false)),
            busy_poll: config.busy_poll,
            beats: std::sync::Mutex::new(Vec::new()),
        };
        let cores = pick_cores(config);
        let coalesce = config.coalesce && deliver::tun::gso_udp_supported();
        if config.coalesce && !coalesce {
            tracing::info!(
                "UDP coalescing needs Linux 6.9 or later (GSO UDP through a TUN device); off"
            );
        }
        let plan = ReceivePlan {
            rx: links.rx,
            receiver,
            tun: tun
                .try_clone()
                .map_err(|e| UpError::Thread("receive".into(), e))?,
            tun_mtu: tun_mtu as usize,
            coalesce,
        };
        // Cores in the order documented for `cpu.cores`: the capture workers, then receive.
        let (receive, joined) = if config.run_to_completion {
            (None, Some(plan))
        } else {
            let receive = spawn_worker(
                "alagg-rx",
                cores.get(workers).copied(),
                &shared,
                move |counters, control, run| {
                    worker::run(plan.stage(counters, control), run).finish()
                },
            )
            .map_err(|e| UpError::Thread("receive".into(), e))?;
            (Some(receive), None)
        };
        let capture =
            match Self::spawn_capture(config, &shared, queues, links.tx, link_states, joined) {
                Ok(capture) => capture,
                Err(error) => {
                    // Stop what already runs before the host changes are undone.
                    shared.stop.store(true, Relaxed);
                    if let Some(receive) = receive {
                        let _ = receive.join();
                    }
                    return Err(error);
                }
            };

        let mut datapath = Self {
            counters,
            stop: shared.stop,
            receive,
            capture,
            stopped: false,
            beats: shared
                .beats
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            host,
            steering,
            tun: Some(tun),
            links: config.links.iter().map(MonitoredLink::new).collect(),
            control,
            ethertype: config.ethertype,
            started: Instant::now(),
            no_socket: (None, None),
        };
        // Capture last: from here on, traffic to the destinations is stolen by alagg.
        let tun_name = config.tun_name.clone();
        datapath
            .host
            .capture(&tun_name, &config.destinations, config.queue, config.fwmark)?;
        if config.queue.bypass {
            for destination in &config.destinations {
                match crate::host::fail_open_device(destination, config.fwmark) {
                    Some(device) if device != tun_name => tracing::info!(
                        %destination,
                        device,
                        "fail-open: while alagg is stopped or behind, packets to it take the \
                         host's own route"
                    ),
                    _ => tracing::warn!(
                        %destination,
                        "fail-open: the host has no route of its own to it, so packets alagg \
                         lets pass while stopped or behind are lost"
                    ),
                }
            }
        }
        Ok(datapath)
    }

    /// Creates the TUN device and takes over the host setup. The TUN device first: while
    /// another alagg runs with this name, it holds the device and this fails before anything
    /// else is touched. Owning the device, this process is the only alagg for it: what a
    /// journal for it records was left by one that died, and is undone.
    fn claim_tun(config: &DatapathConfig) -> Result<(Tun, HostSetup), UpError> {
        let tun = Tun::create(&config.tun_name)?;
        let journal = journal_path(tun.name());
        let (lock, left) = match recover(&journal)? {
            Recovery::Clean(lock) => (lock, Vec::new()),
            Recovery::Undone {
                changes,
                errors,
                left,
                lock,
            } => {
                tracing::warn!(
                    changes,
                    "undid what an alagg that did not stop cleanly left"
                );
                for error in errors {
                    tracing::warn!(%error, "undoing what the earlier alagg left");
                }
                if !left.is_empty() {
                    tracing::warn!(
                        left = left.len(),
                        "will try to undo the rest again when this alagg stops"
                    );
                }
                (lock, left)
            }
            // Only an `alagg down` (or a process starting up) can hold it while this one owns
            // the TUN device.
            Recovery::Live { pid } => {
                return Err(UpError::Host(HostError {
                    command: format!("locking {}", lock_path(&journal).display()),
                    message: format!(
                        "another alagg process{} holds it (an `alagg down`?): wait for it to \
                         end and start again",
                        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
                    ),
                }));
            }
        };
        let mut host = HostSetup::with_journal(journal, lock, left)?;
        host.remove_stale_capture(tun.name());
        Ok((tun, host))
    }

    /// Opens every link's sockets for `workers` capture workers.
    fn open_links(
        config: &DatapathConfig,
        interfaces: &[crate::netdev::Interface],
        mut steering: Option<&mut XdpSteering>,
        workers: usize,
    ) -> Result<OpenLinks, UpError> {
        let mut open = OpenLinks {
            rx: Vec::new(),
            tx: (0..workers).map(|_| Vec::new()).collect(),
        };
        for (i, (plan, found)) in config.links.iter().zip(interfaces).enumerate() {
            let (rx, tx) = link::open(
                steering.as_deref_mut(),
                i,
                plan,
                config.ethertype,
                (XskConfig::default(), workers),
            )?;
            open.rx.extend(rx.into_iter().map(|io| RxLink {
                link: i,
                io,
                local_mac: found.mac,
                peer_mac: plan.peer_mac,
                ethertype: config.ethertype,
            }));
            let eth = link::ethernet(plan, found.mac, config.ethertype);
            for (worker, io) in open.tx.iter_mut().zip(tx) {
                worker.push(TxLink { io, eth });
            }
        }
        Ok(open)
    }

    /// Binds the NFQUEUE queues: worker `w` takes queue `first + w` and, with GSO, TCP's queue
    /// `tcp + w`.
    fn open_queues(
        config: &DatapathConfig,
        workers: usize,
    ) -> Result<Vec<Vec<CaptureQueue>>, UpError> {
        let options = QueueOptions {
            max_len: config.queue_max_len,
            fail_open: config.queue.bypass,
            ..QueueOptions::default()
        };
        let mut all = Vec::new();
        for w in 0..workers as u16 {
            let mut queues = vec![CaptureQueue::new(NfQueue::open(
                config.queue.first + w,
                &options,
            )?)];
            if let Some(tcp) = config.queue.tcp {
                let gso = QueueOptions {
                    gso: true,
                    ..options
                };
                queues.push(CaptureQueue::new(NfQueue::open(tcp + w, &gso)?));
            }
            all.push(queues);
        }
        Ok(all)
    }

    /// Starts a capture worker per queue set, the first running the receive stage of `joined`
    /// too (run to completion); on error, those already started are stopped.
    fn spawn_capture(
        config: &DatapathConfig,
        shared: &Shared,
        queues: Vec<Vec<CaptureQueue>>,
        tx: Vec<Vec<TxLink<LinkTx>>>,
        link_states: Vec<LinkState>,
        mut joined: Option<ReceivePlan>,
    ) -> Result<Vec<JoinHandle<Option<RxStats>>>, UpError> {
        let cores = pick_cores(config);
        let workers = queues.len();
        // One number space for all workers: the peer sees one stream.
        let epoch = new_epoch();
        let flags = match config.auth {
            Some((_, true)) => wire::FLAG_AUTH | wire::FLAG_ENCRYPTED,
            Some((_, false)) => wire::FLAG_AUTH,
            None => 0,
        };
        let next_seq = Arc::new(AtomicU64::new(0));
        let mut capture = Vec::new();
        for (w, (queues, links)) in queues.into_iter().zip(tx).enumerate() {
            let sender = Sender::shared(epoch, Arc::clone(&next_seq)).with_flags(flags);
            let sealer = config
                .auth
                .as_ref()
                .map(|(site, _)| FrameKey::derive(site, epoch));
            let link_states = link_states.clone();
            let (scheduler, bundle, fec) = (config.scheduler.clone(), config.bundle, config.fec);
            let receive = joined.take();
            let name = match (workers, &receive) {
                (_, Some(_)) => "alagg-worker".to_owned(),
                (1, None) => "alagg-capture".to_owned(),
                _ => format!("alagg-capture{w}"),
            };
            let handle = spawn_worker(
                &name,
                cores.get(w).copied(),
                shared,
                move |all, control, run| {
                    let counters = &all.workers[w];
                    let tx = Transmit::new(
                        (sender, sealer),
                        (links, link_states),
                        (scheduler, bundle, fec),
                        counters,
                        (control, w),
                    );
                    let capture = Capture::new(queues, tx, counters);
                    match receive {
                        // Receive first: what its TUN writes make the host send is captured
                        // in the same turn.
                        Some(plan) => {
                            let stage = worker::Joined::new(plan.stage(all, control), capture);
                            Some(worker::run(stage, run).first.finish())
                        }
                        None => {
                            worker::run(capture, run);
                            None
                        }
                    }
                },
            );
            match handle {
                Ok(handle) => capture.push(handle),
                Err(error) => {
                    shared.stop.store(true, Relaxed);
                    for handle in capture {
                        let _ = handle.join();
                    }
                    return Err(UpError::Thread(name, error));
                }
            }
        }
        Ok(capture)
    }

    /// A function that copies every counter into a [`Snapshot`], for the control socket and
    /// the metrics endpoint; it reads only shared counters, so any thread may call it at any
    /// time. `config` is the configuration file's path as shown to the user.
    pub(crate) fn snapshot_source(&self, config: &str) -> impl Fn() -> Snapshot + Send + 'static {
        let counters = Arc::clone(&self.counters);
        let interfaces: Vec<String> = self
            .links
            .iter()
            .map(|l| l.plan.interface.clone())
            .collect();
        let tun = self
            .tun
            .as_ref()
            .map(|t| t.name().to_owned())
            .unwrap_or_default();
        let config = config.to_owned();
        let started = self.started;
        let control = Arc::clone(&self.control);
        move || {
            let health: Vec<_> = (0..interfaces.len())
                .map(|i| control.health(i).map(|b| b.view()).unwrap_or_default())
                .collect();
            Snapshot::take(
                &counters,
                (&interfaces, &health),
                &tun,
                &config,
                started.elapsed(),
            )
        }
    }

    /// Whether every worker thread still runs. One that ended (a bug: they only end when told
    /// to) makes the datapath useless; the caller should stop and report it.
    pub(crate) fn workers_alive(&self) -> bool {
        self.receive.as_ref().is_none_or(|h| !h.is_finished())
            && !self.capture.is_empty()
            && self.capture.iter().all(|h| !h.is_finished())
    }

    /// Each worker's heartbeat now (the receive thread's, then the capture workers'): a count
    /// that rises with every turn of the worker's loop, at least every
    /// [`worker::IDLE_WAKEUP`] while it runs. One that does not rise is stuck.
    /// Hands every capture worker a new schedule (live reload): each takes it on its next
    /// turn, after sending what it was building under the old one.
    pub(crate) fn reschedule(&self, schedule: &crate::port::Schedule) {
        self.control.set_schedule(schedule);
    }

    pub(crate) fn heartbeats(&self) -> Vec<u64> {
        self.beats.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// Stops and tears down; returns the receive engine's final counters.
    pub(crate) fn stop(mut self) -> RxStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> RxStats {
        self.stopped = true;
        // No new packets into the queue, then stop the workers.
        for error in self.host.teardown() {
            tracing::warn!(%error, "teardown");
        }
        self.stop.store(true, Relaxed);
        // Every worker wakes at least every IDLE_WAKEUP to see the stop flag; the receive
        // thread is joined first, for the engine's final counters.
        let mut stats = self.receive.take().and_then(|h| h.join().ok());
        for handle in self.capture.drain(..) {
            if let Ok(Some(joined)) = handle.join() {
                stats = Some(joined);
            }
        }
        let stats = stats.unwrap_or_default();
        if let Some(mut steering) = self.steering.take() {
            for link in &self.links {
                if let Err(error) = steering.detach(&link.plan.interface) {
                    tracing::warn!(%error, "detaching XDP");
                }
            }
        }
        self.tun = None;
        stats
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if !self.stopped {
            self.shutdown();
        }
    }
}

/// What the receive stage is made of, made on the thread that runs it.
struct ReceivePlan {
    rx: Vec<RxLink<LinkRx>>,
    receiver: Receiver,
    tun: Tun,
    tun_mtu: usize,
    coalesce: bool,
}

impl ReceivePlan {
    fn stage<'a>(
        self,
        counters: &'a Counters,
        control: &'a Control,
    ) -> Receive<'a, LinkRx, LinkTx, Delivery<'a, Tun>> {
        let delivery = Delivery::new(
            self.tun,
            self.tun_mtu,
            self.coalesce,
            &counters.receiver.delivery,
        );
        Receive::new(self.rx, self.receiver, delivery, counters, control)
    }
}

/// What every worker thread shares.
struct Shared {
    counters: Arc<Counters>,
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
    busy_poll: Duration,
    /// The heartbeat of every worker started, in start order.
    beats: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
}

/// Starts a worker thread named `name`, pinned to `core`, that runs `body` with the shared
/// counters, the link control, and the stop flag with the busy-poll time and its heartbeat.
fn spawn_worker<T: Send + 'static>(
    name: &str,
    core: Option<usize>,
    shared: &Shared,
    body: impl FnOnce(&Counters, &Control, (&AtomicBool, Duration, &AtomicU64)) -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let counters = Arc::clone(&shared.counters);
    let control = Arc::clone(&shared.control);
    let stop = Arc::clone(&shared.stop);
    let busy_poll = shared.busy_poll;
    let beat = Arc::new(AtomicU64::new(0));
    let handle = {
        let beat = Arc::clone(&beat);
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                pin(core);
                body(&counters, &control, (&stop, busy_poll, &beat))
            })?
    };
    shared
        .beats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(beat);
    Ok(handle)
}

fn pick_cores(config: &DatapathConfig) -> Vec<usize> {
    if !config.pin {
        return Vec::new();
    }
    if let Some(cores) = &config.cores {
        return cores.clone();
    }
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

fn pin(core: Option<usize>) {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::warn!(core = id, "could not pin thread to core");
        }
    }
}

/// `receiver` asking the delivery checks ([`deliver::admitted`]) about every packet before it
/// takes its number, counting what they refuse, so that a packet the host would refuse (a
/// forged source, say) cannot make the genuine packet of its number a duplicate.
pub(crate) fn admitting(
    receiver: Receiver,
    destinations: &[IpNet],
    counters: &Arc<Counters>,
) -> Receiver {
    let (destinations, counters) = (destinations.to_vec(), Arc::clone(counters));
    receiver.with_admission(Admission::new(move |packet| {
        deliver::admitted(packet, &destinations, &counters.receiver.delivery).map(<[u8]>::len)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_differ_between_calls_and_order_by_start() {
        // 16 random bits below the same millisecond: a collision among a few is unlikely.
        let epochs: Vec<u64> = (0..8).map(|_| new_epoch()).collect();
        let distinct: std::collections::HashSet<u64> = epochs.iter().copied().collect();
        assert!(distinct.len() >= 7);
        thread::sleep(Duration::from_millis(2));
        let later = new_epoch();
        assert!(
            epochs
                .iter()
                .all(|&e| wire::epoch_start_ms(e) < wire::epoch_start_ms(later))
        );
    }
}
