//! Forward error correction over blocks of frames (`docs/PROTOCOL.md`, *Forward error
//! correction*): an [`Encoder`] a sender's worker feeds with its data frames, which closes a
//! block after `k` of them (or when the caller's timeout says so) and yields `m` parity
//! frames; a [`Decoder`] at the receiver, which rebuilds the block's lost frames as soon as
//! any `k` of its `k + m` shards are in.
//!
//! A shard is a frame in canonical form ([`crate::wire::canonicalize`]: link, lane, lane
//! counter, send time and flags zeroed, so every copy of a frame gives the same shard) after
//! its 2-byte length, zero-padded to the longest shard of the block. `m = 1` is XOR parity;
//! `m >= 2` Reed-Solomon over GF(2^8) (`reed-solomon-erasure`, a systematic Vandermonde code).
//!
//! Invariants:
//! - A rebuilt frame is handed on only if it is exactly what its block says it is: a whole
//!   data, fragment or bundle frame in canonical form whose length fits the shard, with zero
//!   padding after it, carrying the member extension of its place in the block. Anything
//!   else (a forged or corrupt parity frame, a block whose frames disagree) is counted
//!   `rejected` and dropped; the caller then checks the frame like any other (epoch,
//!   duplicate window, admission).
//! - Bounded memory: at most [`SLOTS`] blocks under way, each at most `k + m` shards; the
//!   oldest is given up (counted `unrecoverable` if it was missing data) when a new one needs
//!   room, and every block is given up at the hold deadline.
//! - No allocation per frame once warm: shard buffers are pooled.

use core::time::Duration;

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::{
    Timestamp,
    seq::seq_before,
    wire::{
        FecParams, Frame, FrameType, Kind, Member, ParityRepr, Repr, SHARD_LEN_PREFIX, Stamp,
        canonicalize, is_canonical,
    },
};

/// The longest a sender keeps a block open before it sends its parity (`docs/PROTOCOL.md`:
/// at most 2 ms after its first frame).
pub const MAX_BLOCK_TIME: Duration = Duration::from_millis(2);

/// Blocks a [`Decoder`] keeps under way at most.
pub const SLOTS: usize = 32;
/// Blocks per sender lane remembered as finished, so that their late frames open nothing.
const DONE_MEMORY: usize = 64;
/// Sender lanes (workers) the decoder follows; the protocol allows 64.
const LANES: usize = 64;

/// The code of one block shape: XOR for one parity frame, Reed-Solomon for more.
#[derive(Debug)]
enum Code {
    Xor,
    Rs(Box<ReedSolomon>),
}

impl Code {
    fn new(params: FecParams) -> Self {
        if params.m == 1 {
            return Code::Xor;
        }
        match ReedSolomon::new(usize::from(params.k), usize::from(params.m)) {
            Ok(rs) => Code::Rs(Box::new(rs)),
            // k + m <= 40 < 256 shards: GF(2^8) always has room.
            Err(_) => Code::Xor,
        }
    }

    /// Computes `parity` (each as long as the data shards) from `data`.
    fn encode(&self, data: &[&[u8]], parity: &mut [Vec<u8>]) {
        match self {
            Code::Xor => {
                let out = &mut parity[0];
                out.fill(0);
                for shard in data {
                    xor_into(out, shard);
                }
            }
            Code::Rs(rs) => {
                // Lengths are equal by construction, and counts match the code.
                let _ = rs.encode_sep(data, parity);
            }
        }
    }

    /// Rebuilds the absent data shards among `shards` (`k` data then `m` parity, each with
    /// whether it is present). At least `k` must be present.
    fn reconstruct(&self, shards: &mut [(&mut [u8], bool)]) -> bool {
        match self {
            Code::Xor => {
                let Some(missing) = shards.iter().position(|(_, present)| !present) else {
                    return true;
                };
                if shards.iter().filter(|(_, present)| !present).count() != 1 {
                    return false;
                }
                let (before, rest) = shards.split_at_mut(missing);
                let (target, after) = rest.split_first_mut().unwrap_or_else(|| unreachable!());
                target.0.fill(0);
                for (shard, _) in before.iter().chain(after.iter()) {
                    xor_into(target.0, shard);
                }
                target.1 = true;
                true
            }
            Code::Rs(rs) => rs.reconstruct_data(shards).is_ok(),
        }
    }
}

