//! How far each lane of the sender has come in the current stream, so that a gap every lane has
//! gone past is given up at once instead of after the hold time.
//!
//! A lane is one link and one capture worker of the sender ([`crate::Stamp`]): a worker numbers
//! its packets in increasing order and sends each lane's frames through one queue, and an
//! Ethernet link delivers a queue's frames in order. So once a lane has delivered a frame
//! numbered `n`, it will deliver no packet numbered below `n` that it has not delivered yet.
//! When every lane heard from recently has gone past a missing number, no lane will bring it:
//! it is lost (on every link that carried it), and waiting for it only delays what follows.
//!
//! Lanes that have been silent for the hold time while the stream flowed do not count (a link
//! that failed silently must not hold gaps back for longer than the hold time); their gaps wait
//! for the hold time as before. When the stream resumes after a pause, every lane counts again
//! for a hold time: each was idle with the stream, and the slower ones must get the chance to
//! deliver their copies before the faster ones' gaps are given up. Memory is bounded ([`MAX_LANES`]); a lane evicted while it may still be live turns
//! the early release off until it could no longer be.

use core::time::Duration;

use crate::Timestamp;
use crate::seq::seq_before;

/// Lanes tracked at once: 16 links of 4 workers each.
pub(crate) const MAX_LANES: usize = 64;

#[derive(Clone, Copy, Debug)]
struct LaneTop {
    link: u8,
    lane: u8,
    /// The highest packet number the lane delivered.
    top: u64,
    /// When it last delivered a frame.
    last: Timestamp,
}

/// The lanes of the current stream; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    lanes: Vec<LaneTop>,
    /// When a lane was last evicted to make room: until it would have gone quiet, the lanes
    /// known are not all the lanes.
    evicted: Option<Timestamp>,
    /// When any lane last delivered a frame.
    latest: Option<Timestamp>,
    /// When the stream last resumed after a pause of a hold time or more.
    resumed: Timestamp,
    /// The sender's links (0 if not known): a worker heard on one link will use the others.
    links: u8,
    /// Per lane number (sending worker) heard, when it was first heard.
    workers: Vec<(u8, Timestamp)>,
}

impl Lanes {
    /// Lane `lane` of `link` delivered a frame of packets numbered up to `last` at `now`;
    /// `live` is the hold time.
    pub(crate) fn saw(
        &mut self,
        (link, lane): (u8, u8),
        last: u64,
        now: Timestamp,
        live: Duration,
    ) {
        if self.latest.is_none_or(|t| t.saturating_add(live) <= now) {
            self.resumed = now;
        }
        self.latest = Some(now);
        self.raise((link, lane), last, now);
    }

    /// Lane `lane` of `link` sent, at `now`, a frame that carries no packet (a probe, feedback)
    /// and says it will bring no packet numbered up to `last` that it has not brought. The lane
    /// is heard from, and its top moves to `last` if that is higher; the stream's own timing
    /// (when it paused or resumed) is not touched, since no packet came.
    pub(crate) fn floor(&mut self, lane: (u8, u8), last: u64, now: Timestamp) {
        self.raise(lane, last, now);
    }

    /// The sender has `links` links (numbered from 0): until a worker heard on one of them has
    /// been heard on all, or a hold time has passed since it was first heard, its lanes not yet
    /// heard may still bring anything, so nothing is given up.
    pub(crate) fn set_links(&mut self, links: u8) {
        self.links = links;
    }

    /// Moves a lane's top to `last` if higher and marks it heard at `now`; a lane not known yet
    /// is added, in the place of the one heard from least recently if there is no room.
    fn raise(&mut self, (link, lane): (u8, u8), last: u64, now: Timestamp) {
        if let Some(known) = self
            .lanes
            .iter_mut()
            .find(|l| l.link == link && l.lane == lane)
        {
            if seq_before(known.top, last) {
                known.top = last;
            }
            known.last = now;
            return;
        }
        if !self.workers.iter().any(|(w, _)| *w == lane) && self.workers.len() < MAX_LANES {
            self.workers.push((lane, now));
        }
        let entry = LaneTop {
            link,
            lane,
            top: last,
            last: now,
        };
        if self.lanes.len() < MAX_LANES {
            self.lanes.push(entry);
            return;
        }
        // Full: the lane heard from least recently makes room.
        if let Some(stalest) = self.lanes.iter_mut().min_by_key(|l| l.last) {
            self.evicted = Some(stalest.last.max(self.evicted.unwrap_or(stalest.last)));
            *stalest = entry;
        }
    }

    /// The lowest number a lane heard from within `live` of `now` may still deliver: every
    /// number below it has been gone past by every such lane. `None` if no lane is live, or if
    /// a lane that may still be live was forgotten.
    pub(crate) fn passed(&self, now: Timestamp, live: Duration) -> Option<u64> {
        let is_live = |t: Timestamp| t.saturating_add(live) > now;
        if self.evicted.is_some_and(is_live) {
            return None;
        }
        // A worker new to the stream whose lanes are not all heard yet: one may bring anything.
        let unheard = self.workers.iter().any(|&(worker, first)| {
            is_live(first)
                && (0..self.links).any(|link| {
                    !self
                        .lanes
                        .iter()
                        .any(|l| l.link == link && l.lane == worker)
                })
        });
        if unheard {
            return None;
        }
        let waking = is_live(self.resumed);
        self.lanes
            .iter()
            .filter(|l| waking || is_live(l.last))
            .map(|l| l.top.wrapping_add(1))
            .reduce(|a, b| if seq_before(b, a) { b } else { a })
    }

