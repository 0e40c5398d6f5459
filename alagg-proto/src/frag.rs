//! Fragmentation of packets longer than a link allows, and their reassembly.
//!
//! The sender cuts a packet along the canonical [`FragmentLayout`] (`count` pieces of
//! `ceil(len / count)` bytes); every fragment carries the packet's sequence number, its index,
//! the fragment count, its offset and the packet length. The receiver validates each fragment
//! against the same layout (in [`crate::wire::Repr::parse`]), so fragments can neither overlap
//! nor leave holes, unlike IPv4 fragments (RFC 791; see the overlap problems of RFC 5722).
//!
//! The [`Reassembler`] has a fixed number of contexts, each with one buffer that grows once to
//! the longest packet seen and is then reused: memory is bounded by
//! `slots * max_packet_len` whatever the peer sends. A packet whose fragments do not all arrive
//! within the timeout is dropped. Copies of a fragment (one per link in redundant mode) are
//! recognised by a per-context bitmap.
//!
//! Robustness against fragments that are not genuine (v1 has no authentication; see
//! `docs/PROTOCOL.md`): a context is keyed by sequence number *and* layout (packet length,
//! fragment count), so a fragment disagreeing with the packet under way takes a context of its
//! own and cannot make the genuine fragments unusable; when a packet completes, the other
//! contexts of its number are freed. When all contexts are busy, the oldest context holding a
//! single fragment is evicted, else the oldest: a flood of lone first fragments evicts itself
//! and spares the packets that have two or more fragments in. What remains: a forged fragment
//! with the genuine layout that arrives before the genuine copy of that fragment is kept (the
//! genuine copy is a duplicate), so that one packet is delivered corrupted, exactly as a forged
//! data frame would take that packet's number.

use core::time::Duration;

use crate::Timestamp;
use crate::stats::ReassemblyStats;
pub use crate::wire::FragmentLayout;
use crate::wire::{FragmentRepr, MAX_FRAGMENTS};

/// Iterator over the fragments of a [`FragmentLayout`]: the sender's side of fragmentation.
#[derive(Clone, Debug)]
pub struct Fragmenter {
    layout: FragmentLayout,
    index: u16,
}

impl Fragmenter {
    /// Iterates over the fragments of `layout`.
    pub fn new(layout: FragmentLayout) -> Self {
        Fragmenter { layout, index: 0 }
    }
}

impl Iterator for Fragmenter {
    type Item = FragmentRepr;

    fn next(&mut self) -> Option<FragmentRepr> {
        let (offset, _) = self.layout.fragment(self.index)?;
        let repr = FragmentRepr {
            packet_len: self.layout.packet_len(),
            offset,
            index: self.index,
            count: self.layout.count(),
        };
        self.index += 1;
        Some(repr)
    }
}

/// Sizing of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Packets reassembled at once; at least 1.
    pub slots: usize,
    /// How long an incomplete packet is kept after its first fragment.
    pub timeout: Duration,
    /// Longest packet accepted.
    pub max_packet_len: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            slots: 16,
            timeout: Duration::from_millis(10),
            max_packet_len: 65_575,
        }
    }
}

/// What [`Reassembler::insert`] did with a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum FragOutcome<'a> {
    /// Stored; the packet is not complete yet.
    Stored,
    /// A copy of a fragment already stored.
    Duplicate,
    /// The last missing fragment: here is the whole packet, valid until the next call.
    Complete(&'a [u8]),
    /// Refused: packet too long, or fragment fields outside the packet.
    Rejected,
}

const BITMAP_WORDS: usize = MAX_FRAGMENTS / 64;

#[derive(Debug)]
struct Context {
    active: bool,
    seq: u64,
    packet_len: u32,
    count: u16,
    received: [u64; BITMAP_WORDS],
    received_count: u16,
    started: Timestamp,
    buf: Vec<u8>,
}

