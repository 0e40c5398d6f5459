//! The impairment relay: netem's delay, jitter, loss and rate for one link of the testbed, in
//! user space, because this kernel has no `sch_netem` (nor tc gact/police).
//!
//! [`Testbed::set_path`](crate::Testbed::set_path) takes the link's two wire ports `W:a<i>` and
//! `W:b<i>` out of their bridge `W:br<i>` and starts a [`Relay`] between them; the bridge stays,
//! empty, and [`Testbed::clear_path`](crate::Testbed::clear_path) stops the relay and puts the
//! ports back in it.
//!
//! ```text
//!   A:link<i> ── W:a<i> ─[ A→B thread: rx a<i>, delay line, tx b<i> ]─ W:b<i> ── B:link<i>
//!                       ─[ B→A thread: rx b<i>, delay line, tx a<i> ]─
//! ```
//!
//! Each direction is one thread of the test process with two AF_PACKET sockets opened in the
//! wire namespace (a socket stays bound to its namespace whichever thread uses it): one receives
//! every frame arriving on the ingress port (ETH_P_ALL, promiscuous, PACKET_IGNORE_OUTGOING so
//! that it does not read the other direction's sends), one sends out of the egress port. Both
//! carry a virtio-net header (PACKET_VNET_HDR) with each frame, so frames whose checksum was left
//! to offload and GSO frames (veth passes 64 KB TCP segments whole, as the bridge does) cross
//! the relay as they cross the bridge. The thread receives in batches (recvmmsg), gives each frame
//! a verdict from the timing model below (`schedule.rs`, no I/O, unit-tested), keeps it in a
//! byte ring (`queue.rs`) and sends what is due in batches (sendmmsg). It sleeps in ppoll with a
//! nanosecond timeout until the next frame is due or one arrives, with a timer slack of 1 ns.
//!
//! The model of each direction ([`Path`]) is a sender's queue, a serializer and a propagation
//! delay, in that order, as on a real WAN path:
//! 1. cut: everything is dropped (`Testbed::cut`);
//! 2. loss: the path's own `loss_percent`, then the link's (`Testbed::set_loss`), each an
//!    independent draw;
//! 3. rate: a frame starts serializing when the previous one is done, and takes
//!    `wire_len * 8 / rate`; if it would wait more than [`Path::queue_limit`] to start, it is
//!    dropped (tail drop, as tbf and a router's FIFO do) and counted in
//!    [`PathStats::queue_dropped`];
//! 4. delay: it then leaves after `delay + jitter`, jitter drawn uniformly or normally within
//!    `±jitter` ([`JitterShape`]), never below zero;
//! 5. order: unless [`Path::reorder`] is set, never before the frame ahead of it (FIFO, as a
//!    real Ethernet or WAN path; netem's default reorders), so traffic denser than the jitter
//!    sees its upper part.
//!
//! The bridge's own impairments, and what stands for them while a relay runs:
//! - loss (`Testbed::set_loss`) and cut (`Testbed::cut`) are nft rules on the bridge, which no
//!   longer sees the link's frames; the relay applies them itself instead (read from the nft
//!   rules when it starts, and updated by those calls while it runs; rules written by hand
//!   meanwhile are not seen). The nft rules are kept, so they bite again once the bridge is back;
//! - rate (`Testbed::set_rate`, tbf on the ports' egress) and `Testbed::cut_carrier` (the ports
//!   down) work unchanged, as the relay sends out of the same ports: a relay frame the tbf or a
//!   down port refuses is counted in [`PathStats::send_failed`].
//!
//! A GSO frame is one frame to the relay, as to the bridge's nft rules: lost or delayed whole.
//! Its wire length (with the headers of every segment) is what the rate charges.
//!
//! Timing: a thread sleeping until the next frame is due wakes 50 us early and polls
//! (non-blocking recvmmsg) for the rest, because timer wake-ups on this VM come 20-60 us late.
//! Relay threads run at nice -10, so they get a CPU soon after waking while other processes keep
//! both cores busy (SCHED_FIFO was tried: no better, and a flood would let it starve the
//! machine). While idle they sleep in ppoll and cost nothing.
//!
//! Measured with `examples/relay_bench.rs` (release build, 2-core VM, kernel 6.18; one raw
//! sender thread on host A, frames counted on host B):
//!
//! | wire | 64 B frames | 1500 B frames |
//! |---|---|---|
//! | bridge | 0.8-1.07 Mpps | 1.0-1.06 Mpps, 11.9-12.7 Gbit/s |
//! | relay, no delay | 720-740 kpps | 620-640 kpps, 7.5-7.7 Gbit/s |
//! | relay, 10 ms delay | 435-743 kpps | 180-540 kpps, 2.1-6.5 Gbit/s |
//!
//! (the low figures while another process compiled on both cores). Beyond that rate the ingress
//! socket's buffer overflows ([`PathStats::rx_dropped`]). One-way delay of 64-byte probes every
//! 1 ms, minus the delay set, idle machine: median 16-25 us, p90 20-70 us, p99 125-210 us (the
//! bridge measured the same way: median 4 us, p99 40 us); beside a 0.8 Gbit/s stream through
//! the same relay: median 52 us, p99 380 us. A debug build (as `cargo test` makes) is slower;
//! the tests ask nothing of it near these rates.
//!
//! Dropping the relay stops and joins its threads (an eventfd wakes them) and closes its sockets,
//! which ends promiscuous mode. Frames still in flight are dropped.

