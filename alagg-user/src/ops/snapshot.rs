//! A snapshot of every counter of a running alagg, rendered as the `alagg status` text
//! ([`super::text`]) and in the Prometheus text exposition format ([`super::prometheus`]).
//!
//! A [`Snapshot`] is plain data, copied out of the live atomics ([`crate::counters::Counters`]),
//! the receive engine's [`RxStats`] and the XDP program's counters. It travels as one JSON line
//! over the control socket ([`super::control`]), so every struct deserializes with missing fields
//! defaulted: a newer `alagg status` can read an older instance and the reverse.
//!
//! The engine's counters use the names of IEEE 802.1CB-2017 clause 10.8 (sequence recovery:
//! passed, discarded, rogue, out of order, lost) where alagg's concept is the same.
//!
//! Rendering never fails and never panics; every counter is a `u64` that only grows (Prometheus
//! counters, `_total`), except the link state and uptime (gauges) and the reorder hold-time
//! histogram, filled from the engine's [`alagg_proto::stats::HoldStats`].

#![deny(unsafe_code)]

use std::{
    sync::{PoisonError, atomic::Ordering::Relaxed},
    time::Duration,
};

use alagg_common::{Action, Counter};
use alagg_proto::stats::RxStats;
use serde::{Deserialize, Serialize};

use crate::counters::{Counters, LinkCounters, LinkStatus};

/// Version of the [`Snapshot`] layout; bumped when a field changes meaning.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Every counter of a running alagg at one instant.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] of the instance that took it.
    pub version: u32,
    /// Process id of the instance.
    pub pid: u32,
    /// Seconds since the instance came up.
    pub uptime_secs: f64,
    /// Path of the configuration file the instance runs with.
    pub config: String,
    /// Name of the TUN device packets are delivered through.
    pub tun: String,
    /// Per link, in configuration order.
    pub links: Vec<LinkSnapshot>,
    /// The capture edge (NFQUEUE).
    pub capture: CaptureSnapshot,
    /// The delivery edge (TUN).
    pub delivery: DeliverySnapshot,
    /// The receive engine (duplicate filter, reordering, reassembly).
    pub engine: EngineSnapshot,
    /// The XDP program's verdicts, summed over links and CPUs; empty when unknown.
    pub xdp: Vec<XdpCounter>,
}

/// Counters of one link.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct LinkSnapshot {
    /// The link's interface name.
    pub interface: String,
    /// `"up"`, `"down"` or `"gone"` ([`link_status_name`]).
    pub status: String,
    /// Frames staged for transmission.
    pub tx_frames: u64,
    /// Bytes staged for transmission (Ethernet frames).
    pub tx_bytes: u64,
    /// Frames dropped because no transmit frame was free.
    pub tx_dropped: u64,
    /// alagg frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames from a MAC other than the configured peer's; dropped.
    pub rx_foreign: u64,
    /// Packets whose first copy came over this link.
    pub first: u64,
}

/// Counters of the capture edge (NFQUEUE).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CaptureSnapshot {
    /// Packets taken from NFQUEUE.
    pub captured: u64,
    /// Bytes taken from NFQUEUE.
    pub captured_bytes: u64,
    /// Captured packets that could not be sent at all (no usable link, too large).
    pub dropped: u64,
    /// Receives from NFQUEUE that handed out packets (packets per batch = captured / batches).
    pub batches: u64,
    /// NFQUEUE receive-buffer overruns (`ENOBUFS`): packets the kernel lost, or let through
    /// uncaptured with fail-open, before alagg could read them.
    pub overruns: u64,
    /// NFQUEUE messages that did not parse, and errors the kernel reported on verdicts.
    pub errors: u64,
}

/// Counters of the delivery edge (TUN).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct DeliverySnapshot {
    /// Packets written to the TUN device.
    pub delivered: u64,
    /// Bytes written to the TUN device.
    pub delivered_bytes: u64,
    /// Packets dropped because their source is outside the destinations.
    pub rejected_source: u64,
    /// Packets dropped because their IP header is not sane.
    pub rejected_malformed: u64,
    /// Packets whose TUN write failed.
    pub tun_errors: u64,
    /// Delivered packets that were coalesced with others into one GSO write.
    pub coalesced: u64,
}