/// Reassembles fragmented packets in a fixed set of contexts.
#[derive(Debug)]
pub struct Reassembler {
    contexts: Box<[Context]>,
    timeout: Duration,
    max_packet_len: usize,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler sized by `config` (at least one slot).
    pub fn new(config: &ReassemblyConfig) -> Self {
        let contexts = (0..config.slots.max(1))
            .map(|_| Context {
                active: false,
                seq: 0,
                packet_len: 0,
                count: 0,
                received: [0; BITMAP_WORDS],
                received_count: 0,
                started: Timestamp::ZERO,
                buf: Vec::new(),
            })
            .collect();
        Reassembler {
            contexts,
            timeout: config.timeout,
            max_packet_len: config.max_packet_len,
            stats: ReassemblyStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Packets being reassembled.
    pub fn in_progress(&self) -> usize {
        self.contexts.iter().filter(|c| c.active).count()
    }

    /// Adds fragment `frag` of packet `seq`, whose bytes are `payload`. The fragment must have
    /// passed [`crate::wire::Repr::parse`]; anything else is rejected, never a panic.
    pub fn insert(
        &mut self,
        seq: u64,
        frag: &FragmentRepr,
        payload: &[u8],
        now: Timestamp,
    ) -> FragOutcome<'_> {
        let packet_len = frag.packet_len as usize;
        if packet_len > self.max_packet_len || usize::from(frag.count) > MAX_FRAGMENTS {
            self.stats.rejected += 1;
            return FragOutcome::Rejected;
        }
        // A context is one packet *and* one layout: a fragment that disagrees with the layout
        // of a packet under way (forged, or corrupted on a link) starts a context of its own
        // instead of being refused, so it cannot make the genuine fragments unusable.
        let found = self.contexts.iter().position(|c| {
            c.active && c.seq == seq && c.packet_len == frag.packet_len && c.count == frag.count
        });
        let i = match found {
            Some(i) => i,
            None => {
                let i = match self.contexts.iter().position(|c| !c.active) {
                    Some(i) => i,
                    None => {
                        self.stats.evicted += 1;
                        self.victim()
                    }
                };
                let c = &mut self.contexts[i];
                c.active = true;
                c.seq = seq;
                c.packet_len = frag.packet_len;
                c.count = frag.count;
                c.received = [0; BITMAP_WORDS];
                c.received_count = 0;
                c.started = now;
                if c.buf.len() < packet_len {
                    // Grows once to the longest packet seen; never shrinks.
                    c.buf.resize(packet_len, 0);
                }
                i
            }
        };
        let c = &mut self.contexts[i];
        let index = usize::from(frag.index);
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if index >= usize::from(c.count) || word >= BITMAP_WORDS {
            self.stats.rejected += 1;
            return FragOutcome::Rejected;
        }
        if c.received[word] & bit != 0 {
            self.stats.duplicate_fragments += 1;
            return FragOutcome::Duplicate;
        }
        let start = frag.offset as usize;
        let Some(dst) = c.buf.get_mut(start..start + payload.len()) else {
            self.stats.rejected += 1;
            return FragOutcome::Rejected;
        };
        if start + payload.len() > packet_len {
            self.stats.rejected += 1;
            return FragOutcome::Rejected;
        }
        dst.copy_from_slice(payload);
        c.received[word] |= bit;
        c.received_count += 1;
        self.stats.fragments += 1;
        if c.received_count < c.count {
            return FragOutcome::Stored;
        }
        c.active = false;
        self.stats.completed += 1;
        // Contexts of the same number with another layout can no longer complete anything
        // the duplicate window would take: free them now rather than at their timeout.
        for other in self.contexts.iter_mut() {
            if other.active && other.seq == seq {
                other.active = false;
            }
        }
        FragOutcome::Complete(&self.contexts[i].buf[..packet_len])
    }

    /// Drops incomplete packets whose first fragment is older than the timeout.
    pub fn expire(&mut self, now: Timestamp) {
        for c in self.contexts.iter_mut() {
            if c.active && c.started.saturating_add(self.timeout) <= now {
                c.active = false;
                self.stats.timeouts += 1;
            }
        }
    }

    /// When [`Reassembler::expire`] must next run, or `None` if nothing is in progress.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.contexts
            .iter()
            .filter(|c| c.active)
            .map(|c| c.started.saturating_add(self.timeout))
            .min()
    }

    /// Drops every packet in progress, keeping the counters.
    pub fn reset(&mut self) {
        for c in self.contexts.iter_mut() {
            c.active = false;
        }
    }

