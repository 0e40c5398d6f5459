//! The datapath of `alagg up`: NFQUEUE capture → alagg frames on every link through AF_XDP →
//! (the peer's XDP program and AF_XDP sockets) → dedup, reorder, reassembly → TUN delivery.
//!
//! Threads and what each owns (no lock on the per-packet path):
//! - a capture thread per NFQUEUE queue (`capture.queues` workers): its NFQUEUE sockets (the
//!   queue and, with GSO, its TCP queue), a [`Sender`] drawing numbers from the one sequence
//!   space all workers share (an atomic counter), the scheduler, a [`Bundler`] and the transmit
//!   half of its own socket on every link (AF_XDP on the interface's queue of the worker's
//!   number). It takes up to [`CAPTURE_BATCH`] packets per `recvmmsg(2)`, stages their frames on
//!   the links (small ones bundled), steals the whole batch with one verdict
//!   (`NFQNL_MSG_VERDICT_BATCH`, drop) and flushes the links' tx rings; after the last packet it
//!   keeps looking for `busy_poll`, then waits in `poll(2)` for at most [`IDLE_WAKEUP`], so it
//!   sees a stop request promptly;
//! - the receive thread: the receive half of every link's sockets, the [`Receiver`] and the TUN
//!   device. It polls all links, drops frames not from the link's configured peer MAC, runs the
//!   engine and writes deliverable packets whose source is in the configured destinations;
//! - the caller's thread: starts and stops the others, watches the links ([`Datapath::monitor`])
//!   and reads the shared counters ([`Datapath::snapshot_source`]).
//!
//! Counters: per-packet counters are relaxed atomics; the receive engine's own counters are
//! copied into a mutex every [`PUBLISH_INTERVAL`] (never per packet), and the XDP program's by
//! the monitor, so a status query never reaches into a worker.
//!
//! Shutdown order: capture rules first (no new packets are queued), then both workers stop and
//! are joined (the receive thread drains first), then XDP is detached and the TUN closed.

use std::{
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{
            AtomicBool, AtomicU8, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crossbeam_queue::ArrayQueue;

use alagg_proto::{
    Bundler, LinkSet, LinkState, Receiver, ReceiverConfig, Redundant, RxOutcome, Scheduler, Sender,
    Timestamp,
    stats::RxStats,
    wire::{ETH_HDR_LEN, EthernetRepr, MacAddr},
};
use ipnet::IpNet;

use alagg_common::{Action, Counter};

use crate::{
    host::{HostError, HostSetup, QueueSpec, Recovery, journal_path, recover},
    ip,
    nfqueue::{Batch, NfQueue, NfQueueError, Packet, QueueOptions, Verdict},
    packet::{PacketError, PacketRx, PacketSocket, PacketTx},
    report::{CaptureSnapshot, DeliverySnapshot, EngineSnapshot, LinkSnapshot, Snapshot},
    tun::{Tun, TunError},
    xdp::{AttachMode, XdpError, XdpSteering},
    xsk::{XskConfig, XskError, XskRx, XskSocket, XskTx},
};

/// One link as the datapath needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    /// Local interface.
    pub interface: String,
    /// The peer's MAC on this link.
    pub peer_mac: [u8; 6],
    /// XDP attach mode (for [`LinkIo::Xdp`]).
    pub xdp_mode: AttachMode,
    /// How the link's frames are sent and received.
    pub io: LinkIo,
}

/// The socket a link's frames go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkIo {
    /// AF_XDP, fed by alagg's XDP program ([`crate::xsk`]).
    Xdp,
    /// AF_PACKET, for NICs without XDP ([`crate::packet`]).
    Packet,
}

/// Everything `alagg up` runs with, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// The links, in configuration order; a link's index is its id on the wire.
    pub links: Vec<LinkPlan>,
    /// The peer's networks: captured when sent, accepted as sources when received.
    pub destinations: Vec<IpNet>,
    /// Ethertype of alagg frames.
    pub ethertype: u16,
    /// TUN device name.
    pub tun_name: String,
    /// Address given to the TUN device.
    pub tun_address: IpNet,
    /// MTU of the TUN device and of the routes through it; `None`: the smallest link MTU less
    /// alagg's header.
    pub tun_mtu: Option<u32>,
    /// NFQUEUE numbers and fail-open.
    pub queue: QueueSpec,
    /// Packets the kernel queues for alagg before fail-open (or drop) applies.
    pub queue_max_len: u32,
    /// Engine settings.
    pub receiver: ReceiverConfig,
    /// Pack small packets captured together into one frame per link.
    pub bundle: bool,
    /// Pin the capture workers and the receive thread to cores.
    pub pin: bool,
    /// Cores to pin to, in order (the capture workers, then receive); `None`: the first ones.
    pub cores: Option<Vec<usize>>,
    /// How long each worker keeps looking at its queue or rings (yielding the CPU in between)
    /// after its last packet before it sleeps in `poll(2)`. While traffic flows the workers
    /// then rarely sleep, so the kernel need not wake them for every burst: a wake-up (an IPI
    /// to another core, dear in a VM) costs more than a short spin; longer spins keep sparse
    /// traffic's latency low at the cost of CPU.
    pub busy_poll: Duration,
}

