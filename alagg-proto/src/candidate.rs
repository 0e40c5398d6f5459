//! Streams the receiver has seen but does not believe yet: frames of an epoch other than the
//! peer's current one (a restart, or frames that are not the peer's), and frames of the current
//! epoch too far ahead of the duplicate window (an outage of every link, or a forged number).
//!
//! Each [`Candidate`] is one epoch and one region of numbers: the highest number seen and a
//! bitmap of the [`SPAN`] numbers below it, so its *evidence* is how many distinct numbers, close
//! together, it has shown. Evidence starts over when a candidate has been quiet for a hold time,
//! so only a stream that is flowing now accumulates it. A candidate also keeps its latest
//! [`KEEP`] frames, so that if it is adopted, the packets that arrived while it was only a
//! candidate are delivered rather than lost; frames it could not keep are counted.
//!
//! The receiver decides when a candidate is adopted (`engine` module docs); this module only
//! remembers. Invariants: nothing here touches the current stream's duplicate window, reorder
//! buffer or reassembly; memory is bounded by [`SLOTS`] candidates of [`KEEP`] frames of at most
//! [`MAX_KEPT_FRAME`] bytes, each buffer grown on first use and then reused, so the steady state
//! (no candidate) allocates nothing and costs nothing.

use core::time::Duration;

use crate::Timestamp;
use crate::seq::seq_distance;

/// Candidates tracked at once.
pub(crate) const SLOTS: usize = 4;
/// Frames a candidate keeps (its latest).
pub(crate) const KEEP: usize = 8;
/// Longest frame a candidate keeps: a 9000-byte jumbo link's frame and then some.
pub(crate) const MAX_KEPT_FRAME: usize = 9216;
/// Distinct numbers a candidate must show, within [`SPAN`] of each other, to be adoptable.
pub(crate) const EVIDENCE: u32 = 4;
/// How close together the numbers of a candidate's evidence must be.
pub(crate) const SPAN: u64 = 64;

/// One frame a candidate kept.
#[derive(Debug, Default)]
struct Kept {
    /// Bytes of the frame in `buf` (0: none).
    len: usize,
    seq: u64,
    buf: Vec<u8>,
}

/// One epoch and region of numbers not believed yet.
#[derive(Debug, Default)]
pub(crate) struct Candidate {
    active: bool,
    /// The epoch its frames carry.
    pub(crate) epoch: u64,
    /// Highest number seen.
    top: u64,
    /// Bit `i`: number `top - i` seen.
    seen: u64,
    /// When its last frame arrived.
    last: Timestamp,
    kept: [Kept; KEEP],
    /// Where the next kept frame goes (the ring overwrites the oldest).
    next_kept: usize,
    /// Frames that were to be kept but were not (overwritten, or too long): lost if the
    /// candidate is adopted.
    pub(crate) unkept: u64,
}

impl Candidate {
    /// Makes this slot a new candidate, forgetting what it held.
    fn start(&mut self, epoch: u64, seq: u64) {
        self.active = true;
        self.epoch = epoch;
        self.top = seq;
        self.seen = 0;
        for k in self.kept.iter_mut() {
            k.len = 0;
        }
        self.next_kept = 0;
        self.unkept = 0;
    }

    /// The lowest number among the kept frames and `seq`.
    pub(crate) fn lowest(&self, seq: u64) -> u64 {
        self.kept.iter().filter(|k| k.len > 0).fold(seq, |low, k| {
            if seq_distance(k.seq, low) > 0 {
                k.seq
            } else {
                low
            }
        })
    }

    /// The kept frames, lowest number first (frames of one number in arrival order).
    pub(crate) fn kept_in_order(&self) -> impl Iterator<Item = &[u8]> + '_ {
        // Arrival order first (the ring from its oldest entry), then a stable sort by how far
        // below `top` each number is, largest first.
        let mut order = [0usize; KEEP];
        for (i, slot) in order.iter_mut().enumerate() {
            *slot = (self.next_kept + i) % KEEP;
        }
        order.sort_by_key(|&i| core::cmp::Reverse(self.top.wrapping_sub(self.kept[i].seq)));
        order
            .into_iter()
            .map(|i| &self.kept[i])
            .filter(|k| k.len > 0)
            .map(|k| &k.buf[..k.len])
    }
}