/// The receive engine's counters ([`RxStats`] flattened), and the reorder hold-time histogram.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct EngineSnapshot {
    /// Frames handed to the engine.
    pub frames: u64,
    /// First copies accepted (802.1CB PassedPackets).
    pub passed: u64,
    /// Duplicate copies dropped (802.1CB DiscardedPackets).
    pub discarded: u64,
    /// Packets older than the duplicate window, dropped (802.1CB RoguePackets).
    pub rogue: u64,
    /// Delivered at once, in order.
    pub in_order: u64,
    /// Held behind a gap, then delivered in order (802.1CB OutOfOrderPackets, with `late`).
    pub out_of_order: u64,
    /// Arrived after their gap was given up.
    pub late: u64,
    /// Late packets dropped instead of delivered.
    pub late_dropped: u64,
    /// Sequence numbers given up as lost (802.1CB LostPackets).
    pub lost: u64,
    /// Gaps given up because the hold time expired.
    pub hold_expired: u64,
    /// Gaps given up because the reorder buffer was full.
    pub overflows: u64,
    /// Fragments stored.
    pub fragments: u64,
    /// Copies of fragments already stored, dropped.
    pub duplicate_fragments: u64,
    /// Packets reassembled from fragments.
    pub reassembled: u64,
    /// Incomplete packets dropped after the reassembly timeout.
    pub reassembly_timeouts: u64,
    /// Incomplete packets evicted to make room for a newer one.
    pub reassembly_evicted: u64,
    /// Fragments refused (too long, or disagreeing with earlier fragments).
    pub reassembly_rejected: u64,
    /// Frames failing the checked parse.
    pub malformed: u64,
    /// Frames of another wire-format version.
    pub bad_version: u64,
    /// Frames of an unknown type, ignored.
    pub unknown_type: u64,
    /// Data frames longer than the configured maximum packet.
    pub oversized: u64,
    /// Probe frames.
    pub probes: u64,
    /// Bundle frames (several packets each).
    pub bundles: u64,
    /// Times the peer restarted (its epoch changed).
    pub epoch_changes: u64,
    /// Frames of the peer's previous epoch, dropped.
    pub stale_epoch: u64,
    /// Reorder hold times: (upper bound in seconds, cumulative count), finite bounds ascending;
    /// the `+Inf` bucket is [`EngineSnapshot::hold_count`]. Empty when not measured.
    pub hold_histogram: Vec<(f64, u64)>,
    /// Sum of all hold times, seconds.
    pub hold_sum_secs: f64,
    /// Number of holds measured.
    pub hold_count: u64,
}

/// One XDP verdict's counter.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct XdpCounter {
    /// The verdict ([`Action::name`]).
    pub action: String,
    /// Frames.
    pub packets: u64,
    /// Bytes (frame length at XDP).
    pub bytes: u64,
}

impl From<&RxStats> for EngineSnapshot {
    fn from(stats: &RxStats) -> Self {
        EngineSnapshot {
            frames: stats.frames,
            passed: stats.dedup.passed,
            discarded: stats.dedup.discarded,
            rogue: stats.dedup.rogue,
            in_order: stats.reorder.in_order,
            out_of_order: stats.reorder.reordered,
            late: stats.reorder.late,
            late_dropped: stats.reorder.late_dropped,
            lost: stats.reorder.lost,
            hold_expired: stats.reorder.hold_expired,
            overflows: stats.reorder.overflows,
            fragments: stats.reassembly.fragments,
            duplicate_fragments: stats.reassembly.duplicate_fragments,
            reassembled: stats.reassembly.completed,
            reassembly_timeouts: stats.reassembly.timeouts,
            reassembly_evicted: stats.reassembly.evicted,
            reassembly_rejected: stats.reassembly.rejected,
            malformed: stats.malformed,
            bad_version: stats.bad_version,
            unknown_type: stats.unknown_type,
            oversized: stats.oversized,
            probes: stats.probes,
            bundles: stats.bundles,
            epoch_changes: stats.epoch_changes,
            stale_epoch: stats.stale_epoch,
            hold_histogram: stats
                .reorder
                .hold
                .cumulative()
                .map(|(bound_ns, count)| (Duration::from_nanos(bound_ns).as_secs_f64(), count))
                .collect(),
            hold_sum_secs: Duration::from_nanos(stats.reorder.hold.sum_nanos).as_secs_f64(),
            hold_count: stats.reorder.hold.count,
        }
    }
}

