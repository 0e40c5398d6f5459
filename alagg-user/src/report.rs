//! A snapshot of every counter of a running alagg, and its two renderings: the `alagg status`
//! text (in the manner of `wg show`) and the Prometheus text exposition format 0.0.4.
//!
//! A [`Snapshot`] is plain data, copied out of the live atomics ([`crate::datapath::Counters`]),
//! the receive engine's [`RxStats`] and the XDP program's counters. It travels as one JSON line
//! over the control socket ([`crate::control`]), so every struct deserializes with missing fields
//! defaulted: a newer `alagg status` can read an older instance and the reverse.
//!
//! The engine's counters use the names of IEEE 802.1CB-2017 clause 10.8 (sequence recovery:
//! passed, discarded, rogue, out of order, lost) where alagg's concept is the same.
//!
//! Rendering never fails and never panics; every counter is a `u64` that only grows (Prometheus
//! counters, `_total`), except the link state and uptime (gauges) and the reorder hold-time
//! histogram, filled from the engine's [`alagg_proto::stats::HoldStats`].

#![deny(unsafe_code)]

use std::{fmt::Write as _, sync::atomic::Ordering::Relaxed, time::Duration};

use alagg_common::{Action, Counter};
use alagg_proto::stats::RxStats;
use serde::{Deserialize, Serialize};

use crate::datapath::{Counters, LinkCounters, LinkStatus};

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

/// The name a [`LinkStatus`] has in snapshots: `"up"`, `"down"` or `"gone"`.
pub const fn link_status_name(status: LinkStatus) -> &'static str {
    match status {
        LinkStatus::Up => "up",
        LinkStatus::Down => "down",
        LinkStatus::Gone => "gone",
    }
}