/// Errors starting the datapath. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A link's interface is missing or unusable.
    #[error("link {interface}: {message}")]
    Link {
        /// The interface.
        interface: String,
        /// What is wrong.
        message: String,
    },
    /// XDP could not be loaded or attached.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// An AF_XDP socket could not be opened.
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// An AF_PACKET socket could not be opened.
    #[error(transparent)]
    Packet(#[from] PacketError),
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
    Thread(&'static str, io::Error),
    /// The engine settings are inconsistent.
    #[error("engine settings: {0}")]
    Engine(#[from] alagg_proto::ConfigError),
}

/// Counters of one link, shared with the status display.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames staged for transmission.
    pub tx_frames: AtomicU64,
    /// Bytes staged for transmission (Ethernet frames).
    pub tx_bytes: AtomicU64,
    /// Frames dropped because no transmit frame was free.
    pub tx_dropped: AtomicU64,
    /// alagg frames received.
    pub rx_frames: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames from a MAC other than the configured peer's; dropped.
    pub rx_foreign: AtomicU64,
    /// Packets whose first copy came over this link.
    pub first: AtomicU64,
    /// The link's [`LinkStatus`] as the monitor last saw it ([`LinkStatus::code`]).
    pub status: AtomicU8,
}

/// Datapath counters, updated by the worker threads, read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets taken from NFQUEUE.
    pub captured: AtomicU64,
    /// Bytes taken from NFQUEUE.
    pub captured_bytes: AtomicU64,
    /// Captured packets that could not be sent at all (no usable link, too large).
    pub capture_dropped: AtomicU64,
    /// Packets written to the TUN device.
    pub delivered: AtomicU64,
    /// Bytes written to the TUN device.
    pub delivered_bytes: AtomicU64,
    /// Packets dropped because their source is outside the destinations.
    pub rejected_source: AtomicU64,
    /// Packets dropped because their IP header is not sane.
    pub rejected_malformed: AtomicU64,
    /// TUN writes that failed.
    pub tun_errors: AtomicU64,
    /// NFQUEUE receives that handed out packets.
    pub capture_batches: AtomicU64,
    /// NFQUEUE receive-buffer overruns (`ENOBUFS`): the kernel lost packets (or, with fail-open,
    /// let them through uncaptured) before alagg could read them.
    pub capture_overruns: AtomicU64,
    /// NFQUEUE messages that did not parse, and errors the kernel reported on verdicts.
    pub capture_errors: AtomicU64,
    /// Per link, in configuration order.
    pub links: Vec<LinkCounters>,
    /// The receive engine's counters, published by the receive thread every
    /// [`PUBLISH_INTERVAL`] and when it stops.
    pub engine: Mutex<RxStats>,
    /// The XDP program's verdict counters over all links, refreshed by [`Datapath::monitor`].
    pub xdp: Mutex<Vec<(Action, Counter)>>,
}

/// How often the receive thread publishes the engine's counters.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Packets the capture thread takes from NFQUEUE per receive (and settles per verdict).
pub const CAPTURE_BATCH: usize = 64;
/// Longest an idle worker waits before it looks at the stop flag again.
pub const IDLE_WAKEUP: Duration = Duration::from_millis(100);

/// What the caller's thread tells the workers about links: whether each may carry traffic, and
/// replacement sockets for a link whose interface disappeared and came back. Lock-free: the
/// workers read the flags and poll the queues once per batch.
#[derive(Debug)]
struct LinkControl {
    /// Bumped after every change below, so a worker checks one number per packet.
    generation: AtomicU64,
    usable: Vec<AtomicBool>,
    /// Per capture worker.
    new_tx: Vec<ArrayQueue<(usize, LinkTx, EthernetRepr)>>,
    new_rx: ArrayQueue<(usize, Vec<LinkRx>)>,
}

/// What the monitor last saw of a link's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// Up with carrier: carries traffic.
    Up,
    /// Present but administratively down or without carrier: skipped.
    Down,
    /// The interface does not exist (unplugged, deleted): skipped until it returns.
    Gone,
}

impl LinkStatus {
    /// The status as a number, for [`LinkCounters::status`].
    pub const fn code(self) -> u8 {
        match self {
            LinkStatus::Up => 0,
            LinkStatus::Down => 1,
            LinkStatus::Gone => 2,
        }
    }

    /// The status a [`LinkStatus::code`] stands for; unknown codes read as `Gone`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => LinkStatus::Up,
            1 => LinkStatus::Down,
            _ => LinkStatus::Gone,
        }
    }
}

/// A running datapath. [`Datapath::stop`] (or drop) tears it down.
#[derive(Debug)]
pub struct Datapath {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    receive: Option<JoinHandle<RxStats>>,
    capture: Vec<JoinHandle<()>>,
    host: HostSetup,
    steering: Option<XdpSteering>,
    tun: Option<Tun>,
    links: Vec<MonitoredLink>,
    control: Arc<LinkControl>,
    ethertype: u16,
    started: Instant,
    /// alagg frames the XDP program found no socket for, as last seen (`None` before the first
    /// look: frames passed while the sockets were being opened do not count), and when that was
    /// last warned about.
    no_socket: (Option<u64>, Option<Instant>),
}

/// Copies the shared counters into a [`Snapshot`].
fn snapshot(
    counters: &Counters,
    interfaces: &[String],
    tun: &str,
    config: &str,
    started: Instant,
) -> Snapshot {
    let stats = *counters
        .engine
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let xdp = counters
        .xdp
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|&pair| pair.into())
        .collect();
    Snapshot {
        version: crate::report::SNAPSHOT_VERSION,
        pid: std::process::id(),
        uptime_secs: started.elapsed().as_secs_f64(),
        config: config.to_owned(),
        tun: tun.to_owned(),
        links: interfaces
            .iter()
            .zip(&counters.links)
            .map(|(interface, c)| {
                LinkSnapshot::new(interface, LinkStatus::from_code(c.status.load(Relaxed)), c)
            })
            .collect(),
        capture: CaptureSnapshot::from(counters),
        delivery: DeliverySnapshot::from(counters),
        engine: EngineSnapshot::from(&stats),
        xdp,
    }
}

