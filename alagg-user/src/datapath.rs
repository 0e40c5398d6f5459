//! The datapath of `alagg up`: NFQUEUE capture → alagg frames on every link through AF_XDP →
//! (the peer's XDP program and AF_XDP sockets) → dedup, reorder, reassembly → TUN delivery.
//!
//! Threads and what each owns (no lock on the per-packet path):
//! - a capture thread per NFQUEUE queue (`capture.queues` workers): its NFQUEUE sockets (the
//!   queue and, with GSO, its TCP queue), a [`Sender`] drawing numbers from the one sequence
//!   space all workers share (an atomic counter), the scheduler, a [`Bundler`] and the transmit
//!   half of its own socket on every link (AF_XDP on the interface's queue of the worker's
//!   number). It takes up to [`CAPTURE_BATCH`] packets per `recvmmsg(2)`, stages their frames on
//!   the links (small ones bundled), flushes the usable links' tx rings, then steals the whole
//!   batch with one verdict (`NFQNL_MSG_VERDICT_BATCH`, drop);
//! - the receive thread: the receive half of every link's sockets, the [`Receiver`] and the TUN
//!   device. It polls all links, drops frames not from the link's configured peer MAC, runs the
//!   engine and writes deliverable packets whose source is in the configured destinations
//!   (with the TUN's offloads, [`crate::offload`]).
//!
//! Each worker runs its stage in `worker::run`: after its last packet it keeps looking for
//! `busy_poll`, then sleeps in `ppoll(2)` until its sockets have work, a reorder gap's deadline
//! comes, or at most [`IDLE_WAKEUP`], so it sees a stop request promptly.
//! - the caller's thread: starts and stops the others, watches the links ([`Datapath::monitor`])
//!   and reads the shared counters ([`Datapath::snapshot_source`]).
//!
//! Counters: per-packet counters are relaxed atomics; the receive engine's own counters are
//! copied into a mutex every [`PUBLISH_INTERVAL`] (never per packet), and the XDP program's by
//! the monitor, so a status query never reaches into a worker.
//!
//! Shutdown order: capture rules first (no new packets are queued), then the workers stop and
//! are joined (the receive thread first; it finishes its turn and writes what it coalesced;
//! packets still held for reordering are not delivered), then XDP is detached and the TUN
//! closed.

