//! A snapshot of every counter of a running alagg, rendered as the `alagg status` text
//! ([`super::text`]), as Prometheus text or OpenMetrics ([`super::prometheus`]) and as
//! the exit summary.
//!
//! A [`Snapshot`] is plain data, copied out of the live counters ([`crate::counters`], where
//! each counter is named once), the receive engine's [`RxStats`] and the XDP program's
//! counters. It travels as one JSON line over the control socket ([`super::control`]), so every
//! struct deserializes with missing fields defaulted: a newer `alagg status` can read an older
//! instance and the reverse.
//!
//! Rendering never fails and never panics; every counter is a `u64` that only grows (Prometheus
//! counters, `_total`), except the link state and uptime (gauges) and the reorder hold-time
//! histogram, filled from the engine's [`alagg_proto::stats::HoldStats`].

#![deny(unsafe_code)]

use std::{sync::PoisonError, time::Duration};

use alagg_common::{Action, Counter};
use alagg_proto::{health::HealthView, stats::RxStats};
use serde::{Deserialize, Serialize};

use crate::counters::Counters;
pub use crate::counters::{
    CaptureSnapshot, DeliverySnapshot, EngineCounts, LinkRxSnapshot, LinkTxSnapshot,
};

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

/// Counters of one link. In JSON its counters and health stand beside the name and status.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct LinkSnapshot {
    /// The link's interface name.
    pub interface: String,
    /// `"up"`, `"down"` or `"gone"`: the interface, as the host sees it.
    pub status: String,
    /// The link's health as the peer's feedback shows it.
    #[serde(flatten)]
    pub health: LinkHealthSnapshot,
    /// What was sent on it.
    #[serde(flatten)]
    pub tx: LinkTxSnapshot,
    /// What arrived on it.
    #[serde(flatten)]
    pub rx: LinkRxSnapshot,
}

/// A link's health as this host learns it from the peer's feedback (`alagg_proto::health`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct LinkHealthSnapshot {
    /// `"unknown"` (no feedback yet), `"up"`, `"degraded"` (losing frames) or `"down"`.
    pub health: String,
    /// Smoothed round-trip time, milliseconds, if measured.
    pub rtt_ms: Option<f64>,
    /// Lowest round-trip time seen, milliseconds, if measured.
    pub min_rtt_ms: Option<f64>,
    /// Share of the link's frames lost, percent.
    pub loss_percent: f64,
    /// Rate at which the peer received this host's frames lately, bits per second.
    pub delivery_bps: u64,
    /// Times the link went down.
    pub downs: u64,
}

impl From<&HealthView> for LinkHealthSnapshot {
    fn from(view: &HealthView) -> Self {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        LinkHealthSnapshot {
            health: view.condition.name().to_owned(),
            rtt_ms: ms(view.srtt),
            min_rtt_ms: ms(view.min_rtt),
            loss_percent: f64::from(view.loss) * 100.0,
            delivery_bps: view.rate_bps,
            downs: view.downs,
        }
    }
}

/// The receive engine's counters, and the reorder hold-time histogram. In JSON the counters
/// stand beside the histogram.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct EngineSnapshot {
    /// The counters.
    #[serde(flatten)]
    pub counts: EngineCounts,
    /// Reorder hold times: (upper bound in seconds, cumulative count), finite bounds ascending;
    /// the `+Inf` bucket is [`EngineSnapshot::hold_count`]. Empty when not measured.
    pub hold_histogram: Vec<(f64, u64)>,
    /// Sum of all hold times, seconds.
    pub hold_sum_secs: f64,
    /// Number of holds measured.
    pub hold_count: u64,
    /// How long a packet waits behind a gap now, seconds (it follows the links' delay
    /// spread, up to `protocol.hold_ms`).
    pub hold_now_secs: f64,
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
            counts: EngineCounts::from(stats),
            hold_histogram: stats
                .reorder
                .hold
                .cumulative()
                .map(|(bound_ns, count)| (Duration::from_nanos(bound_ns).as_secs_f64(), count))
                .collect(),
            hold_sum_secs: Duration::from_nanos(stats.reorder.hold.sum_nanos).as_secs_f64(),
            hold_count: stats.reorder.hold.count,
            hold_now_secs: Duration::from_micros(stats.hold_now_us).as_secs_f64(),
        }
    }
}

