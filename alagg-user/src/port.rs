//! The ports between the per-packet stages and what carries their packets: small traits that
//! the kernel edges implement (NFQUEUE in [`crate::capture::nfqueue`], AF_XDP and AF_PACKET in
//! [`crate::link`], the TUN behind [`crate::deliver`]) and that unit tests implement in memory,
//! in the manner of smoltcp's `phy::Device`. A stage is generic over its ports, so the real
//! sockets cost no dynamic dispatch on the per-packet path.
//!
//! Also here: [`LinkControl`], through which the runtime hands link changes (usable or not,
//! replacement sockets) to the stages, lock-free.
//!
//! This module is a shared leaf: it imports nothing from the crate but [`crate::sys`].

use std::{
    fmt,
    os::fd::RawFd,
    sync::{
        Mutex, PoisonError,
        atomic::{
            AtomicBool, AtomicU8, AtomicU32, AtomicU64,
            Ordering::{Relaxed, Release},
        },
    },
};

use alagg_proto::{
    AnyScheduler,
    health::{Condition, HealthView},
    wire::{EthernetRepr, FecParams, LaneReport},
};
use crossbeam_queue::ArrayQueue;

/// Frames a [`FrameRx`] hands over per call at most, and packets a [`PacketSource`] per batch.
pub(crate) const BATCH: usize = 64;

/// The receive half of a link: whole Ethernet frames.
pub(crate) trait FrameRx {
    /// Errors of the socket, logged by the stage.
    type Error: fmt::Display;

    /// The descriptor to `poll(2)` on for frames.
    fn fd(&self) -> RawFd;

    /// The `poll(2)` events after which this socket is dead until the runtime replaces it.
    fn fatal_events(&self) -> i16 {
        libc::POLLNVAL | libc::POLLHUP
    }

    /// Hands up to [`BATCH`] received frames to `each`, without blocking; returns how many.
    fn recv(&mut self, each: impl FnMut(&[u8])) -> Result<usize, Self::Error>;

    /// What the socket lost since it was opened, as far as the kernel tells (a system call:
    /// call it now and then, not per frame). Counts only grow.
    fn losses(&mut self) -> RxLosses;
}

/// What a link's socket lost on the way in, counted since it was opened. The AF_XDP fields
/// are the kernel's `struct xdp_statistics` (include/uapi/linux/if_xdp.h) of the socket,
/// which covers its transmit ring too; 0 for a packet socket, as the AF_PACKET fields are for
/// an AF_XDP socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RxLosses {
    /// AF_PACKET: frames longer than a receive slot (`MSG_TRUNC`), dropped.
    pub(crate) truncated: u64,
    /// AF_PACKET: frames the kernel dropped because the socket's receive buffer was full
    /// (`PACKET_STATISTICS` `tp_drops`).
    pub(crate) buffer_full: u64,
    /// AF_XDP `rx_dropped`: frames dropped for want of a frame from the fill ring, or too long
    /// for one.
    pub(crate) xsk_rx_dropped: u64,
    /// AF_XDP `rx_ring_full`: frames dropped because the rx ring was full.
    pub(crate) xsk_rx_ring_full: u64,
    /// AF_XDP `rx_invalid_descs`: frames dropped on an invalid fill-ring descriptor.
    pub(crate) xsk_rx_invalid: u64,
    /// AF_XDP `rx_fill_ring_empty_descs`: times the kernel found the fill ring empty.
    pub(crate) xsk_fill_empty: u64,
    /// AF_XDP `tx_invalid_descs`: transmit descriptors the kernel dropped as invalid.
    pub(crate) xsk_tx_invalid: u64,
    /// AF_XDP `tx_ring_empty_descs`: times the kernel found the tx ring empty (no loss).
    pub(crate) xsk_tx_ring_empty: u64,
}

impl RxLosses {
    /// What grew from `before` to `self`, field by field (0 where a count went back, which a
    /// count since the socket opened never does).
    pub(crate) fn since(&self, before: &Self) -> Self {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Self {
            truncated: d(self.truncated, before.truncated),
            buffer_full: d(self.buffer_full, before.buffer_full),
            xsk_rx_dropped: d(self.xsk_rx_dropped, before.xsk_rx_dropped),
            xsk_rx_ring_full: d(self.xsk_rx_ring_full, before.xsk_rx_ring_full),
            xsk_rx_invalid: d(self.xsk_rx_invalid, before.xsk_rx_invalid),
            xsk_fill_empty: d(self.xsk_fill_empty, before.xsk_fill_empty),
            xsk_tx_invalid: d(self.xsk_tx_invalid, before.xsk_tx_invalid),
            xsk_tx_ring_empty: d(self.xsk_tx_ring_empty, before.xsk_tx_ring_empty),
        }
    }
}