use std::{
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{
            AtomicBool, AtomicU8, AtomicU64,
            Ordering::{Relaxed, Release},
        },
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crossbeam_queue::ArrayQueue;

mod worker;
use crate::offload::Coalescer;
use worker::{Capture, CaptureQueue, LinkRx, LinkTx, Receive, RxLink, Transmit, TxLink};

use alagg_proto::{
    Bundler, LinkSet, LinkState, Receiver, ReceiverConfig, Redundant, Sender,
    stats::RxStats,
    wire::{ETH_HDR_LEN, EthernetRepr, MacAddr},
};
use ipnet::IpNet;

use alagg_common::{Action, Counter};

use crate::{
    host::{HostError, HostSetup, QueueSpec, Recovery, journal_path, recover},
    nfqueue::{NfQueue, NfQueueError, QueueOptions},
    packet::{PacketError, PacketSocket},
    report::{CaptureSnapshot, DeliverySnapshot, EngineSnapshot, LinkSnapshot, Snapshot},
    tun::{Tun, TunError},
    xdp::{AttachMode, XdpError, XdpSteering},
    xsk::{XskConfig, XskError, XskSocket},
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
    /// Join consecutive UDP datagrams of a flow into one GSO write to the TUN
    /// ([`crate::offload`]), where the kernel supports it.
    pub coalesce: bool,
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
    Thread(String, io::Error),
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
    /// Packets whose TUN write failed.
    pub tun_errors: AtomicU64,
    /// Delivered packets that went to the TUN device coalesced with others into one GSO write.
    pub coalesced: AtomicU64,
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

/// The Ethernet header of a link's frames: from this host's MAC on it to the peer's.
fn ethernet(plan: &LinkPlan, host: &LinkHost, ethertype: u16) -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr(plan.peer_mac),
        src: MacAddr(host.mac),
        ethertype,
    }
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
        let coalesce = config.coalesce && crate::tun::gso_udp_supported();
        if config.coalesce && !coalesce {
            tracing::info!(
                "UDP coalescing needs Linux 6.9 or later (GSO UDP through a TUN device); off"
            );
        }
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
                    eth: ethernet(link, host, config.ethertype),
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

        let shared = Shared {
            counters: Arc::clone(&counters),
            control: Arc::clone(&control),
            stop: Arc::clone(&stop),
            busy_poll: config.busy_poll,
        };
        // Cores in the order documented for `cpu.cores`: the capture workers, then receive.
        let receive = {
            let tun = tun
                .try_clone()
                .map_err(|e| UpError::Thread("receive".into(), e))?;
            let destinations = config.destinations.clone();
            spawn_worker(
                "alagg-rx",
                cores.get(workers).copied(),
                &shared,
                move |counters, control, run| {
                    let stage = Receive::new(
                        rx_halves,
                        receiver,
                        (tun, coalesce.then(Coalescer::new), destinations),
                        tun_mtu as usize,
                        (counters, control),
                    );
                    worker::run(stage, run).finish()
                },
            )
            .map_err(|e| UpError::Thread("receive".into(), e))?
        };
        // One number space for all workers: the peer sees one stream.
        let epoch = random_epoch();
        let next_seq = Arc::new(AtomicU64::new(0));
        let mut capture = Vec::new();
        for (w, (queues, links)) in worker_queues.into_iter().zip(tx_halves).enumerate() {
            let sender = Sender::shared(epoch, Arc::clone(&next_seq));
            let bundler = config.bundle.then(Bundler::new);
            let link_states = link_states.clone();
            let name = if workers == 1 {
                "alagg-capture".to_owned()
            } else {
                format!("alagg-capture{w}")
            };
            let handle = spawn_worker(
                &name,
                cores.get(w).copied(),
                &shared,
                move |counters, control, run| {
                    let tx = Transmit {
                        sender,
                        scheduler: Redundant,
                        links,
                        link_states,
                        bundler,
                        bundle_links: LinkSet::EMPTY,
                        counters,
                    };
                    worker::run(Capture::new(w, queues, tx, control), run);
                },
            );
            match handle {
                Ok(handle) => capture.push(handle),
                Err(error) => {
                    // Stop what already runs before the host changes are undone.
                    stop.store(true, Relaxed);
                    let _ = receive.join();
                    for handle in capture {
                        let _ = handle.join();
                    }
                    return Err(UpError::Thread(name, error));
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
        // Every worker wakes at least every IDLE_WAKEUP to see the stop flag; the receive
        // thread is joined first, for the engine's final counters.
        let stats = self
            .receive
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        for handle in self.capture.drain(..) {
            let _ = handle.join();
        }
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
        if self.receive.is_some() {
            self.shutdown();
        }
    }
}

/// What every worker thread shares.
struct Shared {
    counters: Arc<Counters>,
    control: Arc<LinkControl>,
    stop: Arc<AtomicBool>,
    busy_poll: Duration,
}

/// Starts a worker thread named `name`, pinned to `core`, that runs `body` with the shared
/// counters, the link control, and the stop flag with the busy-poll time.
fn spawn_worker<T: Send + 'static>(
    name: &str,
    core: Option<usize>,
    shared: &Shared,
    body: impl FnOnce(&Counters, &LinkControl, (&AtomicBool, Duration)) -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let counters = Arc::clone(&shared.counters);
    let control = Arc::clone(&shared.control);
    let stop = Arc::clone(&shared.stop);
    let busy_poll = shared.busy_poll;
    thread::Builder::new().name(name.to_owned()).spawn(move || {
        pin(core);
        body(&counters, &control, (&stop, busy_poll))
    })
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
            let steering = steering.ok_or(UpError::Thread(
                "monitor".into(),
                io::ErrorKind::NotFound.into(),
            ))?;
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
    Ok((rx, tx, ethernet(plan, &host, ethertype)))
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
