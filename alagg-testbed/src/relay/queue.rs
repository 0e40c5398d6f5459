//! The frames one direction holds until they leave: their bytes in one ring allocated once
//! (no allocation per frame in steady state), in arrival order, each with its leave time.
//!
//! Sending takes two steps, because a batched send may take only some of the frames offered:
//! [`FrameQueue::stage`] picks the frames due (in leave order), [`FrameQueue::staged`] lends them
//! to the send, and [`FrameQueue::retire`] forgets the first `n` once they are gone. In FIFO mode
//! leave times never decrease, so the due frames are the oldest ones; with reordering allowed a
//! heap orders them by leave time, and a frame's bytes are reclaimed only once every older frame
//! has left too.
#![deny(unsafe_code)]

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where the frame's bytes start in the ring.
    offset: usize,
    len: usize,
    /// Ring bytes this entry holds: `len`, plus the end of the ring it skipped to stay
    /// contiguous.
    span: usize,
    leave: u64,
    gone: bool,
}

/// Frames waiting to leave; see the module documentation.
#[derive(Debug)]
pub(crate) struct FrameQueue {
    ring: Box<[u8]>,
    /// Start of the oldest entry's span.
    head: usize,
    /// Where the next frame goes.
    tail: usize,
    used: usize,
    /// In arrival order; `entries[0]` has sequence number `first_seq`.
    entries: VecDeque<Entry>,
    first_seq: u64,
    /// With reordering: (leave time, sequence number) of the frames not staged yet.
    by_leave: Option<BinaryHeap<Reverse<(u64, u64)>>>,
    /// Sequence numbers picked for the next send, in send order.
    staged: VecDeque<u64>,
    /// FIFO mode: the sequence number of the oldest frame not staged.
    next_fifo: u64,
}

impl FrameQueue {
    /// A queue of at most `capacity` bytes of frames.
    pub fn new(capacity: usize, reorder: bool) -> Self {
        Self {
            ring: vec![0; capacity].into_boxed_slice(),
            head: 0,
            tail: 0,
            used: 0,
            entries: VecDeque::with_capacity(4096),
            first_seq: 0,
            by_leave: reorder.then(BinaryHeap::new),
            staged: VecDeque::new(),
            next_fifo: 0,
        }
    }

    /// Switches between FIFO and leave-time order; frames already queued keep their times.
    pub fn set_reorder(&mut self, reorder: bool) {
        if reorder == self.by_leave.is_some() {
            return;
        }
        let staged_or_gone = |seq: u64, queue: &Self| {
            queue.staged.contains(&seq) || queue.entries[(seq - queue.first_seq) as usize].gone
        };
        if reorder {
            let heap = (self.next_fifo..self.first_seq + self.entries.len() as u64)
                .map(|seq| Reverse((self.entries[(seq - self.first_seq) as usize].leave, seq)))
                .collect();
            self.by_leave = Some(heap);
        } else {
            // Back to FIFO: whatever is not staged leaves in arrival order after the staged.
            self.by_leave = None;
            let mut seq = self.first_seq;
            while seq < self.first_seq + self.entries.len() as u64 && staged_or_gone(seq, self) {
                seq += 1;
            }
            self.next_fifo = seq;
            // Frames behind it that were already staged or gone stay so; the FIFO walk skips them.
        }
    }