fn xor_into(out: &mut [u8], input: &[u8]) {
    for (o, i) in out.iter_mut().zip(input) {
        *o ^= i;
    }
}

/// Writes the shard of `frame` (alagg header first, no tag) into `out`: its length, then the
/// frame in canonical form.
fn shard_of(frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    // Frames are at most a link MTU (< 65536) long.
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    out.extend_from_slice(frame);
    canonicalize(&mut out[SHARD_LEN_PREFIX..]);
}

/// What a sender's FEC counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FecTxStats {
    /// Blocks closed (and their parity computed).
    pub blocks: u64,
    /// Blocks closed before they were full (the timeout).
    pub partial: u64,
}

/// The block a worker is filling.
#[derive(Debug, Clone, Copy)]
struct Open {
    first_seq: u64,
    count: u8,
    opened: Timestamp,
}

/// FEC at the sender: numbers blocks, takes the shards of their data frames, and computes
/// their parity when they close.
///
/// Per frame: [`Encoder::member`] gives the extension to insert ([`Member::insert`]); after
/// emitting the frame, [`Encoder::push`] takes its bytes, and [`Encoder::carried`] each link a
/// copy went on. When [`Encoder::is_full`] (or at [`Encoder::deadline`]), [`Encoder::close`]
/// yields the block's [`Parity`].
#[derive(Debug)]
pub struct Encoder {
    params: FecParams,
    code: Code,
    block: u32,
    open: Option<Open>,
    /// The open block's data shards (`count` of them in use).
    shards: Vec<Vec<u8>>,
    parity: Vec<Vec<u8>>,
    zero: Vec<u8>,
    /// Frames of the open block per link.
    links: Vec<u16>,
    /// Whether the current member's shard was taken.
    pushed: bool,
    stats: FecTxStats,
}

impl Encoder {
    /// An encoder of `params` blocks for a sender with `links` links.
    pub fn new(params: FecParams, links: usize) -> Self {
        Self {
            params,
            code: Code::new(params),
            block: 0,
            open: None,
            shards: Vec::new(),
            parity: Vec::new(),
            zero: Vec::new(),
            links: vec![0; links],
            pushed: true,
            stats: FecTxStats::default(),
        }
    }

    /// The block shape.
    pub fn params(&self) -> FecParams {
        self.params
    }

    /// Numbers blocks from `block` on: an encoder that takes over from another (its
    /// [`Encoder::next_block`]) keeps the receiver's memory of finished blocks from mistaking
    /// new blocks for old ones.
    pub fn resume_at(mut self, block: u32) -> Self {
        self.block = block;
        self
    }

    /// The number the next block gets.
    pub fn next_block(&self) -> u32 {
        self.block
    }

    /// Changes the block shape; the open block, if any, is closed first by the caller
    /// ([`Encoder::close`]): this takes effect with the next block.
    pub fn set_params(&mut self, params: FecParams) {
        if params != self.params && self.open.is_none() {
            self.params = params;
            self.code = Code::new(params);
        }
    }

    /// Counters.
    pub fn stats(&self) -> FecTxStats {
        self.stats
    }

    /// The extension of the next data frame, numbered `seq`, opening a block at `now` if none
    /// is open. Call [`Encoder::push`] with the frame before asking for the next.
    pub fn member(&mut self, seq: u64, now: Timestamp) -> Member {
        if self.open.is_none() {
            self.links.fill(0);
        }
        let open = *self.open.get_or_insert(Open {
            first_seq: seq,
            count: 0,
            opened: now,
        });
        self.pushed = false;
        Member {
            block: self.block,
            index: open.count,
            params: self.params,
            first_seq: open.first_seq,
        }
    }