/// What a link's transmit half dropped after [`FrameTx::stage`] took the frames, counted since
/// it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxLosses {
    /// Frames given back unsent because the device took nothing from the AF_XDP tx ring for a
    /// long while (its interface gone or its queue stopped).
    pub(crate) stalled: u64,
    /// Frames the kernel or the device refused: those an AF_PACKET `sendmmsg(2)` did not send
    /// (an error, or the rest of a partial send), and AF_XDP frames the device dropped
    /// (`EBUSY` from the kick).
    pub(crate) refused: u64,
    /// Send calls that failed (`sendmmsg(2)`, or the AF_XDP kick with an error that is not a
    /// full device).
    pub(crate) send_errors: u64,
}

impl TxLosses {
    /// What grew from `before` to `self`, field by field.
    pub(crate) fn since(&self, before: &Self) -> Self {
        Self {
            stalled: self.stalled.saturating_sub(before.stalled),
            refused: self.refused.saturating_sub(before.refused),
            send_errors: self.send_errors.saturating_sub(before.send_errors),
        }
    }
}

/// The transmit half of a link.
pub(crate) trait FrameTx {
    /// Errors of the socket, logged by the stage.
    type Error: fmt::Display;

    /// Writes one frame through `write`, which gets a buffer and returns the length it wrote
    /// (0: nothing to send). Returns whether a frame was staged (`false`: `write` wrote
    /// nothing, or there was no room and `write` was not called; the caller counts the drop).
    fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool;

    /// Sends what is staged. Frames it drops are counted in [`FrameTx::losses`]; an error is
    /// for the log.
    fn flush(&mut self) -> Result<(), Self::Error>;

    /// What the transmit half dropped of the frames it staged, since it was opened (also in a
    /// [`FrameTx::stage`] that sent a full batch). Cheap: no system call.
    fn losses(&self) -> TxLosses;

    /// Whether [`FrameTx::flush`] waits for a device that takes frames slower than they come
    /// (the default, pacing the sender to the link) or leaves them queued for the next flush,
    /// as when other links carry copies and a slow one must not hold them back.
    fn wait_for_device(&mut self, wait: bool) {
        let _ = wait;
    }

    /// Whether the last flush, not waiting for the device, left frames that go out only when
    /// the transmit half is flushed again (the stage does so soon, with or without new frames).
    fn behind(&self) -> bool {
        false
    }
}

/// One captured packet, writable so that a partial checksum can be completed in place.
#[derive(Debug)]
pub(crate) struct Captured<'a> {
    /// The IP packet (empty if the kernel sent none).
    pub(crate) payload: &'a mut [u8],
    /// Its transport checksum is partial, to be completed before sending.
    pub(crate) csum_partial: bool,
    /// The packet was longer than what was copied: `payload` is only its start.
    pub(crate) truncated: bool,
}

/// What a capture source lost or could not parse, counted since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SourceLosses {
    /// Receive-buffer overruns: the kernel lost packets before alagg read them.
    pub(crate) overruns: u64,
    /// Messages that did not parse, and errors the kernel reported.
    pub(crate) errors: u64,
}

/// Where outbound packets are captured from (an NFQUEUE queue).
pub(crate) trait PacketSource {
    /// Errors of the source, logged by the stage.
    type Error: fmt::Display;

    /// The descriptor to `poll(2)` on for packets.
    fn fd(&self) -> RawFd;