/// A link as the monitor tracks it.
#[derive(Debug)]
struct MonitoredLink {
    plan: LinkPlan,
    ifindex: u32,
    status: LinkStatus,
}

/// What a link is on this host.
struct LinkHost {
    mac: [u8; 6],
    mtu: usize,
}

fn link_host(interface: &str) -> Result<LinkHost, UpError> {
    let error = |message: String| UpError::Link {
        interface: interface.to_owned(),
        message,
    };
    let dir = format!("/sys/class/net/{interface}");
    if !std::path::Path::new(&dir).exists() {
        return Err(error("no such interface (check `ip link`)".into()));
    }
    let read = |name: &str| {
        std::fs::read_to_string(format!("{dir}/{name}"))
            .map(|s| s.trim().to_owned())
            .map_err(|e| error(format!("reading {dir}/{name}: {e}")))
    };
    let mac_text = read("address")?;
    let mac = parse_mac(&mac_text).ok_or_else(|| error(format!("unreadable MAC {mac_text:?}")))?;
    let mtu = read("mtu")?
        .parse()
        .map_err(|_| error("unreadable MTU".into()))?;
    let flags = read("flags")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & libc::IFF_UP as u32 == 0 {
        return Err(error(format!(
            "the interface is down: bring it up with `ip link set {interface} up`"
        )));
    }
    if read("operstate")? == "down" {
        // Carrier can come and go (a cable, the peer, an XDP attach on a veth peer): the link is
        // used once it is there.
        tracing::warn!(interface, "no carrier yet");
    }
    Ok(LinkHost { mac, mtu })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A per-boot epoch: random, so a restarted alagg is told apart from a replay.
fn random_epoch() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        // Without the syscall, the clock still differs between boots.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() ^ d.as_secs() as u32)
    }
}

impl Datapath {
    /// Prepares the host and starts the threads. On error, whatever was done is undone.
    pub fn start(config: &DatapathConfig) -> Result<Self, UpError> {
        let hosts = config
            .links
            .iter()
            .map(|l| link_host(&l.interface))
            .collect::<Result<Vec<_>, _>>()?;
        let xsk_config = XskConfig::default();
        // A frame holds the Ethernet header and one alagg frame; the UMEM frame's data area is
        // what bounds it on links with a larger MTU.
        let frame_room = xsk_config.frame_size as usize - 256 - ETH_HDR_LEN;
        let link_states: Vec<LinkState> = hosts
            .iter()
            .enumerate()
            .zip(&config.links)
            .map(|((i, h), plan)| LinkState {
                id: i as u16,
                usable: true,
                weight: 1,
                mtu: h.mtu.min(match plan.io {
                    LinkIo::Xdp => frame_room,
                    LinkIo::Packet => crate::packet::MAX_FRAME - ETH_HDR_LEN,
                }),
            })
            .collect();
        let min_mtu = link_states.iter().map(|l| l.mtu).min().unwrap_or(1500);
        let tun_mtu = config
            .tun_mtu
            .unwrap_or((min_mtu - alagg_proto::wire::DATA_HEADER_LEN) as u32);

        let receiver = Receiver::new(&config.receiver)?;
        // The TUN device first: while another alagg runs with this name, it holds the device
        // and this fails before anything else is touched.
        let tun = Tun::create(&config.tun_name)?;
        // Owning the device, this process is the only alagg for it: what a journal for it
        // records was left by one that died.
        let journal = journal_path(tun.name());
        match recover(&journal)? {
            Recovery::Undone { changes, .. } => {
                tracing::warn!(
                    changes,
                    "undid what an alagg that did not stop cleanly left"
                );
            }
            Recovery::Clean | Recovery::Live { .. } => {}
        }
        let mut host = HostSetup::with_journal(journal)?;
        host.remove_stale_capture(tun.name());
        // The XDP program only where a link uses it: AF_PACKET links need none.
        let mut steering = if config.links.iter().any(|l| l.io == LinkIo::Xdp) {
            Some(XdpSteering::load()?)
        } else {
            None
        };
        let worker_count = config.queue.count.max(1);
        let workers = usize::from(worker_count);
        let mut rx_halves = Vec::new();
        let mut tx_halves: Vec<Vec<TxLink>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, (link, host)) in config.links.iter().zip(&hosts).enumerate() {
            let (rx, tx) = open_link(
                steering.as_mut(),
                i,
                link,
                config.ethertype,
                (xsk_config, workers),
            )?;
            rx_halves.extend(rx.into_iter().map(|io| RxLink {
                link: i,
                io,
                peer_mac: link.peer_mac,
                ethertype: config.ethertype,
            }));
            for (worker, io) in tx_halves.iter_mut().zip(tx) {
                worker.push(TxLink {
                    io,
                    eth: EthernetRepr {
                        dst: MacAddr(link.peer_mac),
                        src: MacAddr(host.mac),
                        ethertype: config.ethertype,
                    },
                });
            }
        }

        host.prepare_tun(tun.name(), tun_mtu, config.tun_address)?;
        for destination in &config.destinations {
            host.route(destination, tun.name(), tun_mtu)?;
        }