    /// Takes the shard of the frame (alagg header with its member extension, and payload, no
    /// tag) of the member [`Encoder::member`] gave last. A second call for the same member
    /// (a copy on another link) is ignored.
    pub fn push(&mut self, frame: &[u8]) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if self.pushed {
            return;
        }
        self.pushed = true;
        let index = usize::from(open.count);
        if self.shards.len() <= index {
            self.shards.resize_with(index + 1, Vec::new);
        }
        shard_of(frame, &mut self.shards[index]);
        open.count += 1;
    }

    /// A copy of a frame of the open block went on `link`.
    pub fn carried(&mut self, link: usize) {
        if let Some(n) = self.links.get_mut(link) {
            *n = n.saturating_add(1);
        }
    }

    /// Whether the open block has its `k` data frames.
    pub fn is_full(&self) -> bool {
        self.open.is_some_and(|o| o.count >= self.params.k)
    }

    /// When the open block must be closed, `timeout` after it opened; `None` if none is open.
    pub fn deadline(&self, timeout: Duration) -> Option<Timestamp> {
        self.open
            .filter(|o| o.count > 0)
            .map(|o| o.opened.saturating_add(timeout))
    }

    /// Closes the open block (full, or at its deadline) and computes its parity; `None` if no
    /// frame was taken.
    pub fn close(&mut self) -> Option<Parity<'_>> {
        let open = self.open.take()?;
        self.pushed = true;
        if open.count == 0 {
            return None;
        }
        let (k, m) = (usize::from(self.params.k), usize::from(self.params.m));
        let count = usize::from(open.count);
        let len = self.shards[..count].iter().map(Vec::len).max().unwrap_or(0);
        for shard in &mut self.shards[..count] {
            shard.resize(len, 0);
        }
        self.zero.clear();
        self.zero.resize(len, 0);
        if self.parity.len() < m {
            self.parity.resize_with(m, Vec::new);
        }
        for p in &mut self.parity[..m] {
            p.clear();
            p.resize(len, 0);
        }
        let mut data: [&[u8]; crate::wire::MAX_FEC_K as usize] =
            [&[]; crate::wire::MAX_FEC_K as usize];
        for (i, slot) in data.iter_mut().enumerate().take(k) {
            *slot = self
                .shards
                .get(i)
                .filter(|_| i < count)
                .map_or(&self.zero[..], |s| &s[..]);
        }
        self.code.encode(&data[..k], &mut self.parity[..m]);
        self.stats.blocks += 1;
        if count < k {
            self.stats.partial += 1;
        }
        let block = self.block;
        self.block = self.block.wrapping_add(1);
        Some(Parity {
            block,
            first_seq: open.first_seq,
            params: self.params,
            count: open.count,
            shards: &self.parity[..m],
            links: &self.links,
        })
    }
}

/// The parity frames of a closed block.
#[derive(Debug)]
pub struct Parity<'a> {
    block: u32,
    first_seq: u64,
    params: FecParams,
    count: u8,
    shards: &'a [Vec<u8>],
    links: &'a [u16],
}

impl Parity<'_> {
    /// Number of parity frames, `m` (a block closed early keeps all of them: with fewer, a
    /// short block would survive fewer losses per frame than a full one).
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether there is none (never, for a closed block).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// How many of the block's frames each link carried, in link order (to put parity
    /// elsewhere).
    pub fn link_use(&self) -> &[u16] {
        self.links
    }

    /// Data frames in the block.
    pub fn count(&self) -> u8 {
        self.count
    }

    /// Header of parity frame `j` (`0..m`) with `stamp`, of a sender of `epoch` setting
    /// `flags`, and its payload.
    pub fn frame(&self, j: usize, stamp: Stamp, epoch: u64, flags: u8) -> Option<(Repr, &[u8])> {
        let shard = self.shards.get(j)?;
        let repr = Repr {
            stamp,
            epoch,
            seq: self.first_seq,
            payload_len: u16::try_from(shard.len()).ok()?,
            flags,
            kind: Kind::Parity(ParityRepr {
                block: self.block,
                // j < m <= 8 and k <= 32.
                index: self.params.k + j as u8,
                k: self.params.k,
                m: self.params.m,
                count: self.count,
            }),
        };
        Some((repr, shard))
    }
}

/// What a receiver's FEC counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FecRxStats {
    /// Parity frames received (of the current epoch, plausible).
    pub parity: u64,
    /// Data frames rebuilt from parity.
    pub recovered: u64,
    /// Blocks given up with data missing that parity could not rebuild.
    pub unrecoverable: u64,
    /// Rebuilt frames, or parity, that did not check out (forged or corrupt), dropped.
    pub rejected: u64,
}