/// What [`Candidates::record`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The candidate's slot.
    pub(crate) slot: usize,
    /// Distinct numbers it has shown, this one included.
    pub(crate) evidence: u32,
    /// Whether this number had been seen already (a copy from another link).
    pub(crate) copy: bool,
}

/// The candidates of one receiver.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    slots: [Candidate; SLOTS],
}

impl Candidates {
    /// Records a frame of `epoch` numbered `seq` arriving at `now`. It joins the candidate of
    /// its epoch whose region it falls in, else starts one in a free slot, or in place of one
    /// that is quiet (nothing for `hold`) or has shown a single number; if every slot holds a
    /// flowing candidate with evidence, the frame is not recorded (`None`).
    ///
    /// Evidence starts over when the candidate's previous frame is more than `window` old: a
    /// hold time for streams that could be the past (an epoch that started before the current
    /// one), longer for those that can only be the future (a restart, a resumption ahead), so
    /// that sparse traffic, a ping a second, is believed too.
    pub(crate) fn record(
        &mut self,
        (epoch, seq): (u64, u64),
        now: Timestamp,
        hold: Duration,
        window: Duration,
    ) -> Option<Recorded> {
        let quiet = |c: &Candidate| c.last.saturating_add(hold) <= now;
        let found = self.slots.iter().position(|c| {
            c.active && c.epoch == epoch && seq_distance(c.top, seq).unsigned_abs() < SPAN
        });
        let slot = match found {
            Some(i) => {
                let c = &mut self.slots[i];
                if c.last.saturating_add(window) <= now {
                    // Evidence must be close together in time too: it starts over (the frames
                    // kept stay: they are packets of this stream all the same).
                    c.seen = 0;
                    c.top = seq;
                }
                i
            }
            None => {
                let replaceable = |c: &Candidate| !c.active || quiet(c) || c.seen.count_ones() < 2;
                let i = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| replaceable(c))
                    .min_by_key(|(_, c)| (c.active, c.last))
                    .map(|(i, _)| i)?;
                self.slots[i].start(epoch, seq);
                i
            }
        };
        let c = &mut self.slots[slot];
        let d = seq_distance(c.top, seq);
        let copy = if d > 0 {
            c.seen = c.seen.checked_shl(d as u32).unwrap_or(0) | 1;
            c.top = seq;
            false
        } else {
            // `found` guarantees `-d < SPAN`; a new candidate has `d == 0`.
            let bit = 1u64 << d.unsigned_abs();
            let copy = c.seen & bit != 0;
            c.seen |= bit;
            copy
        };
        c.last = now;
        Some(Recorded {
            slot,
            evidence: c.seen.count_ones(),
            copy,
        })
    }

    /// Keeps `frame` (numbered `seq`) in the candidate of `slot`, overwriting its oldest kept
    /// frame if it has [`KEEP`]; a frame over [`MAX_KEPT_FRAME`] bytes is counted, not kept.
    pub(crate) fn keep(&mut self, slot: usize, seq: u64, frame: &[u8]) {
        let Some(c) = self.slots.get_mut(slot) else {
            return;
        };
        if frame.len() > MAX_KEPT_FRAME {
            c.unkept += 1;
            return;
        }
        let k = &mut c.kept[c.next_kept];
        if k.len > 0 {
            c.unkept += 1;
        }
        k.buf.clear();
        k.buf.extend_from_slice(frame);
        k.len = frame.len();
        k.seq = seq;
        c.next_kept = (c.next_kept + 1) % KEEP;
    }

    /// The epoch of the candidate in `slot`, if there is one.
    pub(crate) fn epoch_of(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).filter(|c| c.active).map(|c| c.epoch)
    }

    /// Takes the candidate of `slot` out to adopt it; hand it back with
    /// [`Candidates::give_back`] so its buffers are reused.
    pub(crate) fn take(&mut self, slot: usize) -> Candidate {
        self.slots
            .get_mut(slot)
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Returns an adopted candidate's buffers; the slot becomes free.
    pub(crate) fn give_back(&mut self, slot: usize, mut c: Candidate) {
        c.active = false;
        for k in c.kept.iter_mut() {
            k.len = 0;
        }
        c.next_kept = 0;
        c.unkept = 0;
        if let Some(s) = self.slots.get_mut(slot) {
            *s = c;
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(3);

    fn ms(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn evidence_counts_distinct_close_numbers() {
        let mut c = Candidates::default();
        // (seq, time in ms, evidence after it, copy)
        let steps: &[(u64, u64, u32, bool)] = &[
            (100, 0, 1, false),
            (100, 0, 1, true),
            (102, 0, 2, false),
            (101, 1, 3, false),
            (100 + SPAN, 1, 3, false),     // 100 falls out of the region
            (100 + SPAN + 1, 2, 3, false), // and so does 101
            (100 + SPAN - 1, 2, 4, false),
            // Quiet for a hold time: evidence starts over.
            (100 + SPAN + 2, 6, 1, false),
        ];
        for &(seq, at, evidence, copy) in steps {
            let r = c.record((7, seq), ms(at), HOLD, HOLD).unwrap();
            assert_eq!((r.slot, r.evidence, r.copy), (0, evidence, copy), "{seq}");
        }
        // Far from the region, or of another epoch: another candidate.
        assert_eq!(c.record((7, 1 << 40), ms(6), HOLD, HOLD).unwrap().slot, 1);
        assert_eq!(
            c.record((8, 100 + SPAN + 2), ms(6), HOLD, HOLD)
                .unwrap()
                .slot,
            2
        );
    }

    #[test]
    fn a_spray_of_epochs_cannot_evict_a_flowing_candidate() {
        let mut c = Candidates::default();
        for seq in 0..3 {
            c.record((2, seq), ms(0), HOLD, HOLD).unwrap();
        }
        for epoch in 100..200 {
            c.record((epoch, epoch << 20), ms(1), HOLD, HOLD);
        }
        let r = c.record((2, 3), ms(1), HOLD, HOLD).unwrap();
        assert_eq!(r.evidence, 4);
        // Three flowing candidates with evidence hold their slots; a newcomer finds none.
        for (slot, epoch) in [(1, 10), (2, 11), (3, 12)] {
            c.record((epoch, 0), ms(1), HOLD, HOLD).unwrap();
            assert_eq!(c.record((epoch, 1), ms(1), HOLD, HOLD).unwrap().slot, slot);
        }
        assert_eq!(c.record((13, 0), ms(1), HOLD, HOLD), None);
        // Once they are quiet, it does.
        assert!(c.record((13, 0), ms(5), HOLD, HOLD).is_some());
    }

    #[test]
    fn keeps_the_latest_frames_and_replays_them_in_number_order() {
        let mut c = Candidates::default();
        let seqs = [5u64, 3, 4, 9, 8, 7, 6, 10, 12, 11];
        for seq in seqs {
            let r = c.record((1, seq), ms(0), HOLD, HOLD).unwrap();
            c.keep(r.slot, seq, &[seq as u8; 30]);
        }
        c.keep(0, 13, &[0; MAX_KEPT_FRAME + 1]);
        let taken = c.take(0);
        // Ten kept in a ring of eight: the first two (5, 3) overwritten; one too long.
        assert_eq!(taken.unkept, 3);
        let order: Vec<u8> = taken.kept_in_order().map(|f| f[0]).collect();
        assert_eq!(order, [4, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(taken.lowest(20), 4);
        assert_eq!(taken.lowest(2), 2);
        c.give_back(0, taken);
        let r = c.record((1, 100), ms(0), HOLD, HOLD).unwrap();
        assert_eq!((r.slot, r.evidence), (0, 1));
        assert_eq!(c.take(0).kept_in_order().count(), 0);
    }
}
