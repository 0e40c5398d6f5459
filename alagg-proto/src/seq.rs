//! Sequence numbers and the duplicate filter.
//!
//! Sequence numbers are 64-bit and compared with serial-number arithmetic (RFC 1982): `a` is
//! after `b` when `a - b`, taken modulo 2^64, is below 2^63. At 10 Mpps a 64-bit counter wraps
//! after 58 000 years, but the comparison stays correct across the wrap anyway.
//!
//! [`SeqWindow`] is the sliding-window bitmap of IEEE 802.1CB-2017 clause 7.4.3.4 (vector
//! recovery algorithm) and of WireGuard's replay counter (RFC 6479 style): it remembers the
//! highest number seen and one bit for each of the `size` numbers below it. Each number is
//! accepted once; copies are discarded; numbers older than the window are rogue. Memory is fixed
//! at construction; `check_and_mark` is O(1) amortised (moving the window clears at most one
//! word per 64 numbers advanced).

use crate::stats::DedupStats;

/// True if `a` comes strictly before `b` in serial-number order (RFC 1982).
#[inline]
pub const fn seq_before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

/// Signed distance from `from` to `to` in serial-number order.
#[inline]
pub const fn seq_distance(from: u64, to: u64) -> i64 {
    to.wrapping_sub(from) as i64
}

/// Verdict of the duplicate filter on one sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// First time this number is seen.
    Fresh,
    /// A copy of a number already accepted (802.1CB: discarded).
    Duplicate,
    /// Older than the window can tell (802.1CB: rogue); treated as a copy.
    TooOld,
}

/// Sliding-window duplicate filter over 64-bit sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqWindow {
    /// Ring of bit words; bit `seq % bits` says whether `seq` was seen.
    words: Box<[u64]>,
    /// Number of words minus one (a power of two minus one).
    word_mask: u64,
    /// How far below `top` a number is still judged exactly.
    size: u64,
    /// Highest number accepted.
    top: u64,
    /// Whether anything was accepted since creation or the last reset.
    synced: bool,
    stats: DedupStats,
}

/// Smallest window [`SeqWindow::new`] accepts.
pub const MIN_WINDOW: usize = 64;

impl SeqWindow {
    /// A window judging the `size` numbers below the highest seen; `size` is rounded up to a
    /// power of two no smaller than [`MIN_WINDOW`].
    pub fn new(size: usize) -> Self {
        let size = size.max(MIN_WINDOW).next_power_of_two();
        // One word more than the window spans, so the word holding `top` never aliases the
        // oldest word still inside the window; rounded to a power of two for masking.
        let words = (size / 64 + 1).next_power_of_two();
        SeqWindow {
            words: vec![0; words].into_boxed_slice(),
            word_mask: words as u64 - 1,
            size: size as u64,
            top: 0,
            synced: false,
            stats: DedupStats::default(),
        }
    }

    /// The window size in sequence numbers.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The highest number accepted, if any.
    pub fn top(&self) -> Option<u64> {
        self.synced.then_some(self.top)
    }

    /// Counters.
    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Forgets every number (a new peer epoch), keeping the counters.
    pub fn reset(&mut self) {
        self.words.fill(0);
        self.synced = false;
        self.top = 0;
    }

    /// Forgets every number, then judges every number up to `top` already seen (copies if
    /// within the window, rogue below it): used when the receiver goes back to an epoch it had
    /// left, whose numbers up to `top` it may have delivered. Keeps the counters.
    pub fn resume_after(&mut self, top: u64) {
        self.words.fill(u64::MAX);
        let (word, _) = self.locate(top);
        // Bits of `top`'s word above `top` are numbers not seen yet.
        self.words[word] = u64::MAX >> (63 - (top & 63));
        self.top = top;
        self.synced = true;
    }