/// One block under way at the receiver.
#[derive(Debug)]
struct Slot {
    lane: u8,
    block: u32,
    params: FecParams,
    first_seq: u64,
    opened: Timestamp,
    /// Data frames in the block, from its parity.
    count: Option<u8>,
    /// Shard length, from its parity.
    shard_len: Option<usize>,
    /// Bit `i`: shard `i` is in (data `0..k`, parity `k..k + m`).
    present: u64,
    shards: Vec<Vec<u8>>,
}

impl Slot {
    fn data_missing(&self) -> Option<usize> {
        let count = self.count?;
        Some(
            (0..usize::from(count))
                .filter(|i| self.present & (1 << i) == 0)
                .count(),
        )
    }

    fn parity_present(&self) -> usize {
        let k = usize::from(self.params.k);
        (k..self.params.total())
            .filter(|i| self.present & (1 << i) != 0)
            .count()
    }

    /// Whether data is known to be missing: by the count, or a gap below the highest shard in.
    fn lacks_data(&self) -> bool {
        match self.data_missing() {
            Some(missing) => missing > 0,
            None => {
                let k = u32::from(self.params.k);
                let data = self.present & ((1u64 << k) - 1);
                data != 0 && data.count_ones() < 64 - data.leading_zeros()
            }
        }
    }
}

/// What the decoder makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Kept (or not needed): nothing to do yet.
    Kept,
    /// The block of `slot` can be rebuilt now: call [`Decoder::rebuild`].
    Ready(usize),
}

/// FEC at the receiver: keeps the shards of the blocks under way and rebuilds lost data
/// frames.
#[derive(Debug)]
pub struct Decoder {
    slots: Vec<Slot>,
    /// Per sender lane: the blocks finished lately (number + 1; 0 empty), by number modulo
    /// [`DONE_MEMORY`].
    done: Vec<[u64; DONE_MEMORY]>,
    codes: Vec<(FecParams, Code)>,
    pool: Vec<Vec<u8>>,
    stats: FecRxStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            slots: Vec::with_capacity(SLOTS),
            done: vec![[0; DONE_MEMORY]; LANES],
            codes: Vec::new(),
            pool: Vec::new(),
            stats: FecRxStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> FecRxStats {
        self.stats
    }

    /// Forgets every block (the peer restarted).
    pub fn reset(&mut self) {
        while let Some(slot) = self.slots.pop() {
            self.recycle(slot);
        }
        for done in &mut self.done {
            done.fill(0);
        }
    }

    fn is_done(&self, lane: u8, block: u32) -> bool {
        self.done
            .get(usize::from(lane))
            .is_none_or(|d| d[block as usize % DONE_MEMORY] == u64::from(block) + 1)
    }

    fn finish(&mut self, index: usize) {
        let slot = self.slots.swap_remove(index);
        if let Some(done) = self.done.get_mut(usize::from(slot.lane)) {
            done[slot.block as usize % DONE_MEMORY] = u64::from(slot.block) + 1;
        }
        self.recycle(slot);
    }

    fn recycle(&mut self, mut slot: Slot) {
        self.pool.append(&mut slot.shards);
    }