impl Snapshot {
    /// Copies the shared counters: of an instance up for `uptime`, with `interfaces` as its
    /// links, `tun` as its TUN device and `config` as its configuration file.
    pub(crate) fn take(
        counters: &Counters,
        interfaces: &[String],
        tun: &str,
        config: &str,
        uptime: Duration,
    ) -> Self {
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
            version: SNAPSHOT_VERSION,
            pid: std::process::id(),
            uptime_secs: uptime.as_secs_f64(),
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
}

/// The name a [`LinkStatus`] has in snapshots: `"up"`, `"down"` or `"gone"`.
pub(crate) const fn link_status_name(status: LinkStatus) -> &'static str {
    match status {
        LinkStatus::Up => "up",
        LinkStatus::Down => "down",
        LinkStatus::Gone => "gone",
    }
}

impl LinkSnapshot {
    /// Copies one link's live counters.
    pub(crate) fn new(interface: &str, status: LinkStatus, counters: &LinkCounters) -> Self {
        LinkSnapshot {
            interface: interface.to_owned(),
            status: link_status_name(status).to_owned(),
            tx_frames: counters.tx_frames.load(Relaxed),
            tx_bytes: counters.tx_bytes.load(Relaxed),
            tx_dropped: counters.tx_dropped.load(Relaxed),
            rx_frames: counters.rx_frames.load(Relaxed),
            rx_bytes: counters.rx_bytes.load(Relaxed),
            rx_foreign: counters.rx_foreign.load(Relaxed),
            first: counters.first.load(Relaxed),
        }
    }
}

impl From<&Counters> for CaptureSnapshot {
    fn from(counters: &Counters) -> Self {
        CaptureSnapshot {
            captured: counters.captured.load(Relaxed),
            captured_bytes: counters.captured_bytes.load(Relaxed),
            dropped: counters.capture_dropped.load(Relaxed),
            batches: counters.capture_batches.load(Relaxed),
            overruns: counters.capture_overruns.load(Relaxed),
            errors: counters.capture_errors.load(Relaxed),
        }
    }
}

impl From<&Counters> for DeliverySnapshot {
    fn from(counters: &Counters) -> Self {
        DeliverySnapshot {
            delivered: counters.delivered.load(Relaxed),
            delivered_bytes: counters.delivered_bytes.load(Relaxed),
            rejected_source: counters.rejected_source.load(Relaxed),
            rejected_malformed: counters.rejected_malformed.load(Relaxed),
            tun_errors: counters.tun_errors.load(Relaxed),
            coalesced: counters.coalesced.load(Relaxed),
        }
    }
}

impl From<(Action, Counter)> for XdpCounter {
    fn from((action, counter): (Action, Counter)) -> Self {
        XdpCounter {
            action: action.name().to_owned(),
            packets: counter.packets,
            bytes: counter.bytes,
        }
    }
}

/// A row of the engine's counters: text label, metric name (without `alagg_engine_` and
/// `_total`), help, value.
type EngineRow = (
    &'static str,
    &'static str,
    &'static str,
    fn(&EngineSnapshot) -> u64,
);