impl LinkSnapshot {
    /// Copies one link's live counters.
    pub fn new(interface: &str, status: LinkStatus, counters: &LinkCounters) -> Self {
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
const ENGINE_ROWS: &[EngineRow] = &[
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

const LINK_ROWS: &[LinkRow] = &[
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

impl Snapshot {
    /// The `alagg status` text: a header, a block per link, then the engine, capture, delivery
    /// and XDP sections. Plain text, labels aligned within each block.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let header = [
            ("pid", self.pid.to_string()),
            ("uptime", human_duration(self.uptime_secs)),
            ("config", self.config.clone()),
        ];
        block(&mut out, &format!("interface: {}", self.tun), &header);

        let total_first: u64 = self
            .links
            .iter()
            .map(|l| l.first)
            .fold(0, u64::wrapping_add);
        for link in &self.links {
            let rows = [
                ("status", link.status.clone()),
                (
                    "sent",
                    format!(
                        "{} in {} frames, {} dropped",
                        human_bytes(link.tx_bytes),
                        link.tx_frames,
                        link.tx_dropped
                    ),
                ),
                (
                    "received",
                    format!(
                        "{} in {} frames, {} foreign",
                        human_bytes(link.rx_bytes),
                        link.rx_frames,
                        link.rx_foreign
                    ),
                ),
                (
                    "first copies",
                    format!(
                        "{} ({} packets)",
                        share(link.first, total_first),
                        link.first
                    ),
                ),
            ];
            block(&mut out, &format!("link: {}", link.interface), &rows);
        }

        let mut engine: Vec<(String, String)> = ENGINE_ROWS
            .iter()
            .map(|&(label, _, _, value)| (label.to_owned(), value(&self.engine).to_string()))
            .collect();
        let e = &self.engine;
        if e.hold_count > 0 || !e.hold_histogram.is_empty() {
            let mean = if e.hold_count == 0 {
                0.0
            } else {
                e.hold_sum_secs / e.hold_count as f64
            };
            engine.push((
                "reorder holds".to_owned(),
                format!("{} (mean {})", e.hold_count, human_secs(mean)),
            ));
            // Per bucket (not cumulative), empty buckets left out.
            let mut below = 0u64;
            for &(bound, cumulative) in &e.hold_histogram {
                let count = cumulative.saturating_sub(below);
                if count > 0 {
                    engine.push((format!("  <= {}", human_secs(bound)), count.to_string()));
                }
                below = cumulative;
            }
            let above = e.hold_count.saturating_sub(below);
            if let Some(&(bound, _)) = e.hold_histogram.last().filter(|_| above > 0) {
                engine.push((format!("  > {}", human_secs(bound)), above.to_string()));
            }
        }
        block(&mut out, "engine (IEEE 802.1CB sequence recovery)", &engine);

        let c = &self.capture;
        let capture = [
            (
                "captured",
                format!(
                    "{} in {} packets",
                    human_bytes(c.captured_bytes),
                    c.captured
                ),
            ),
            ("dropped", c.dropped.to_string()),
            ("receive batches", c.batches.to_string()),
            ("queue overruns", c.overruns.to_string()),
            ("queue errors", c.errors.to_string()),
        ];
        block(&mut out, "capture (NFQUEUE)", &capture);

        let d = &self.delivery;
        let delivery = [
            (
                "delivered",
                format!(
                    "{} in {} packets ({} coalesced into GSO writes)",
                    human_bytes(d.delivered_bytes),
                    d.delivered,
                    d.coalesced
                ),
            ),
            ("rejected source", d.rejected_source.to_string()),
            ("rejected malformed", d.rejected_malformed.to_string()),
            ("tun errors", d.tun_errors.to_string()),
        ];
        block(&mut out, "delivery (TUN)", &delivery);

        if !self.xdp.is_empty() {
            let xdp: Vec<(&str, String)> = self
                .xdp
                .iter()
                .map(|x| {
                    (
                        x.action.as_str(),
                        format!("{} in {} frames", human_bytes(x.bytes), x.packets),
                    )
                })
                .collect();
            block(&mut out, "xdp", &xdp);
        }
        // `block` separates blocks with a blank line; none after the last.
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }

    /// The Prometheus text exposition format 0.0.4: a `# HELP` and `# TYPE` line for every
    /// metric family, then its samples. Per-link series carry `link="<interface>"`, XDP series
    /// `action="<verdict>"`.
    pub fn render_prometheus(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "alagg_up",
            "gauge",
            "1 when alagg is running.",
            [(None, "1".to_owned())],
        );
        out.family(
            "alagg_info",
            "gauge",
            "The running instance: TUN device and configuration file.",
            [(
                Some(format!(
                    "tun=\"{}\",config=\"{}\",version=\"{}\"",
                    escape_label(&self.tun),
                    escape_label(&self.config),
                    self.version
                )),
                "1".to_owned(),
            )],
        );
        out.family(
            "alagg_uptime_seconds",
            "gauge",
            "Seconds since alagg came up.",
            [(None, float(self.uptime_secs))],
        );

        let link_label =
            |l: &LinkSnapshot| Some(format!("link=\"{}\"", escape_label(&l.interface)));
        out.family(
            "alagg_link_up",
            "gauge",
            "1 when the link's interface is up with carrier and carries traffic, 0 when down or gone.",
            self.links
                .iter()
                .map(|l| (link_label(l), u64::from(l.status == "up").to_string())),
        );
        for &(name, help, value) in LINK_ROWS {
            out.family(
                &format!("alagg_link_{name}_total"),
                "counter",
                help,
                self.links
                    .iter()
                    .map(|l| (link_label(l), value(l).to_string())),
            );
        }

        let counters: [(&str, &str, u64); 12] = [
            (
                "captured_packets",
                "Packets taken from NFQUEUE.",
                self.capture.captured,
            ),
            (
                "captured_bytes",
                "Bytes taken from NFQUEUE.",
                self.capture.captured_bytes,
            ),
            (
                "capture_dropped",
                "Captured packets that could not be sent (no usable link, too large).",
                self.capture.dropped,
            ),
            (
                "capture_batches",
                "Receives from NFQUEUE that handed out packets.",
                self.capture.batches,
            ),
            (
                "capture_overruns",
                "NFQUEUE receive-buffer overruns (ENOBUFS): packets lost before alagg read them.",
                self.capture.overruns,
            ),
            (
                "capture_errors",
                "NFQUEUE messages that did not parse, and verdict errors the kernel reported.",
                self.capture.errors,
            ),
            (
                "delivered_packets",
                "Packets written to the TUN device.",
                self.delivery.delivered,
            ),
            (
                "delivered_bytes",
                "Bytes written to the TUN device.",
                self.delivery.delivered_bytes,
            ),
            (
                "rejected_source",
                "Packets dropped because their source is outside the destinations.",
                self.delivery.rejected_source,
            ),
            (
                "rejected_malformed",
                "Packets dropped because their IP header is not sane.",
                self.delivery.rejected_malformed,
            ),
            (
                "tun_errors",
                "Packets whose TUN write failed.",
                self.delivery.tun_errors,
            ),
            (
                "coalesced_packets",
                "Delivered packets coalesced with others into one GSO write to the TUN device.",
                self.delivery.coalesced,
            ),
        ];
        for (name, help, value) in counters {
            out.family(
                &format!("alagg_{name}_total"),
                "counter",
                help,
                [(None, value.to_string())],
            );
        }

        for &(_, name, help, value) in ENGINE_ROWS {
            out.family(
                &format!("alagg_engine_{name}_total"),
                "counter",
                help,
                [(None, value(&self.engine).to_string())],
            );
        }

        let e = &self.engine;
        if e.hold_count > 0 || !e.hold_histogram.is_empty() {
            let buckets = e
                .hold_histogram
                .iter()
                .map(|&(bound, cumulative)| (float(bound), cumulative))
                .chain([("+Inf".to_owned(), e.hold_count)])
                .map(|(le, n)| (Some(format!("le=\"{le}\"")), n.to_string()));
            out.head(
                "alagg_reorder_hold_seconds",
                "histogram",
                "Time packets were held in the reorder buffer behind a gap.",
            );
            out.samples("alagg_reorder_hold_seconds_bucket", buckets);
            out.samples(
                "alagg_reorder_hold_seconds_sum",
                [(None, float(e.hold_sum_secs))],
            );
            out.samples(
                "alagg_reorder_hold_seconds_count",
                [(None, e.hold_count.to_string())],
            );
        }

        let action_label = |x: &XdpCounter| Some(format!("action=\"{}\"", escape_label(&x.action)));
        if !self.xdp.is_empty() {
            out.family(
                "alagg_xdp_packets_total",
                "counter",
                "Frames by the XDP program's verdict, over all links.",
                self.xdp
                    .iter()
                    .map(|x| (action_label(x), x.packets.to_string())),
            );
            out.family(
                "alagg_xdp_bytes_total",
                "counter",
                "Bytes by the XDP program's verdict, over all links.",
                self.xdp
                    .iter()
                    .map(|x| (action_label(x), x.bytes.to_string())),
            );
        }
        out.text
    }
}

/// Prometheus text being written: families in order, each sample once.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// Samples `name{labels} value`; `labels` already escaped, without braces.
    fn samples(&mut self, name: &str, samples: impl IntoIterator<Item = (Option<String>, String)>) {
        for (labels, value) in samples {
            match labels {
                Some(labels) => {
                    let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
                }
                None => {
                    let _ = writeln!(self.text, "{name} {value}");
                }
            }
        }
    }