    /// Forgets every lane (the peer restarted: a new stream).
    pub(crate) fn reset(&mut self) {
        *self = Lanes {
            links: self.links,
            ..Lanes::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(5);

    fn ms(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn the_lowest_top_of_the_live_lanes_bounds_what_may_still_come() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.passed(ms(0), HOLD), None);
        lanes.saw((0, 0), 10, ms(0), HOLD);
        lanes.saw((1, 0), 7, ms(1), HOLD);
        assert_eq!(lanes.passed(ms(1), HOLD), Some(8));
        // A lane's top only moves forward.
        lanes.saw((1, 0), 6, ms(2), HOLD);
        assert_eq!(lanes.passed(ms(2), HOLD), Some(8));
        lanes.saw((1, 0), 12, ms(3), HOLD);
        assert_eq!(lanes.passed(ms(3), HOLD), Some(11));
        // Link 0 silent for a hold time while the stream flowed: only link 1 counts.
        assert_eq!(lanes.passed(ms(5), HOLD), Some(13));
        // The stream pauses; when it resumes on link 1, link 0 counts again for a hold time.
        lanes.saw((1, 0), 20, ms(30), HOLD);
        assert_eq!(lanes.passed(ms(30), HOLD), Some(11));
        lanes.saw((1, 0), 20, ms(33), HOLD);
        assert_eq!(lanes.passed(ms(34), HOLD), Some(11));
        assert_eq!(lanes.passed(ms(35), HOLD), Some(21));
        // Numbers wrap.
        lanes.reset();
        lanes.saw((0, 0), u64::MAX, ms(0), HOLD);
        lanes.saw((1, 0), 2, ms(0), HOLD);
        assert_eq!(lanes.passed(ms(0), HOLD), Some(0));
    }

    #[test]
    fn a_floor_moves_a_known_lane_and_keeps_it_live() {
        let mut lanes = Lanes::default();
        lanes.saw((0, 0), 10, ms(0), HOLD);
        lanes.saw((1, 0), 7, ms(0), HOLD);
        // Link 1's probe: nothing up to 9 will come on it.
        lanes.floor((1, 0), 9, ms(4));
        assert_eq!(lanes.passed(ms(4), HOLD), Some(10));
        // A lower floor changes nothing; an unknown lane is known from its first one.
        lanes.floor((1, 0), 3, ms(4));
        assert_eq!(lanes.passed(ms(4), HOLD), Some(10));
        lanes.floor((2, 0), 8, ms(4));
        assert_eq!(lanes.passed(ms(4), HOLD), Some(9));
        lanes.floor((2, 0), 20, ms(4));
        // Probes keep link 1 live after link 0 went quiet...
        lanes.floor((1, 0), 9, ms(8));
        assert_eq!(lanes.passed(ms(8), HOLD), Some(10));
        // ... but do not count as the stream resuming after a pause.
        lanes.floor((1, 0), 9, ms(30));
        assert_eq!(lanes.passed(ms(31), HOLD), Some(10));
        assert_eq!(lanes.passed(ms(36), HOLD), None);
    }

    #[test]
    fn a_worker_heard_on_one_link_holds_gaps_until_heard_on_all() {
        let mut lanes = Lanes::default();
        lanes.set_links(2);
        // Worker 0 on link 0 only: link 1 may still bring anything.
        lanes.saw((0, 0), 10, ms(0), HOLD);
        assert_eq!(lanes.passed(ms(1), HOLD), None);
        lanes.saw((1, 0), 4, ms(2), HOLD);
        assert_eq!(lanes.passed(ms(2), HOLD), Some(5));
        // Worker 3 appears on link 1; after a hold time its silence on link 0 no longer counts.
        lanes.saw((1, 3), 20, ms(3), HOLD);
        assert_eq!(lanes.passed(ms(3), HOLD), None);
        lanes.saw((0, 0), 30, ms(7), HOLD);
        lanes.saw((1, 3), 30, ms(7), HOLD);
        assert_eq!(lanes.passed(ms(7), HOLD), None);
        assert_eq!(lanes.passed(ms(9), HOLD), Some(31));
    }

    #[test]
    fn a_live_lane_evicted_turns_the_release_off_until_it_would_be_quiet() {
        let mut lanes = Lanes::default();
        for lane in 0..MAX_LANES as u8 {
            lanes.saw((0, lane), 100, ms(1), HOLD);
        }
        assert_eq!(lanes.passed(ms(1), HOLD), Some(101));
        lanes.saw((1, 0), 200, ms(2), HOLD);
        assert_eq!(lanes.passed(ms(2), HOLD), None);
        assert_eq!(lanes.passed(ms(6), HOLD), Some(201));
    }
}