/// The engine's counters, in the order `alagg status` shows them.
pub(super) const ENGINE_ROWS: &[EngineRow] = &[
    (
        "frames",
        "frames",
        "Frames handed to the receive engine.",
        |e| e.frames,
    ),
    (
        "passed",
        "passed",
        "First copies accepted (IEEE 802.1CB PassedPackets).",
        |e| e.passed,
    ),
    (
        "discarded duplicates",
        "discarded",
        "Duplicate copies dropped (IEEE 802.1CB DiscardedPackets).",
        |e| e.discarded,
    ),
    (
        "rogue (too old)",
        "rogue",
        "Packets older than the duplicate window, dropped (IEEE 802.1CB RoguePackets).",
        |e| e.rogue,
    ),
    (
        "in order",
        "in_order",
        "Packets delivered at once, in order.",
        |e| e.in_order,
    ),
    (
        "out of order",
        "out_of_order",
        "Packets held behind a gap, then delivered in order (IEEE 802.1CB OutOfOrderPackets, with late).",
        |e| e.out_of_order,
    ),
    (
        "late",
        "late",
        "Packets that arrived after their gap was given up.",
        |e| e.late,
    ),
    (
        "late dropped",
        "late_dropped",
        "Late packets dropped instead of delivered.",
        |e| e.late_dropped,
    ),
    (
        "lost (given up)",
        "lost",
        "Sequence numbers given up as lost (IEEE 802.1CB LostPackets).",
        |e| e.lost,
    ),
    (
        "hold expired",
        "hold_expired",
        "Gaps given up because the hold time expired.",
        |e| e.hold_expired,
    ),
    (
        "reorder overflows",
        "overflows",
        "Gaps given up because the reorder buffer was full.",
        |e| e.overflows,
    ),
    (
        "fragments",
        "fragments",
        "Fragments stored for reassembly.",
        |e| e.fragments,
    ),
    (
        "duplicate fragments",
        "duplicate_fragments",
        "Copies of fragments already stored, dropped.",
        |e| e.duplicate_fragments,
    ),
    (
        "reassembled",
        "reassembled",
        "Packets reassembled from fragments.",
        |e| e.reassembled,
    ),
    (
        "reassembly timeouts",
        "reassembly_timeouts",
        "Incomplete packets dropped after the reassembly timeout.",
        |e| e.reassembly_timeouts,
    ),
    (
        "reassembly evicted",
        "reassembly_evicted",
        "Incomplete packets evicted to make room for a newer one.",
        |e| e.reassembly_evicted,
    ),
    (
        "reassembly rejected",
        "reassembly_rejected",
        "Fragments refused: too long, or disagreeing with earlier fragments.",
        |e| e.reassembly_rejected,
    ),
    (
        "malformed",
        "malformed",
        "Frames failing the checked parse.",
        |e| e.malformed,
    ),
    (
        "bad version",
        "bad_version",
        "Frames of another wire-format version.",
        |e| e.bad_version,
    ),
    (
        "unknown type",
        "unknown_type",
        "Frames of an unknown type, ignored.",
        |e| e.unknown_type,
    ),
    (
        "oversized",
        "oversized",
        "Data frames longer than the configured maximum packet.",
        |e| e.oversized,
    ),
    ("probes", "probes", "Probe frames received.", |e| e.probes),
    (
        "bundles",
        "bundles",
        "Bundle frames received (several packets each).",
        |e| e.bundles,
    ),
    (
        "peer restarts",
        "epoch_changes",
        "Times the peer restarted (its epoch changed).",
        |e| e.epoch_changes,
    ),
    (
        "stale epoch",
        "stale_epoch",
        "Frames of the peer's previous epoch, dropped.",
        |e| e.stale_epoch,
    ),
];

/// A per-link counter: metric name (without `alagg_link_` and `_total`), help, value.
type LinkRow = (&'static str, &'static str, fn(&LinkSnapshot) -> u64);