impl Snapshot {
    /// Copies the live counters: of an instance up for `uptime`, with `interfaces` as its
    /// links (and `health` their health, in the same order), `tun` as its TUN device and
    /// `config` as its configuration file.
    pub(crate) fn take(
        counters: &Counters,
        (interfaces, health): (&[String], &[HealthView]),
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
                .enumerate()
                .map(|(i, interface)| {
                    let (tx, rx) = counters.link(i);
                    LinkSnapshot {
                        interface: interface.clone(),
                        status: counters.link_status(i).name().to_owned(),
                        health: health
                            .get(i)
                            .map(LinkHealthSnapshot::from)
                            .unwrap_or_default(),
                        tx,
                        rx,
                    }
                })
                .collect(),
            capture: counters.capture(),
            delivery: counters.delivery(),
            engine: EngineSnapshot::from(&stats),
            xdp,
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use alagg_proto::{
        fec::FecRxStats,
        stats::{DedupStats, HoldStats, ReassemblyStats, ReorderStats},
    };

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
                    health: LinkHealthSnapshot {
                        health: "degraded".into(),
                        rtt_ms: Some(12.5),
                        min_rtt_ms: Some(10.25),
                        loss_percent: 11.5,
                        delivery_bps: 118_300_000,
                        downs: 2,
                    },
                    tx: LinkTxSnapshot {
                        tx_frames: 1000,
                        tx_bytes: 1_268_000,
                        tx_dropped: 3,
                        tx_refused: 3,
                        tx_send_errors: 1,
                        ..LinkTxSnapshot::default()
                    },
                    rx: LinkRxSnapshot {
                        rx_frames: 900,
                        rx_bytes: 512,
                        rx_truncated: 2,
                        first: 15,
                        ..LinkRxSnapshot::default()
                    },
                },
                LinkSnapshot {
                    interface: "we\"ird\\name".into(),
                    status: "gone".into(),
                    rx: LinkRxSnapshot {
                        first: 5,
                        ..LinkRxSnapshot::default()
                    },
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
                tcp_segmented: 5,
                fec_blocks: 6,
                fec_partial: 1,
                fec_parity_sent: 12,
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

        let partial: Snapshot = serde_json::from_str(
            r#"{"pid": 7, "links": [{"interface": "eth1", "rx_frames": 3}], "engine": {"lost": 2}}"#,
        )
        .unwrap();
        assert_eq!(partial.pid, 7);
        assert_eq!(partial.links[0].interface, "eth1");
        assert_eq!(partial.links[0].rx.rx_frames, 3);
        assert_eq!(partial.engine.counts.lost, 2);
        assert_eq!(partial.engine.counts.passed, 0);

        // The counters stand flat beside the link's name and the engine's histogram, as they
        // did before they were generated from one table.
        assert!(
            json.contains(r#""interface":"eth1","status":"up","health":"degraded","rtt_ms":12.5"#),
            "{json}"
        );
        assert!(json.contains(r#""downs":2,"tx_frames":1000"#), "{json}");
        assert!(json.contains(r#""engine":{"frames":30"#), "{json}");
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
            unknown_epoch: 26,
            implausible_seq: 27,
            seq_jumps: 28,
            pending_lost: 29,
            feedback: 30,
            unauthenticated: 31,
            auth_failed: 32,
            auth_unexpected: 33,
            inadmissible: 34,
            gaps_passed: 35,
            fec: FecRxStats {
                parity: 36,
                recovered: 37,
                unrecoverable: 38,
                rejected: 39,
            },
            hold_now_us: 7_500,
        };
        assert_eq!(EngineSnapshot::from(&stats).hold_now_secs, 0.0075);
        let engine = EngineSnapshot::from(&stats).counts;
        // Every field is distinct, and every row shows one: nothing is dropped or swapped twice.
        let values: BTreeSet<u64> = EngineCounts::ROWS
            .iter()
            .map(|row| (row.value)(&engine))
            .collect();
        assert_eq!(values, (1..=39).collect());
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
