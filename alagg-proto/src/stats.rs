//! Plain counter structs, one per stage, copied out by value.
//!
//! Names follow the sequence recovery counters of IEEE 802.1CB-2017 clause 10.8
//! (frerCpsSeqRcvyPassedPackets, ...DiscardedPackets, ...OutOfOrderPackets, ...RoguePackets,
//! ...LostPackets) where alagg's concept is the same; the rest are alagg's own. Counters only
//! grow, wrap at 2^64, and survive a peer epoch change.
//!
//! [`HoldStats`] is a fixed-bucket histogram of reorder hold times: per-bucket counts, a sum and
//! a count, so an exporter can turn it into a Prometheus histogram with
//! [`HoldStats::cumulative`]. Observing is O(1) and allocation-free.

use core::time::Duration;

/// Upper bounds of the reorder hold-time buckets in nanoseconds: 100 µs to 1 s.
pub const HOLD_BOUNDS_NS: [u64; 13] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Number of hold-time buckets: one per bound in [`HOLD_BOUNDS_NS`], plus one above the last.
pub const HOLD_BUCKETS: usize = HOLD_BOUNDS_NS.len() + 1;

/// Hold times of packets that waited in the reorder buffer.
///
/// A histogram with fixed buckets: `buckets[i]` counts the holds `h` with
/// `HOLD_BOUNDS_NS[i - 1] < h <= HOLD_BOUNDS_NS[i]` (`0 <= h` for `i == 0`), and the last bucket
/// (`buckets[HOLD_BOUNDS_NS.len()]`) the holds above 1 s. Buckets are per bound, not cumulative;
/// see [`HoldStats::cumulative`] for Prometheus' cumulative `le` form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// Holds per bucket (not cumulative); the last bucket holds those above the last bound.
    pub buckets: [u64; HOLD_BUCKETS],
    /// Sum of all holds, in nanoseconds (wraps at 2^64, like every counter).
    pub sum_nanos: u64,
    /// Holds observed: the sum of `buckets`.
    pub count: u64,
}

impl HoldStats {
    /// Records one hold of `held`: into the bucket of the first bound at least `held`, else the
    /// bucket above the last bound. Counters wrap; never panics.
    #[inline]
    pub fn observe(&mut self, held: Duration) {
        let nanos = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        // The first bound `>= nanos`, or `HOLD_BOUNDS_NS.len()` (the last bucket) if none.
        let idx = HOLD_BOUNDS_NS.partition_point(|&bound| bound < nanos);
        if let Some(bucket) = self.buckets.get_mut(idx) {
            *bucket = bucket.wrapping_add(1);
        }
        self.sum_nanos = self.sum_nanos.wrapping_add(nanos);
        self.count = self.count.wrapping_add(1);
    }

    /// Prometheus' cumulative buckets: `(bound in nanoseconds, holds at most that long)` for
    /// each bound of [`HOLD_BOUNDS_NS`], in increasing order. The `+Inf` bucket is
    /// [`HoldStats::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        HOLD_BOUNDS_NS
            .iter()
            .zip(self.buckets.iter())
            .scan(0u64, |total, (&bound, &n)| {
                *total = total.wrapping_add(n);
                Some((bound, *total))
            })
    }
}

/// Duplicate filter counters ([`crate::SeqWindow`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Packets accepted: the first copy of each sequence number (802.1CB PassedPackets).
    pub passed: u64,
    /// Copies of accepted packets dropped (802.1CB DiscardedPackets).
    pub discarded: u64,
    /// Packets older than the window, dropped (802.1CB RoguePackets).
    pub rogue: u64,
}

/// Reordering counters ([`crate::ReorderBuffer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Delivered at once, in order, without waiting.
    pub in_order: u64,
    /// Held behind a gap, then delivered in order when the gap filled or was given up
    /// (with `late`, 802.1CB OutOfOrderPackets).
    pub reordered: u64,
    /// Arrived after their gap was given up.
    pub late: u64,
    /// Late packets dropped instead of delivered (when late delivery is off).
    pub late_dropped: u64,
    /// Sequence numbers given up as lost (802.1CB LostPackets).
    pub lost: u64,
    /// Gaps given up because the hold time expired.
    pub hold_expired: u64,
    /// Gaps given up because the buffer was full.
    pub overflows: u64,
    /// How long the `reordered` packets were held, from arrival to delivery; `hold.count`
    /// equals `reordered`.
    pub hold: HoldStats,
}

/// Reassembly counters ([`crate::Reassembler`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Fragments stored.
    pub fragments: u64,
    /// Copies of fragments already stored, dropped.
    pub duplicate_fragments: u64,
    /// Packets completed.
    pub completed: u64,
    /// Incomplete packets dropped after the reassembly timeout.
    pub timeouts: u64,
    /// Incomplete packets evicted to make room for a newer one (lone fragments first).
    pub evicted: u64,
    /// Fragments refused: packet too long, or fragment fields outside the packet. (A fragment
    /// disagreeing with the layout of a packet under way takes a context of its own.)
    pub rejected: u64,
}