        let control = Arc::new(LinkControl {
            generation: AtomicU64::new(0),
            usable: config.links.iter().map(|_| AtomicBool::new(true)).collect(),
            new_tx: (0..workers)
                .map(|_| ArrayQueue::new(4 * config.links.len().max(1)))
                .collect(),
            new_rx: ArrayQueue::new(4 * config.links.len().max(1)),
        });
        let counters = Arc::new(Counters {
            links: config
                .links
                .iter()
                .map(|_| LinkCounters::default())
                .collect(),
            ..Counters::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let cores = pick_cores(config);

        let options = QueueOptions {
            max_len: config.queue_max_len,
            fail_open: config.queue.bypass,
            ..QueueOptions::default()
        };
        // Worker `w` takes queue `first + w` and, with GSO, TCP's queue `tcp + w`.
        let mut worker_queues = Vec::new();
        for w in 0..worker_count {
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
            worker_queues.push(queues);
        }

        let receive = {
            let tun = tun.try_clone().map_err(|e| UpError::Thread("receive", e))?;
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            let destinations = config.destinations.clone();
            let core = cores.get(workers).copied();
            let busy_poll = config.busy_poll;
            let control = Arc::clone(&control);
            thread::Builder::new()
                .name("alagg-rx".into())
                .spawn(move || {
                    pin(core);
                    receive_loop(
                        rx_halves,
                        receiver,
                        &tun,
                        &destinations,
                        &counters,
                        &control,
                        (&stop, busy_poll),
                    )
                })
                .map_err(|e| UpError::Thread("receive", e))?
        };
        // One number space for all workers: the peer sees one stream.
        let epoch = random_epoch();
        let next_seq = Arc::new(AtomicU64::new(0));
        let mut capture = Vec::new();
        for (w, (queues, links)) in worker_queues.into_iter().zip(tx_halves).enumerate() {
            let counters = Arc::clone(&counters);
            let worker_stop = Arc::clone(&stop);
            let core = cores.get(w).copied();
            let sender = Sender::shared(epoch, Arc::clone(&next_seq));
            let control = Arc::clone(&control);
            let bundler = config.bundle.then(Bundler::new);
            let busy_poll = config.busy_poll;
            let link_states = link_states.clone();
            let name = if workers == 1 {
                "alagg-capture".to_owned()
            } else {
                format!("alagg-capture{w}")
            };
            let handle = thread::Builder::new().name(name).spawn(move || {
                pin(core);
                let tx = Transmit {
                    sender,
                    scheduler: Redundant,
                    links,
                    link_states,
                    bundler,
                    bundle_links: LinkSet::EMPTY,
                    counters: &counters,
                };
                capture_loop(w, queues, tx, &control, (&worker_stop, busy_poll));
            });
            match handle {
                Ok(handle) => capture.push(handle),
                Err(error) => {
                    // Stop what already runs before the host changes are undone.
                    stop.store(true, Relaxed);
                    let _ = receive.join();
                    for handle in capture {
                        let _ = handle.join();
                    }
                    return Err(UpError::Thread("capture", error));
                }
            }
        }

        // Capture last: from here on, traffic to the destinations is stolen by alagg.
        let mut datapath = Self {
            counters,
            stop,
            receive: Some(receive),
            capture,
            host,
            steering,
            tun: Some(tun),
            links: config
                .links
                .iter()
                .map(|plan| MonitoredLink {
                    plan: plan.clone(),
                    ifindex: crate::xdp::ifindex(&plan.interface).unwrap_or(0),
                    status: LinkStatus::Up,
                })
                .collect(),
            control,
            ethertype: config.ethertype,
            started: Instant::now(),
            no_socket: (None, None),
        };
        let tun_name = config.tun_name.clone();
        datapath
            .host
            .capture(&tun_name, &config.destinations, config.queue)?;
        Ok(datapath)
    }

    /// The live counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A function that copies every counter into a [`Snapshot`], for the control socket and
    /// the metrics endpoint; it reads only shared counters, so any thread may call it at any
    /// time. `config` is the configuration file's path as shown to the user.
    pub fn snapshot_source(&self, config: &str) -> impl Fn() -> Snapshot + Send + 'static {
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
        move || snapshot(&counters, &interfaces, &tun, &config, started)
    }