pub(crate) mod queue;
pub(crate) mod schedule;
pub(crate) mod sys;

use std::{
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use queue::FrameQueue;
use schedule::{Schedule, Verdict};
use sys::{EventFd, PacketSocket, RecvBatch, SendBatch, Sent, VNET_HDR_LEN, VnetHdr};

/// Which way along a link, from host A's side to host B's or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Frames from host A to host B.
    AtoB,
    /// Frames from host B to host A.
    BtoA,
    /// Both ways (the same settings each way, each with its own random draws and queue).
    Both,
}

impl Direction {
    /// The one-way directions this stands for.
    pub fn ways(self) -> &'static [Direction] {
        match self {
            Direction::AtoB => &[Direction::AtoB],
            Direction::BtoA => &[Direction::BtoA],
            Direction::Both => &[Direction::AtoB, Direction::BtoA],
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::AtoB | Direction::Both => 0,
            Direction::BtoA => 1,
        }
    }
}

/// How jitter is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterShape {
    /// Uniform within ±jitter.
    #[default]
    Uniform,
    /// Normal with a standard deviation of jitter/2, truncated at ±jitter.
    Normal,
}

/// The most a rate-limited path holds ahead of its serializer before it drops new frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// As long as it takes to send the queue at the path's rate.
    Time(Duration),
    /// Bytes.
    Bytes(usize),
}

impl Default for QueueLimit {
    /// 50 ms at the path's rate, as `Testbed::set_rate`'s tbf.
    fn default() -> Self {
        QueueLimit::Time(Duration::from_millis(50))
    }
}

/// One direction of an impaired path, as netem would set it up; see the [module
/// documentation](self) for the exact model. The default is a plain wire: no delay, no loss, no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// One-way delay.
    pub delay: Duration,
    /// Each frame's delay varies within `delay ± jitter` (never below zero).
    pub jitter: Duration,
    /// How the jitter is drawn.
    pub jitter_shape: JitterShape,
    /// Let a frame leave before an earlier one whose jitter drew more (netem's behaviour with
    /// jitter). Off by default: frames keep their order, as on a real Ethernet or WAN path.
    pub reorder: bool,
    /// Random loss, 0 to 100 %.
    pub loss_percent: f32,
    /// The path's rate: each frame takes its length at this rate to leave, after the one
    /// ahead of it. `None`: as fast as the relay goes.
    pub rate_mbit: Option<u32>,
    /// How much a rate-limited path queues before dropping new frames.
    pub queue_limit: QueueLimit,
    /// Seed for the loss and jitter draws, to repeat them run after run; `None` seeds from the
    /// clock.
    pub seed: Option<u64>,
}

impl Default for Path {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_shape: JitterShape::Uniform,
            reorder: false,
            loss_percent: 0.0,
            rate_mbit: None,
            queue_limit: QueueLimit::default(),
            seed: None,
        }
    }
}

impl Path {
    /// A path of `delay` one way and nothing else.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Why the settings cannot be used, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        const MOST: Duration = Duration::from_secs(10);
        if !(0.0..=100.0).contains(&self.loss_percent) {
            return Err(format!("loss of {} %: 0 to 100", self.loss_percent));
        }
        if self.delay > MOST || self.jitter > MOST {
            return Err(format!(
                "delay {:?} ± {:?}: at most {MOST:?} each",
                self.delay, self.jitter
            ));
        }
        if self.rate_mbit == Some(0) {
            return Err("a rate of 0 Mbit/s: use None for no limit".to_owned());
        }
        Ok(())
    }
}