    /// A whole family of one sample name.
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Option<String>, String)>,
    ) {
        self.head(name, kind, help);
        self.samples(name, samples);
    }
}

/// A label value escaped per the exposition format: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text escaped per the exposition format: `\` → `\\`, newline → `\n`.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as the exposition format writes it (`+Inf`, `-Inf`, `NaN`, or decimal).
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

/// Appends a block: a title line, then `  label: value` rows with values aligned, then a blank
/// line.
fn block(out: &mut String, title: &str, rows: &[(impl AsRef<str>, String)]) {
    // Widths in characters, as `format!` pads (`µ` is one).
    let width = rows
        .iter()
        .map(|(label, _)| label.as_ref().chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let _ = writeln!(out, "{title}");
    for (label, value) in rows {
        let label = format!("{}:", label.as_ref());
        let _ = writeln!(out, "  {label:<width$} {value}");
    }
    out.push('\n');
}

/// Bytes with binary units, like `wg show`: `512 B`, `1.21 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS.get(unit).copied().unwrap_or("EiB"))
}

/// A duration like `wg show`: `1 day, 2 hours, 3 minutes, 4 seconds`.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 1.0 {
        return "0 seconds".to_owned();
    }
    let total = secs as u64;
    let parts = [
        (total / 86_400, "day"),
        (total / 3_600 % 24, "hour"),
        (total / 60 % 60, "minute"),
        (total % 60, "second"),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|&(n, unit)| format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
        .collect();
    words.join(", ")
}

