//! The live counters: relaxed atomics the worker threads add to and anyone reads (the control
//! socket, the metrics endpoint, the exit summary), and the receive engine's and the XDP
//! program's counters as last published. A shared leaf: it imports nothing from the crate.

use std::sync::{
    Mutex,
    atomic::{AtomicU8, AtomicU64},
};

use alagg_common::{Action, Counter};
use alagg_proto::stats::RxStats;

/// Counters of one link, shared with the status display.
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    /// Frames staged for transmission.
    pub(crate) tx_frames: AtomicU64,
    /// Bytes staged for transmission (Ethernet frames).
    pub(crate) tx_bytes: AtomicU64,
    /// Frames dropped because no transmit frame was free.
    pub(crate) tx_dropped: AtomicU64,
    /// alagg frames received.
    pub(crate) rx_frames: AtomicU64,
    /// Bytes received.
    pub(crate) rx_bytes: AtomicU64,
    /// Frames from a MAC other than the configured peer's; dropped.
    pub(crate) rx_foreign: AtomicU64,
    /// Packets whose first copy came over this link.
    pub(crate) first: AtomicU64,
    /// The link's [`LinkStatus`] as the monitor last saw it ([`LinkStatus::code`]).
    pub(crate) status: AtomicU8,
}

/// Datapath counters, updated by the worker threads, read by anyone.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Packets taken from NFQUEUE.
    pub(crate) captured: AtomicU64,
    /// Bytes taken from NFQUEUE.
    pub(crate) captured_bytes: AtomicU64,
    /// Captured packets that could not be sent at all (no usable link, too large).
    pub(crate) capture_dropped: AtomicU64,
    /// Packets written to the TUN device.
    pub(crate) delivered: AtomicU64,
    /// Bytes written to the TUN device.
    pub(crate) delivered_bytes: AtomicU64,
    /// Packets dropped because their source is outside the destinations.
    pub(crate) rejected_source: AtomicU64,
    /// Packets dropped because their IP header is not sane.
    pub(crate) rejected_malformed: AtomicU64,
    /// Packets whose TUN write failed.
    pub(crate) tun_errors: AtomicU64,
    /// Delivered packets that went to the TUN device coalesced with others into one GSO write.
    pub(crate) coalesced: AtomicU64,
    /// NFQUEUE receives that handed out packets.
    pub(crate) capture_batches: AtomicU64,
    /// NFQUEUE receive-buffer overruns (`ENOBUFS`): the kernel lost packets (or, with fail-open,
    /// let them through uncaptured) before alagg could read them.
    pub(crate) capture_overruns: AtomicU64,
    /// NFQUEUE messages that did not parse, and errors the kernel reported on verdicts.
    pub(crate) capture_errors: AtomicU64,
    /// Per link, in configuration order.
    pub(crate) links: Vec<LinkCounters>,
    /// The receive engine's counters, published by the receive thread every
    /// publish interval and when it stops.
    pub(crate) engine: Mutex<RxStats>,
    /// The XDP program's verdict counters over all links, refreshed by the link monitor.
    pub(crate) xdp: Mutex<Vec<(Action, Counter)>>,
}

/// What the monitor last saw of a link's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkStatus {
    /// Up with carrier: carries traffic.
    Up,
    /// Present but administratively down or without carrier: skipped.
    Down,
    /// The interface does not exist (unplugged, deleted): skipped until it returns.
    Gone,
}

impl LinkStatus {
    /// The status as a number, for [`LinkCounters::status`].
    pub(crate) const fn code(self) -> u8 {
        match self {
            LinkStatus::Up => 0,
            LinkStatus::Down => 1,
            LinkStatus::Gone => 2,
        }
    }

    /// The status a [`LinkStatus::code`] stands for; unknown codes read as `Gone`.
    pub(crate) const fn from_code(code: u8) -> Self {
        match code {
            0 => LinkStatus::Up,
            1 => LinkStatus::Down,
            _ => LinkStatus::Gone,
        }
    }
}