/// What one direction of a relay did with the frames it received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Frames sent on.
    pub relayed: u64,
    /// Their bytes (Ethernet header and payload, as received).
    pub relayed_bytes: u64,
    /// Frames dropped by random loss (the path's or the link's `Testbed::set_loss`).
    pub lost: u64,
    /// Frames dropped because the link is cut (`Testbed::cut`).
    pub cut: u64,
    /// Frames dropped because the queue was over its limit, or the relay's buffer full.
    pub queue_dropped: u64,
    /// Frames the kernel refused to send (a full tbf or backlog, a port down) or that did
    /// not fit the receive buffer.
    pub send_failed: u64,
    /// Frames the kernel dropped before the relay read them: it fell behind the sender and
    /// its socket's receive buffer overflowed.
    pub rx_dropped: u64,
}

impl std::ops::Add for PathStats {
    type Output = PathStats;

    fn add(self, other: PathStats) -> PathStats {
        PathStats {
            relayed: self.relayed + other.relayed,
            relayed_bytes: self.relayed_bytes + other.relayed_bytes,
            lost: self.lost + other.lost,
            cut: self.cut + other.cut,
            queue_dropped: self.queue_dropped + other.queue_dropped,
            send_failed: self.send_failed + other.send_failed,
            rx_dropped: self.rx_dropped + other.rx_dropped,
        }
    }
}

/// The counters behind [`PathStats`], written by one direction's thread.
#[derive(Debug, Default)]
struct Counters {
    relayed: AtomicU64,
    relayed_bytes: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
    queue_dropped: AtomicU64,
    send_failed: AtomicU64,
    rx_dropped: AtomicU64,
}

impl Counters {
    fn read(&self) -> PathStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PathStats {
            relayed: get(&self.relayed),
            relayed_bytes: get(&self.relayed_bytes),
            lost: get(&self.lost),
            cut: get(&self.cut),
            queue_dropped: get(&self.queue_dropped),
            send_failed: get(&self.send_failed),
            rx_dropped: get(&self.rx_dropped),
        }
    }

    fn add(&self, delta: &PathStats) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.relayed, delta.relayed);
        add(&self.relayed_bytes, delta.relayed_bytes);
        add(&self.lost, delta.lost);
        add(&self.cut, delta.cut);
        add(&self.queue_dropped, delta.queue_dropped);
        add(&self.send_failed, delta.send_failed);
        add(&self.rx_dropped, delta.rx_dropped);
    }
}

/// What the caller shares with one direction's thread.
#[derive(Debug)]
struct Shared {
    path: Mutex<Path>,
    /// `path` changed since the thread last read it.
    changed: AtomicBool,
    counters: Counters,
}

/// The link-wide impairments both directions honour (the bridge's nft rules, while the bridge
/// is out of the path).
#[derive(Debug, Default)]
struct LinkState {
    cut: AtomicBool,
    loss_percent: AtomicU8,
    stop: AtomicBool,
}

/// Frames one receive takes at most, and one send.
const BATCH: usize = 64;
/// The largest frame the relay takes: a 64 KB GSO frame or MTU, with its headers.
const FRAME_MAX: usize = 65_536 + 512;
/// Bytes of frames one direction holds in flight at most (beyond that, new frames are queue
/// drops): 134 ms at 2 Gbit/s. Pages are only touched as the ring fills.
const IN_FLIGHT_BYTES: usize = 32 << 20;
/// Socket buffers: bursts that arrive while the thread is busy sending wait here.
const SOCKET_BUFFER: usize = 16 << 20;
/// A thread sleeping until a frame is due wakes this much early and polls for the rest: timer
/// wake-ups on this VM come 20-60 us late, busy polling is on time.
const SPIN_NS: u64 = 50_000;
/// Turns of the loop between reads of the kernel's receive drop counter while busy.
const DROPS_EVERY: u32 = 1024;
/// Longest sleep with nothing to do; the eventfd ends it at once when the relay stops.
const IDLE_NS: u64 = 1_000_000_000;