    /// Judges `seq` without recording it (used to drop copies of fragments early).
    #[inline]
    pub fn check(&self, seq: u64) -> SeqCheck {
        if !self.synced {
            return SeqCheck::Fresh;
        }
        let d = seq_distance(self.top, seq);
        if d > 0 {
            return SeqCheck::Fresh;
        }
        if d.unsigned_abs() >= self.size {
            return SeqCheck::TooOld;
        }
        let (word, bit) = self.locate(seq);
        if self.words[word] & bit != 0 {
            SeqCheck::Duplicate
        } else {
            SeqCheck::Fresh
        }
    }

    /// Judges `seq` and, if fresh, records it. Counts the verdict.
    #[inline]
    pub fn check_and_mark(&mut self, seq: u64) -> SeqCheck {
        let verdict = self.mark(seq);
        match verdict {
            SeqCheck::Fresh => self.stats.passed += 1,
            SeqCheck::Duplicate => self.stats.discarded += 1,
            SeqCheck::TooOld => self.stats.rogue += 1,
        }
        verdict
    }

    /// Counts a copy dropped before reaching [`SeqWindow::check_and_mark`] (a fragment of a
    /// packet already accepted).
    pub fn count(&mut self, verdict: SeqCheck) {
        match verdict {
            SeqCheck::Fresh => {}
            SeqCheck::Duplicate => self.stats.discarded += 1,
            SeqCheck::TooOld => self.stats.rogue += 1,
        }
    }

    #[inline]
    fn locate(&self, seq: u64) -> (usize, u64) {
        // The mask keeps the index below `words.len()`, which fits usize.
        (((seq >> 6) & self.word_mask) as usize, 1u64 << (seq & 63))
    }