    /// The context to evict when all are busy: the oldest holding a single fragment, else the
    /// oldest. A flood of first fragments (forged, or of packets whose other fragments never
    /// come) then evicts itself, and packets with two or more fragments in survive it.
    fn victim(&self) -> usize {
        let mut best = 0;
        let key = |c: &Context| (c.received_count > 1, c.started);
        for (i, c) in self.contexts.iter().enumerate() {
            if key(c) < key(&self.contexts[best]) {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn packet(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn fragments(pkt: &[u8], max_payload: u32) -> Vec<(FragmentRepr, Vec<u8>)> {
        let layout = FragmentLayout::for_payload(pkt.len() as u32, max_payload).unwrap();
        Fragmenter::new(layout)
            .map(|f| {
                let (off, len) = layout.fragment(f.index).unwrap();
                (f, pkt[off as usize..(off + len) as usize].to_vec())
            })
            .collect()
    }

    fn reassembler(slots: usize) -> Reassembler {
        Reassembler::new(&ReassemblyConfig {
            slots,
            ..Default::default()
        })
    }

    #[test]
    fn reassembles_64k_in_any_order_with_copies() {
        let pkt = packet(65_535);
        let mut frags = fragments(&pkt, 1400);
        assert_eq!(frags.len(), 47);
        frags.reverse();
        let mut r = reassembler(2);
        let last = frags.len() - 1;
        for (i, (f, p)) in frags.iter().enumerate() {
            let outcome = r.insert(9, f, p, Timestamp::ZERO);
            if i < last {
                assert_eq!(outcome, FragOutcome::Stored);
                // The copy from another link.
                assert_eq!(r.insert(9, f, p, Timestamp::ZERO), FragOutcome::Duplicate);
            } else {
                assert_eq!(outcome, FragOutcome::Complete(&pkt[..]));
            }
        }
        let s = r.stats();
        assert_eq!(
            (s.fragments, s.duplicate_fragments, s.completed),
            (47, 46, 1)
        );
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn interleaved_packets() {
        let (a, b) = (packet(3000), packet(2500));
        let (fa, fb) = (fragments(&a, 1000), fragments(&b, 1000));
        let mut r = reassembler(4);
        let t = Timestamp::ZERO;
        assert_eq!(r.insert(1, &fa[0].0, &fa[0].1, t), FragOutcome::Stored);
        assert_eq!(r.insert(2, &fb[2].0, &fb[2].1, t), FragOutcome::Stored);
        assert_eq!(r.insert(1, &fa[2].0, &fa[2].1, t), FragOutcome::Stored);
        assert_eq!(r.insert(2, &fb[0].0, &fb[0].1, t), FragOutcome::Stored);
        assert_eq!(
            r.insert(2, &fb[1].0, &fb[1].1, t),
            FragOutcome::Complete(&b[..])
        );
        assert_eq!(
            r.insert(1, &fa[1].0, &fa[1].1, t),
            FragOutcome::Complete(&a[..])
        );
    }

    #[test]
    fn lost_fragment_times_out() {
        let pkt = packet(3000);
        let frags = fragments(&pkt, 1000);
        let mut r = reassembler(4);
        r.insert(1, &frags[0].0, &frags[0].1, Timestamp::from_nanos(1_000));
        r.insert(1, &frags[2].0, &frags[2].1, Timestamp::from_nanos(2_000));
        let deadline = Timestamp::from_nanos(1_000).saturating_add(Duration::from_millis(10));
        assert_eq!(r.next_deadline(), Some(deadline));
        r.expire(Timestamp::from_nanos(deadline.as_nanos() - 1));
        assert_eq!(r.in_progress(), 1);
        r.expire(deadline);
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.stats().timeouts, 1);
        assert_eq!(r.next_deadline(), None);
        // The missing fragment arriving now starts a new, incomplete context.
        assert_eq!(
            r.insert(1, &frags[1].0, &frags[1].1, deadline),
            FragOutcome::Stored
        );
    }

    #[test]
    fn full_reassembler_evicts_oldest() {
        let pkt = packet(2000);
        let frags = fragments(&pkt, 1000);
        let mut r = reassembler(2);
        r.insert(1, &frags[0].0, &frags[0].1, Timestamp::from_nanos(1));
        r.insert(2, &frags[0].0, &frags[0].1, Timestamp::from_nanos(2));
        r.insert(3, &frags[0].0, &frags[0].1, Timestamp::from_nanos(3));
        assert_eq!(r.stats().evicted, 1);
        // Packet 1 is gone; 2 completes.
        assert_eq!(
            r.insert(2, &frags[1].0, &frags[1].1, Timestamp::from_nanos(4)),
            FragOutcome::Complete(&pkt[..])
        );
        assert_eq!(
            r.insert(1, &frags[1].0, &frags[1].1, Timestamp::from_nanos(5)),
            FragOutcome::Stored
        );
    }

    #[test]
    fn disagreeing_or_oversized_fragments_are_rejected() {
        let pkt = packet(3000);
        let frags = fragments(&pkt, 1000);
        let mut r = Reassembler::new(&ReassemblyConfig {
            max_packet_len: 2999,
            ..Default::default()
        });
        assert_eq!(
            r.insert(1, &frags[0].0, &frags[0].1, Timestamp::ZERO),
            FragOutcome::Rejected
        );
        let mut r = reassembler(2);
        r.insert(1, &frags[0].0, &frags[0].1, Timestamp::ZERO);
        let other = FragmentRepr {
            packet_len: 2999,
            ..frags[1].0
        };
        // Another layout for the same number: a context of its own, not a refusal.
        assert_eq!(
            r.insert(1, &other, &frags[1].1, Timestamp::ZERO),
            FragOutcome::Stored
        );
        assert_eq!(r.in_progress(), 2);
        let past_end = FragmentRepr {
            offset: 2500,
            ..frags[1].0
        };
        assert_eq!(
            r.insert(1, &past_end, &frags[1].1, Timestamp::ZERO),
            FragOutcome::Rejected
        );
        let bad_index = FragmentRepr {
            index: 3,
            ..frags[1].0
        };
        assert_eq!(
            r.insert(1, &bad_index, &frags[1].1, Timestamp::ZERO),
            FragOutcome::Rejected
        );
        assert_eq!(r.stats().rejected, 2);
    }

    #[test]
    fn a_conflicting_fragment_does_not_poison_the_packet() {
        // A forged fragment claiming another layout for packet 1 arrives first; the genuine
        // fragments still reassemble (and the forged one does not complete anything).
        let pkt = packet(3000);
        let frags = fragments(&pkt, 1000);
        let forged_layout = FragmentLayout::for_payload(2999, 1500).unwrap();
        let forged = FragmentRepr {
            packet_len: 2999,
            offset: 0,
            index: 0,
            count: forged_layout.count(),
        };
        let t = Timestamp::ZERO;
        for forged_first in [true, false] {
            let mut r = reassembler(4);
            let last = frags.len() - 1;
            for (i, (f, p)) in frags.iter().enumerate() {
                if i == usize::from(!forged_first) {
                    assert_eq!(r.insert(1, &forged, &[0xee; 1500], t), FragOutcome::Stored);
                }
                let want = if i == last {
                    FragOutcome::Complete(&pkt[..])
                } else {
                    FragOutcome::Stored
                };
                assert_eq!(
                    r.insert(1, f, p, t),
                    want,
                    "forged first: {forged_first}, {i}"
                );
            }
        }
    }

    #[test]
    fn a_flood_of_fresh_fragments_spares_packets_under_way() {
        // Two large packets have two of their three fragments each when a flood of first
        // fragments of other numbers (forged, or packets whose other fragments never come)
        // passes through a full reassembler: the flood evicts itself, not the two packets.
        let pkt = packet(3000);
        let frags = fragments(&pkt, 1000);
        let mut r = reassembler(4);
        let at = Timestamp::from_nanos;
        for seq in [1, 2] {
            for (f, p) in &frags[..2] {
                assert_eq!(r.insert(seq, f, p, at(seq)), FragOutcome::Stored);
            }
        }
        for seq in 100..140 {
            r.insert(seq, &frags[0].0, &frags[0].1, at(seq));
        }
        for seq in [1, 2] {
            assert_eq!(
                r.insert(seq, &frags[2].0, &frags[2].1, at(200)),
                FragOutcome::Complete(&pkt[..]),
                "packet {seq}"
            );
        }
        assert_eq!(r.stats().evicted, 38);
    }

    #[test]
    fn reset_drops_everything() {
        let pkt = packet(2000);
        let frags = fragments(&pkt, 1000);
        let mut r = reassembler(2);
        r.insert(1, &frags[0].0, &frags[0].1, Timestamp::ZERO);
        r.reset();
        assert_eq!(r.in_progress(), 0);
        assert_eq!(
            r.insert(1, &frags[1].0, &frags[1].1, Timestamp::ZERO),
            FragOutcome::Stored
        );
    }
}