    /// Looks at every link's interface once and reacts to changes: a link that went down (or
    /// lost carrier) stops carrying traffic, one that came back up carries it again, and one
    /// whose interface disappeared and returned (a new ifindex) gets the XDP program and a fresh
    /// AF_XDP socket, handed to the worker threads. Each change is logged once. Call it
    /// periodically; it returns the links' status.
    pub fn monitor(&mut self) -> Vec<LinkStatus> {
        for (index, link) in self.links.iter_mut().enumerate() {
            let name = link.plan.interface.clone();
            let ifindex = crate::xdp::ifindex(&name).ok();
            let status = match ifindex {
                None => LinkStatus::Gone,
                Some(_) if interface_carries(&name) => LinkStatus::Up,
                Some(_) => LinkStatus::Down,
            };
            if let Some(ifindex) = ifindex.filter(|&i| i != link.ifindex) {
                // A new interface under the old name: set it up like at start.
                let workers = self.control.new_tx.len();
                match reopen_link(
                    self.steering.as_mut(),
                    index,
                    &link.plan,
                    self.ethertype,
                    workers,
                ) {
                    Ok((rx, tx, eth)) => {
                        // The newest sockets win: an older replacement still queued is stale.
                        drop(self.control.new_rx.force_push((index, rx)));
                        for (queue, tx) in self.control.new_tx.iter().zip(tx) {
                            drop(queue.force_push((index, tx, eth)));
                        }
                        self.control.generation.fetch_add(1, Release);
                        link.ifindex = ifindex;
                        tracing::info!(
                            interface = name,
                            ifindex,
                            "link is back: XDP and AF_XDP socket reopened"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(interface = name, %error, "link is back but could not be reopened; retrying");
                        self.control.usable[index].store(false, Relaxed);
                        continue;
                    }
                }
            }
            if status != link.status {
                match status {
                    LinkStatus::Up => tracing::info!(interface = name, "link up: carrying traffic"),
                    LinkStatus::Down => tracing::warn!(interface = name, "link down: skipped"),
                    LinkStatus::Gone => tracing::warn!(
                        interface = name,
                        "link gone: skipped until its interface returns"
                    ),
                }
                link.status = status;
            }
            self.counters.links[index]
                .status
                .store(status.code(), Relaxed);
            let usable = status == LinkStatus::Up;
            if self.control.usable[index].swap(usable, Relaxed) != usable {
                self.control.generation.fetch_add(1, Release);
            }
        }
        if let Some(Ok(xdp)) = self.steering.as_ref().map(XdpSteering::counters) {
            self.warn_no_socket(&xdp);
            *self
                .counters
                .xdp
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = xdp.to_vec();
        }
        self.links.iter().map(|l| l.status).collect()
    }

    /// Warns (at most once a minute) when alagg frames arrived on an interface queue with no
    /// AF_XDP socket: the kernel got them, so they are lost to alagg. The usual cause is a peer
    /// with more capture workers (on virtual links, its worker `w`'s frames arrive on queue `w`).
    fn warn_no_socket(&mut self, xdp: &[(Action, Counter)]) {
        let frames: u64 = xdp
            .iter()
            .filter(|(action, _)| *action == Action::PassedNoSocket)
            .map(|(_, counter)| counter.packets)
            .sum();
        let (seen, warned) = self.no_socket;
        let seen = seen.unwrap_or(frames);
        if frames > seen && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                frames = frames - seen,
                "alagg frames arrived on an interface queue that has no AF_XDP socket and were \
                 lost; set the same capture.queues on both hosts"
            );
            self.no_socket = (Some(frames), Some(Instant::now()));
        } else {
            self.no_socket.0 = Some(frames);
        }
    }

    /// Whether every worker thread still runs. One that ended (a bug: they only end when told
    /// to) makes the datapath useless; the caller should stop and report it.
    pub fn workers_alive(&self) -> bool {
        self.receive.as_ref().is_some_and(|h| !h.is_finished())
            && !self.capture.is_empty()
            && self.capture.iter().all(|h| !h.is_finished())
    }

    /// Stops and tears down; returns the receive engine's final counters.
    pub fn stop(mut self) -> RxStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> RxStats {
        // No new packets into the queue, then stop the workers.
        for error in self.host.teardown() {
            tracing::warn!(%error, "teardown");
        }
        self.stop.store(true, Relaxed);
        let stats = self
            .receive
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(mut steering) = self.steering.take() {
            for link in &self.links {
                if let Err(error) = steering.detach(&link.plan.interface) {
                    tracing::warn!(%error, "detaching XDP");
                }
            }
        }
        // The capture thread wakes at least every IDLE_WAKEUP to see the stop flag.
        for handle in self.capture.drain(..) {
            let _ = handle.join();
        }
        self.tun = None;
        stats
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.receive.is_some() {
            self.shutdown();
        }
    }
}

/// Whether `interface` is administratively up and has carrier.
fn interface_carries(interface: &str) -> bool {
    let dir = format!("/sys/class/net/{interface}");
    let flags = std::fs::read_to_string(format!("{dir}/flags")).unwrap_or_default();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    let carrier = std::fs::read_to_string(format!("{dir}/carrier")).unwrap_or_default();
    flags & libc::IFF_UP as u32 != 0 && carrier.trim() == "1"
}

/// Opens a link's sockets for `workers` capture workers: the receive halves (for the receive
/// thread) and one transmit half per worker, in worker order. For XDP, attaches the program to
/// the link's interface and opens an AF_XDP socket per worker, on the interface's queue of the
/// worker's number; for AF_PACKET, one packet socket receives and the other workers' only send.
fn open_link(
    steering: Option<&mut XdpSteering>,
    index: usize,
    plan: &LinkPlan,
    ethertype: u16,
    (xsk_config, workers): (XskConfig, usize),
) -> Result<(Vec<LinkRx>, Vec<LinkTx>), UpError> {
    let (mut rx_halves, mut tx_halves) = (Vec::new(), Vec::new());
    match plan.io {
        LinkIo::Packet => {
            let (rx, tx) = PacketSocket::open(&plan.interface, ethertype)?.split();
            rx_halves.push(LinkRx::Packet(rx));
            tx_halves.push(LinkTx::Packet(tx));
            for _ in 1..workers {
                tx_halves.push(LinkTx::Packet(PacketSocket::open_tx_only(&plan.interface)?));
            }
        }
        LinkIo::Xdp => {
            let steering =
                steering.ok_or(UpError::Thread("monitor", io::ErrorKind::NotFound.into()))?;
            let queues = interface_queues(&plan.interface);
            if workers > queues {
                return Err(UpError::Link {
                    interface: plan.interface.clone(),
                    message: format!(
                        "capture.queues = {workers} needs an AF_XDP socket per capture worker, \
                         each on a queue of its own, but the interface has {queues} queue(s): \
                         lower capture.queues, raise the interface's queues (`ethtool -L`), or \
                         use io = \"af_packet\" on this link"
                    ),
                });
            }
            let id = index as u32;
            steering.attach(&plan.interface, id, ethertype, plan.xdp_mode)?;
            for queue in 0..workers as u32 {
                let socket = XskSocket::open(&plan.interface, queue, xsk_config)?;
                steering.register_socket(id, queue, socket.fd())?;
                let (rx, tx) = socket.split();
                rx_halves.push(LinkRx::Xsk(rx));
                tx_halves.push(LinkTx::Xsk(tx));
            }
        }
    }
    Ok((rx_halves, tx_halves))
}

