//! The reorder buffer: restores sequence order within a bounded hold time.
//!
//! Packets arrive with fresh sequence numbers (the [`crate::SeqWindow`] has dropped copies).
//! `next` is the number delivery waits for:
//! - `seq == next`: delivered at once from the caller's buffer (no copy), then every held packet
//!   that now follows in order.
//! - `next < seq < next + capacity`: copied into the slot `seq % capacity` and held.
//! - `seq >= next + capacity`: the buffer is full; the oldest gaps are given up (counted lost)
//!   until `seq` fits.
//! - `seq < next`: its gap was already given up; delivered at once out of order (or dropped if
//!   late delivery is off) and counted late.
//!
//! Hold time: each held packet is delivered at most `hold_time` after it arrived, provided the
//! caller calls [`ReorderBuffer::poll`] at [`ReorderBuffer::next_deadline`]. Arrivals are kept in
//! a FIFO (time is monotonic, so the FIFO is sorted); when the front expires, every gap below it
//! is given up. This is the reordering companion of IEEE 802.1CB sequence recovery, which itself
//! only eliminates duplicates.
//!
//! Hold times: every held packet that is later delivered (its gap filled, its hold expired, the
//! buffer overflowed, or [`ReorderBuffer::flush`]) has its wait, from arrival to delivery,
//! recorded once in [`ReorderStats::hold`]; packets delivered at once are not. A clock that
//! goes backwards records zero.
//!
//! Cost and memory: every sequence number is passed over once by `next` and every held packet
//! enters and leaves the FIFO once, so each operation is O(1) amortised. Memory is fixed at
//! construction: `capacity * slot_size` bytes of slots, plus `large_slots` buffers of at most
//! `max_packet_len` bytes for held packets longer than a slot (grown on first use, then reused).
//! Nothing is allocated per packet once those buffers have grown.

use core::time::Duration;

use crate::Timestamp;
use crate::seq::{seq_before, seq_distance};
use crate::stats::ReorderStats;

/// Sizing and policy of a [`ReorderBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReorderConfig {
    /// Packets that can be held at once; rounded up to a power of two, at least 2.
    pub capacity: usize,
    /// Longest a packet waits for a gap before it to fill.
    pub hold_time: Duration,
    /// Bytes stored per slot; longer held packets use a large buffer.
    pub slot_size: usize,
    /// Held packets longer than `slot_size` at once; at least 1.
    pub large_slots: usize,
    /// Longest packet accepted.
    pub max_packet_len: usize,
    /// Deliver packets that arrive after their gap was given up (out of order) instead of
    /// dropping them. On by default: a late packet is usually worth more to TCP than a loss.
    pub deliver_late: bool,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        ReorderConfig {
            capacity: 1024,
            hold_time: Duration::from_millis(3),
            slot_size: 2048,
            large_slots: 16,
            max_packet_len: 65_575,
            deliver_late: true,
        }
    }
}

/// What [`ReorderBuffer::push`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Delivered at once, in order.
    InOrder,
    /// Held behind a gap.
    Held,
    /// Delivered at once, after its gap had been given up.
    Late,
    /// Dropped: its gap had been given up and late delivery is off.
    LateDropped,
    /// Dropped: already held (a duplicate that bypassed the window) or longer than allowed.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Empty,
    /// Held in the slot's own bytes, this long.
    Small(u32),
    /// Held in this large buffer.
    Large(u16),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u64,
    store: Store,
    /// When the packet held here arrived (meaningless while `store` is empty).
    arrived: Timestamp,
}

/// Holds packets that arrive ahead of a gap and releases them in sequence order.
#[derive(Debug)]
pub struct ReorderBuffer {
    next: u64,
    synced: bool,
    mask: u64,
    hold_time: Duration,
    deliver_late: bool,
    max_packet_len: usize,
    slot_size: usize,
    slots: Box<[Slot]>,
    small: Box<[u8]>,
    large: Box<[Vec<u8>]>,
    large_free: Vec<u16>,
    /// Arrival order of held packets: (seq, arrival). Entries of packets already released are
    /// skipped lazily. Holds at most `2 * capacity - 1` entries (module docs of `push`).
    fifo: Box<[(u64, Timestamp)]>,
    fifo_head: usize,
    fifo_len: usize,
    held: usize,
    stats: ReorderStats,
}