    /// Takes up to [`BATCH`] packets without blocking and hands each to `each`, in the order
    /// they were queued; returns how many.
    fn recv(&mut self, each: impl FnMut(Captured<'_>)) -> Result<usize, Self::Error>;

    /// Steals the packets of the last [`PacketSource::recv`]: alagg carries them from here.
    fn steal(&mut self) -> Result<(), Self::Error>;

    /// What the source lost so far.
    fn losses(&self) -> SourceLosses;
}

/// What the capture stage hands its packets to (the transmit stage).
pub(crate) trait Outbound {
    /// Called at the start of every capture turn, before any packet, at `now`: take link
    /// changes and health, and send what is due without packets (probes, feedback).
    fn refresh(&mut self, now: alagg_proto::Timestamp);

    /// How long the stage may sleep from `now` before [`Outbound::refresh`] has something to
    /// send; `None`: nothing is due.
    fn due(&self, now: alagg_proto::Timestamp) -> Option<std::time::Duration>;

    /// Sends one captured packet (or stages it to be sent with the next ones).
    fn packet(&mut self, packet: &[u8], now: alagg_proto::Timestamp);

    /// The batch is complete: everything staged goes out now (before the capture's verdict).
    fn flush(&mut self);
}

/// What the receive stage hands the engine's packets to (the delivery stage).
pub(crate) trait Inbound {
    /// Takes one packet the engine delivered, in order.
    fn packet(&mut self, packet: &[u8]);

    /// Writes whatever is held back (coalesced), before the receive stage looks again or sleeps.
    fn flush(&mut self);
}

/// Link health as the receive stage publishes it for the transmit stages: the link's
/// [`HealthView`] in atomics, and the reports on the peer's lanes of the link that the next
/// feedback frame carries. Written every few milliseconds, never per packet.
#[derive(Debug, Default)]
pub(crate) struct HealthBoard {
    condition: AtomicU8,
    /// Microseconds; 0 when not measured.
    srtt_us: AtomicU32,
    min_rtt_us: AtomicU32,
    /// Parts per million.
    loss_ppm: AtomicU32,
    rate_bps: AtomicU64,
    downs: AtomicU64,
    reports: Mutex<Vec<LaneReport>>,
}

impl HealthBoard {
    /// Publishes `view`.
    pub(crate) fn set_view(&self, view: &HealthView) {
        let us = |d: Option<std::time::Duration>| {
            d.map_or(0, |d| {
                u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
            })
        };
        self.condition.store(view.condition.code(), Relaxed);
        self.srtt_us.store(us(view.srtt), Relaxed);
        self.min_rtt_us.store(us(view.min_rtt), Relaxed);
        // 0.0..=1.0 scaled to parts per million.
        let ppm = (view.loss.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.loss_ppm.store(ppm, Relaxed);
        self.rate_bps.store(view.rate_bps, Relaxed);
        self.downs.store(view.downs, Relaxed);
    }

    /// The view last published.
    pub(crate) fn view(&self) -> HealthView {
        let us = |v: u32| (v > 0).then(|| std::time::Duration::from_micros(u64::from(v)));
        HealthView {
            condition: Condition::from_code(self.condition.load(Relaxed)),
            srtt: us(self.srtt_us.load(Relaxed)),
            min_rtt: us(self.min_rtt_us.load(Relaxed)),
            loss: self.loss_ppm.load(Relaxed) as f32 / 1_000_000.0,
            rate_bps: self.rate_bps.load(Relaxed),
            downs: self.downs.load(Relaxed),
        }
    }

    /// Replaces the reports with what `fill` writes into the (cleared) list.
    pub(crate) fn set_reports(&self, fill: impl FnOnce(&mut Vec<LaneReport>)) {
        // A panic while holding the lock cannot leave the list half-written in a way that
        // matters: it is rewritten whole every time.
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        reports.clear();
        fill(&mut reports);
    }

    /// Copies the reports into `out` (cleared first).
    pub(crate) fn reports(&self, out: &mut Vec<LaneReport>) {
        out.clear();
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend_from_slice(&reports);
    }
}

/// What protects the frames with FEC (`[scheduler] fec`), when it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FecPolicy {
    /// Blocks of this shape.
    Fixed(FecParams),
    /// The shape follows the links' measured loss ([`AutoFec`]).
    Auto,
}

/// FEC as the transmit stage runs it: the policy, and how long a block may stay open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FecPlan {
    pub(crate) policy: FecPolicy,
    pub(crate) timeout: std::time::Duration,
}

/// How the capture workers schedule what they send (`[scheduler]`): handed to every worker
/// when the configuration is reloaded ([`LinkControl::set_schedule`]).
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    pub(crate) scheduler: AnyScheduler,
    pub(crate) bundle: bool,
    pub(crate) fec: Option<FecPlan>,
}