    /// The slot of `(lane, block)`, opened at `now` if new (evicting the oldest when full);
    /// `None` if the block is finished or its fields disagree with the slot's.
    fn slot(
        &mut self,
        lane: u8,
        block: u32,
        params: FecParams,
        first_seq: u64,
        now: Timestamp,
    ) -> Option<usize> {
        if self.is_done(lane, block) {
            return None;
        }
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.lane == lane && s.block == block)
        {
            let s = &self.slots[i];
            if s.params != params || s.first_seq != first_seq {
                self.stats.rejected += 1;
                return None;
            }
            return Some(i);
        }
        if self.slots.len() >= SLOTS {
            let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].opened.as_nanos())?;
            if self.slots[oldest].lacks_data() {
                self.stats.unrecoverable += 1;
            }
            self.finish(oldest);
        }
        let mut shards = Vec::with_capacity(params.total());
        for _ in 0..params.total() {
            shards.push(self.pool.pop().unwrap_or_default());
        }
        self.slots.push(Slot {
            lane,
            block,
            params,
            first_seq,
            opened: now,
            count: None,
            shard_len: None,
            present: 0,
            shards,
        });
        Some(self.slots.len() - 1)
    }

    /// Takes the shard of a data, fragment or bundle frame (alagg header first, decrypted, no
    /// tag) of the peer's current epoch, a member of `member`'s block, that came on the
    /// sender's lane (worker) `lane`.
    pub fn on_member(&mut self, lane: u8, member: Member, frame: &[u8], now: Timestamp) -> Taken {
        let Some(i) = self.slot(lane, member.block, member.params, member.first_seq, now) else {
            return Taken::Kept;
        };
        let bit = 1u64 << member.index;
        let slot = &mut self.slots[i];
        if slot.present & bit != 0 {
            return Taken::Kept;
        }
        if slot
            .shard_len
            .is_some_and(|len| SHARD_LEN_PREFIX + frame.len() > len)
        {
            // Longer than the block's parity says its frames are: one of them is forged.
            self.stats.rejected += 1;
            return Taken::Kept;
        }
        shard_of(frame, &mut slot.shards[usize::from(member.index)]);
        slot.present |= bit;
        self.settle(i)
    }

    /// Takes a parity frame of the peer's current epoch (`first_seq` its `seq`) that came on
    /// the sender's lane `lane`, with its payload (the shard).
    pub fn on_parity(
        &mut self,
        lane: u8,
        first_seq: u64,
        parity: ParityRepr,
        payload: &[u8],
        now: Timestamp,
    ) -> Taken {
        self.stats.parity += 1;
        let Some(i) = self.slot(lane, parity.block, parity.params(), first_seq, now) else {
            return Taken::Kept;
        };
        let slot = &mut self.slots[i];
        let index = usize::from(parity.index);
        if slot.present & (1 << index) != 0 {
            return Taken::Kept;
        }
        let agrees = slot.count.is_none_or(|c| c == parity.count)
            && slot.shard_len.is_none_or(|l| l == payload.len());
        let fits = (0..usize::from(slot.params.k))
            .filter(|d| slot.present & (1 << d) != 0)
            .all(|d| slot.shards[d].len() <= payload.len());
        let beyond = (usize::from(parity.count)..usize::from(slot.params.k))
            .any(|d| slot.present & (1 << d) != 0);
        if !agrees || !fits || beyond {
            self.stats.rejected += 1;
            return Taken::Kept;
        }
        slot.count = Some(parity.count);
        slot.shard_len = Some(payload.len());
        let shard = &mut slot.shards[index];
        shard.clear();
        shard.extend_from_slice(payload);
        slot.present |= 1 << index;
        self.settle(i)
    }

    /// After a shard came into slot `i`: finished if it lacks nothing, ready if it can be
    /// rebuilt.
    fn settle(&mut self, i: usize) -> Taken {
        let slot = &self.slots[i];
        let k = usize::from(slot.params.k);
        let data_in = (slot.present & ((1u64 << k) - 1)).count_ones() as usize;
        match slot.data_missing() {
            None if data_in == k => {
                self.finish(i);
                Taken::Kept
            }
            None => Taken::Kept,
            Some(0) => {
                self.finish(i);
                Taken::Kept
            }
            Some(missing) if missing <= slot.parity_present() => Taken::Ready(i),
            // Data may still come: the block waits until the hold deadline.
            Some(_) => Taken::Kept,
        }
    }

    /// Rebuilds the missing data frames of the block in `slot` (after [`Taken::Ready`]) and
    /// hands each that checks out to `each` (alagg header first, canonical form, no tag); the
    /// block is then finished.
    pub fn rebuild(&mut self, slot: usize, mut each: impl FnMut(&[u8])) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let (Some(count), Some(len)) = (s.count, s.shard_len) else {
            return;
        };
        let params = s.params;
        let (k, total) = (usize::from(params.k), params.total());
        let missing: u64 = (0..usize::from(count))
            .filter(|i| s.present & (1 << i) == 0)
            .fold(0, |acc, i| acc | 1 << i);
        // Data beyond `count` is zero, and so present.
        for (i, shard) in s.shards.iter_mut().enumerate() {
            if i < k && (i >= usize::from(count) || missing & (1 << i) != 0) {
                shard.clear();
            }
            shard.resize(len, 0);
        }
        let present = s.present | (((1u64 << k) - 1) & !((1u64 << count) - 1));
        let code_at = match self.codes.iter().position(|(p, _)| *p == params) {
            Some(at) => at,
            None => {
                self.codes.push((params, Code::new(params)));
                self.codes.len() - 1
            }
        };
        let code = &self.codes[code_at].1;
        let mut views: Vec<(&mut [u8], bool)> = s
            .shards
            .iter_mut()
            .take(total)
            .enumerate()
            .map(|(i, shard)| (&mut shard[..], present & (1 << i) != 0))
            .collect();
        let rebuilt = code.reconstruct(&mut views);
        drop(views);
        if rebuilt {
            for index in (0..usize::from(count)).filter(|i| missing & (1 << i) != 0) {
                let expect = Member {
                    block: s.block,
                    index: index as u8,
                    params,
                    first_seq: s.first_seq,
                };
                match checked(&s.shards[index], expect) {
                    Some(frame) => {
                        self.stats.recovered += 1;
                        each(frame);
                    }
                    None => self.stats.rejected += 1,
                }
            }
        } else {
            self.stats.unrecoverable += 1;
        }
        self.finish(slot);
    }

    /// The lowest number a block under way (not finished, not past `now - hold`) may still
    /// bring: the receiver must not give up gaps from there on before the block is settled,
    /// or a frame its parity rebuilds would come late. (A block missing more frames than its
    /// parity can rebuild still holds them: the decoder cannot tell a lost frame from one
    /// still on a slower link; the wait is bounded by the receiver's FEC wait.)
    pub fn pending_floor(&self, now: Timestamp, hold: Duration) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| now < s.opened.saturating_add(hold))
            .map(|s| s.first_seq)
            .reduce(|a, b| if seq_before(b, a) { b } else { a })
    }

    /// Gives up the blocks opened more than `hold` before `now`.
    pub fn expire(&mut self, now: Timestamp, hold: Duration) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].opened.saturating_add(hold) <= now {
                if self.slots[i].lacks_data() {
                    self.stats.unrecoverable += 1;
                }
                self.finish(i);
            } else {
                i += 1;
            }
        }
    }

    /// Blocks under way.
    pub fn open_blocks(&self) -> usize {
        self.slots.len()
    }
}

