//! Plain counter structs, one per stage, copied out by value.
//!
//! Names follow the sequence recovery counters of IEEE 802.1CB-2017 clause 10.8
//! (frerCpsSeqRcvyPassedPackets, ...DiscardedPackets, ...OutOfOrderPackets, ...RoguePackets,
//! ...LostPackets) where alagg's concept is the same; the rest are alagg's own. Counters only
//! grow, wrap at 2^64, and survive a peer epoch change.

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
    /// Incomplete packets evicted to make room for a newer one.
    pub evicted: u64,
    /// Fragments refused: packet too long, or disagreeing with earlier fragments of the packet.
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
    /// Probe frames.
    pub probes: u64,
    /// Times the peer's epoch changed (the peer restarted).
    pub epoch_changes: u64,
    /// Frames of the peer's previous epoch, dropped (in flight across a restart).
    pub stale_epoch: u64,
    /// Duplicate filter.
    pub dedup: DedupStats,
    /// Reordering.
    pub reorder: ReorderStats,
    /// Reassembly.
    pub reassembly: ReassemblyStats,
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
}