pub(super) const LINK_ROWS: &[LinkRow] = &[
    (
        "tx_frames",
        "Frames staged for transmission on the link.",
        |l| l.tx_frames,
    ),
    (
        "tx_bytes",
        "Bytes staged for transmission on the link (Ethernet frames).",
        |l| l.tx_bytes,
    ),
    (
        "tx_dropped",
        "Frames dropped because no transmit frame was free.",
        |l| l.tx_dropped,
    ),
    ("rx_frames", "alagg frames received on the link.", |l| {
        l.rx_frames
    }),
    (
        "rx_bytes",
        "Bytes of alagg frames received on the link.",
        |l| l.rx_bytes,
    ),
    (
        "rx_foreign",
        "Frames from a MAC other than the configured peer's, dropped.",
        |l| l.rx_foreign,
    ),
    (
        "first_copies",
        "Packets whose first copy came over the link.",
        |l| l.first,
    ),
];

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use alagg_proto::stats::{DedupStats, HoldStats, ReassemblyStats, ReorderStats};

    use super::*;

    /// A snapshot with a value in every counter, for the renderings' tests.
    pub(crate) fn sample() -> Snapshot {
        let mut hold = HoldStats::default();
        for micros in [50, 400, 3_000, 2_000_000] {
            hold.observe(Duration::from_micros(micros));
        }
        let engine = EngineSnapshot::from(&RxStats {
            frames: 30,
            malformed: 1,
            dedup: DedupStats {
                passed: 20,
                discarded: 9,
                rogue: 0,
            },
            reorder: ReorderStats {
                reordered: 3,
                lost: 2,
                hold,
                ..ReorderStats::default()
            },
            reassembly: ReassemblyStats {
                fragments: 4,
                completed: 2,
                ..ReassemblyStats::default()
            },
            ..RxStats::default()
        });
        Snapshot {
            version: SNAPSHOT_VERSION,
            pid: 4242,
            uptime_secs: 93_784.5,
            config: "/etc/alagg/site-a.toml".into(),
            tun: "alagg0".into(),
            links: vec![
                LinkSnapshot {
                    interface: "eth1".into(),
                    status: "up".into(),
                    tx_frames: 1000,
                    tx_bytes: 1_268_000,
                    rx_frames: 900,
                    rx_bytes: 512,
                    first: 15,
                    ..LinkSnapshot::default()
                },
                LinkSnapshot {
                    interface: "we\"ird\\name".into(),
                    status: "gone".into(),
                    first: 5,
                    ..LinkSnapshot::default()
                },
            ],
            capture: CaptureSnapshot {
                captured: 20,
                captured_bytes: 20_000,
                dropped: 1,
                batches: 4,
                overruns: 2,
                errors: 3,
            },
            delivery: DeliverySnapshot {
                delivered: 20,
                delivered_bytes: 20_000,
                rejected_source: 7,
                ..DeliverySnapshot::default()
            },
            engine,
            xdp: vec![XdpCounter {
                action: "redirected".into(),
                packets: 900,
                bytes: 1_000_000,
            }],
        }
    }

    #[test]
    fn json_round_trips_and_tolerates_missing_fields() {
        let snapshot = sample();
        let json = serde_json::to_string(&snapshot).unwrap();
        assert!(!json.contains('\n'), "one line on the control socket");
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);

        let partial: Snapshot =
            serde_json::from_str(r#"{"pid": 7, "links": [{"interface": "eth1"}]}"#).unwrap();
        assert_eq!(partial.pid, 7);
        assert_eq!(partial.links[0].interface, "eth1");
        assert_eq!(partial.engine, EngineSnapshot::default());
    }

    #[test]
    fn engine_snapshot_mirrors_rx_stats() {
        let stats = RxStats {
            frames: 1,
            malformed: 2,
            bad_version: 3,
            unknown_type: 4,
            oversized: 5,
            probes: 6,
            epoch_changes: 7,
            stale_epoch: 8,
            dedup: DedupStats {
                passed: 9,
                discarded: 10,
                rogue: 11,
            },
            reorder: ReorderStats {
                in_order: 12,
                reordered: 13,
                late: 14,
                late_dropped: 15,
                lost: 16,
                hold_expired: 17,
                overflows: 18,
                hold: HoldStats::default(),
            },
            reassembly: ReassemblyStats {
                fragments: 19,
                duplicate_fragments: 20,
                completed: 21,
                timeouts: 22,
                evicted: 23,
                rejected: 24,
            },
            bundles: 25,
        };
        let engine = EngineSnapshot::from(&stats);
        // Every field is distinct, and every row shows one: nothing is dropped or swapped twice.
        let values: BTreeSet<u64> = ENGINE_ROWS.iter().map(|row| (row.3)(&engine)).collect();
        assert_eq!(values, (1..=25).collect());
        assert_eq!(engine.out_of_order, 13);
        assert_eq!(engine.reassembled, 21);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let engine = EngineSnapshot::from(&RxStats::default());
        assert_eq!(engine.hold_count, 0);
        assert!(engine.hold_histogram.iter().all(|&(_, n)| n == 0));

        let mut stats = RxStats::default();
        for millis in [1, 1, 7, 300, 5_000] {
            stats.reorder.hold.observe(Duration::from_millis(millis));
        }
        let engine = EngineSnapshot::from(&stats);
        let at = |bound: f64| {
            engine
                .hold_histogram
                .iter()
                .find(|&&(b, _)| (b - bound).abs() < 1e-12)
                .map(|&(_, n)| n)
        };
        assert_eq!(at(0.001), Some(2));
        assert_eq!(at(0.01), Some(3));
        assert_eq!(at(0.5), Some(4));
        assert_eq!(at(1.0), Some(4));
        assert_eq!(engine.hold_count, 5);
        assert!((engine.hold_sum_secs - 5.309).abs() < 1e-9);
    }
}