/// The relay of one link: two threads, one per direction; see the module documentation.
/// Dropping it stops them.
#[derive(Debug)]
pub struct Relay {
    shared: [Arc<Shared>; 2],
    link: Arc<LinkState>,
    wake: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

/// The four sockets of a relay, opened in the wire namespace (see [`Relay::open`]).
#[derive(Debug)]
pub(crate) struct Sockets {
    a_rx: PacketSocket,
    a_tx: PacketSocket,
    b_rx: PacketSocket,
    b_tx: PacketSocket,
}

impl Relay {
    /// Opens the sockets of a relay between the ports `a` (host A's side) and `b` of the calling
    /// thread's network namespace.
    pub(crate) fn open(a: &str, b: &str) -> io::Result<Sockets> {
        Ok(Sockets {
            a_rx: PacketSocket::receiver(a, SOCKET_BUFFER)?,
            a_tx: PacketSocket::sender(a, SOCKET_BUFFER)?,
            b_rx: PacketSocket::receiver(b, SOCKET_BUFFER)?,
            b_tx: PacketSocket::sender(b, SOCKET_BUFFER)?,
        })
    }

    /// Starts relaying over `sockets`, A to B as `a_to_b` and B to A as `b_to_a`, with the
    /// link cut or not and losing `loss_percent` % as the bridge's rules said. `name` names the
    /// threads.
    pub(crate) fn start(
        name: &str,
        sockets: Sockets,
        [a_to_b, b_to_a]: [Path; 2],
        cut: bool,
        loss_percent: u8,
    ) -> io::Result<Relay> {
        let wake = Arc::new(EventFd::new()?);
        let link = Arc::new(LinkState {
            cut: AtomicBool::new(cut),
            loss_percent: AtomicU8::new(loss_percent),
            stop: AtomicBool::new(false),
        });
        let shared = [a_to_b, b_to_a].map(|path| {
            Arc::new(Shared {
                path: Mutex::new(path),
                changed: AtomicBool::new(false),
                counters: Counters::default(),
            })
        });
        let mut relay = Relay {
            shared,
            link,
            wake,
            threads: Vec::new(),
        };
        let Sockets {
            a_rx,
            a_tx,
            b_rx,
            b_tx,
        } = sockets;
        let (ready, started) = std::sync::mpsc::channel();
        for (way, rx, tx) in [("ab", a_rx, b_tx), ("ba", b_rx, a_tx)] {
            let shared = Arc::clone(&relay.shared[usize::from(way == "ba")]);
            let link = Arc::clone(&relay.link);
            let wake = Arc::clone(&relay.wake);
            let seed = sys::now_ns() ^ u64::from(way == "ba") << 63;
            let ready = ready.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{way}"))
                .spawn(move || {
                    Way {
                        rx,
                        tx,
                        shared,
                        link,
                        wake,
                    }
                    .run(seed, &ready)
                });
            match thread {
                Ok(handle) => relay.threads.push(handle),
                // `relay` drops here and stops the thread already started.
                Err(error) => return Err(error),
            }
        }
        drop(ready);
        // Each thread says when it runs; a thread that died first closes its end instead.
        for _ in 0..relay.threads.len() {
            started.recv().map_err(|_| {
                io::Error::other(format!("a relay thread of {name} ended as it started"))
            })?;
        }
        Ok(relay)
    }

    /// Replaces the settings of the direction(s) `direction`. Frames already in flight keep
    /// their times.
    pub fn configure(&self, direction: Direction, path: &Path) {
        for way in direction.ways() {
            let shared = &self.shared[way.index()];
            *shared.path.lock().unwrap_or_else(PoisonError::into_inner) = path.clone();
            shared.changed.store(true, Ordering::Release);
        }
    }

    /// Cuts the link (drops every frame both ways) or heals it.
    pub fn set_cut(&self, cut: bool) {
        self.link.cut.store(cut, Ordering::Relaxed);
    }

    /// Sets the link's own loss both ways (`Testbed::set_loss`), on top of each path's.
    pub fn set_link_loss(&self, percent: u8) {
        self.link.loss_percent.store(percent, Ordering::Relaxed);
    }

