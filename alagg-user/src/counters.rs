//! The counters, each named once. Every counter is one line of a [`counter_set!`] (or
//! [`engine_counters!`]) table below; from that line come the live atomic the worker threads
//! add to, the field of the plain copy `alagg status --json` shows, its Prometheus name and
//! help, its `alagg status` label and its place in the exit summary. A new counter is one line.
//!
//! Each writing thread has its own block of counters on cache lines of its own
//! ([`CachePadded`]): a capture worker its [`WorkerCounters`], the receive thread its
//! [`ReceiverCounters`], so no two threads write the same line; readers add the blocks up.
//! The receive engine's counters ([`RxStats`]) are published by the receive thread every
//! 100 ms, the XDP program's by the link monitor.
//!
//! A shared leaf: it imports nothing from the crate.

use std::sync::{
    Mutex,
    atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
};

use alagg_common::{Action, Counter};
use alagg_proto::stats::RxStats;
use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

/// What a counter counts, for how its value is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// IP packets.
    Packets,
    /// Ethernet frames.
    Frames,
    /// Bytes: shown with binary units.
    Bytes,
    /// Occurrences of an event.
    Events,
}

/// One counter of a set, as every rendering needs it.
#[derive(Debug)]
pub(crate) struct Row<S> {
    /// The field's name in the JSON snapshot and the exit summary.
    pub(crate) name: &'static str,
    /// Its Prometheus name, without the set's prefix and `_total`.
    pub(crate) metric: &'static str,
    /// Its label in `alagg status`.
    pub(crate) label: &'static str,
    /// What it counts (its doc comment).
    help: &'static str,
    pub(crate) unit: Unit,
    /// Its value in a snapshot.
    pub(crate) value: fn(&S) -> u64,
}