impl ReorderBuffer {
    /// A buffer sized by `config` (capacity rounded up to a power of two, at least 2; at least
    /// one large buffer; `slot_size` at most `max_packet_len`).
    pub fn new(config: &ReorderConfig) -> Self {
        let capacity = config.capacity.max(2).next_power_of_two();
        let slot_size = config.slot_size.min(config.max_packet_len).max(1);
        let large_slots = config.large_slots.clamp(1, usize::from(u16::MAX));
        ReorderBuffer {
            next: 0,
            synced: false,
            mask: capacity as u64 - 1,
            hold_time: config.hold_time,
            deliver_late: config.deliver_late,
            max_packet_len: config.max_packet_len,
            slot_size,
            slots: vec![
                Slot {
                    seq: 0,
                    store: Store::Empty,
                    arrived: Timestamp::ZERO,
                };
                capacity
            ]
            .into_boxed_slice(),
            small: vec![0; capacity * slot_size].into_boxed_slice(),
            large: (0..large_slots).map(|_| Vec::new()).collect(),
            // `large_slots` is clamped to u16 above.
            large_free: (0..large_slots as u16).rev().collect(),
            fifo: vec![(0, Timestamp::ZERO); 2 * capacity].into_boxed_slice(),
            fifo_head: 0,
            fifo_len: 0,
            held: 0,
            stats: ReorderStats::default(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How long a packet waits behind a gap now.
    pub fn hold_time(&self) -> Duration {
        self.hold_time
    }

    /// Changes how long a packet waits behind a gap, for the packets held now as well (their
    /// deadlines are counted from their arrival).
    pub fn set_hold_time(&mut self, hold_time: Duration) {
        self.hold_time = hold_time;
    }

    /// Packets currently held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The sequence number delivery waits for, once the first packet has set it.
    pub fn next_expected(&self) -> Option<u64> {
        self.synced.then_some(self.next)
    }

    /// Counters.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// When [`ReorderBuffer::poll`] must next be called: the hold deadline of the packet held
    /// longest, or `None` if nothing is held.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.held == 0 || self.fifo_len == 0 {
            return None;
        }
        Some(self.fifo[self.fifo_head].1.saturating_add(self.hold_time))
    }

    /// Offers packet `seq`, whose bytes are only borrowed for this call; `deliver` receives every
    /// packet that becomes deliverable, in order. The first packet after creation or
    /// [`ReorderBuffer::reset`] sets the expected number.
    #[inline]
    pub fn push<F: FnMut(&[u8])>(
        &mut self,
        seq: u64,
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> Order {
        if payload.len() > self.max_packet_len {
            return Order::Refused;
        }
        if !self.synced {
            self.synced = true;
            self.next = seq;
        }
        let d = seq_distance(self.next, seq);
        if d == 0 {
            return self.deliver_now(payload, now, deliver);
        }
        if d < 0 {
            if self.deliver_late {
                self.stats.late += 1;
                deliver(payload);
                return Order::Late;
            }
            self.stats.late_dropped += 1;
            return Order::LateDropped;
        }
        if d.unsigned_abs() > self.mask {
            self.stats.overflows += 1;
            self.give_up_until(seq.wrapping_sub(self.mask), now, deliver);
            if self.next == seq {
                return self.deliver_now(payload, now, deliver);
            }
        }
        let idx = (seq & self.mask) as usize;
        if self.slots[idx].store != Store::Empty {
            // Only `seq` itself can occupy its slot while it is within the capacity.
            return Order::Refused;
        }
        let store = if payload.len() <= self.slot_size {
            let start = idx * self.slot_size;
            self.small[start..start + payload.len()].copy_from_slice(payload);
            // `payload.len()` is at most `slot_size`, itself at most `max_packet_len`; a u32
            // holds any packet this crate builds.
            Store::Small(payload.len() as u32)
        } else {
            while self.large_free.is_empty() && seq_before(self.next, seq) {
                self.stats.overflows += 1;
                self.step(now, deliver);
            }
            self.release_run(now, deliver);
            if self.next == seq {
                return self.deliver_now(payload, now, deliver);
            }
            let Some(i) = self.large_free.pop() else {
                // Every large buffer holds a packet after `seq`: deliver this one out of order
                // rather than lose it.
                self.stats.late += 1;
                deliver(payload);
                return Order::Late;
            };
            let buf = &mut self.large[usize::from(i)];
            buf.clear();
            buf.extend_from_slice(payload);
            Store::Large(i)
        };
        self.slots[idx] = Slot {
            seq,
            store,
            arrived: now,
        };
        self.held += 1;
        self.fifo_push(seq, now, deliver);
        Order::Held
    }

    /// Gives up every gap whose first held packet has waited `hold_time`, delivering in order.
    pub fn poll<F: FnMut(&[u8])>(&mut self, now: Timestamp, deliver: &mut F) {
        loop {
            self.clean_fifo();
            if self.fifo_len == 0 {
                return;
            }
            let (seq, arrived) = self.fifo[self.fifo_head];
            if arrived.saturating_add(self.hold_time) > now {
                return;
            }
            self.stats.hold_expired += 1;
            self.give_up_until(seq, now, deliver);
        }
    }

    /// Gives up every number before `seq` at once (counted lost), delivering in order what is
    /// held before it: the receiver has decided the stream resumes at `seq` (after an outage).
    /// Nothing happens before the first packet or if `seq` is not ahead of the expected number.
    pub fn skip_to<F: FnMut(&[u8])>(&mut self, seq: u64, now: Timestamp, deliver: &mut F) {
        if self.synced && seq_before(self.next, seq) {
            self.give_up_until(seq, now, deliver);
        }
    }

    /// Delivers every held packet in order, counting the gaps between them as lost, and forgets
    /// the expected number (used when the peer restarts). Counters are kept; the hold times of
    /// the packets delivered end at `now`.
    pub fn flush<F: FnMut(&[u8])>(&mut self, now: Timestamp, deliver: &mut F) {
        while self.held > 0 {
            self.step(now, deliver);
        }
        self.reset();
    }

    /// Drops everything held without delivering it and forgets the expected number.
    pub fn reset(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.store = Store::Empty;
        }
        self.large_free.clear();
        self.large_free.extend((0..self.large.len() as u16).rev());
        self.fifo_head = 0;
        self.fifo_len = 0;
        self.held = 0;
        self.synced = false;
    }

    #[inline]
    fn deliver_now<F: FnMut(&[u8])>(
        &mut self,
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> Order {
        self.stats.in_order += 1;
        deliver(payload);
        self.next = self.next.wrapping_add(1);
        if self.held > 0 {
            self.release_run(now, deliver);
            self.clean_fifo();
        }
        Order::InOrder
    }

    /// Delivers the held packet at `next` and those following it without a gap.
    fn release_run<F: FnMut(&[u8])>(&mut self, now: Timestamp, deliver: &mut F) {
        while self.held > 0 {
            let idx = (self.next & self.mask) as usize;
            let slot = self.slots[idx];
            if slot.store == Store::Empty || slot.seq != self.next {
                return;
            }
            self.deliver_slot(idx, now, deliver);
            self.next = self.next.wrapping_add(1);
        }
    }

    /// Moves `next` by one: delivers the packet held there, or counts the number lost.
    fn step<F: FnMut(&[u8])>(&mut self, now: Timestamp, deliver: &mut F) {
        let idx = (self.next & self.mask) as usize;
        let slot = self.slots[idx];
        if slot.store != Store::Empty && slot.seq == self.next {
            self.deliver_slot(idx, now, deliver);
        } else {
            self.stats.lost = self.stats.lost.wrapping_add(1);
        }
        self.next = self.next.wrapping_add(1);
    }

    /// Gives up every gap before `target`, delivering what is held, then releases the run that
    /// follows.
    fn give_up_until<F: FnMut(&[u8])>(&mut self, target: u64, now: Timestamp, deliver: &mut F) {
        while self.held > 0 && seq_before(self.next, target) {
            self.step(now, deliver);
        }
        let d = seq_distance(self.next, target);
        if d > 0 {
            self.stats.lost = self.stats.lost.wrapping_add(d.unsigned_abs());
            self.next = target;
        }
        self.release_run(now, deliver);
        self.clean_fifo();
    }

    /// Delivers the packet held in slot `idx` at `now`, counting it reordered and recording how
    /// long it was held.
    fn deliver_slot<F: FnMut(&[u8])>(&mut self, idx: usize, now: Timestamp, deliver: &mut F) {
        let slot = self.slots[idx];
        if slot.store == Store::Empty {
            return;
        }
        self.stats.reordered += 1;
        self.stats.hold.observe(now.saturating_since(slot.arrived));
        match slot.store {
            Store::Empty => {}
            Store::Small(len) => {
                let start = idx * self.slot_size;
                deliver(&self.small[start..start + len as usize]);
            }
            Store::Large(i) => {
                deliver(&self.large[usize::from(i)]);
                self.large_free.push(i);
            }
        }
        self.slots[idx].store = Store::Empty;
        self.held -= 1;
    }

    fn is_held(&self, seq: u64) -> bool {
        let slot = self.slots[(seq & self.mask) as usize];
        slot.store != Store::Empty && slot.seq == seq
    }

    /// Pops FIFO entries of packets already released.
    fn clean_fifo(&mut self) {
        while self.fifo_len > 0 {
            let (seq, _) = self.fifo[self.fifo_head];
            if self.is_held(seq) {
                return;
            }
            self.fifo_head = (self.fifo_head + 1) % self.fifo.len();
            self.fifo_len -= 1;
        }
    }

    fn fifo_push<F: FnMut(&[u8])>(&mut self, seq: u64, now: Timestamp, deliver: &mut F) {
        if self.fifo_len == self.fifo.len() {
            self.clean_fifo();
        }
        if self.fifo_len == self.fifo.len() {
            // Not reachable while the FIFO holds 2 * capacity entries (see the field's docs);
            // kept so that a logic error degrades into an early give-up, never a panic.
            let (front, _) = self.fifo[self.fifo_head];
            self.give_up_until(front, now, deliver);
            self.clean_fifo();
        }
        let tail = (self.fifo_head + self.fifo_len) % self.fifo.len();
        self.fifo[tail] = (seq, now);
        self.fifo_len += 1;
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn buffer(capacity: usize) -> ReorderBuffer {
        ReorderBuffer::new(&ReorderConfig {
            capacity,
            slot_size: 16,
            ..Default::default()
        })
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * MS)
    }

    /// Pushes `seq` (payload = its low byte) and returns the delivered low bytes.
    fn push(b: &mut ReorderBuffer, seq: u64, now: Timestamp) -> (Order, Vec<u8>) {
        let mut out = Vec::new();
        let order = b.push(seq, &[seq as u8], now, &mut |p: &[u8]| out.push(p[0]));
        (order, out)
    }

    fn poll(b: &mut ReorderBuffer, now: Timestamp) -> Vec<u8> {
        let mut out = Vec::new();
        b.poll(now, &mut |p: &[u8]| out.push(p[0]));
        out
    }

    #[test]
    fn in_order_passes_straight_through() {
        let mut b = buffer(8);
        for s in 100..110 {
            assert_eq!(push(&mut b, s, t(0)), (Order::InOrder, vec![s as u8]));
        }
        assert_eq!(b.stats().in_order, 10);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn gap_fills_and_releases_in_order() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        assert_eq!(push(&mut b, 3, t(0)), (Order::Held, vec![]));
        assert_eq!(push(&mut b, 2, t(0)), (Order::Held, vec![]));
        assert_eq!(b.held(), 2);
        assert_eq!(b.next_deadline(), Some(t(3)));
        assert_eq!(push(&mut b, 1, t(1)), (Order::InOrder, vec![1, 2, 3]));
        assert_eq!(b.held(), 0);
        assert_eq!(b.next_deadline(), None);
        let s = b.stats();
        assert_eq!((s.in_order, s.reordered, s.lost), (2, 2, 0));
    }

    #[test]
    fn hold_time_expiry_gives_up_the_gap() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        push(&mut b, 2, t(1));
        push(&mut b, 5, t(2));
        assert!(poll(&mut b, t(3)).is_empty(), "not yet: 2 arrived at 1 ms");
        assert_eq!(
            poll(&mut b, t(4)),
            vec![2],
            "gap 1 given up, run stops at gap 3-4"
        );
        assert_eq!(b.next_deadline(), Some(t(5)));
        assert_eq!(poll(&mut b, t(5)), vec![5]);
        let s = b.stats();
        assert_eq!((s.lost, s.hold_expired, s.reordered), (3, 2, 2));
        // The lost packet turns up late: delivered out of order, counted late.
        assert_eq!(push(&mut b, 1, t(6)), (Order::Late, vec![1]));
        assert_eq!(push(&mut b, 6, t(6)), (Order::InOrder, vec![6]));
    }

    #[test]
    fn early_arrival_bounds_the_hold_of_later_lower_numbers() {
        // 5 arrives first and must not wait longer than its own hold time because 2 arrived
        // later with a later deadline.
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        push(&mut b, 5, t(0));
        push(&mut b, 2, t(2));
        assert_eq!(b.next_deadline(), Some(t(3)));
        assert_eq!(poll(&mut b, t(3)), vec![2, 5]);
        assert_eq!(b.stats().lost, 3);
    }

    #[test]
    fn full_buffer_gives_up_oldest_gap() {
        let mut b = buffer(4);
        push(&mut b, 0, t(0));
        push(&mut b, 2, t(0));
        push(&mut b, 3, t(0));
        push(&mut b, 4, t(0));
        // 5 is 4 past next (1): no room, gap 1 is given up and 2..=4 released.
        assert_eq!(push(&mut b, 5, t(0)), (Order::InOrder, vec![2, 3, 4, 5]));
        assert_eq!(b.stats().overflows, 1);
        assert_eq!(b.stats().lost, 1);
        // A jump far ahead gives up everything in between in O(1).
        assert_eq!(push(&mut b, 1_000_000, t(0)), (Order::Held, vec![]));
        assert_eq!(b.next_expected(), Some(1_000_000 - 3));
        assert_eq!(b.stats().lost, 1 + (1_000_000 - 3 - 6));
    }

    #[test]
    fn huge_jumps_count_without_overflow() {
        // Found by the `receive` fuzz target: two jumps of almost 2^63 overflowed `lost`.
        let mut b = buffer(4);
        push(&mut b, 0, t(0));
        let mut seq = 0u64;
        for _ in 0..6 {
            seq = seq.wrapping_add(1 << 62);
            assert_eq!(push(&mut b, seq, t(0)).0, Order::Held);
        }
        assert_eq!(b.next_expected(), Some(seq - 3));
        // `next` passed 6 * 2^62 - 4 numbers, 5 of them held packets: the counter wraps once.
        let lost = (6u64 << 62).wrapping_sub(4 + 5);
        assert_eq!(b.stats().lost, lost);
    }

    #[test]
    fn gaps_given_up_one_by_one_wrap_the_lost_counter() {
        // Found by the `receive` fuzz target (`fuzz/seeds/receive/regress-lost-counter-overflow.bin`):
        // after huge jumps, the gaps before a held packet are given up one number at a time,
        // and that count overflowed instead of wrapping like the bulk one.
        let mut b = buffer(4);
        push(&mut b, 0, t(0));
        let mut seq = 0u64;
        for jump in [(1 << 62) + 5, 1 << 62, 1 << 62, 1 << 62] {
            seq = seq.wrapping_add(jump);
            assert_eq!(push(&mut b, seq, t(0)).0, Order::Held);
        }
        // 2^64 + 5 numbers passed, less the 3 before the last held packet and the 4 held.
        assert_eq!(b.stats().lost, u64::MAX - 1);
        assert_eq!(poll(&mut b, t(10)), vec![seq as u8]);
        assert_eq!(b.stats().lost, 1);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn late_packets_can_be_dropped() {
        let mut b = ReorderBuffer::new(&ReorderConfig {
            capacity: 4,
            deliver_late: false,
            ..Default::default()
        });
        push(&mut b, 10, t(0));
        assert_eq!(push(&mut b, 9, t(0)), (Order::LateDropped, vec![]));
        assert_eq!(b.stats().late_dropped, 1);
    }

    #[test]
    fn large_packets_use_the_large_pool_and_overflow_it() {
        let mut b = ReorderBuffer::new(&ReorderConfig {
            capacity: 8,
            slot_size: 4,
            large_slots: 1,
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut d = |p: &[u8]| out.push(p.to_vec());
        b.push(0, &[0; 10], t(0), &mut d);
        assert_eq!(b.push(2, &[2; 10], t(0), &mut d), Order::Held);
        // No large buffer left: gap 1 is given up, 2 released, then 3 is in order.
        assert_eq!(b.push(3, &[3; 10], t(0), &mut d), Order::InOrder);
        assert_eq!(out, vec![vec![0; 10], vec![2; 10], vec![3; 10]]);
        // A held large packet above a new large one: the new one is delivered early.
        let mut out = Vec::new();
        let mut d = |p: &[u8]| out.push(p[0]);
        assert_eq!(b.push(7, &[7; 10], t(0), &mut d), Order::Held);
        // 5 needs a large buffer; 7 holds the only one, so the gap at 4 is given up.
        assert_eq!(b.push(5, &[5; 10], t(0), &mut d), Order::InOrder);
        assert_eq!(b.push(4, &[4; 2], t(0), &mut d), Order::Late);
        assert_eq!(b.push(6, &[6; 2], t(0), &mut d), Order::InOrder);
        assert_eq!(b.push(8, &[0; 70_000], t(0), &mut d), Order::Refused);
        assert_eq!(out, vec![5, 4, 6, 7]);
    }

    #[test]
    fn wrap_around() {
        let mut b = buffer(8);
        let s0 = u64::MAX - 2;
        push(&mut b, s0, t(0));
        push(&mut b, 1, t(0));
        push(&mut b, u64::MAX, t(0));
        let (order, out) = push(&mut b, u64::MAX - 1, t(0));
        assert_eq!(order, Order::InOrder);
        assert_eq!(out, vec![(u64::MAX - 1) as u8, u64::MAX as u8]);
        assert_eq!(push(&mut b, 0, t(0)).1, vec![0, 1]);
    }

    #[test]
    fn flush_delivers_everything_held() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        push(&mut b, 4, t(0));
        push(&mut b, 2, t(0));
        let mut out = Vec::new();
        b.flush(t(0), &mut |p: &[u8]| out.push(p[0]));
        assert_eq!(out, vec![2, 4]);
        assert_eq!(b.next_expected(), None);
        assert_eq!(push(&mut b, 77, t(0)), (Order::InOrder, vec![77]));
    }

    fn hold_nanos(b: &ReorderBuffer) -> (u64, u64) {
        let h = b.stats().hold;
        (h.count, h.sum_nanos)
    }

    #[test]
    fn hold_in_order_and_late_observe_nothing() {
        let mut b = buffer(8);
        for s in 0..10 {
            push(&mut b, s, t(s));
        }
        assert_eq!(b.stats().hold, crate::stats::HoldStats::default());
        // Give up 10, then deliver it late: still nothing observed.
        push(&mut b, 11, t(20));
        poll(&mut b, t(30));
        assert_eq!(hold_nanos(&b), (1, 10 * MS), "only 11 was held");
        assert_eq!(push(&mut b, 10, t(31)), (Order::Late, vec![10]));
        assert_eq!(hold_nanos(&b), (1, 10 * MS));
    }

    #[test]
    fn hold_gap_fill_observes_the_wait() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        assert_eq!(push(&mut b, 2, t(1)), (Order::Held, vec![]));
        assert_eq!(push(&mut b, 3, t(2)), (Order::Held, vec![]));
        assert_eq!(push(&mut b, 1, t(3)), (Order::InOrder, vec![1, 2, 3]));
        let h = b.stats().hold;
        // 2 waited 2 ms, 3 waited 1 ms; 1 was in order.
        assert_eq!((h.count, h.sum_nanos), (2, 3 * MS));
        assert_eq!(h.buckets[3], 1, "1 ms: bucket <= 1 ms");
        assert_eq!(h.buckets[4], 1, "2 ms: bucket <= 2.5 ms");
        assert_eq!(h.count, b.stats().reordered);
    }

    #[test]
    fn hold_expiry_observes_the_hold_time() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        push(&mut b, 2, t(1));
        let deadline = b.next_deadline().unwrap();
        assert_eq!(poll(&mut b, deadline), vec![2]);
        assert_eq!(hold_nanos(&b), (1, 3 * MS));
        // A late poll observes the whole wait, not just the hold time.
        push(&mut b, 5, t(10));
        assert_eq!(poll(&mut b, t(14)), vec![5]);
        assert_eq!(hold_nanos(&b), (2, 3 * MS + 4 * MS));
        assert_eq!(b.stats().reordered, 2);
    }

    #[test]
    fn hold_overflow_observes_the_wait() {
        let mut b = buffer(4);
        push(&mut b, 0, t(0));
        push(&mut b, 2, t(0));
        push(&mut b, 3, t(1));
        // 5 does not fit behind gap 1: 2 and 3 are given up at 2 ms, 5 is held.
        assert_eq!(push(&mut b, 5, t(2)), (Order::Held, vec![2, 3]));
        assert_eq!(b.stats().overflows, 1);
        assert_eq!(hold_nanos(&b), (2, 2 * MS + MS));
    }

    #[test]
    fn hold_flush_observes_held_packets() {
        let mut b = buffer(8);
        push(&mut b, 0, t(0));
        push(&mut b, 4, t(1));
        push(&mut b, 2, t(2));
        let mut out = Vec::new();
        b.flush(t(5), &mut |p: &[u8]| out.push(p[0]));
        assert_eq!(out, vec![2, 4]);
        assert_eq!(hold_nanos(&b), (2, 3 * MS + 4 * MS));
        assert_eq!(b.stats().reordered, 2);
    }

    #[test]
    fn hold_clock_going_backwards_observes_zero() {
        let mut b = buffer(8);
        push(&mut b, 0, t(5));
        push(&mut b, 2, t(5));
        assert_eq!(push(&mut b, 1, t(1)), (Order::InOrder, vec![1, 2]));
        let h = b.stats().hold;
        assert_eq!((h.count, h.sum_nanos, h.buckets[0]), (1, 0, 1));
    }

    #[test]
    fn fifo_never_overflows_under_churn() {
        // Alternate gaps so that released entries linger behind live ones.
        let mut b = buffer(4);
        let mut delivered = 0;
        let mut d = |_: &[u8]| delivered += 1;
        b.push(0, &[0], t(0), &mut d);
        for base in (1..4000u64).step_by(4) {
            b.push(base + 2, &[0], t(0), &mut d);
            b.push(base + 1, &[0], t(0), &mut d);
            b.push(base + 3, &[0], t(0), &mut d);
            b.push(base, &[0], t(0), &mut d);
        }
        assert_eq!(delivered, 4001);
        assert_eq!(b.held(), 0);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.stats().lost, 0);
        let _ = b.next_expected().unwrap();
    }
}