    /// The counters of `direction` (both summed for [`Direction::Both`]).
    pub fn stats(&self, direction: Direction) -> PathStats {
        direction
            .ways()
            .iter()
            .map(|way| self.shared[way.index()].counters.read())
            .fold(PathStats::default(), |sum, s| sum + s)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.link.stop.store(true, Ordering::Relaxed);
        self.wake.signal();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One direction's thread: its sockets and what it shares.
struct Way {
    rx: PacketSocket,
    tx: PacketSocket,
    shared: Arc<Shared>,
    link: Arc<LinkState>,
    wake: Arc<EventFd>,
}

impl Way {
    /// Relays until the relay stops; says on `ready` once it runs.
    fn run(self, seed: u64, ready: &std::sync::mpsc::Sender<()>) {
        sys::precise_timers();
        sys::raise_priority();
        let path = self
            .shared
            .path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut schedule = Schedule::new(&path, seed);
        let mut queue = FrameQueue::new(IN_FLIGHT_BYTES, path.reorder);
        let mut rx_batch = RecvBatch::new(BATCH, FRAME_MAX);
        let mut tx_batch = SendBatch::new(BATCH);
        let mut tx_blocked = false;
        let mut turns = 0u32;
        let _ = ready.send(());
        while !self.link.stop.load(Ordering::Relaxed) {
            if self.shared.changed.swap(false, Ordering::Acquire) {
                let path = self
                    .shared
                    .path
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                schedule.configure(&path);
                queue.set_reorder(schedule.reorders());
            }
            schedule.cut = self.link.cut.load(Ordering::Relaxed);
            schedule.link_loss_percent = self.link.loss_percent.load(Ordering::Relaxed);
            let mut delta = PathStats::default();

            // Send what is due, one batch.
            let mut sent_any = false;
            if queue.stage(sys::now_ns(), tx_batch.capacity()) > 0 {
                match tx_batch.send(&self.tx, queue.staged()) {
                    Sent::Frames(n) => {
                        delta.relayed += n as u64;
                        delta.relayed_bytes += queue
                            .staged()
                            .take(n)
                            .map(|f| (f.len() - VNET_HDR_LEN) as u64)
                            .sum::<u64>();
                        queue.retire(n);
                        tx_blocked = false;
                        sent_any = n > 0;
                    }
                    Sent::Refused => {
                        delta.send_failed += 1;
                        queue.retire(1);
                        sent_any = true;
                    }
                    Sent::WouldBlock => tx_blocked = true,
                }
            }

            // Receive what waits, one batch.
            let received = rx_batch.recv(&self.rx).unwrap_or(0);
            if received > 0 {
                let now = sys::now_ns();
                for i in 0..received {
                    let Some(frame) = rx_batch.frame(i) else {
                        delta.send_failed += 1;
                        continue;
                    };
                    let Some(hdr) = VnetHdr::parse(frame) else {
                        continue;
                    };
                    match schedule.admit(now, hdr.wire_len(frame.len() - VNET_HDR_LEN)) {
                        Verdict::Cut => delta.cut += 1,
                        Verdict::Lost => delta.lost += 1,
                        Verdict::QueueFull => delta.queue_dropped += 1,
                        Verdict::Leave(at) => {
                            if !queue.push(frame, at) {
                                delta.queue_dropped += 1;
                            }
                        }
                    }
                }
            }

            let idle = received == 0 && !sent_any;
            turns = turns.wrapping_add(1);
            if idle || turns.is_multiple_of(DROPS_EVERY) {
                delta.rx_dropped += self.rx.take_drops();
            }
            self.shared.counters.add(&delta);
            if idle {
                self.sleep(&queue, tx_blocked);
            }
        }
    }

    /// Waits for a frame to arrive, the next one to be due, the send socket to take more (if it
    /// was full), or the relay to stop.
    fn sleep(&self, queue: &FrameQueue, tx_blocked: bool) {
        let timeout = if tx_blocked {
            // Staged frames wait on the socket; wake at the latest in 1 ms to retry.
            Some(1_000_000)
        } else {
            match queue.next_leave() {
                Some(at) => {
                    let now = sys::now_ns();
                    if at <= now + SPIN_NS {
                        // Due soon: go round the loop (receiving meanwhile) until it is.
                        return;
                    }
                    Some(at - now - SPIN_NS)
                }
                None => Some(IDLE_NS),
            }
        };
        let mut fds = [
            libc::pollfd {
                fd: self.rx.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.tx.fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        let count = if tx_blocked { 3 } else { 2 };
        // An error here (none is expected) is a short sleep: the loop goes round again.
        let _ = sys::wait(&mut fds[..count], timeout);
    }
}