    /// Frames held (staged ones included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.gone).count()
    }

    /// Queues `frame` to leave at `leave`. False, and nothing queued, if the ring is full.
    pub fn push(&mut self, frame: &[u8], leave: u64) -> bool {
        let len = frame.len();
        let capacity = self.ring.len();
        let (offset, span) = if self.tail + len <= capacity {
            (self.tail, len)
        } else {
            (0, capacity - self.tail + len)
        };
        if span > capacity - self.used {
            return false;
        }
        self.ring[offset..offset + len].copy_from_slice(frame);
        self.tail = (offset + len) % capacity.max(1);
        self.used += span;
        let seq = self.first_seq + self.entries.len() as u64;
        self.entries.push_back(Entry {
            offset,
            len,
            span,
            leave,
            gone: false,
        });
        if let Some(heap) = &mut self.by_leave {
            heap.push(Reverse((leave, seq)));
        }
        true
    }

    /// When the next frame not yet staged is due, if any.
    pub fn next_leave(&self) -> Option<u64> {
        match &self.by_leave {
            Some(heap) => heap.peek().map(|Reverse((leave, _))| *leave),
            None => self.fifo_entry(self.next_fifo).map(|e| e.leave),
        }
    }

    fn fifo_entry(&self, seq: u64) -> Option<&Entry> {
        self.entries
            .get(usize::try_from(seq - self.first_seq).ok()?)
    }

    /// Stages frames due by `now`, until `max` are staged; returns how many are staged.
    pub fn stage(&mut self, now: u64, max: usize) -> usize {
        while self.staged.len() < max {
            let seq = match &mut self.by_leave {
                Some(heap) => match heap.peek() {
                    Some(Reverse((leave, seq))) if *leave <= now => {
                        let seq = *seq;
                        heap.pop();
                        seq
                    }
                    _ => break,
                },
                None => {
                    let seq = self.next_fifo;
                    match self.fifo_entry(seq) {
                        Some(entry) if entry.leave <= now => {}
                        _ => break,
                    }
                    self.next_fifo += 1;
                    if self.fifo_entry(seq).is_some_and(|e| e.gone) {
                        continue;
                    }
                    seq
                }
            };
            self.staged.push_back(seq);
        }
        self.staged.len()
    }

    /// The staged frames, in send order.
    pub fn staged(&self) -> impl Iterator<Item = &[u8]> {
        self.staged.iter().map(|&seq| {
            let entry = &self.entries[(seq - self.first_seq) as usize];
            &self.ring[entry.offset..entry.offset + entry.len]
        })
    }

    /// The first `n` staged frames are gone (sent or refused): forgets them and reclaims every
    /// ring byte no longer needed.
    pub fn retire(&mut self, n: usize) {
        for _ in 0..n {
            let Some(seq) = self.staged.pop_front() else {
                break;
            };
            let index = (seq - self.first_seq) as usize;
            self.entries[index].gone = true;
        }
        while let Some(entry) = self.entries.front().filter(|e| e.gone) {
            self.head = (self.head + entry.span) % self.ring.len().max(1);
            self.used -= entry.span;
            self.entries.pop_front();
            self.first_seq += 1;
        }
        if self.next_fifo < self.first_seq {
            self.next_fifo = self.first_seq;
        }
        if self.used == 0 {
            self.head = 0;
            self.tail = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FrameQueue, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while queue.stage(now, 3) > 0 {
            out.extend(queue.staged().map(|f| f[0]));
            let n = queue.staged().count();
            queue.retire(n);
        }
        out
    }

    #[test]
    fn fifo_releases_due_frames_in_arrival_order() {
        let mut queue = FrameQueue::new(1000, false);
        for (i, leave) in [10, 20, 20, 30].into_iter().enumerate() {
            assert!(queue.push(&[i as u8; 100], leave));
        }
        assert_eq!(queue.next_leave(), Some(10));
        assert_eq!(drain(&mut queue, 5), Vec::<u8>::new());
        assert_eq!(drain(&mut queue, 20), [0, 1, 2]);
        assert_eq!(queue.next_leave(), Some(30));
        assert_eq!(drain(&mut queue, 30), [3]);
        assert_eq!((queue.len(), queue.next_leave()), (0, None));
    }

    #[test]
    fn a_partial_send_keeps_the_rest_staged_in_order() {
        let mut queue = FrameQueue::new(1000, false);
        for i in 0..5u8 {
            queue.push(&[i; 10], 0);
        }
        assert_eq!(queue.stage(0, 4), 4);
        queue.retire(1);
        assert_eq!(queue.stage(0, 4), 4);
        assert_eq!(
            queue.staged().map(|f| f[0]).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn reordering_releases_by_leave_time_and_reclaims_space_in_arrival_order() {
        let mut queue = FrameQueue::new(300, true);
        for (i, leave) in [30, 10, 20].into_iter().enumerate() {
            assert!(queue.push(&[i as u8; 100], leave));
        }
        assert!(!queue.push(&[9; 1], 0), "the ring is full");
        assert_eq!(drain(&mut queue, 20), [1, 2]);
        // Frame 0 still holds the ring's start, so the space of 1 and 2 is not free yet.
        assert!(!queue.push(&[9; 100], 0));
        assert_eq!(drain(&mut queue, 30), [0]);
        assert!(queue.push(&[9; 300], 0), "all reclaimed");
    }

    #[test]
    fn the_ring_wraps_and_keeps_frames_contiguous() {
        let mut queue = FrameQueue::new(250, false);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for i in 0..50u8 {
            let len = 40 + usize::from(i % 7) * 10;
            while !queue.push(&vec![i; len], u64::from(i)) {
                got.extend(drain(&mut queue, u64::MAX));
            }
            expected.push(i);
        }
        got.extend(drain(&mut queue, u64::MAX));
        assert_eq!(got, expected);
        // Each frame came back whole.
        let mut queue = FrameQueue::new(100, false);
        queue.push(&[1; 60], 0);
        drain(&mut queue, 0);
        queue.push(&[2; 30], 0);
        queue.push(&[3; 60], 0);
        queue.stage(0, 2);
        let frames: Vec<Vec<u8>> = queue.staged().map(<[u8]>::to_vec).collect();
        assert_eq!(frames, [vec![2; 30], vec![3; 60]]);
    }

    #[test]
    fn switching_order_mid_stream_loses_nothing() {
        let mut queue = FrameQueue::new(1000, false);
        for i in 0..4u8 {
            queue.push(&[i; 10], u64::from(10 - i));
        }
        queue.set_reorder(true);
        assert_eq!(drain(&mut queue, 8), [3, 2], "by leave time");
        queue.set_reorder(false);
        assert_eq!(drain(&mut queue, 10), [0, 1]);
        assert_eq!(queue.len(), 0);
    }
}