/// The frame in `shard` if it is exactly what `expect` says: its length fits and the padding
/// after it is zero, it parses as a data, fragment or bundle frame in canonical form with
/// nothing after its payload, and carries `expect` as its member extension.
fn checked(shard: &[u8], expect: Member) -> Option<&[u8]> {
    let len_bytes = shard.get(..SHARD_LEN_PREFIX)?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let frame = shard.get(SHARD_LEN_PREFIX..SHARD_LEN_PREFIX + len)?;
    if shard[SHARD_LEN_PREFIX + len..].iter().any(|&b| b != 0) || !is_canonical(frame) {
        return None;
    }
    let view = Frame::new_checked(frame).ok()?;
    let whole = usize::from(view.header_len()) + usize::from(view.payload_len()) == len;
    let member_type = matches!(
        view.frame_type(),
        FrameType::Data | FrameType::Fragment | FrameType::Bundle
    );
    if !whole || !member_type || view.member() != Ok(Some(expect)) {
        return None;
    }
    Repr::parse(&view).ok()?;
    Some(frame)
}

/// How long the loss must stay below a level's floor before [`AutoFec`] steps down.
pub const AUTO_CALM: Duration = Duration::from_secs(10);

/// The levels of [`AutoFec`]: the block shape, and the loss ratio from which it is used.
const AUTO_LEVELS: [(FecParams, f32); 4] = [
    (FecParams { k: 8, m: 1 }, 0.002),
    (FecParams { k: 8, m: 2 }, 0.01),
    (FecParams { k: 8, m: 4 }, 0.04),
    // A copy of every frame, on another link than the frame.
    (FecParams { k: 1, m: 1 }, 0.12),
];

/// `fec = "auto"`: picks the protection from the links' measured loss, with hysteresis. It
/// steps up at once to the level the loss calls for (none below 0.2 %, XOR 8+1 from there,
/// Reed-Solomon 8+2 from 1 %, 8+4 from 4 %, a copy from 12 %), and down one level only after
/// the loss has stayed below half the current level's threshold for [`AUTO_CALM`], so a
/// link whose loss comes and goes is not left unprotected between bursts.
#[derive(Clone, Copy, Debug, Default)]
pub struct AutoFec {
    /// 0: none; `i + 1`: `AUTO_LEVELS[i]`.
    level: usize,
    /// Since when the loss has been below the current level's floor.
    calm_since: Option<Timestamp>,
}