    #[inline]
    fn mark(&mut self, seq: u64) -> SeqCheck {
        if !self.synced {
            self.synced = true;
            self.top = seq;
            self.words.fill(0);
            let (word, bit) = self.locate(seq);
            self.words[word] |= bit;
            return SeqCheck::Fresh;
        }
        let d = seq_distance(self.top, seq);
        if d > 0 {
            // Advance: clear the words of the numbers between the old top and `seq`.
            let cur = self.top >> 6;
            let new = seq >> 6;
            // Word numbers live modulo 2^58 (`seq >> 6`); reduce the difference likewise so that
            // crossing the 2^64 wrap moves by the true distance.
            let span = new.wrapping_sub(cur) & (u64::MAX >> 6);
            if span > self.word_mask {
                self.words.fill(0);
            } else {
                for i in 1..=span {
                    let w = (cur.wrapping_add(i) & self.word_mask) as usize;
                    self.words[w] = 0;
                }
            }
            self.top = seq;
        } else if d.unsigned_abs() >= self.size {
            return SeqCheck::TooOld;
        }
        let (word, bit) = self.locate(seq);
        if self.words[word] & bit != 0 {
            return SeqCheck::Duplicate;
        }
        self.words[word] |= bit;
        SeqCheck::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_order_across_wrap() {
        assert!(seq_before(u64::MAX, 0));
        assert!(!seq_before(0, u64::MAX));
        assert!(seq_before(u64::MAX - 5, 3));
        assert!(!seq_before(7, 7));
        assert_eq!(seq_distance(u64::MAX, 1), 2);
        assert_eq!(seq_distance(1, u64::MAX), -2);
    }

    #[test]
    fn each_number_accepted_once() {
        let mut w = SeqWindow::new(1024);
        assert_eq!(w.check_and_mark(10), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(10), SeqCheck::Duplicate);
        assert_eq!(w.check_and_mark(12), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(11), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(11), SeqCheck::Duplicate);
        assert_eq!(w.check(13), SeqCheck::Fresh);
        assert_eq!(w.check(12), SeqCheck::Duplicate);
        let s = w.stats();
        assert_eq!((s.passed, s.discarded, s.rogue), (3, 2, 0));
    }

    #[test]
    fn window_edges() {
        let mut w = SeqWindow::new(1024);
        assert_eq!(w.size(), 1024);
        w.check_and_mark(5000);
        // 1023 below the top is the oldest number still judged; 1024 below is too old.
        assert_eq!(w.check_and_mark(5000 - 1023), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(5000 - 1023), SeqCheck::Duplicate);
        assert_eq!(w.check_and_mark(5000 - 1024), SeqCheck::TooOld);
        assert_eq!(w.stats().rogue, 1);
        // Moving by exactly the window forgets everything older.
        w.check_and_mark(5000 + 1024);
        assert_eq!(w.check(5000), SeqCheck::TooOld);
        assert_eq!(w.check(5001), SeqCheck::Fresh);
    }

    #[test]
    fn advancing_clears_reused_bits() {
        let mut w = SeqWindow::new(64);
        for s in 0..64 {
            assert_eq!(w.check_and_mark(s), SeqCheck::Fresh);
        }
        // The ring has aliased all these words; the new numbers must not look seen.
        for s in 64..1000 {
            assert_eq!(w.check_and_mark(s), SeqCheck::Fresh, "{s}");
        }
        assert_eq!(w.check_and_mark(999), SeqCheck::Duplicate);
        // A big jump clears the whole ring.
        assert_eq!(w.check_and_mark(1_000_000), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(1_000_000 - 10), SeqCheck::Fresh);
    }

    #[test]
    fn wrap_around() {
        let mut w = SeqWindow::new(128);
        let start = u64::MAX - 100;
        for i in 0..300u64 {
            assert_eq!(w.check_and_mark(start.wrapping_add(i)), SeqCheck::Fresh);
        }
        assert_eq!(w.check_and_mark(u64::MAX), SeqCheck::TooOld);
        assert_eq!(
            w.check_and_mark(start.wrapping_add(299)),
            SeqCheck::Duplicate
        );
        assert_eq!(
            w.check_and_mark(start.wrapping_add(250)),
            SeqCheck::Duplicate
        );
        assert_eq!(w.top(), Some(start.wrapping_add(299)));
    }

    #[test]
    fn crossing_the_wrap_keeps_history() {
        let mut w = SeqWindow::new(1024);
        assert_eq!(w.check_and_mark(u64::MAX - 3), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(2), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(u64::MAX - 3), SeqCheck::Duplicate);
        assert_eq!(w.check_and_mark(u64::MAX), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(u64::MAX), SeqCheck::Duplicate);
    }

    #[test]
    fn half_space_behind_is_too_old() {
        let mut w = SeqWindow::new(1024);
        w.check_and_mark(0);
        assert_eq!(w.check_and_mark(1 << 63), SeqCheck::TooOld);
        assert_eq!(w.check_and_mark((1 << 63) - 1), SeqCheck::Fresh);
    }

    #[test]
    fn reset_forgets() {
        let mut w = SeqWindow::new(64);
        w.check_and_mark(100);
        w.reset();
        assert_eq!(w.top(), None);
        assert_eq!(w.check_and_mark(3), SeqCheck::Fresh);
        assert_eq!(w.check_and_mark(100), SeqCheck::Fresh);
        assert_eq!(w.stats().passed, 3);
    }

    #[test]
    fn resume_after_takes_everything_up_to_top_as_seen() {
        for top in [0u64, 63, 64, 1000, u64::MAX] {
            let mut w = SeqWindow::new(128);
            w.check_and_mark(top.wrapping_add(5000));
            w.resume_after(top);
            assert_eq!(w.top(), Some(top), "{top}");
            for back in [0u64, 1, 63, 64, 127] {
                assert_eq!(
                    w.check(top.wrapping_sub(back)),
                    SeqCheck::Duplicate,
                    "{top}-{back}"
                );
            }
            assert_eq!(w.check(top.wrapping_sub(128)), SeqCheck::TooOld, "{top}");
            for ahead in 1..=200u64 {
                let seq = top.wrapping_add(ahead);
                assert_eq!(w.check_and_mark(seq), SeqCheck::Fresh, "{top}+{ahead}");
            }
        }
    }

    #[test]
    fn size_is_rounded() {
        assert_eq!(SeqWindow::new(0).size(), 64);
        assert_eq!(SeqWindow::new(1000).size(), 1024);
    }
}