/// A short duration: `250 µs`, `2.5 ms`, `1 s`.
fn human_secs(secs: f64) -> String {
    if secs < 0.001 {
        format!("{} µs", trim(secs * 1e6))
    } else if secs < 1.0 {
        format!("{} ms", trim(secs * 1e3))
    } else {
        format!("{} s", trim(secs))
    }
}

/// At most two decimals, trailing zeros dropped.
fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `part` as a percentage of `total` with one decimal, or `-` when `total` is zero.
fn share(part: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::collections::BTreeSet;

    use alagg_proto::stats::{DedupStats, HoldStats, ReassemblyStats, ReorderStats};

    use super::*;

    fn sample() -> Snapshot {
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

    /// Checks one exposition sample line: `name{label="value",...} value`; returns the name.
    fn parse_sample(line: &str) -> String {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit())),
            "bad metric name in {line:?}"
        );
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            // label="value" pairs separated by commas, values with \\ \" \n escapes.
            let mut chars = labels.char_indices().peekable();
            loop {
                let start = chars.peek().unwrap().0;
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.unwrap_or_else(|| panic!("label without = in {line:?}"));
                let label = &labels[start..eq];
                assert!(
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {label:?} in {line:?}"
                );
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('\\') => {
                            let escaped = chars.next().map(|(_, c)| c);
                            assert!(
                                matches!(escaped, Some('\\' | '"' | 'n')),
                                "bad escape in {line:?}"
                            );
                        }
                        Some('"') => break,
                        Some('\n') | None => panic!("unterminated label value in {line:?}"),
                        Some(_) => {}
                    }
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &labels[i + 1..];
                        break;
                    }
                    other => panic!("unexpected {other:?} after a label in {line:?}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        assert!(
            matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
            "bad value {value:?} in {line:?}"
        );
        name.to_owned()
    }

    /// Parses a whole exposition; returns every sample's metric name.
    fn parse_exposition(text: &str) -> Vec<String> {
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        let mut helped = BTreeSet::new();
        let mut typed = BTreeSet::new();
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap();
                assert!(helped.insert(name.to_owned()), "two HELP for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    matches!(kind, "counter" | "gauge" | "histogram"),
                    "type {kind}"
                );
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(typed.insert(name.to_owned()), "two TYPE for {name}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let name = parse_sample(line);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| typed.contains(*base))
                    })
                    .unwrap_or(&name);
                assert!(typed.contains(family), "no TYPE for the sample {line:?}");
                names.push(name);
            }
        }
        names
    }

    #[test]
    fn prometheus_parses_and_covers_every_counter() {
        let cases = [
            ("sample", sample()),
            ("empty", Snapshot::default()),
            (
                "no histogram",
                Snapshot {
                    engine: EngineSnapshot::default(),
                    ..sample()
                },
            ),
        ];
        for (case, snapshot) in cases {
            let text = snapshot.render_prometheus();
            let names = parse_exposition(&text);
            for required in [
                "alagg_up",
                "alagg_uptime_seconds",
                "alagg_engine_passed_total",
            ] {
                assert!(
                    names.iter().any(|n| n == required),
                    "{case}: {required} missing"
                );
            }
            for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
                if line.ends_with(" counter") {
                    assert!(
                        line.split(' ').nth(2).unwrap().ends_with("_total"),
                        "{case}: {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn prometheus_values_and_labels() {
        let text = sample().render_prometheus();
        let expected = [
            "alagg_up 1",
            "alagg_uptime_seconds 93784.5",
            "alagg_link_up{link=\"eth1\"} 1",
            "alagg_link_up{link=\"we\\\"ird\\\\name\"} 0",
            "alagg_link_tx_bytes_total{link=\"eth1\"} 1268000",
            "alagg_link_first_copies_total{link=\"eth1\"} 15",
            "alagg_engine_passed_total 20",
            "alagg_engine_discarded_total 9",
            "alagg_engine_out_of_order_total 3",
            "alagg_engine_lost_total 2",
            "alagg_engine_reassembled_total 2",
            "alagg_rejected_source_total 7",
            "alagg_xdp_packets_total{action=\"redirected\"} 900",
            "alagg_reorder_hold_seconds_bucket{le=\"0.0001\"} 1",
            "alagg_reorder_hold_seconds_bucket{le=\"0.0005\"} 2",
            "alagg_reorder_hold_seconds_bucket{le=\"1\"} 3",
            "alagg_reorder_hold_seconds_bucket{le=\"+Inf\"} 4",
            "alagg_reorder_hold_seconds_count 4",
            "alagg_reorder_hold_seconds_sum 2.00345",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn escapes_follow_the_exposition_format() {
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("\\\"", "\\\\\\\""),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape_label(raw), escaped, "{raw:?}");
        }
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }

    #[test]
    fn text_shows_every_link_and_its_share_of_first_copies() {
        let text = sample().render_text();
        for expected in [
            "interface: alagg0",
            "pid:",
            "1 day, 2 hours, 3 minutes, 4 seconds",
            "/etc/alagg/site-a.toml",
            "link: eth1",
            "link: we\"ird\\name",
            "75.0% (15 packets)",
            "25.0% (5 packets)",
            "1.21 MiB in 1000 frames, 0 dropped",
            "512 B in 900 frames, 0 foreign",
            "gone",
            "discarded duplicates:",
            "capture (NFQUEUE)",
            "delivery (TUN)",
            "rejected source:",
            "reorder holds:",
            "  <= 100 µs:",
            "  > 1 s:",
            "redirected:",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        // Values line up within a block.
        let link: Vec<&str> = text
            .split("\n\n")
            .find(|b| b.starts_with("link: eth1"))
            .unwrap()
            .lines()
            .skip(1)
            .collect();
        let columns: BTreeSet<usize> = link
            .iter()
            .map(|l| {
                l.find(':').unwrap() + l[l.find(':').unwrap() + 1..].find(|c| c != ' ').unwrap()
            })
            .collect();
        assert_eq!(columns.len(), 1, "unaligned:\n{}", link.join("\n"));
        assert!(!text.ends_with("\n\n"));
    }

    #[test]
    fn text_without_first_copies_shows_no_share() {
        let snapshot = Snapshot {
            links: vec![LinkSnapshot {
                interface: "eth9".into(),
                status: "down".into(),
                ..LinkSnapshot::default()
            }],
            ..Snapshot::default()
        };
        let text = snapshot.render_text();
        assert!(text.contains("- (0 packets)"), "{text}");
        assert!(!text.contains("reorder holds"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn human_units() {
        let bytes = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (1_268_000, "1.21 MiB"),
            (u64::MAX, "16.00 EiB"),
        ];
        for (value, text) in bytes {
            assert_eq!(human_bytes(value), text);
        }
        let durations = [
            (0.0, "0 seconds"),
            (f64::NAN, "0 seconds"),
            (1.0, "1 second"),
            (61.0, "1 minute, 1 second"),
            (7_200.0, "2 hours"),
        ];
        for (value, text) in durations {
            assert_eq!(human_duration(value), text);
        }
        assert_eq!(human_secs(0.00025), "250 µs");
        assert_eq!(human_secs(0.0025), "2.5 ms");
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