impl AutoFec {
    /// The protection for a measured `loss` (a ratio: what the frames see) at `now`.
    pub fn decide(&mut self, loss: f32, now: Timestamp) -> Option<FecParams> {
        let wanted = AUTO_LEVELS
            .iter()
            .rposition(|&(_, from)| loss >= from)
            .map_or(0, |i| i + 1);
        if wanted > self.level {
            self.level = wanted;
            self.calm_since = None;
        } else if self.level > 0 && loss < AUTO_LEVELS[self.level - 1].1 / 2.0 {
            let since = *self.calm_since.get_or_insert(now);
            if now.saturating_since(since) >= AUTO_CALM {
                self.level -= 1;
                // Still calm: the next level's period starts now.
                self.calm_since = Some(now);
            }
        } else {
            self.calm_since = None;
        }
        self.current()
    }

    /// The protection chosen last.
    pub fn current(&self) -> Option<FecParams> {
        self.level.checked_sub(1).map(|i| AUTO_LEVELS[i].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn auto_steps_up_at_once_and_down_after_calm() {
        let mut auto = AutoFec::default();
        assert_eq!(auto.decide(0.0, at(0)), None);
        assert_eq!(auto.decide(0.003, at(10)), FecParams::new(8, 1));
        assert_eq!(auto.decide(0.05, at(20)), FecParams::new(8, 4));
        assert_eq!(auto.decide(0.2, at(30)), FecParams::new(1, 1));
        // Loss gone: one level down per calm period, not before.
        assert_eq!(auto.decide(0.0, at(40)), FecParams::new(1, 1));
        assert_eq!(auto.decide(0.0, at(9_000)), FecParams::new(1, 1));
        assert_eq!(auto.decide(0.0, at(10_040)), FecParams::new(8, 4));
        assert_eq!(auto.decide(0.0, at(20_040)), FecParams::new(8, 2));
        // Loss back above half the level's threshold: the calm starts over.
        assert_eq!(auto.decide(0.006, at(25_000)), FecParams::new(8, 2));
        assert_eq!(auto.decide(0.0, at(30_040)), FecParams::new(8, 2));
        assert_eq!(auto.decide(0.0, at(40_040)), FecParams::new(8, 1));
        assert_eq!(auto.decide(0.0, at(50_040)), None);
    }

    #[test]
    fn loss_between_a_level_and_half_its_threshold_keeps_it() {
        let mut auto = AutoFec::default();
        assert_eq!(auto.decide(0.015, at(0)), FecParams::new(8, 2));
        for s in 1..100 {
            assert_eq!(auto.decide(0.006, at(s * 1000)), FecParams::new(8, 2));
        }
    }

    #[test]
    fn member_extension_round_trips_and_bounds_are_checked() {
        use crate::wire::{DATA_HEADER_LEN, MEMBER_LEN};
        let member = Member {
            block: 0xdead_beef,
            index: 5,
            params: FecParams::new(8, 2).unwrap_or_else(|| unreachable!()),
            first_seq: 0x0102_0304_0506_0708,
        };
        let repr = Repr {
            stamp: Stamp::on(1),
            epoch: 9,
            seq: 0x0102_0304_0506_070a,
            payload_len: 3,
            flags: 0,
            kind: Kind::Data,
        };
        let mut buf = [0u8; 64];
        let len = repr.emit_with_payload(&[1, 2, 3], &mut buf).unwrap_or(0);
        let len = member.insert(&mut buf, len).unwrap_or(0);
        assert_eq!(len, DATA_HEADER_LEN + MEMBER_LEN + 3);
        let view = Frame::new_checked(&buf[..len]).unwrap_or_else(|_| unreachable!());
        assert_eq!(view.member(), Ok(Some(member)));
        assert_eq!(view.payload(), &[1, 2, 3]);
        assert_eq!(Repr::parse(&view).map(|r| r.seq), Ok(repr.seq));
        // An index beyond k is malformed.
        let mut bad = buf;
        bad[DATA_HEADER_LEN + 4] = 8;
        let view = Frame::new_checked(&bad[..len]).unwrap_or_else(|_| unreachable!());
        assert!(view.member().is_err());
        // A second extension does not fit: the header already grew.
        assert!(member.insert(&mut buf, len).is_err());
    }
}