/// The number of queues of `interface` an AF_XDP socket can use for both receiving and
/// sending (the smaller of its rx and tx queue counts; 1 if unreadable).
pub fn interface_queues(interface: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/sys/class/net/{interface}/queues")) else {
        return 1;
    };
    let (mut rx, mut tx) = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rx-") {
            rx += 1;
        } else if name.starts_with("tx-") {
            tx += 1;
        }
    }
    rx.min(tx).max(1)
}

/// Opens a link's sockets again on its (new) interface.
fn reopen_link(
    mut steering: Option<&mut XdpSteering>,
    index: usize,
    plan: &LinkPlan,
    ethertype: u16,
    workers: usize,
) -> Result<(Vec<LinkRx>, Vec<LinkTx>, EthernetRepr), UpError> {
    let host = link_host(&plan.interface)?;
    if let Some(steering) = steering.as_deref_mut() {
        // The old attachment died with the old interface; forget it.
        let _ = steering.detach(&plan.interface);
    }
    let (rx, tx) = open_link(
        steering,
        index,
        plan,
        ethertype,
        (XskConfig::default(), workers),
    )?;
    let eth = EthernetRepr {
        dst: MacAddr(plan.peer_mac),
        src: MacAddr(host.mac),
        ethertype,
    };
    Ok((rx, tx, eth))
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

/// A receive half of one link (a link has one per capture worker with AF_XDP).
struct RxLink {
    /// The link's index.
    link: usize,
    io: LinkRx,
    peer_mac: [u8; 6],
    ethertype: u16,
}

/// The transmit half of one link.
struct TxLink {
    io: LinkTx,
    eth: EthernetRepr,
}

/// Frames a link's receive half hands over per call at most (both kinds batch the same).
const LINK_BATCH: usize = crate::xsk::BATCH;
const _: () = assert!(crate::xsk::BATCH == crate::packet::BATCH);

/// A link's receive half, whichever socket carries it.
#[derive(Debug)]
enum LinkRx {
    Xsk(XskRx),
    Packet(PacketRx),
}

/// Errors of a link's sockets on the hot path, logged by the workers.
#[derive(Debug, thiserror::Error)]
enum LinkIoError {
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error("AF_PACKET: {0}")]
    Packet(#[from] io::Error),
}

impl LinkRx {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            LinkRx::Xsk(xsk) => xsk.fd(),
            LinkRx::Packet(packet) => packet.fd(),
        }
    }

    /// Up to [`LINK_BATCH`] frames to `each`; how many.
    fn recv(&mut self, each: impl FnMut(&[u8])) -> Result<usize, LinkIoError> {
        Ok(match self {
            LinkRx::Xsk(xsk) => xsk.recv(each)?,
            LinkRx::Packet(packet) => packet.recv(each)?,
        })
    }
}

/// A link's transmit half, whichever socket carries it.
#[derive(Debug)]
enum LinkTx {
    Xsk(XskTx),
    Packet(PacketTx),
}

impl LinkTx {
    fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        match self {
            LinkTx::Xsk(xsk) => xsk.stage(write),
            LinkTx::Packet(packet) => packet.stage(write),
        }
    }

    /// Sends what is staged; returns the frames the device refused (dropped).
    fn flush(&mut self) -> Result<usize, LinkIoError> {
        match self {
            LinkTx::Xsk(xsk) => xsk.flush().map(|_| 0).map_err(Into::into),
            LinkTx::Packet(packet) => Ok(packet.flush()?.1),
        }
    }
}

fn now(start: Instant) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