/// What the runtime tells the stages about links: whether each may carry traffic, and
/// replacement sockets for a link whose interface disappeared and came back; and, from the
/// receive stage to the transmit stages, each link's health ([`HealthBoard`]). Lock-free on the
/// per-packet path: the stages read one number per turn and the rest only when it changed.
#[derive(Debug)]
pub(crate) struct LinkControl<R, T> {
    /// Per link, its health; `health_generation` counts publications.
    health: Vec<HealthBoard>,
    health_generation: AtomicU64,
    /// Bumped after every change below.
    generation: AtomicU64,
    usable: Vec<AtomicBool>,
    /// Per capture worker: `(link, transmit half, its Ethernet header)`.
    new_tx: Vec<ArrayQueue<(usize, T, EthernetRepr)>>,
    /// `(link, its receive halves)`.
    new_rx: ArrayQueue<(usize, Vec<R>)>,
    /// Per capture worker: a new schedule (live reload).
    new_schedule: Vec<ArrayQueue<Schedule>>,
}

impl<R, T> LinkControl<R, T> {
    /// Control for `links` links, all usable, and `workers` capture workers.
    pub(crate) fn new(links: usize, workers: usize) -> Self {
        let depth = 4 * links.max(1);
        Self {
            health: (0..links).map(|_| HealthBoard::default()).collect(),
            health_generation: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            usable: (0..links).map(|_| AtomicBool::new(true)).collect(),
            new_tx: (0..workers).map(|_| ArrayQueue::new(depth)).collect(),
            new_rx: ArrayQueue::new(depth),
            new_schedule: (0..workers).map(|_| ArrayQueue::new(1)).collect(),
        }
    }

    /// The number of capture workers.
    /// Link `link`'s health board, if there is such a link.
    pub(crate) fn health(&self, link: usize) -> Option<&HealthBoard> {
        self.health.get(link)
    }

    /// Tells the transmit stages that the health boards were written.
    pub(crate) fn health_published(&self) {
        self.health_generation.fetch_add(1, Release);
    }

    /// How many times the health boards were written (a transmit stage reads them when this
    /// changed).
    pub(crate) fn health_generation(&self) -> u64 {
        self.health_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn workers(&self) -> usize {
        self.new_tx.len()
    }

    /// Changes whether `link` may carry traffic.
    pub(crate) fn set_usable(&self, link: usize, usable: bool) {
        let Some(flag) = self.usable.get(link) else {
            return;
        };
        if flag.swap(usable, Relaxed) != usable {
            self.generation.fetch_add(1, Release);
        }
    }

    /// Hands over new sockets for `link`: the receive halves, and a transmit half per worker.
    /// The newest sockets win: an older replacement still queued is stale.
    pub(crate) fn replace(&self, link: usize, rx: Vec<R>, tx: Vec<T>, eth: EthernetRepr) {
        drop(self.new_rx.force_push((link, rx)));
        for (queue, tx) in self.new_tx.iter().zip(tx) {
            drop(queue.force_push((link, tx, eth)));
        }
        self.generation.fetch_add(1, Release);
    }

    /// The change counter; a stage compares it with the one it last saw.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `link` may carry traffic.
    pub(crate) fn usable(&self, link: usize) -> bool {
        self.usable.get(link).is_some_and(|u| u.load(Relaxed))
    }

    /// The next replacement transmit half for capture worker `worker`.
    pub(crate) fn take_tx(&self, worker: usize) -> Option<(usize, T, EthernetRepr)> {
        self.new_tx.get(worker)?.pop()
    }

    /// Hands every capture worker `schedule` (the newest wins).
    pub(crate) fn set_schedule(&self, schedule: &Schedule) {
        for queue in &self.new_schedule {
            let _stale = queue.force_push(schedule.clone());
        }
        self.generation.fetch_add(1, Release);
    }

    /// A new schedule for capture worker `worker`, if one was handed over.
    pub(crate) fn take_schedule(&self, worker: usize) -> Option<Schedule> {
        self.new_schedule.get(worker)?.pop()
    }

    /// The next replacement receive halves.
    pub(crate) fn take_rx(&self) -> Option<(usize, Vec<R>)> {
        self.new_rx.pop()
    }
}