/// Receiver counters ([`crate::Receiver`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Frames handed to `on_frame`.
    pub frames: u64,
    /// Frames failing the checked parse (truncated, bad lengths, bad fragment fields).
    pub malformed: u64,
    /// Frames of another wire-format version.
    pub bad_version: u64,
    /// v1 frames of an unknown type, ignored.
    pub unknown_type: u64,
    /// Data frames longer than the receiver's configured maximum packet.
    pub oversized: u64,
    /// Whole packets the host's admission refused, before their number was taken.
    pub inadmissible: u64,
    /// Gaps given up before their hold time because every live lane had gone past them.
    pub gaps_passed: u64,
    /// Probe frames.
    pub probes: u64,
    /// Feedback frames.
    pub feedback: u64,
    /// With a key: frames without an authentication tag, dropped.
    pub unauthenticated: u64,
    /// With a key: frames whose tag does not verify (another key, or changed bytes), dropped.
    pub auth_failed: u64,
    /// Without a key: authenticated frames (the peer has `[auth]`, this host not), dropped.
    pub auth_unexpected: u64,
    /// Bundle frames (each carrying several packets, counted in the stages below).
    pub bundles: u64,
    /// Times the peer's epoch changed (the peer restarted).
    pub epoch_changes: u64,
    /// Frames of an epoch the peer recently left, dropped (in flight across a restart).
    pub stale_epoch: u64,
    /// Frames of an epoch neither current nor recently left, not (yet) believed: the first
    /// frames of a restart, or frames that are not the peer's.
    pub unknown_epoch: u64,
    /// Frames of the current epoch too far ahead of the duplicate window to be believed on
    /// their own (a forged or corrupted number, or the first frames after a long outage).
    pub implausible_seq: u64,
    /// Times the stream was believed to resume far ahead (after an outage of every link).
    pub seq_jumps: u64,
    /// Frames of a restart or a resumption that arrived before it was believed and could not
    /// be kept until then: lost.
    pub pending_lost: u64,
    /// Duplicate filter.
    pub dedup: DedupStats,
    /// Reordering.
    pub reorder: ReorderStats,
    /// Reassembly.
    pub reassembly: ReassemblyStats,
    /// Forward error correction.
    pub fec: crate::fec::FecRxStats,
    /// Not a counter: how long a packet waits behind a gap now, in microseconds (the hold
    /// follows the links' delay spread, [`crate::Receiver::adapt_hold`]).
    pub hold_now_us: u64,
}

/// Sender counters ([`crate::Sender`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Packets numbered.
    pub packets: u64,
    /// Packets that needed fragmenting.
    pub fragmented: u64,
    /// Fragments planned (per packet, not per link).
    pub fragments: u64,
    /// Bundle frames planned (per bundle, not per link).
    pub bundles: u64,
    /// Packets sent in bundles.
    pub bundled: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_observe_buckets() {
        let last = HOLD_BOUNDS_NS.len();
        let cases: &[(u64, usize)] = &[
            (0, 0),
            (1, 0),
            (100_000, 0),
            (100_001, 1),
            (250_000, 1),
            (250_001, 2),
            (2_000_000, 4),
            (2_500_000, 4),
            (3_000_000, 5),
            (999_999_999, last - 1),
            (1_000_000_000, last - 1),
            (1_000_000_001, last),
            (2_000_000_000, last),
            (u64::MAX, last),
        ];
        for &(nanos, bucket) in cases {
            let mut h = HoldStats::default();
            h.observe(Duration::from_nanos(nanos));
            let mut want = [0; HOLD_BUCKETS];
            want[bucket] = 1;
            assert_eq!(h.buckets, want, "{nanos} ns");
            assert_eq!((h.count, h.sum_nanos), (1, nanos), "{nanos} ns");
        }
        // Every bound lands in its own bucket.
        for (i, &bound) in HOLD_BOUNDS_NS.iter().enumerate() {
            let mut h = HoldStats::default();
            h.observe(Duration::from_nanos(bound));
            assert_eq!(h.buckets[i], 1, "bound {bound}");
        }
    }

    #[test]
    fn hold_observe_never_panics_and_wraps() {
        let mut h = HoldStats::default();
        h.observe(Duration::MAX);
        h.observe(Duration::MAX);
        assert_eq!(h.buckets[HOLD_BOUNDS_NS.len()], 2);
        assert_eq!(h.count, 2);
        assert_eq!(h.sum_nanos, u64::MAX.wrapping_mul(2));
    }

    #[test]
    fn hold_cumulative() {
        let mut h = HoldStats::default();
        for ms in [0, 2, 2, 3, 2_000] {
            h.observe(Duration::from_millis(ms));
        }
        let cumulative: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(cumulative.len(), HOLD_BOUNDS_NS.len());
        assert_eq!(cumulative[0], (100_000, 1));
        assert_eq!(cumulative[3], (1_000_000, 1));
        assert_eq!(cumulative[4], (2_500_000, 3));
        assert_eq!(cumulative[5], (5_000_000, 4));
        assert_eq!(cumulative[12], (1_000_000_000, 4));
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_nanos, 2_007_000_000);
    }
}