fn receive_loop(
    mut links: Vec<RxLink>,
    mut receiver: Receiver,
    tun: &Tun,
    destinations: &[IpNet],
    counters: &Counters,
    control: &LinkControl,
    (stop, busy_poll): (&AtomicBool, Duration),
) -> RxStats {
    let start = Instant::now();
    let mut published = start;
    let mut busy_until = start;
    let mut fds = poll_fds(&links);
    let mut deliver = |packet: &[u8]| match ip::admit(packet, destinations) {
        Ok(packet) => {
            if tun.write(packet).is_ok() {
                counters.delivered.fetch_add(1, Relaxed);
                counters
                    .delivered_bytes
                    .fetch_add(packet.len() as u64, Relaxed);
            } else {
                counters.tun_errors.fetch_add(1, Relaxed);
            }
        }
        Err(ip::Reject::Source) => {
            counters.rejected_source.fetch_add(1, Relaxed);
        }
        Err(ip::Reject::Malformed) => {
            counters.rejected_malformed.fetch_add(1, Relaxed);
        }
    };
    while !stop.load(Relaxed) {
        while let Some((index, sockets)) = control.new_rx.pop() {
            let Some(old) = links.iter().find(|l| l.link == index) else {
                continue;
            };
            let (peer_mac, ethertype) = (old.peer_mac, old.ethertype);
            // Sockets of other links that failed stay out of the poll set.
            let failed: Vec<usize> = links
                .iter()
                .zip(&fds)
                .filter(|(l, pollfd)| l.link != index && pollfd.fd < 0)
                .map(|(l, _)| l.link)
                .collect();
            links.retain(|l| l.link != index);
            links.extend(sockets.into_iter().map(|io| RxLink {
                link: index,
                io,
                peer_mac,
                ethertype,
            }));
            fds = poll_fds(&links);
            for (link, pollfd) in links.iter().zip(&mut fds) {
                if failed.contains(&link.link) {
                    pollfd.fd = -pollfd.fd.abs() - 1;
                }
            }
        }
        // Right after traffic, look at the rings directly (no syscall) and let other threads
        // run in between; otherwise sleep in poll(2) until a frame or the next deadline.
        let spinning = Instant::now() < busy_until;
        if !spinning {
            let timeout_ms = receiver.next_deadline().map_or(100, |deadline| {
                let left = deadline.saturating_since(now(start));
                i32::try_from(left.as_millis()).unwrap_or(100).min(100)
            });
            // SAFETY: `fds` is a valid array of pollfd of the length passed.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %io::Error::last_os_error(), "poll on AF_XDP sockets");
                thread::sleep(Duration::from_millis(10));
            }
            for pollfd in &mut fds {
                if pollfd.revents & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP) != 0 {
                    // The interface went away under the socket: stop polling it until the
                    // monitor hands over a new one.
                    pollfd.fd = -pollfd.fd.abs() - 1;
                }
                pollfd.revents = 0;
            }
        }
        let t = now(start);
        let mut got = 0;
        for (index, link) in links.iter_mut().enumerate() {
            if fds[index].fd < 0 {
                continue;
            }
            let link_counters = &counters.links[link.link];
            let (peer_mac, ethertype) = (link.peer_mac, link.ethertype);
            // Drain this link's ring in batches.
            loop {
                let result = link.io.recv(|frame| {
                    link_counters.rx_frames.fetch_add(1, Relaxed);
                    link_counters
                        .rx_bytes
                        .fetch_add(frame.len() as u64, Relaxed);
                    if frame.len() < ETH_HDR_LEN
                        || frame[6..12] != peer_mac
                        || frame[12..14] != ethertype.to_be_bytes()
                    {
                        link_counters.rx_foreign.fetch_add(1, Relaxed);
                        return;
                    }
                    let outcome = receiver.on_frame(&frame[ETH_HDR_LEN..], t, &mut deliver);
                    match outcome {
                        RxOutcome::Accepted { .. } => {
                            link_counters.first.fetch_add(1, Relaxed);
                        }
                        RxOutcome::Bundle { accepted, .. } => {
                            link_counters.first.fetch_add(u64::from(accepted), Relaxed);
                        }
                        _ => {}
                    }
                });
                if let Ok(n) = result {
                    got += n;
                }
                match result {
                    Ok(n) if n == LINK_BATCH => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "AF_XDP receive");
                        break;
                    }
                }
            }
        }
        if got > 0 {
            busy_until = Instant::now() + busy_poll;
        } else if spinning {
            thread::yield_now();
        }
        if receiver.next_deadline().is_some_and(|d| d <= now(start)) {
            receiver.poll(now(start), &mut deliver);
        }
        if published.elapsed() >= PUBLISH_INTERVAL {
            published = Instant::now();
            publish(counters, receiver.stats());
        }
    }
    let stats = receiver.stats();
    publish(counters, stats);
    stats
}