impl<S> Row<S> {
    /// What the counter counts, one line.
    pub(crate) fn help(&self) -> String {
        self.help.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// A set of counters: the live atomics (`$live`), their plain copy (`$snap`, serialised with
/// missing fields defaulted, so a newer `alagg status` reads an older instance and the
/// reverse), and the rows. Each line: doc comment (the help), field, unit, Prometheus name,
/// status label.
macro_rules! counter_set {
    (
        $(#[doc = $live_doc:literal])* live $live:ident;
        $(#[doc = $snap_doc:literal])* snapshot $snap:ident;
        $( $(#[doc = $doc:literal])+ $field:ident: $unit:ident, $metric:literal, $label:literal; )+
    ) => {
        $(#[doc = $live_doc])*
        #[derive(Debug, Default)]
        pub(crate) struct $live {
            $( $(#[doc = $doc])+ pub(crate) $field: AtomicU64, )+
        }

        $(#[doc = $snap_doc])*
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
        #[serde(default)]
        pub struct $snap {
            $( $(#[doc = $doc])+ pub $field: u64, )+
        }

        impl $live {
            /// Adds these counters' values to `sum`.
            pub(crate) fn add_to(&self, sum: &mut $snap) {
                $( sum.$field = sum.$field.wrapping_add(self.$field.load(Relaxed)); )+
            }
        }

        impl $snap {
            /// Every counter of the set, in display order.
            pub(crate) const ROWS: &'static [Row<$snap>] = &[
                $( Row {
                    name: stringify!($field),
                    metric: $metric,
                    label: $label,
                    help: concat!($($doc),+),
                    unit: Unit::$unit,
                    value: |s| s.$field,
                }, )+
            ];
        }
    };
}

counter_set! {
    /// A capture worker's counters of the capture edge (NFQUEUE).
    live CaptureCounters;
    /// Counters of the capture edge (NFQUEUE), over all capture workers.
    snapshot CaptureSnapshot;
    /// Packets taken from NFQUEUE.
    captured: Packets, "captured_packets", "captured";
    /// Bytes taken from NFQUEUE.
    captured_bytes: Bytes, "captured_bytes", "captured bytes";
    /// Captured packets that could not be sent at all (empty or truncated, a partial
    /// checksum that cannot be completed, no usable link, too large).
    dropped: Packets, "capture_dropped", "dropped";
    /// Receives from NFQUEUE that handed out packets (packets per batch = captured / batches).
    batches: Events, "capture_batches", "receive batches";
    /// NFQUEUE receive-buffer overruns (`ENOBUFS`): packets the kernel lost, or let through
    /// uncaptured with fail-open, before alagg could read them.
    overruns: Events, "capture_overruns", "queue overruns";
    /// NFQUEUE messages that did not parse, and errors the kernel reported on verdicts.
    errors: Events, "capture_errors", "queue errors";
    /// TCP packets captured whole and cut into segments of one frame each before sending,
    /// because they were to go alone on a link that loses frames (a lost frame then costs one
    /// segment, not the whole packet).
    tcp_segmented: Packets, "tcp_segmented_packets", "TCP cut into segments";
    /// FEC blocks closed, their parity computed (`[scheduler] fec`).
    fec_blocks: Events, "fec_blocks", "FEC blocks";
    /// FEC blocks closed by the timeout before they were full.
    fec_partial: Events, "fec_partial_blocks", "FEC blocks closed early";
    /// FEC parity frames sent (on all links).
    fec_parity_sent: Frames, "fec_parity_sent_frames", "FEC parity sent";
}

counter_set! {
    /// The receive thread's counters of the delivery edge (TUN).
    live DeliveryCounters;
    /// Counters of the delivery edge (TUN).
    snapshot DeliverySnapshot;
    /// Packets written to the TUN device.
    delivered: Packets, "delivered_packets", "delivered";
    /// Bytes written to the TUN device.
    delivered_bytes: Bytes, "delivered_bytes", "delivered bytes";
    /// Packets dropped because their source is outside the destinations.
    rejected_source: Packets, "rejected_source", "rejected source";
    /// Packets dropped because their destination lies in the destinations (it would go back to
    /// the peer), or is unspecified or loopback.
    rejected_destination: Packets, "rejected_destination", "rejected destination";
    /// Packets dropped because their IP header is not sane.
    rejected_malformed: Packets, "rejected_malformed", "rejected malformed";
    /// Packets whose TUN write failed.
    tun_errors: Packets, "tun_errors", "tun errors";
    /// Delivered packets that went to the TUN device coalesced with others into one GSO write.
    coalesced: Packets, "coalesced_packets", "coalesced into GSO writes";
}

counter_set! {
    /// A capture worker's counters of what it sent on one link.
    live LinkTxCounters;
    /// What was sent on one link, over all capture workers.
    snapshot LinkTxSnapshot;
    /// Frames staged for transmission on the link.
    tx_frames: Frames, "tx_frames", "frames sent";
    /// Bytes staged for transmission on the link (Ethernet frames).
    tx_bytes: Bytes, "tx_bytes", "bytes sent";
    /// Frames that were to be sent on the link and were not, whatever the cause: the sum of
    /// the five causes below.
    tx_dropped: Frames, "tx_dropped", "send drops";
    /// Frames dropped because no transmit frame was free: every AF_XDP transmit frame was on
    /// the tx ring, its completion not back yet.
    tx_no_frame: Frames, "tx_no_frame", "  no free frame";
    /// Frames that could not be written into a transmit buffer (too long for it, or sealing
    /// failed).
    tx_unwritable: Frames, "tx_unwritable", "  unwritable";
    /// Frames given back unsent because the device took nothing from the AF_XDP tx ring for a
    /// long while (its interface gone or its queue stopped).
    tx_stalled: Frames, "tx_stalled", "  stalled ring";
    /// Frames the kernel or the device refused: AF_PACKET frames a `sendmmsg` did not send (an
    /// error, or the rest of a partial send), AF_XDP frames the device dropped (`EBUSY`).
    tx_refused: Frames, "tx_refused", "  refused by device";
    /// Send calls that failed (AF_PACKET `sendmmsg`, the AF_XDP kick); their frames are in
    /// the causes above.
    tx_send_errors: Events, "tx_send_errors", "send errors";
    /// Frames sent again on this link because the link that carried them went down before
    /// they were known to have arrived (failover; the receiver drops what did arrive).
    tx_resent: Frames, "tx_resent", "resent for a failed link";
}

counter_set! {
    /// The receive thread's counters of what arrived on one link.
    live LinkRxCounters;
    /// What arrived on one link.
    snapshot LinkRxSnapshot;
    /// alagg frames received on the link.
    rx_frames: Frames, "rx_frames", "frames received";
    /// Bytes of alagg frames received on the link.
    rx_bytes: Bytes, "rx_bytes", "bytes received";
    /// Frames not from the configured peer's MAC, not to this host's MAC on the link, or of
    /// another ethertype, dropped.
    rx_foreign: Frames, "rx_foreign", "foreign frames";
    /// alagg frames naming another link than the one they arrived on, dropped: the hosts list
    /// their `[[link]]`s in different orders, or the frames are forged.
    rx_wrong_link: Frames, "rx_wrong_link", "frames of another link";
    /// AF_PACKET: frames longer than a receive slot, cut short by the kernel (`MSG_TRUNC`)
    /// and dropped.
    rx_truncated: Frames, "rx_truncated", "truncated frames";
    /// AF_PACKET: frames the kernel dropped because the socket's receive buffer was full
    /// (`PACKET_STATISTICS` `tp_drops`).
    rx_buffer_full: Frames, "rx_buffer_full", "receive buffer full";
    /// AF_XDP: frames the kernel dropped for want of a free frame on the fill ring, or too
    /// long for one (`XDP_STATISTICS` `rx_dropped`).
    xsk_rx_dropped: Frames, "xsk_rx_dropped", "AF_XDP rx dropped";
    /// AF_XDP: frames the kernel dropped because the rx ring was full: the receive thread fell
    /// behind (`rx_ring_full`).
    xsk_rx_ring_full: Frames, "xsk_rx_ring_full", "AF_XDP rx ring full";
    /// AF_XDP: frames dropped on an invalid fill-ring descriptor (`rx_invalid_descs`).
    xsk_rx_invalid: Frames, "xsk_rx_invalid_descs", "AF_XDP rx invalid descriptors";
    /// AF_XDP: times the kernel found the fill ring empty (`rx_fill_ring_empty_descs`); in
    /// copy mode each is a frame also counted in the AF_XDP rx drops.
    xsk_fill_empty: Events, "xsk_fill_ring_empty", "AF_XDP fill ring empty";
    /// AF_XDP: frames put on the tx ring that the kernel dropped as invalid, such as longer
    /// than the device's MTU (`tx_invalid_descs`).
    xsk_tx_invalid: Frames, "xsk_tx_invalid_descs", "AF_XDP tx invalid descriptors";
    /// AF_XDP: times the kernel found the tx ring empty when kicked (`tx_ring_empty_descs`);
    /// not a loss.
    xsk_tx_ring_empty: Events, "xsk_tx_ring_empty", "AF_XDP tx ring found empty";
    /// Packets whose first copy came over the link.
    first: Packets, "first_copies", "first copies";
}

/// The receive engine's counters: a plain copy of [`RxStats`], flattened, with the rows. Each
/// line: doc comment (the help), field, where it is in [`RxStats`], Prometheus name (after
/// `alagg_engine_`), status label. Names follow IEEE 802.1CB-2017 clause 10.8 (sequence
/// recovery) where alagg's concept is the same.
macro_rules! engine_counters {
    ( $( $(#[doc = $doc:literal])+ $field:ident = $($src:ident).+, $metric:literal, $label:literal; )+ ) => {
        /// The receive engine's counters ([`RxStats`], flattened).
        #[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
        #[serde(default)]
        pub struct EngineCounts {
            $( $(#[doc = $doc])+ pub $field: u64, )+
        }

        impl From<&RxStats> for EngineCounts {
            fn from(stats: &RxStats) -> Self {
                EngineCounts { $( $field: stats.$($src).+, )+ }
            }
        }

        impl EngineCounts {
            /// Every counter of the engine, in display order.
            pub(crate) const ROWS: &'static [Row<EngineCounts>] = &[
                $( Row {
                    name: stringify!($field),
                    metric: $metric,
                    label: $label,
                    help: concat!($($doc),+),
                    unit: Unit::Events,
                    value: |s| s.$field,
                }, )+
            ];
        }
    };
}

engine_counters! {
    /// Frames handed to the receive engine.
    frames = frames, "frames", "frames";
    /// First copies accepted (IEEE 802.1CB PassedPackets).
    passed = dedup.passed, "passed", "passed";
    /// Duplicate copies dropped (IEEE 802.1CB DiscardedPackets).
    discarded = dedup.discarded, "discarded", "discarded duplicates";
    /// Packets older than the duplicate window, dropped (IEEE 802.1CB RoguePackets).
    rogue = dedup.rogue, "rogue", "rogue (too old)";
    /// Packets delivered at once, in order.
    in_order = reorder.in_order, "in_order", "in order";
    /// Packets held behind a gap, then delivered in order (IEEE 802.1CB OutOfOrderPackets,
    /// with late).
    out_of_order = reorder.reordered, "out_of_order", "out of order";
    /// Packets that arrived after their gap was given up.
    late = reorder.late, "late", "late";
    /// Late packets dropped instead of delivered.
    late_dropped = reorder.late_dropped, "late_dropped", "late dropped";
    /// Sequence numbers given up as lost (IEEE 802.1CB LostPackets).
    lost = reorder.lost, "lost", "lost (given up)";
    /// Gaps given up because the hold time expired.
    hold_expired = reorder.hold_expired, "hold_expired", "hold expired";
    /// Gaps given up at once because every live link had gone past them (lost on every link).
    gaps_passed = gaps_passed, "gaps_passed", "gaps every link went past";
    /// Gaps given up because the reorder buffer was full.
    overflows = reorder.overflows, "overflows", "reorder overflows";
    /// Fragments stored for reassembly.
    fragments = reassembly.fragments, "fragments", "fragments";
    /// Copies of fragments already stored, dropped.
    duplicate_fragments = reassembly.duplicate_fragments, "duplicate_fragments", "duplicate fragments";
    /// Packets reassembled from fragments.
    reassembled = reassembly.completed, "reassembled", "reassembled";
    /// Incomplete packets dropped after the reassembly timeout.
    reassembly_timeouts = reassembly.timeouts, "reassembly_timeouts", "reassembly timeouts";
    /// Incomplete packets evicted to make room for a newer one.
    reassembly_evicted = reassembly.evicted, "reassembly_evicted", "reassembly evicted";
    /// Fragments refused: too long, or fields outside the packet.
    reassembly_rejected = reassembly.rejected, "reassembly_rejected", "reassembly rejected";
    /// Frames failing the checked parse.
    malformed = malformed, "malformed", "malformed";
    /// Frames of another wire-format version.
    bad_version = bad_version, "bad_version", "bad version";
    /// Frames of an unknown type, ignored.
    unknown_type = unknown_type, "unknown_type", "unknown type";
    /// Data frames longer than the configured maximum packet.
    oversized = oversized, "oversized", "oversized";
    /// Packets refused by the delivery checks (source, IP header) before they
    /// took their number (counted by reason under delivery too).
    inadmissible = inadmissible, "inadmissible", "refused before numbering";
    /// Probe frames received.
    probes = probes, "probes", "probes";
    /// Feedback frames received (the peer's reports on this host's lanes).
    feedback = feedback, "feedback", "feedback";
    /// With `[auth]`: frames without an authentication tag, dropped before touching any state.
    unauthenticated = unauthenticated, "unauthenticated", "unauthenticated";
    /// With `[auth]`: frames whose tag does not verify (another key, or changed on the way),
    /// dropped before touching any state.
    auth_failed = auth_failed, "auth_failed", "authentication failed";
    /// Without `[auth]`: authenticated frames (the peer has a key, this host none), dropped.
    auth_unexpected = auth_unexpected, "auth_unexpected", "authenticated, no key here";
    /// Bundle frames received (several packets each).
    bundles = bundles, "bundles", "bundles";
    /// Times the peer restarted (its epoch changed).
    epoch_changes = epoch_changes, "epoch_changes", "peer restarts";
    /// Frames of an epoch the peer recently left, dropped.
    stale_epoch = stale_epoch, "stale_epoch", "stale epoch";
    /// Frames of an epoch neither current nor recently left, not (yet) believed: the first
    /// frames of a restart, or frames that are not the peer's.
    unknown_epoch = unknown_epoch, "unknown_epoch", "unknown epoch";
    /// Frames too far ahead of the duplicate window to be believed on their own.
    implausible_seq = implausible_seq, "implausible_seq", "implausible numbers";
    /// Times the stream was believed to resume far ahead (after an outage of every link).
    seq_jumps = seq_jumps, "seq_jumps", "sequence jumps";
    /// Frames of a restart or resumption that came before it was believed and were lost.
    pending_lost = pending_lost, "pending_lost", "lost before believed";
    /// FEC parity frames received.
    fec_parity = fec.parity, "fec_parity_frames", "FEC parity received";
    /// Data frames FEC rebuilt from parity.
    fec_recovered = fec.recovered, "fec_recovered_frames", "FEC frames recovered";
    /// FEC blocks given up with data missing that their parity could not rebuild.
    fec_unrecoverable = fec.unrecoverable, "fec_unrecoverable_blocks", "FEC blocks unrecoverable";
    /// FEC parity, or frames rebuilt from it, that did not check out (forged or corrupt),
    /// dropped.
    fec_rejected = fec.rejected, "fec_rejected", "FEC rejected";
}

/// A capture worker's counters, on cache lines of their own.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub(crate) capture: CaptureCounters,
    /// Per link, in configuration order, each padded too (the vector's storage is its own
    /// allocation).
    pub(crate) links: Vec<CachePadded<LinkTxCounters>>,
}

impl WorkerCounters {
    /// Counters for `links` links.
    pub(crate) fn new(links: usize) -> Self {
        Self {
            capture: CaptureCounters::default(),
            links: (0..links).map(|_| CachePadded::default()).collect(),
        }
    }
}

/// The receive thread's counters.
#[derive(Debug, Default)]
pub(crate) struct ReceiverCounters {
    pub(crate) delivery: DeliveryCounters,
    /// Per link, in configuration order.
    pub(crate) links: Vec<CachePadded<LinkRxCounters>>,
}

/// Every live counter of a running datapath.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Per capture worker.
    pub(crate) workers: Vec<CachePadded<WorkerCounters>>,
    /// The receive thread's.
    pub(crate) receiver: CachePadded<ReceiverCounters>,
    /// Per link, its [`LinkStatus`] as the monitor last saw it ([`LinkStatus::code`]).
    pub(crate) link_status: Vec<AtomicU8>,
    /// The receive engine's counters, published by the receive thread every 100 ms and when
    /// it stops.
    pub(crate) engine: Mutex<RxStats>,
    /// The XDP program's verdict counters over all links, refreshed by the link monitor.
    pub(crate) xdp: Mutex<Vec<(Action, Counter)>>,
}

impl Counters {
    /// Counters for `links` links and `workers` capture workers.
    pub(crate) fn new(links: usize, workers: usize) -> Self {
        Self {
            workers: (0..workers.max(1))
                .map(|_| CachePadded::new(WorkerCounters::new(links)))
                .collect(),
            receiver: CachePadded::new(ReceiverCounters {
                delivery: DeliveryCounters::default(),
                links: (0..links).map(|_| CachePadded::default()).collect(),
            }),
            link_status: (0..links).map(|_| AtomicU8::new(0)).collect(),
            engine: Mutex::default(),
            xdp: Mutex::default(),
        }
    }

    /// The capture counters, over all workers.
    pub(crate) fn capture(&self) -> CaptureSnapshot {
        let mut sum = CaptureSnapshot::default();
        for worker in &self.workers {
            worker.capture.add_to(&mut sum);
        }
        sum
    }

    /// The delivery counters.
    pub(crate) fn delivery(&self) -> DeliverySnapshot {
        let mut sum = DeliverySnapshot::default();
        self.receiver.delivery.add_to(&mut sum);
        sum
    }

    /// What was sent on link `link`, over all workers, and what arrived on it.
    pub(crate) fn link(&self, link: usize) -> (LinkTxSnapshot, LinkRxSnapshot) {
        let mut tx = LinkTxSnapshot::default();
        for worker in &self.workers {
            if let Some(counters) = worker.links.get(link) {
                counters.add_to(&mut tx);
            }
        }
        let mut rx = LinkRxSnapshot::default();
        if let Some(counters) = self.receiver.links.get(link) {
            counters.add_to(&mut rx);
        }
        (tx, rx)
    }

    /// Link `link`'s status as the monitor last saw it.
    pub(crate) fn link_status(&self, link: usize) -> LinkStatus {
        self.link_status
            .get(link)
            .map_or(LinkStatus::Gone, |s| LinkStatus::from_code(s.load(Relaxed)))
    }
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
    /// The status as a number, for [`Counters::link_status`].
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

    /// The status's name in snapshots: `"up"`, `"down"` or `"gone"`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            LinkStatus::Up => "up",
            LinkStatus::Down => "down",
            LinkStatus::Gone => "gone",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_counter_has_a_distinct_name_metric_label_and_help() {
        fn check<S>(rows: &[Row<S>], seen: &mut HashSet<String>) {
            for row in rows {
                assert!(
                    !row.help().is_empty() && row.help().ends_with('.'),
                    "{}",
                    row.name
                );
                assert!(!row.label.is_empty(), "{}", row.name);
                assert!(
                    row.metric
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{}",
                    row.metric
                );
                assert!(seen.insert(row.metric.to_owned()), "{} twice", row.metric);
            }
        }
        let mut flat = HashSet::new();
        check(CaptureSnapshot::ROWS, &mut flat);
        check(DeliverySnapshot::ROWS, &mut flat);
        let mut link = HashSet::new();
        check(LinkTxSnapshot::ROWS, &mut link);
        check(LinkRxSnapshot::ROWS, &mut link);
        check(EngineCounts::ROWS, &mut HashSet::new());
    }

    #[test]
    fn blocks_add_up_over_workers_and_a_row_reads_its_own_field() {
        let counters = Counters::new(2, 3);
        for (w, worker) in counters.workers.iter().enumerate() {
            worker.capture.captured.fetch_add(w as u64 + 1, Relaxed);
            worker.links[1].tx_frames.fetch_add(10, Relaxed);
        }
        counters.receiver.links[1].first.fetch_add(4, Relaxed);
        assert_eq!(counters.capture().captured, 6);
        let (tx, rx) = counters.link(1);
        assert_eq!((tx.tx_frames, rx.first), (30, 4));
        assert_eq!(counters.link(0).0.tx_frames, 0);
        let first = LinkRxSnapshot::ROWS.iter().find(|r| r.name == "first");
        assert_eq!(first.map(|r| (r.value)(&rx)), Some(4));
        let stats = RxStats {
            seq_jumps: 7,
            ..RxStats::default()
        };
        let engine = EngineCounts::from(&stats);
        let row = EngineCounts::ROWS.iter().find(|r| r.name == "seq_jumps");
        assert_eq!(row.map(|r| (r.value)(&engine)), Some(7));
    }
}