/// A `poll(2)` entry for each receive half.
fn poll_fds(links: &[RxLink]) -> Vec<libc::pollfd> {
    links
        .iter()
        .map(|l| libc::pollfd {
            fd: l.io.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

fn publish(counters: &Counters, stats: RxStats) {
    *counters
        .engine
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = stats;
}

/// One NFQUEUE socket of the capture thread and its receive batch.
struct CaptureQueue {
    queue: NfQueue,
    batch: Batch,
}

impl CaptureQueue {
    fn new(queue: NfQueue) -> Self {
        Self {
            queue,
            batch: Batch::new(CAPTURE_BATCH),
        }
    }
}

fn capture_loop(
    worker: usize,
    mut queues: Vec<CaptureQueue>,
    mut tx: Transmit<'_>,
    control: &LinkControl,
    (stop, busy_poll): (&AtomicBool, Duration),
) {
    let counters = tx.counters;
    let start = Instant::now();
    let mut busy_until = start;
    let mut reported = (0, 0);
    let mut seen_generation = 0;
    let mut last_error: Option<Instant> = None;
    // Errors are logged at most once a second: a broken queue must not flood the log.
    let mut report = |error: &dyn std::fmt::Display| {
        if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(%error, "NFQUEUE");
            last_error = Some(Instant::now());
        }
    };
    let mut fds: Vec<libc::pollfd> = queues
        .iter()
        .map(|q| libc::pollfd {
            fd: q.queue.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Relaxed) {
        // Link changes from the monitor, looked at every turn (one atomic load), so a worker
        // whose queue stays empty still drops a dead link's socket promptly.
        let generation = control.generation.load(Acquire);
        if generation != seen_generation {
            seen_generation = generation;
            while let Some((index, io, eth)) = control.new_tx[worker].pop() {
                tx.links[index] = TxLink { io, eth };
            }
            for (state, usable) in tx.link_states.iter_mut().zip(&control.usable) {
                state.usable = usable.load(Relaxed);
            }
        }
        let mut received = 0;
        for CaptureQueue { queue, batch } in &mut queues {
            let n = match queue.recv_batch(batch) {
                Ok(n) => n,
                Err(error) => {
                    report(&error);
                    0
                }
            };
            if n == 0 {
                continue;
            }
            received += n;
            counters.capture_batches.fetch_add(1, Relaxed);
            let t = now(start);
            for index in 0..batch.len() {
                if let Some(packet) = batch.get(index) {
                    counters.captured.fetch_add(1, Relaxed);
                    counters
                        .captured_bytes
                        .fetch_add(packet.payload.len() as u64, Relaxed);
                }
                if batch.csum_not_ready(index)
                    && !batch
                        .payload_mut(index)
                        .is_some_and(ip::finish_transport_checksum)
                {
                    // A partial checksum alagg cannot complete: the peer would drop it anyway.
                    counters.capture_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                let Some(packet) = batch.get(index) else {
                    break;
                };
                tx.packet(&packet, t);
            }
            tx.seal_bundle();
            // Stolen, the whole batch at once: alagg carries these packets from here.
            if let Some(last) = batch.last_id() {
                if let Err(error) = queue.verdict_batch(last, Verdict::Drop) {
                    report(&error);
                }
            }
            for (link, link_counters) in tx.links.iter_mut().zip(&counters.links) {
                match link.io.flush() {
                    Ok(0) => {}
                    Ok(dropped) => {
                        link_counters.tx_dropped.fetch_add(dropped as u64, Relaxed);
                    }
                    Err(error) => report(&format_args!("transmit: {error}")),
                }
            }
        }
        // The counters are shared with the other workers: add what is new since last time.
        let (mut overruns, mut errors) = (0, 0);
        for CaptureQueue { queue, .. } in &queues {
            let seen = queue.counters();
            overruns += seen.enobufs;
            errors += seen.malformed + seen.kernel_errors;
        }
        counters
            .capture_overruns
            .fetch_add(overruns - reported.0, Relaxed);
        counters
            .capture_errors
            .fetch_add(errors - reported.1, Relaxed);
        reported = (overruns, errors);
        // Right after traffic, look at the queues again (a non-blocking receive) and let other
        // threads run in between; otherwise sleep in poll(2).
        if received > 0 {
            busy_until = Instant::now() + busy_poll;
        } else if Instant::now() < busy_until {
            thread::yield_now();
        } else {
            let ms = i32::try_from(IDLE_WAKEUP.as_millis()).unwrap_or(100);
            // SAFETY: `fds` is a valid array of pollfd of the length passed.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        }
    }
}

/// The transmit side of the capture thread: numbering, scheduling, bundling, and the links'
/// transmit halves.
struct Transmit<'a> {
    sender: Sender,
    scheduler: Redundant,
    links: Vec<TxLink>,
    link_states: Vec<LinkState>,
    /// Small packets of the current capture batch waiting to share a frame, when bundling.
    bundler: Option<Bundler>,
    /// The links the bundle being built goes to.
    bundle_links: LinkSet,
    counters: &'a Counters,
}

impl Transmit<'_> {
    /// Encapsulates one captured (and counted) packet and stages its frames on the links the
    /// scheduler picks; a small one joins the bundle being built instead, which goes out
    /// (numbered before this packet) when it is full or [`Transmit::seal_bundle`] is called.
    fn packet(&mut self, packet: &Packet<'_>, t: Timestamp) {
        let payload = packet.payload;
        if payload.is_empty() || packet.truncated {
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        }
        let chosen = self.scheduler.select(payload.len(), &self.link_states, t);
        let Some(mtu) = chosen.min_mtu(&self.link_states) else {
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        };
        if self.bundler.is_some() && Bundler::bundleable(payload.len(), mtu) {
            let same_links = chosen == self.bundle_links;
            if same_links && self.bundler.as_mut().is_some_and(|b| b.push(payload, mtu)) {
                return;
            }
            self.seal_bundle();
            self.bundle_links = chosen;
            if self.bundler.as_mut().is_some_and(|b| b.push(payload, mtu)) {
                return;
            }
        }
        // Sent on its own, after whatever was bundled before it, so numbers follow capture order.
        self.seal_bundle();
        let Ok(plan) = self.sender.plan(payload.len(), mtu) else {
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        };
        for index in chosen.iter() {
            let (link, state) = (&mut self.links[index], &self.link_states[index]);
            for i in 0..plan.frame_count() {
                stage(&mut link.io, &self.counters.links[index], |buf| {
                    plan.emit_ethernet(i, state.id, &link.eth, payload, buf)
                });
            }
        }
    }

    /// Numbers the bundle being built and stages its frame on its links.
    fn seal_bundle(&mut self) {
        let Some(bundler) = self.bundler.as_mut() else {
            return;
        };
        if let Some(sealed) = bundler.seal(&mut self.sender) {
            for index in self.bundle_links.iter() {
                let (link, state) = (&mut self.links[index], &self.link_states[index]);
                stage(&mut link.io, &self.counters.links[index], |buf| {
                    sealed.emit_ethernet(state.id, &link.eth, buf)
                });
            }
        }
        bundler.clear();
    }
}

/// Stages one frame, written by `emit`, on `link`, and counts it.
fn stage(
    link: &mut LinkTx,
    counters: &LinkCounters,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, alagg_proto::wire::WireError>,
) {
    let mut len = 0;
    let staged = link.stage(|buf| {
        len = emit(buf).unwrap_or(0);
        len
    });
    if staged {
        counters.tx_frames.fetch_add(1, Relaxed);
        counters.tx_bytes.fetch_add(len as u64, Relaxed);
    } else {
        counters.tx_dropped.fetch_add(1, Relaxed);
    }
}

/// Waits until `fd` is readable or `timeout` passes (or a signal arrives).
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pollfd` is one valid pollfd, and the count passed is 1.
    unsafe { libc::poll(&mut pollfd, 1, ms) };
}

/// The IP family of an address, for log lines.
pub fn family(address: &IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_from_sysfs_parse() {
        assert_eq!(
            parse_mac("02:a1:a9:00:00:01"),
            Some([2, 0xa1, 0xa9, 0, 0, 1])
        );
        assert_eq!(parse_mac("02:a1:a9:00:00"), None);
        assert_eq!(parse_mac("02:a1:a9:00:00:01:02"), None);
        assert_eq!(parse_mac("zz:a1:a9:00:00:01"), None);
    }

    #[test]
    fn epochs_differ_between_calls() {
        // Random 32-bit values: a collision among a few is vanishingly unlikely.
        let epochs: std::collections::HashSet<u32> = (0..8).map(|_| random_epoch()).collect();
        assert!(epochs.len() >= 7);
    }
}
