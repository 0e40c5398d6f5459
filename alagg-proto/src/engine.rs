//! The engine a datapath drives: a [`Sender`] that numbers and cuts packets, and a [`Receiver`]
//! that turns frames from every link back into one ordered, duplicate-free packet stream.
//!
//! Sans I/O (in the manner of boringtun's `Tunn`): the caller passes bytes and the time and
//! gets decisions back; buffers on the wire side are the caller's (AF_XDP UMEM frames).
//!
//! Transmit, per IP packet:
//! ```
//! # use alagg_proto::{Lane, Sender, Redundant, Scheduler, LinkState, Timestamp};
//! # use alagg_proto::wire::{EthernetRepr, MacAddr, DEFAULT_ETHERTYPE};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let links = [LinkState::new(0, 1500), LinkState::new(1, 1500)];
//! let eth = EthernetRepr { dst: MacAddr([2, 0, 0, 0, 0, 2]), src: MacAddr([2, 0, 0, 0, 0, 1]),
//!                          ethertype: DEFAULT_ETHERTYPE };
//! let (mut sender, mut sched) = (Sender::new(0x1234_5678), Redundant);
//! let packet = [0x45u8; 3000];
//! let chosen = sched.select(packet.len(), &links, Timestamp::ZERO);
//! let mtu = chosen.min_mtu(&links).ok_or("no usable link")?;
//! let plan = sender.plan(packet.len(), mtu)?;
//! // One lane per link (and capture worker): it numbers the frames sent on it.
//! let mut lanes = [Lane::new(0, 0), Lane::new(1, 0)];
//! for link in chosen.iter() {
//!     for i in 0..plan.frame_count() {
//!         let mut umem_frame = [0u8; 2048];
//!         let stamp = lanes[link].stamp(Timestamp::ZERO);
//!         let len = plan.emit_ethernet(i, stamp, &eth, &packet, &mut umem_frame)?;
//!         // hand (umem_frame, len) to the link's TX ring
//! #       assert!(len <= 14 + 1500);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Receive: [`Receiver::on_frame`] for each frame (the bytes after the Ethernet header), which
//! delivers in-order packets at once from the frame itself (no copy) and copies only packets it
//! must hold; [`Receiver::poll`] when [`Receiver::next_deadline`] passes, which releases packets
//! whose gap has waited the hold time. Both hand packets to a `deliver` closure that writes them
//! to the TUN device; the slice is valid only during the call.
//!
//! Pipeline inside the receiver: parse → peer epoch check → plausibility of the number →
//! duplicate window check → (fragments: reassembly) → window mark → reorder buffer → deliver.
//! Dedup and reorder see whole packets.
//!
//! What one frame can do (v1 frames are not authenticated, and a frame two restarts old may
//! still be in flight on a slow link): nothing that outlasts a hold time. Two rules see to it.
//!
//! - Epochs. Every frame carries the sender's per-boot epoch; the first epoch seen is adopted at
//!   once. A frame of any other epoch is *doubted*: it touches none of the current stream's
//!   state (window, reorder buffer, reassembly) and consumes no number; it is recorded as a
//!   candidate (`candidate` module: bounded, at most 4 at once, each keeping its latest 8
//!   frames). A candidate epoch is adopted (the peer restarted) on a frame that makes its
//!   evidence at least 4 distinct numbers within 64 of each other, provided the current epoch
//!   has delivered no new packet for a hold time. Each of the 4 must come within a hold time of
//!   the one before if the candidate could be the past (an epoch that started before the
//!   current one, whose frames may still be in flight on a slow link), within
//!   [`RESTART_EVIDENCE_WINDOW`] if it can only be the future (an epoch that started later, or
//!   the current one far ahead) or while the current epoch has delivered fewer than 4
//!   packets (one frame seen before the peer's first must not hold the peer back), so that a
//!   restarted peer's sparse traffic is believed too. Then what is held is delivered, window, reorder buffer and reassembly start over, the
//!   frames the candidate kept are handled (lowest number first) and then the deciding frame;
//!   frames it could not keep are counted (`pending_lost`). A real restart takes far longer
//!   than the hold time, so the new epoch is believed on its fourth frame and loses nothing,
//!   however sparse its traffic (one frame each 10 s at least);
//!   one restarting within the hold time is believed at most one hold time after the old
//!   epoch's last packet. One frame, or any number of frames of an epoch while the current one
//!   is flowing, never is.
//! - Epochs left. The last 4 epochs left are remembered with the highest number accepted in
//!   each. Their frames count as `stale_epoch` and are candidates like any other, so a wrong
//!   epoch believed (replayed frames while the peer was idle) gives way to the genuine one as
//!   soon as that flows again and the wrong one has been quiet for a hold time. An epoch
//!   adopted again resumes with every number up to its old top taken as seen, so nothing it
//!   delivered before is delivered twice.
//! - Sequence jumps. A frame of the current epoch whose first number is more than a quarter of
//!   the duplicate window ahead of the highest number accepted (1024 by default), or whose last
//!   number (a bundle's) more than half, is doubted the same way (`implausible_seq`): a jump
//!   that long means that many consecutive packets lost on every link, which the reorder buffer
//!   could not have waited for anyway. Below it, one frame moves the window by at most a quarter
//!   of it (half for a bundle), so it takes several such frames (four, or two bundles) before
//!   a genuine packet looks too old; its gap waits one hold time at most, and the genuine
//!   packets behind it are delivered late, not lost. A candidate ahead of the current epoch's own stream is adopted by the rule for
//!   epochs (an outage of every link is quiet); the gap before it is then given up at once
//!   (counted lost), and the jump counted (`seq_jumps`). So one frame never makes `lost` grow
//!   by more than the reorder capacity plus half the window.
//!
//! The rule costs the steady state two comparisons a frame; candidates cost nothing until a
//! doubted frame arrives. What remains: an attacker who injects a stream of frames (four or
//! more, close in number) while the peer is idle can have them believed, until the peer's
//! traffic resumes; an attacker with the current epoch can take numbers of genuine packets
//! ahead of them. Both need a wire format with authentication (v2).

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use core::time::Duration;
use std::sync::Arc;

use crate::Timestamp;
use crate::auth::{AuthError, Keyring};
use crate::candidate::{Candidate, Candidates, EVIDENCE, SLOTS};
use crate::fec::{Decoder, Taken};
use crate::frag::{FragOutcome, Reassembler, ReassemblyConfig};
use crate::health::Health;
use crate::lanes::Lanes;
pub use crate::reorder::Order;
use crate::reorder::{ReorderBuffer, ReorderConfig};
use crate::seq::{SeqCheck, SeqWindow, seq_before, seq_distance};
use crate::stats::{RxStats, TxStats};
use crate::wire::{
    BUNDLE_ENTRY_HEADER_LEN, BUNDLE_HEADER_LEN, BundleEntries, BundleRepr, DATA_HEADER_LEN,
    ETH_HDR_LEN, EthernetRepr, FEEDBACK_REPORT_LEN, FLAG_AUTH, FRAGMENT_HEADER_LEN, FragmentLayout,
    FragmentRepr, Frame, Kind, LaneReport, LinkId, ParityRepr, ProbeRepr, Repr, Stamp, WireError,
    epoch_start_ms,
};

/// Sizing and timing of a [`Receiver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Duplicate window in sequence numbers (rounded up to a power of two); at least
    /// `reorder_capacity`. Default 4096.
    pub dedup_window: usize,
    /// Packets the reorder buffer holds (rounded up to a power of two). Default 1024.
    pub reorder_capacity: usize,
    /// Longest a packet waits for a gap before it: with [`Receiver::adapt_hold`], the ceiling
    /// of the hold it sets. Default 3 ms.
    pub hold_time: Duration,
    /// Bytes per reorder slot; held packets longer than this use a large buffer. Default 2048.
    pub slot_size: usize,
    /// Held packets longer than `slot_size` at once. Default 16.
    pub large_slots: usize,
    /// Longest IP packet accepted: 65 575 by default (an IPv6 packet with a full 16-bit
    /// payload length, the largest GSO packet).
    pub max_packet_len: usize,
    /// Packets reassembled at once. Default 16.
    pub reassembly_slots: usize,
    /// How long an incomplete fragmented packet is kept. Default 10 ms.
    pub reassembly_timeout: Duration,
    /// Deliver packets arriving after their gap was given up (out of order). Default true.
    pub deliver_late: bool,
    /// Give a gap up as soon as every lane heard from within the hold time has gone past it
    /// (`lanes` module), instead of after the hold time: right when each lane (link and
    /// sending worker) delivers its frames in order, as an Ethernet link does. Default true.
    pub release_passed_gaps: bool,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        let reorder = ReorderConfig::default();
        let reassembly = ReassemblyConfig::default();
        ReceiverConfig {
            dedup_window: 4096,
            reorder_capacity: reorder.capacity,
            hold_time: reorder.hold_time,
            slot_size: reorder.slot_size,
            large_slots: reorder.large_slots,
            max_packet_len: reorder.max_packet_len,
            reassembly_slots: reassembly.slots,
            reassembly_timeout: reassembly.timeout,
            deliver_late: reorder.deliver_late,
            release_passed_gaps: true,
        }
    }
}

/// A [`ReceiverConfig`] that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The window must cover the reorder buffer, or packets inside it would look too old.
    #[error(
        "dedup_window ({window}) must be at least reorder_capacity ({capacity}); raise dedup_window"
    )]
    WindowSmallerThanReorder {
        /// Window asked for.
        window: usize,
        /// Reorder capacity asked for.
        capacity: usize,
    },
    /// A size that must be positive is zero or too large.
    #[error("{name} must be between 1 and {max}, got {value}")]
    OutOfRange {
        /// The setting at fault.
        name: &'static str,
        /// Its value.
        value: usize,
        /// Largest allowed value.
        max: usize,
    },
}

impl ReceiverConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ranges: [(&'static str, usize, usize); 6] = [
            ("dedup_window", self.dedup_window, 1 << 24),
            ("reorder_capacity", self.reorder_capacity, 1 << 20),
            ("slot_size", self.slot_size, 65_575),
            ("large_slots", self.large_slots, usize::from(u16::MAX)),
            ("max_packet_len", self.max_packet_len, u32::MAX as usize),
            ("reassembly_slots", self.reassembly_slots, 4096),
        ];
        for (name, value, max) in ranges {
            if value == 0 || value > max {
                return Err(ConfigError::OutOfRange { name, value, max });
            }
        }
        if self.dedup_window < self.reorder_capacity {
            return Err(ConfigError::WindowSmallerThanReorder {
                window: self.dedup_window,
                capacity: self.reorder_capacity,
            });
        }
        Ok(())
    }
}

/// What [`Receiver::on_frame`] did with a frame. `link` is the sender's link id from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The first copy of packet `seq` (for fragmented packets: the fragment completing it)
    /// came from `link`; `order` says whether it was delivered, held or late.
    Accepted {
        /// Sending link.
        link: LinkId,
        /// Packet sequence number.
        seq: u64,
        /// Delivery decision.
        order: Order,
    },
    /// A fragment stored; its packet is not complete yet.
    FragmentStored {
        /// Sending link.
        link: LinkId,
        /// Packet sequence number.
        seq: u64,
    },
    /// A copy of a packet or fragment already accepted; dropped.
    Duplicate {
        /// Sending link.
        link: LinkId,
        /// Packet sequence number.
        seq: u64,
    },
    /// Older than the duplicate window can judge (802.1CB rogue); dropped.
    TooOld {
        /// Sending link.
        link: LinkId,
        /// Packet sequence number.
        seq: u64,
    },
    /// A fragment refused by reassembly, or a packet over `max_packet_len`; dropped.
    Refused {
        /// Sending link.
        link: LinkId,
        /// Packet sequence number.
        seq: u64,
    },
    /// A bundle of `count` packets numbered from `seq`, of which `accepted` were first copies
    /// (each delivered, held or late like a data frame's packet); the others were duplicates or
    /// too old.
    Bundle {
        /// Sending link.
        link: LinkId,
        /// Sequence number of the bundle's first packet.
        seq: u64,
        /// Packets in the bundle.
        count: u16,
        /// Packets of which this was the first copy.
        accepted: u16,
    },
    /// A keepalive / probe; the datapath answers or measures with it.
    Probe {
        /// Sending link.
        link: LinkId,
        /// Its `lane_seq`.
        seq: u64,
        /// Timestamps.
        probe: ProbeRepr,
    },
    /// A feedback frame: the peer's reports on the lanes of `link` (its payload).
    Feedback {
        /// Sending link.
        link: LinkId,
    },
    /// A parity frame: its shard went to FEC, which delivered what it rebuilt.
    Parity {
        /// Sending link.
        link: LinkId,
    },
    /// A frame of an epoch the peer recently left (in flight across a restart); not
    /// delivered. It still counts as evidence should that epoch come back (module docs).
    StaleEpoch {
        /// Sending link.
        link: LinkId,
    },
    /// A frame of an epoch that is neither the peer's current one nor one it recently left:
    /// the first frames of a restart, or frames that are not the peer's. Not delivered now;
    /// kept as evidence of a restart, and delivered if the epoch is adopted (module docs).
    UnknownEpoch {
        /// Sending link.
        link: LinkId,
        /// The frame's sequence number.
        seq: u64,
    },
    /// A frame of the current epoch too far ahead of the duplicate window to be believed on
    /// its own; kept as evidence of a resumption after an outage (module docs), consuming no
    /// number.
    Implausible {
        /// Sending link.
        link: LinkId,
        /// The frame's sequence number.
        seq: u64,
    },
    /// A frame without a valid authentication tag (or with one, and no key here); dropped
    /// before it touched any state.
    Unauthenticated(AuthError),
    /// Not a valid frame of this version (including other versions and unknown types); dropped.
    Malformed(WireError),
}

/// The host's rules for whether a whole packet may be delivered at all (a sane IP header, a
/// source among the peer's networks, ...); see [`Receiver::with_admission`].
pub struct Admission(Box<AdmitFn>);

/// The length a packet is delivered with (its header's, without a frame's padding), if it
/// may be delivered at all.
type AdmitFn = dyn Fn(&[u8]) -> Option<usize> + Send;

impl Admission {
    /// Admission by `admit`, which returns the length to deliver a packet with (at most its
    /// length), or `None` if it may not be delivered.
    pub fn new(admit: impl Fn(&[u8]) -> Option<usize> + Send + 'static) -> Self {
        Admission(Box::new(admit))
    }
}

/// Why a whole packet did not take its number.
enum NotTaken {
    /// The window has seen it, or it is older than the window.
    Seen(SeqCheck),
    /// The host's admission refused it.
    Refused,
}

impl NotTaken {
    fn outcome(self, link: LinkId, seq: u64) -> RxOutcome {
        match self {
            NotTaken::Seen(SeqCheck::TooOld) => RxOutcome::TooOld { link, seq },
            NotTaken::Seen(_) => RxOutcome::Duplicate { link, seq },
            NotTaken::Refused => RxOutcome::Refused { link, seq },
        }
    }
}

/// When the current epoch last delivered a packet the window had not seen, and how many it has
/// delivered since it was adopted, up to [`EVIDENCE`]: until it has shown as much as a
/// candidate must, it is not trusted to be the present either.
#[derive(Clone, Copy, Debug, Default)]
struct Fresh {
    last: Option<Timestamp>,
    count: u32,
}

/// The one place a whole packet takes its number: fresh in `window`, put to `admission` (which
/// trims it), marked. A packet refused takes no number and is counted in `stats`.
fn take_number<'p>(
    (window, admission, fresh): (&mut SeqWindow, Option<&Admission>, &mut Fresh),
    stats: &mut RxStats,
    (seq, packet, now): (u64, &'p [u8], Timestamp),
) -> Result<&'p [u8], NotTaken> {
    let verdict = window.check(seq);
    if !matches!(verdict, SeqCheck::Fresh) {
        window.count(verdict);
        return Err(NotTaken::Seen(verdict));
    }
    let packet = match admission.map(|admit| (admit.0)(packet)) {
        None => packet,
        Some(Some(len)) => &packet[..len.min(packet.len())],
        Some(None) => {
            stats.inadmissible += 1;
            return Err(NotTaken::Refused);
        }
    };
    window.check_and_mark(seq);
    fresh.last = Some(now);
    fresh.count = (fresh.count + 1).min(EVIDENCE);
    Ok(packet)
}

impl core::fmt::Debug for Admission {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Admission")
    }
}

/// Receives the frames of one peer on all links: epoch tracking, reassembly, duplicate
/// elimination and reordering. See the module docs for the pipeline.
#[derive(Debug)]
pub struct Receiver {
    epoch: Option<u64>,
    /// Epochs left, each with the highest number accepted in it (module docs).
    left: [Option<(u64, Option<u64>)>; EPOCHS_LEFT],
    /// Where the next epoch left is remembered in `left` (a ring).
    left_next: usize,
    /// What the current epoch has delivered lately.
    fresh: Fresh,
    candidates: Candidates,
    window: SeqWindow,
    /// Furthest ahead of the window's top a frame's first number is believed on its own.
    max_jump: u64,
    reorder: ReorderBuffer,
    reassembly: Reassembler,
    /// How long a packet waits behind a gap now ([`Receiver::adapt_hold`]); also how long a
    /// lane or an epoch stays believed live without frames.
    hold_time: Duration,
    /// [`ReceiverConfig::hold_time`]: the most `hold_time` may grow to.
    hold_ceiling: Duration,
    max_packet_len: usize,
    /// With `[auth]`: the keys frames are checked with before anything else.
    keyring: Option<Keyring>,
    /// Whether a packet may be delivered, asked before its number is taken.
    admission: Option<Admission>,
    /// How far each lane of the current stream has come.
    lanes: Lanes,
    /// [`ReceiverConfig::release_passed_gaps`].
    release_passed_gaps: bool,
    /// Where encrypted payloads are decrypted.
    scratch: Vec<u8>,
    /// The peer's lanes as metered here, and this host's links as the peer's feedback shows.
    health: Health,
    /// FEC: the blocks under way, once the peer sent a frame of one.
    fec: Option<Box<Decoder>>,
    /// The hold the links' delays call for, before [`HOLD_FLOOR`] and the ceiling.
    spread_hold: Duration,
    stats: RxStats,
}

/// The shortest hold [`Receiver::adapt_hold`] sets (unless the ceiling is lower): what a
/// worker thread descheduled for a moment, on a busy machine, may delay a lane by.
pub const HOLD_FLOOR: Duration = Duration::from_millis(5);
/// Added to the measured delay spread ([`Receiver::adapt_hold`]).
pub const HOLD_MARGIN: Duration = Duration::from_millis(1);
/// Lanes heard within this long count in the delay spread.
const SPREAD_LIVE: Duration = Duration::from_secs(1);

/// Epochs left that are remembered (with the numbers delivered in them).
const EPOCHS_LEFT: usize = 4;

/// Longest gap between two frames of a candidate that can only be the future (a restart, a
/// resumption ahead) for its evidence to add up (module docs).
pub const RESTART_EVIDENCE_WINDOW: Duration = Duration::from_secs(10);

/// Why a frame is not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doubt {
    /// Its epoch is not the current one.
    Epoch,
    /// Its number is too far ahead of the window.
    Jump,
}

impl Receiver {
    /// A receiver with all its memory allocated up front (large buffers grow on first use).
    pub fn new(config: &ReceiverConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let window = SeqWindow::new(config.dedup_window);
        Ok(Receiver {
            epoch: None,
            left: [None; EPOCHS_LEFT],
            left_next: 0,
            fresh: Fresh::default(),
            candidates: Candidates::default(),
            max_jump: window.size() / 4,
            window,
            reorder: ReorderBuffer::new(&ReorderConfig {
                capacity: config.reorder_capacity,
                hold_time: config.hold_time,
                slot_size: config.slot_size,
                large_slots: config.large_slots,
                max_packet_len: config.max_packet_len,
                deliver_late: config.deliver_late,
            }),
            reassembly: Reassembler::new(&ReassemblyConfig {
                slots: config.reassembly_slots,
                timeout: config.reassembly_timeout,
                max_packet_len: config.max_packet_len,
            }),
            hold_time: config.hold_time,
            hold_ceiling: config.hold_time,
            max_packet_len: config.max_packet_len,
            keyring: None,
            admission: None,
            lanes: Lanes::default(),
            release_passed_gaps: config.release_passed_gaps,
            scratch: Vec::new(),
            health: Health::default(),
            fec: None,
            spread_hold: config.hold_time,
            stats: RxStats::default(),
        })
    }

    /// Checks every frame's tag with `keyring` before anything else (`docs/PROTOCOL.md`,
    /// *Authentication*): a frame without a valid one touches no state.
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Asks `admission` about every whole packet before its number is marked seen: a packet
    /// it refuses is dropped (counted `inadmissible`) and takes no number, so a forged packet
    /// the host would refuse anyway cannot make the genuine packet of that number a duplicate.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Keeps the health of `links` links (`health` module), from `now`: the peer's lanes are
    /// metered and its feedback read. Without it, feedback is counted and ignored.
    pub fn with_health(mut self, links: usize, now: Timestamp) -> Self {
        self.health = Health::new(links, now);
        // At most 64 links (`sched::MAX_LINKS`): the count fits a byte.
        self.lanes
            .set_links(links.min(crate::sched::MAX_LINKS) as u8);
        self
    }

    /// Link health: the meters to report from, and this host's links as the peer sees them.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Link health, to tick it or tell it of a carrier loss.
    pub fn health_mut(&mut self) -> &mut Health {
        &mut self.health
    }

    /// The peer's current epoch, once a frame has been seen.
    pub fn peer_epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// All counters.
    pub fn stats(&self) -> RxStats {
        RxStats {
            dedup: self.window.stats(),
            reorder: self.reorder.stats(),
            reassembly: self.reassembly.stats(),
            fec: self.fec.as_ref().map(|d| d.stats()).unwrap_or_default(),
            hold_now_us: u64::try_from(self.hold_time.as_micros()).unwrap_or(u64::MAX),
            ..self.stats
        }
    }

    /// Sets how long packets wait behind a gap from what the links show: the spread of their
    /// delays plus twice their jitter ([`crate::health::Meters::delay_spread`]) and
    /// [`HOLD_MARGIN`], no less than [`HOLD_FLOOR`] and no more than the configured hold
    /// time, which is the ceiling. A packet whose copy, or whose neighbours, travel on a slower
    /// link is then waited for as long as that link takes, and no longer. Call it every few
    /// milliseconds; until it is first called the hold is the configured one, and without
    /// frames (nothing measured) it is the floor.
    pub fn adapt_hold(&mut self, now: Timestamp) {
        let floor = HOLD_FLOOR.min(self.hold_ceiling);
        let wanted = self
            .health
            .meters
            .delay_spread(now, SPREAD_LIVE)
            .map_or(floor, |spread| spread.saturating_add(HOLD_MARGIN));
        self.spread_hold = wanted;
        let hold = wanted.clamp(floor, self.hold_ceiling);
        if hold != self.hold_time {
            self.hold_time = hold;
            self.reorder.set_hold_time(hold);
        }
    }

    /// How long a packet waits behind a gap now ([`Receiver::adapt_hold`]).
    pub fn hold_time(&self) -> Duration {
        self.hold_time
    }

    /// How long after a block's first frame its parity may still come: the longest a sender
    /// keeps a block open ([`crate::fec::MAX_BLOCK_TIME`]) and the links' delay spread with
    /// its margin (what the hold is made of, before its floor), at most the hold. Gaps the
    /// lanes went past wait for a block's parity no longer than this.
    fn fec_wait(&self) -> Duration {
        self.spread_hold
            .saturating_add(crate::fec::MAX_BLOCK_TIME)
            .min(self.hold_time)
    }

    /// Packets held waiting for a gap.
    pub fn held(&self) -> usize {
        self.reorder.held()
    }

    /// When [`Receiver::poll`] must next be called, or `None` if no timer runs.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match (
            self.reorder.next_deadline(),
            self.reassembly.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers: gives up gaps held for the hold time (delivering what follows them) and
    /// drops incomplete packets past the reassembly timeout.
    pub fn poll<F: FnMut(&[u8])>(&mut self, now: Timestamp, mut deliver: F) {
        self.reassembly.expire(now);
        if let Some(fec) = self.fec.as_mut() {
            fec.expire(now, self.hold_time);
        }
        self.reorder.poll(now, &mut deliver);
    }

    /// Handles one frame: `frame` is everything after the Ethernet header, borrowed only for
    /// this call. Packets that become deliverable, in order, go to `deliver`. Never panics.
    #[inline]
    pub fn on_frame<F: FnMut(&[u8])>(
        &mut self,
        frame: &[u8],
        now: Timestamp,
        deliver: F,
    ) -> RxOutcome {
        self.stats.frames += 1;
        let Some(keyring) = self.keyring.as_mut() else {
            if Frame::new_checked(frame).is_ok_and(|f| f.flags() & FLAG_AUTH != 0) {
                // Authenticated by a peer with a key, which this receiver does not have.
                self.stats.auth_unexpected += 1;
                return RxOutcome::Unauthenticated(AuthError::Missing);
            }
            return self.on_checked(frame, now, deliver);
        };
        let epoch = match Frame::new_checked(frame) {
            Ok(view) => view.epoch(),
            Err(e) => return self.malformed(e),
        };
        let mut scratch = core::mem::take(&mut self.scratch);
        let outcome = match keyring.key(epoch).open(frame, &mut scratch) {
            Ok(opened) => self.on_checked(opened, now, deliver),
            Err(AuthError::Wire(e)) => self.malformed(e),
            Err(e) => {
                if e == AuthError::Missing {
                    self.stats.unauthenticated += 1;
                } else {
                    self.stats.auth_failed += 1;
                }
                RxOutcome::Unauthenticated(e)
            }
        };
        self.scratch = scratch;
        outcome
    }

    /// Counts a frame that does not parse.
    fn malformed(&mut self, e: WireError) -> RxOutcome {
        match e {
            WireError::BadVersion(_) => self.stats.bad_version += 1,
            WireError::UnknownType(_) => self.stats.unknown_type += 1,
            _ => self.stats.malformed += 1,
        }
        RxOutcome::Malformed(e)
    }

    /// [`Receiver::on_frame`] for a frame that passed authentication, or needs none.
    fn on_checked<F: FnMut(&[u8])>(
        &mut self,
        frame: &[u8],
        now: Timestamp,
        mut deliver: F,
    ) -> RxOutcome {
        let bytes = frame;
        let parsed = Frame::new_checked(frame).and_then(|f| Repr::parse(&f).map(|r| (f, r)));
        let (frame, repr) = match parsed {
            Ok(ok) => ok,
            Err(e) => return self.malformed(e),
        };
        self.health
            .meters
            .saw(repr.epoch, repr.stamp, bytes.len(), now);
        // Feedback reports on this host's lanes, whatever the peer's start: it is read even
        // while the peer's epoch is in doubt.
        if let Kind::Feedback = repr.kind {
            self.stats.feedback += 1;
            let link = repr.stamp.link;
            self.health
                .on_feedback(link, repr.stamp.tx_time, frame.payload(), now);
            if self.epoch == Some(repr.epoch) {
                self.lane_floor(&repr, now, &mut deliver);
            }
            return RxOutcome::Feedback { link };
        }
        match self.epoch {
            Some(epoch) if epoch == repr.epoch => {}
            // The first epoch seen is adopted at once.
            None => {
                self.epoch = Some(repr.epoch);
                self.fresh = Fresh::default();
            }
            Some(_) => {
                return self.on_doubted(
                    Doubt::Epoch,
                    &repr,
                    bytes,
                    frame.payload(),
                    now,
                    &mut deliver,
                );
            }
        }
        if let Kind::Probe(probe) = repr.kind {
            self.stats.probes += 1;
            self.lane_floor(&repr, now, &mut deliver);
            let (link, seq) = (repr.stamp.link, repr.stamp.lane_seq);
            return RxOutcome::Probe { link, seq, probe };
        }
        if let Kind::Parity(parity) = repr.kind {
            return self.on_parity(&repr, parity, frame.payload(), now, &mut deliver);
        }
        if self.implausible(&repr) {
            return self.on_doubted(
                Doubt::Jump,
                &repr,
                bytes,
                frame.payload(),
                now,
                &mut deliver,
            );
        }
        self.on_believed(&repr, bytes, frame.payload(), now, &mut deliver)
    }

    /// Whether a frame of the current epoch numbers packets too far ahead of the window to be
    /// believed on its own: its first number more than a quarter of the window ahead of the
    /// highest accepted, or its last (a bundle's) more than half (module docs).
    #[inline]
    fn implausible(&self, repr: &Repr) -> bool {
        let Some(top) = self.window.top() else {
            return false;
        };
        let last = match repr.kind {
            Kind::Bundle(BundleRepr { count }) => {
                repr.seq.wrapping_add(u64::from(count.saturating_sub(1)))
            }
            _ => repr.seq,
        };
        seq_distance(top, repr.seq) > self.max_jump as i64
            || seq_distance(top, last) > 2 * self.max_jump as i64
    }

    /// A data, fragment or bundle frame of the current epoch, believed.
    fn on_believed<F: FnMut(&[u8])>(
        &mut self,
        repr: &Repr,
        bytes: &[u8],
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        let outcome = self.handle_believed(repr, payload, now, deliver);
        self.fec_member(repr, bytes, now, deliver);
        if !self.release_passed_gaps {
            return outcome;
        }
        // How far the frame's lane has come: the last packet it completes (a fragment other
        // than the last leaves its packet to come).
        let seq = repr.seq;
        let last = match repr.kind {
            Kind::Data => Some(seq),
            Kind::Bundle(BundleRepr { count }) => {
                Some(seq.wrapping_add(u64::from(count.saturating_sub(1))))
            }
            Kind::Fragment(frag) if frag.index.saturating_add(1) >= frag.count => Some(seq),
            Kind::Fragment(_) => Some(seq.wrapping_sub(1)),
            Kind::Probe(_) | Kind::Feedback | Kind::Parity(_) => None,
        };
        if let Some(last) = last {
            let lane = (repr.stamp.link, repr.stamp.lane);
            self.lanes.saw(lane, last, now, self.hold_time);
            self.release_passed(now, deliver);
        }
        outcome
    }

    /// A probe or feedback frame of the current epoch: its `seq` is the next number its
    /// sender's worker may give (`docs/PROTOCOL.md`), so its lane brings nothing below it that
    /// it has not brought. Believed only up to the highest number seen: a forged far-ahead
    /// `seq` releases no more than the genuine stream has gone past.
    fn lane_floor<F: FnMut(&[u8])>(&mut self, repr: &Repr, now: Timestamp, deliver: &mut F) {
        if !self.release_passed_gaps || repr.seq == 0 {
            return;
        }
        let Some(top) = self.window.top() else {
            return;
        };
        let floor = repr.seq.wrapping_sub(1);
        let last = if seq_before(top, floor) { top } else { floor };
        self.lanes
            .floor((repr.stamp.link, repr.stamp.lane), last, now);
        self.release_passed(now, deliver);
    }

    /// Gives up at once the gaps every live lane has gone past (`lanes` module): no lane will
    /// bring them, so they are lost, and holding what follows would only delay it.
    fn release_passed<F: FnMut(&[u8])>(&mut self, now: Timestamp, deliver: &mut F) {
        if self.reorder.held() == 0 {
            return;
        }
        let Some(mut passed) = self.lanes.passed(now, self.hold_time) else {
            return;
        };
        // Not past a block whose parity may still rebuild what the lanes went past.
        if let Some(floor) = self
            .fec
            .as_ref()
            .and_then(|d| d.pending_floor(now, self.fec_wait()))
        {
            if seq_before(floor, passed) {
                passed = floor;
            }
        }
        let before = self.reorder.next_expected();
        self.reorder.skip_to(passed, now, deliver);
        if self.reorder.next_expected() != before {
            self.stats.gaps_passed += 1;
        }
    }

    /// [`Receiver::on_believed`] before the lanes are told.
    fn handle_believed<F: FnMut(&[u8])>(
        &mut self,
        repr: &Repr,
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        let (link, seq) = (repr.stamp.link, repr.seq);
        match repr.kind {
            Kind::Probe(probe) => {
                self.stats.probes += 1;
                RxOutcome::Probe {
                    link,
                    seq: repr.stamp.lane_seq,
                    probe,
                }
            }
            Kind::Feedback => {
                self.stats.feedback += 1;
                RxOutcome::Feedback { link }
            }
            // Parity goes to `on_parity` before this.
            Kind::Parity(_) => RxOutcome::Parity { link },
            Kind::Data => self.on_packet(link, seq, payload, now, deliver),
            Kind::Fragment(frag) => self.on_fragment(link, seq, &frag, payload, now, deliver),
            Kind::Bundle(BundleRepr { count }) => {
                self.stats.bundles += 1;
                let mut accepted = 0;
                // Parsing checked that the entries are exactly `count` packets.
                for (packet_seq, packet) in (0..)
                    .map(|i| seq.wrapping_add(i))
                    .zip(BundleEntries::new(payload))
                {
                    let outcome = self.on_packet(link, packet_seq, packet, now, deliver);
                    if let RxOutcome::Accepted { .. } = outcome {
                        accepted += 1;
                    }
                }
                RxOutcome::Bundle {
                    link,
                    seq,
                    count,
                    accepted,
                }
            }
        }
    }

    /// A frame not believed on its own: of another epoch, or too far ahead. It touches none of
    /// the current stream's state; it is counted and recorded as a candidate, which is adopted
    /// here if it has shown enough and the current stream has been quiet for the hold time
    /// (module docs). Then this frame, and those the candidate kept, are handled as believed.
    fn on_doubted<F: FnMut(&[u8])>(
        &mut self,
        doubt: Doubt,
        repr: &Repr,
        bytes: &[u8],
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        let seq = repr.seq;
        let link = repr.stamp.link;
        // With a key, epochs are believed in the order their senders started: an authenticated
        // frame of an epoch that started before the current one is a replay (or a peer whose
        // clock went back), never evidence of a restart.
        let older = self
            .epoch
            .is_some_and(|current| epoch_start_ms(repr.epoch) <= epoch_start_ms(current));
        if doubt == Doubt::Epoch && self.keyring.is_some() && older {
            self.stats.stale_epoch += 1;
            return RxOutcome::StaleEpoch { link };
        }
        // A probe carries no packet, parity none of its own: no evidence of a stream.
        if !matches!(repr.kind, Kind::Probe(_) | Kind::Parity(_)) {
            // Evidence may come slowly from a stream that can only be the future (an epoch that
            // started after the current one, the current one far ahead), or when the current
            // epoch is not established: a restarted peer
            // that sends a ping a second is believed on its fourth. From one that could be the
            // past (frames of an earlier start still in flight) it must come within a hold
            // time, as from a stream flowing now.
            // A current epoch that has not shown a candidate's evidence itself (one frame seen
            // before the peer's own, say) is no present to protect.
            let established = self.fresh.count >= EVIDENCE;
            let future = doubt == Doubt::Jump || !older || !established;
            let window = if future {
                RESTART_EVIDENCE_WINDOW.max(self.hold_time)
            } else {
                self.hold_time
            };
            let recorded = self
                .candidates
                .record((repr.epoch, seq), now, self.hold_time, window);
            if let Some(recorded) = recorded {
                let quiet = self
                    .fresh
                    .last
                    .is_none_or(|t| t.saturating_add(self.hold_time) <= now);
                if recorded.evidence >= EVIDENCE && quiet {
                    self.adopt(recorded.slot, seq, now, deliver);
                    return self.on_believed(repr, bytes, payload, now, deliver);
                }
                // A copy of a whole packet already kept is not kept twice; fragments share
                // their packet's number.
                if !recorded.copy || matches!(repr.kind, Kind::Fragment(_)) {
                    self.candidates.keep(recorded.slot, seq, bytes);
                }
            }
        }
        match doubt {
            Doubt::Epoch if self.left.iter().flatten().any(|&(e, _)| e == repr.epoch) => {
                self.stats.stale_epoch += 1;
                RxOutcome::StaleEpoch { link }
            }
            Doubt::Epoch => {
                self.stats.unknown_epoch += 1;
                RxOutcome::UnknownEpoch { link, seq }
            }
            Doubt::Jump => {
                self.stats.implausible_seq += 1;
                RxOutcome::Implausible { link, seq }
            }
        }
    }

    /// Adopts the candidate of `slot`, whose frame numbered `seq` decided it: a new epoch (the
    /// current one is left: what is held is delivered, window, reorder buffer and reassembly
    /// start over, or resume where they were if the epoch was left before), or a resumption
    /// of the current epoch far ahead (the gap before it is given up). Then the frames the
    /// candidate kept are handled, lowest number first.
    fn adopt<F: FnMut(&[u8])>(&mut self, slot: usize, seq: u64, now: Timestamp, deliver: &mut F) {
        let candidate = self.candidates.take(slot);
        if self.epoch == Some(candidate.epoch) {
            self.stats.seq_jumps += 1;
            self.reorder.skip_to(candidate.lowest(seq), now, deliver);
        } else {
            if let Some(old) = self.epoch {
                self.left[self.left_next] = Some((old, self.window.top()));
                self.left_next = (self.left_next + 1) % EPOCHS_LEFT;
            }
            self.reorder.flush(now, deliver);
            self.window.reset();
            self.reassembly.reset();
            self.lanes.reset();
            if let Some(fec) = self.fec.as_mut() {
                fec.reset();
            }
            for entry in self.left.iter_mut() {
                if let Some((epoch, top)) = *entry {
                    if epoch == candidate.epoch {
                        if let Some(top) = top {
                            self.window.resume_after(top);
                        }
                        *entry = None;
                    }
                }
            }
            self.epoch = Some(candidate.epoch);
            self.fresh = Fresh::default();
            self.stats.epoch_changes += 1;
        }
        let epoch = candidate.epoch;
        self.replay(slot, candidate, false, now, deliver);
        // Frames of the same epoch in other regions (a stream reordered over more than a region
        // spreads over several candidates): handled now as if they arrived now, each checked
        // against the window first.
        for other in 0..SLOTS {
            if self.candidates.epoch_of(other) == Some(epoch) {
                let candidate = self.candidates.take(other);
                self.replay(other, candidate, true, now, deliver);
            }
        }
    }

    /// Handles the frames a candidate kept, lowest number first, then frees its slot. With
    /// `check`, a frame still too far ahead of the window is dropped (counted lost).
    fn replay<F: FnMut(&[u8])>(
        &mut self,
        slot: usize,
        candidate: Candidate,
        check: bool,
        now: Timestamp,
        deliver: &mut F,
    ) {
        self.stats.pending_lost += candidate.unkept;
        for kept in candidate.kept_in_order() {
            // Kept frames parsed once already.
            let Ok(frame) = Frame::new_checked(kept) else {
                continue;
            };
            let Ok(repr) = Repr::parse(&frame) else {
                continue;
            };
            if check && self.implausible(&repr) {
                self.stats.pending_lost += 1;
            } else {
                self.on_believed(&repr, kept, frame.payload(), now, deliver);
            }
        }
        self.candidates.give_back(slot, candidate);
    }

    /// A parity frame of the current epoch (`docs/PROTOCOL.md`, *Forward error correction*):
    /// its shard goes to the decoder, which may then rebuild the block's lost frames.
    fn on_parity<F: FnMut(&[u8])>(
        &mut self,
        repr: &Repr,
        parity: ParityRepr,
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        let link = repr.stamp.link;
        // A block's first number is a packet's: as far ahead as a data frame may be.
        if self.implausible(repr) {
            self.stats.implausible_seq += 1;
            return RxOutcome::Implausible {
                link,
                seq: repr.seq,
            };
        }
        // Parity of a block older than the duplicate window can judge rebuilds nothing new.
        if self.window.check(repr.seq) == SeqCheck::TooOld {
            self.window.count(SeqCheck::TooOld);
            return RxOutcome::TooOld {
                link,
                seq: repr.seq,
            };
        }
        let mut fec = self.fec.take().unwrap_or_default();
        if let Taken::Ready(slot) = fec.on_parity(repr.stamp.lane, repr.seq, parity, payload, now) {
            fec.rebuild(slot, |frame| self.rebuilt(frame, now, deliver));
        }
        self.fec = Some(fec);
        self.release_passed(now, deliver);
        RxOutcome::Parity { link }
    }

    /// A believed data, fragment or bundle frame (`bytes`, alagg header first) that is a
    /// member of an FEC block: its shard goes to the decoder.
    fn fec_member<F: FnMut(&[u8])>(
        &mut self,
        repr: &Repr,
        bytes: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) {
        // `bytes` was parsed into `repr` already: no second check of its lengths on every
        // frame, only whether its header is long enough to hold an extension.
        let frame = Frame::new_unchecked(bytes);
        if usize::from(frame.header_len()) < repr.header_len() + crate::wire::MEMBER_LEN {
            return;
        }
        let member = match frame.member() {
            Ok(Some(member)) => member,
            Ok(None) => return,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        // A block's first number is at most this frame's, and not far below it (a block is
        // at most 32 frames of one worker): a forged one cannot hold gaps far from the stream.
        let behind = seq_distance(member.first_seq, repr.seq);
        if !(0..=2 * self.max_jump as i64).contains(&behind) {
            self.stats.malformed += 1;
            return;
        }
        if self.window.check(member.first_seq) == SeqCheck::TooOld {
            return;
        }
        let len = usize::from(frame.header_len()) + usize::from(frame.payload_len());
        let mut fec = self.fec.take().unwrap_or_default();
        if let Taken::Ready(slot) = fec.on_member(repr.stamp.lane, member, &bytes[..len], now) {
            fec.rebuild(slot, |frame| self.rebuilt(frame, now, deliver));
        }
        self.fec = Some(fec);
    }

    /// A frame the decoder rebuilt (canonical form: no link, lane or send time): handled as a
    /// believed frame of the current epoch if it is one, without telling the lanes (it came on
    /// none).
    fn rebuilt<F: FnMut(&[u8])>(&mut self, frame: &[u8], now: Timestamp, deliver: &mut F) {
        let Ok(view) = Frame::new_checked(frame) else {
            return;
        };
        let Ok(repr) = Repr::parse(&view) else {
            return;
        };
        if self.epoch != Some(repr.epoch) || self.implausible(&repr) {
            return;
        }
        self.handle_believed(&repr, view.payload(), now, deliver);
    }

    /// One whole packet, from a data frame or a bundle.
    fn on_packet<F: FnMut(&[u8])>(
        &mut self,
        link: LinkId,
        seq: u64,
        packet: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        if packet.len() > self.max_packet_len {
            self.stats.oversized += 1;
            return RxOutcome::Refused { link, seq };
        }
        self.accept(link, seq, packet, now, deliver)
    }

    /// Marks `seq` in the window and, if it is the first copy, offers the packet to the
    /// reorder buffer.
    #[inline]
    fn accept<F: FnMut(&[u8])>(
        &mut self,
        link: LinkId,
        seq: u64,
        packet: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        let parts = (&mut self.window, self.admission.as_ref(), &mut self.fresh);
        match take_number(parts, &mut self.stats, (seq, packet, now)) {
            Ok(packet) => {
                let order = self.reorder.push(seq, packet, now, deliver);
                RxOutcome::Accepted { link, seq, order }
            }
            Err(not) => not.outcome(link, seq),
        }
    }

    fn on_fragment<F: FnMut(&[u8])>(
        &mut self,
        link: LinkId,
        seq: u64,
        frag: &FragmentRepr,
        payload: &[u8],
        now: Timestamp,
        deliver: &mut F,
    ) -> RxOutcome {
        match self.window.check(seq) {
            SeqCheck::Fresh => {}
            SeqCheck::Duplicate => {
                self.window.count(SeqCheck::Duplicate);
                return RxOutcome::Duplicate { link, seq };
            }
            SeqCheck::TooOld => {
                self.window.count(SeqCheck::TooOld);
                return RxOutcome::TooOld { link, seq };
            }
        }
        match self.reassembly.insert(seq, frag, payload, now) {
            FragOutcome::Stored => RxOutcome::FragmentStored { link, seq },
            FragOutcome::Duplicate => RxOutcome::Duplicate { link, seq },
            FragOutcome::Rejected => RxOutcome::Refused { link, seq },
            FragOutcome::Complete(packet) => {
                // `packet` borrows the reassembler; the window and reorder buffer are apart.
                let parts = (&mut self.window, self.admission.as_ref(), &mut self.fresh);
                match take_number(parts, &mut self.stats, (seq, packet, now)) {
                    Ok(packet) => {
                        let order = self.reorder.push(seq, packet, now, deliver);
                        RxOutcome::Accepted { link, seq, order }
                    }
                    Err(not) => not.outcome(link, seq),
                }
            }
        }
    }
}

/// Why a packet cannot be planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An empty packet.
    #[error("empty packet")]
    Empty,
    /// The MTU leaves no room for a fragment's payload.
    #[error("link MTU {0} too small: at least {min} bytes needed", min = FRAGMENT_HEADER_LEN + 1)]
    MtuTooSmall(usize),
    /// The packet needs more than [`crate::wire::MAX_FRAGMENTS`] fragments at this MTU.
    #[error("packet of {len} bytes needs too many fragments at MTU {mtu}")]
    TooManyFragments {
        /// Packet length.
        len: usize,
        /// Link MTU.
        mtu: usize,
    },
}

/// Numbers outgoing packets and plans their frames. One per peer, or one per capture worker
/// with a shared number space ([`Sender::shared`]).
#[derive(Clone, Debug)]
pub struct Sender {
    epoch: u64,
    /// Flags every frame carries ([`crate::wire::FLAG_AUTH`], ...).
    flags: u8,
    next_seq: u64,
    /// The number space shared with other senders of this peer, if any; `next_seq` is unused.
    shared: Option<Arc<AtomicU64>>,
    /// Whether data frames carry an FEC member extension ([`crate::fec`]).
    fec: bool,
    stats: TxStats,
}

impl Sender {
    /// A sender for this boot's `epoch` (random, chosen by the caller, e.g. from getrandom),
    /// numbering packets from 0.
    pub fn new(epoch: u64) -> Self {
        Sender::with_first_seq(epoch, 0)
    }

    /// A sender numbering packets from `first_seq`.
    pub fn with_first_seq(epoch: u64, first_seq: u64) -> Self {
        Sender {
            epoch,
            flags: 0,
            next_seq: first_seq,
            shared: None,
            fec: false,
            stats: TxStats::default(),
        }
    }

    /// A sender that takes its numbers from `next`, shared with the other senders of the same
    /// epoch (capture workers on several cores): each number goes to exactly one packet, so the
    /// receiver sees one stream. Packets of different senders interleave in number order only
    /// as far as their transmission does; the receiver's reordering covers the rest.
    pub fn shared(epoch: u64, next: Arc<AtomicU64>) -> Self {
        Sender {
            shared: Some(next),
            ..Sender::new(epoch)
        }
    }

    /// Takes `count` consecutive numbers; returns the first.
    fn take_seqs(&mut self, count: u64) -> u64 {
        match &self.shared {
            Some(next) => next.fetch_add(count, Relaxed),
            None => {
                let first = self.next_seq;
                self.next_seq = first.wrapping_add(count);
                first
            }
        }
    }

    /// This start's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sets the flags of every frame: [`crate::wire::FLAG_AUTH`] (and
    /// [`crate::wire::FLAG_ENCRYPTED`]) when frames are sealed ([`crate::auth`]).
    pub fn with_flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    /// Leaves room in every data frame for an FEC member extension ([`Sender::overhead`]),
    /// which the caller inserts ([`crate::wire::Member::insert`]).
    pub fn with_fec(mut self, fec: bool) -> Self {
        self.fec = fec;
        self
    }

    /// Turns the room for FEC's member extension on or off ([`Sender::with_fec`]).
    pub fn set_fec(&mut self, fec: bool) {
        self.fec = fec;
    }

    /// The flags every frame carries.
    pub const fn flags(&self) -> u8 {
        self.flags
    }

    /// Bytes each frame takes beyond its header and payload: the tag, with
    /// [`crate::wire::FLAG_AUTH`], and with FEC [`crate::wire::FEC_OVERHEAD`] (the member
    /// extension, and room for the parity frame around the frame's shard). The room for header
    /// and payload is the link's MTU less this.
    pub const fn overhead(&self) -> usize {
        let tag = if self.flags & FLAG_AUTH != 0 {
            crate::wire::TAG_LEN
        } else {
            0
        };
        tag + if self.fec {
            crate::wire::FEC_OVERHEAD
        } else {
            0
        }
    }

    /// The number the next packet gets (with a shared number space: unless another sender
    /// takes it first).
    pub fn next_seq(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(self.next_seq, |next| next.load(Relaxed))
    }

    /// Counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Numbers a `packet_len`-byte packet and decides its frames for `mtu` bytes of alagg header
    /// and payload per frame (the smallest MTU of the links that will carry it, less
    /// [`Sender::overhead`]): one data frame if it fits, else the canonical fragments. Every copy on every link is emitted from the
    /// returned plan.
    #[inline]
    pub fn plan(&mut self, packet_len: usize, mtu: usize) -> Result<Plan, PlanError> {
        if packet_len == 0 {
            return Err(PlanError::Empty);
        }
        let layout = if packet_len + DATA_HEADER_LEN <= mtu && packet_len <= usize::from(u16::MAX) {
            None
        } else {
            if mtu <= FRAGMENT_HEADER_LEN {
                return Err(PlanError::MtuTooSmall(mtu));
            }
            let max_payload = (mtu - FRAGMENT_HEADER_LEN).min(usize::from(u16::MAX));
            let layout = u32::try_from(packet_len)
                .ok()
                .and_then(|len| FragmentLayout::for_payload(len, max_payload as u32))
                .ok_or(PlanError::TooManyFragments {
                    len: packet_len,
                    mtu,
                })?;
            self.stats.fragmented += 1;
            self.stats.fragments += u64::from(layout.count());
            Some(layout)
        };
        let seq = self.take_seqs(1);
        self.stats.packets += 1;
        Ok(Plan {
            epoch: self.epoch,
            flags: self.flags,
            seq,
            packet_len,
            layout,
        })
    }

    /// A probe's header, with the `stamp` of the lane it goes on; its `seq` is the next number
    /// this sender may give ([`Sender::next_seq`]).
    pub fn probe(&self, stamp: Stamp, probe: ProbeRepr) -> Repr {
        Repr {
            stamp,
            epoch: self.epoch,
            seq: self.next_seq(),
            payload_len: 0,
            flags: self.flags,
            kind: Kind::Probe(probe),
        }
    }
}

impl Sender {
    /// Writes a probe frame, Ethernet header first, into `out`: on the lane of `stamp`, echoing
    /// `probe`. Returns the frame length (before any tag).
    pub fn emit_probe(
        &self,
        stamp: Stamp,
        probe: ProbeRepr,
        eth: &EthernetRepr,
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        eth.emit(out)?;
        let n = self.probe(stamp, probe).emit(&mut out[ETH_HDR_LEN..])?;
        Ok(ETH_HDR_LEN + n)
    }

    /// Writes a feedback frame with `reports` (on the peer's lanes of the link it goes on),
    /// Ethernet header first, into `out`; its `seq` is [`Sender::next_seq`], as a probe's.
    /// Returns the frame length (before any tag).
    pub fn emit_feedback(
        &self,
        stamp: Stamp,
        reports: &[LaneReport],
        eth: &EthernetRepr,
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        let payload_len = reports
            .len()
            .checked_mul(FEEDBACK_REPORT_LEN)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(WireError::FieldOverflow)?;
        let repr = Repr {
            stamp,
            epoch: self.epoch,
            seq: self.next_seq(),
            payload_len,
            flags: self.flags,
            kind: Kind::Feedback,
        };
        let total = ETH_HDR_LEN + repr.frame_len();
        if out.len() < total {
            return Err(WireError::BufferTooSmall);
        }
        eth.emit(out)?;
        let header = repr.emit(&mut out[ETH_HDR_LEN..])?;
        let mut at = ETH_HDR_LEN + header;
        for report in reports {
            report.emit(&mut out[at..])?;
            at += FEEDBACK_REPORT_LEN;
        }
        Ok(total)
    }
}

/// Packs packets captured together into one [`crate::wire::FrameType::Bundle`] frame, so a
/// burst of small packets costs the links one frame instead of one each. It never waits for
/// packets: the caller pushes what it has at hand (one capture batch) and seals the bundle when
/// the next packet does not fit or the batch ends.
///
/// ```
/// # use alagg_proto::{Bundler, Sender, Stamp};
/// # use alagg_proto::wire::{EthernetRepr, MacAddr, DEFAULT_ETHERTYPE};
/// let eth = EthernetRepr { dst: MacAddr([2, 0, 0, 0, 0, 2]), src: MacAddr([2, 0, 0, 0, 0, 1]),
///                          ethertype: DEFAULT_ETHERTYPE };
/// let (mut sender, mut bundler) = (Sender::new(7), Bundler::new());
/// for packet in [&[0x45u8; 60][..], &[0x45; 80][..]] {
///     if !bundler.push(packet, 1500) {
///         // Full (or the packet is too large for any bundle): seal, send, push again.
///     }
/// }
/// let sealed = bundler.seal(&mut sender).expect("two packets");
/// let mut umem_frame = [0u8; 2048];
/// let len = sealed.emit_ethernet(Stamp::on(0), &eth, &mut umem_frame).expect("fits");
/// assert_eq!(len, 14 + 40 + 2 + 60 + 2 + 80);
/// bundler.clear();
/// assert_eq!(sender.next_seq(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Bundler {
    /// The entries: each packet after its 2-byte length.
    entries: Vec<u8>,
    count: u16,
    /// The MTU the bundle is being built for (0 while empty).
    mtu: usize,
}

impl Bundler {
    /// An empty bundler.
    pub fn new() -> Self {
        Bundler::default()
    }

    /// Whether a packet of `len` bytes can travel in a bundle on links of `mtu` bytes at all.
    pub const fn bundleable(len: usize, mtu: usize) -> bool {
        len > 0
            && len <= u16::MAX as usize
            && BUNDLE_HEADER_LEN + BUNDLE_ENTRY_HEADER_LEN + len <= mtu
    }

    /// Adds `packet` if it fits the bundle being built for links of `mtu` bytes; `false` if it
    /// does not (the bundle is full, was started for another MTU, or the packet is not
    /// [`Bundler::bundleable`]): seal and clear, then push again, or send it on its own.
    pub fn push(&mut self, packet: &[u8], mtu: usize) -> bool {
        let fits = Bundler::bundleable(packet.len(), mtu)
            && (self.count == 0 || self.mtu == mtu)
            && self.count < u16::MAX
            && BUNDLE_HEADER_LEN + self.entries.len() + BUNDLE_ENTRY_HEADER_LEN + packet.len()
                <= mtu.min(BUNDLE_HEADER_LEN + usize::from(u16::MAX));
        if fits {
            // Bounded by u16::MAX in `bundleable`.
            self.entries
                .extend_from_slice(&(packet.len() as u16).to_be_bytes());
            self.entries.extend_from_slice(packet);
            self.count += 1;
            self.mtu = mtu;
        }
        fits
    }

    /// Packets in the bundle.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether the bundle is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Numbers the bundle's packets (consecutively) and returns its frame, to be emitted once
    /// per chosen link; `None` if empty. A bundle of one packet is sent as a plain data frame.
    /// Call [`Bundler::clear`] after emitting.
    pub fn seal(&self, sender: &mut Sender) -> Option<SealedBundle<'_>> {
        if self.count == 0 {
            return None;
        }
        let seq = sender.take_seqs(u64::from(self.count));
        sender.stats.packets += u64::from(self.count);
        if self.count > 1 {
            sender.stats.bundles += 1;
            sender.stats.bundled += u64::from(self.count);
        }
        Some(SealedBundle {
            epoch: sender.epoch,
            flags: sender.flags,
            seq,
            count: self.count,
            entries: &self.entries,
        })
    }

    /// Empties the bundle, keeping its memory.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.count = 0;
        self.mtu = 0;
    }
}

/// A numbered bundle, ready to emit ([`Bundler::seal`]).
#[derive(Clone, Copy, Debug)]
pub struct SealedBundle<'a> {
    epoch: u64,
    flags: u8,
    seq: u64,
    count: u16,
    entries: &'a [u8],
}

impl SealedBundle<'_> {
    /// The number of the bundle's first packet.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The frame's header with `stamp`, and its payload.
    fn frame(&self, stamp: Stamp) -> (Repr, &[u8]) {
        let (kind, payload) = if self.count == 1 {
            (Kind::Data, &self.entries[BUNDLE_ENTRY_HEADER_LEN..])
        } else {
            (Kind::Bundle(BundleRepr { count: self.count }), self.entries)
        };
        let repr = Repr {
            stamp,
            epoch: self.epoch,
            seq: self.seq,
            // Bounded by u16::MAX in `Bundler::push`.
            payload_len: payload.len() as u16,
            flags: self.flags,
            kind,
        };
        (repr, payload)
    }

    /// Writes the frame with `stamp`, preceded by the Ethernet header `eth`, into `out`.
    /// Returns the frame length (a tag, with [`crate::wire::FLAG_AUTH`], is the sealer's to
    /// append).
    #[inline]
    pub fn emit_ethernet(
        &self,
        stamp: Stamp,
        eth: &EthernetRepr,
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        eth.emit(out)?;
        let (repr, payload) = self.frame(stamp);
        let n = repr.emit_with_payload(payload, &mut out[ETH_HDR_LEN..])?;
        Ok(ETH_HDR_LEN + n)
    }
}

/// The frames of one packet: its sequence number and, if fragmented, its layout. `Copy`, no
/// allocation; emit each frame once per chosen link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    epoch: u64,
    flags: u8,
    seq: u64,
    packet_len: usize,
    layout: Option<FragmentLayout>,
}

impl Plan {
    /// The packet's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of frames (1 unless fragmented).
    pub fn frame_count(&self) -> usize {
        self.layout.map_or(1, |l| usize::from(l.count()))
    }

    /// Whether the packet is fragmented.
    pub fn is_fragmented(&self) -> bool {
        self.layout.is_some()
    }

    /// Header of frame `index` with `stamp`, and the range of the packet it carries.
    pub fn frame(&self, index: usize, stamp: Stamp) -> Option<(Repr, Range<usize>)> {
        let base = |payload_len: usize, kind| Repr {
            stamp,
            epoch: self.epoch,
            seq: self.seq,
            // Bounded by u16::MAX in `Sender::plan`.
            payload_len: payload_len as u16,
            flags: self.flags,
            kind,
        };
        match self.layout {
            None if index == 0 => Some((base(self.packet_len, Kind::Data), 0..self.packet_len)),
            None => None,
            Some(layout) => {
                let index = u16::try_from(index).ok()?;
                let (offset, len) = layout.fragment(index)?;
                let frag = FragmentRepr {
                    packet_len: layout.packet_len(),
                    offset,
                    index,
                    count: layout.count(),
                };
                let (start, len) = (offset as usize, len as usize);
                Some((base(len, Kind::Fragment(frag)), start..start + len))
            }
        }
    }

    /// Length of frame `index` after the Ethernet header (0 if out of range).
    pub fn frame_len(&self, index: usize) -> usize {
        self.frame(index, Stamp::default())
            .map_or(0, |(repr, _)| repr.frame_len())
    }

    /// Writes frame `index` with `stamp` (alagg header and payload, no Ethernet header) into
    /// `out`; `packet` is the whole IP packet. Returns the bytes written (a tag, with
    /// [`crate::wire::FLAG_AUTH`], is the sealer's to append).
    #[inline]
    pub fn emit(
        &self,
        index: usize,
        stamp: Stamp,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        if packet.len() != self.packet_len {
            return Err(WireError::FieldOverflow);
        }
        let Some((repr, range)) = self.frame(index, stamp) else {
            return Err(WireError::BadFragment);
        };
        repr.emit_with_payload(&packet[range], out)
    }

    /// Like [`Plan::emit`], preceded by the Ethernet header `eth`. Returns the frame length.
    #[inline]
    pub fn emit_ethernet(
        &self,
        index: usize,
        stamp: Stamp,
        eth: &EthernetRepr,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        eth.emit(out)?;
        let n = self.emit(index, stamp, packet, &mut out[ETH_HDR_LEN..])?;
        Ok(ETH_HDR_LEN + n)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * MS)
    }

    fn packet(seq: u64, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (seq.wrapping_mul(31) as usize).wrapping_add(i) as u8;
        }
        p[..8.min(len)].copy_from_slice(&seq.to_be_bytes()[..8.min(len)]);
        p
    }

    /// Every frame of the next packet of `sender` on `link`.
    fn frames(sender: &mut Sender, pkt: &[u8], mtu: usize, link: LinkId) -> Vec<Vec<u8>> {
        let plan = sender.plan(pkt.len(), mtu).unwrap();
        (0..plan.frame_count())
            .map(|i| {
                let mut out = vec![0u8; mtu];
                let n = plan.emit(i, Stamp::on(link), pkt, &mut out).unwrap();
                out.truncate(n);
                out
            })
            .collect()
    }

    struct Sink(Vec<Vec<u8>>);

    impl Sink {
        fn f(&mut self) -> impl FnMut(&[u8]) + '_ {
            |p| self.0.push(p.to_vec())
        }
    }

    fn receiver() -> Receiver {
        Receiver::new(&ReceiverConfig::default()).unwrap()
    }

    /// A receiver that holds every gap for the hold time: for tests of the hold timer that
    /// make gaps on a single lane (which would otherwise be given up at once, `lanes` module).
    fn holding_receiver() -> Receiver {
        Receiver::new(&ReceiverConfig {
            release_passed_gaps: false,
            ..ReceiverConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn duplicates_across_links_are_dropped_and_first_link_reported() {
        let mut tx = Sender::new(7);
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        let pkt = packet(0, 100);
        let plan = tx.plan(pkt.len(), 1500).unwrap();
        let mut a = [0u8; 1500];
        let mut b = [0u8; 1500];
        let na = plan.emit(0, Stamp::on(1), &pkt, &mut a).unwrap();
        let nb = plan.emit(0, Stamp::on(2), &pkt, &mut b).unwrap();
        assert_eq!(
            rx.on_frame(&b[..nb], t(0), sink.f()),
            RxOutcome::Accepted {
                link: 2,
                seq: 0,
                order: Order::InOrder
            }
        );
        assert_eq!(
            rx.on_frame(&a[..na], t(0), sink.f()),
            RxOutcome::Duplicate { link: 1, seq: 0 }
        );
        assert_eq!(sink.0, vec![pkt]);
        let s = rx.stats();
        assert_eq!((s.frames, s.dedup.passed, s.dedup.discarded), (2, 1, 1));
    }

    #[test]
    fn fragmented_64k_packet_over_two_links_with_loss() {
        let mut tx = Sender::new(1);
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        let pkt = packet(0, 65_535);
        let plan = tx.plan(pkt.len(), 1500).unwrap();
        assert_eq!(plan.frame_count(), 46);
        let mut outcomes = Vec::new();
        for i in 0..plan.frame_count() {
            for link in [0u8, 1] {
                // Link 0 loses even fragments, link 1 odd ones: each fragment arrives once.
                if (i % 2 == 0) == (link == 0) {
                    continue;
                }
                let mut out = [0u8; 1500];
                let n = plan.emit(i, Stamp::on(link), &pkt, &mut out).unwrap();
                assert!(n <= 1500);
                outcomes.push(rx.on_frame(&out[..n], t(0), sink.f()));
            }
        }
        assert_eq!(sink.0, vec![pkt.clone()]);
        assert_eq!(
            outcomes.last(),
            Some(&RxOutcome::Accepted {
                link: 0, // the last of 46 fragments, odd, crossed link 0
                seq: 0,
                order: Order::InOrder
            })
        );
        // A late copy of a fragment of the delivered packet is a duplicate, not a new context.
        let mut out = [0u8; 1500];
        let n = plan.emit(3, Stamp::on(0), &pkt, &mut out).unwrap();
        assert_eq!(
            rx.on_frame(&out[..n], t(0), sink.f()),
            RxOutcome::Duplicate { link: 0, seq: 0 }
        );
        assert_eq!(rx.next_deadline(), None);
        assert_eq!(tx.stats().fragments, 46);
    }

    /// The bundle of `packets` on `link`, numbered by `tx` (bytes after the Ethernet header).
    fn bundle_frame(tx: &mut Sender, packets: &[Vec<u8>], link: LinkId) -> Vec<u8> {
        let mut bundler = Bundler::new();
        for p in packets {
            assert!(bundler.push(p, 1500));
        }
        let sealed = bundler.seal(tx).unwrap();
        let eth = EthernetRepr {
            dst: crate::wire::MacAddr([2, 0, 0, 0, 0, 2]),
            src: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            ethertype: crate::wire::DEFAULT_ETHERTYPE,
        };
        let mut out = [0u8; ETH_HDR_LEN + 1500];
        let n = sealed
            .emit_ethernet(Stamp::on(link), &eth, &mut out)
            .unwrap();
        out[ETH_HDR_LEN..n].to_vec()
    }

    #[test]
    fn a_gap_every_live_lane_went_past_is_given_up_at_once() {
        // Packets 0..=3 on two links; 1 is lost on link 0, and on link 1 too in the first case.
        // Each link delivers in order. Lost on both: given up when the second link goes past
        // it, with no time passing. Lost on one: held until the slower link brings it. Lost on
        // both while link 1 is silent: link 1 no longer counts after the hold time.
        let frames_of = |link| {
            let mut tx = Sender::new(5);
            (0..4)
                .map(|_| packet_frame(&mut tx, link))
                .collect::<Vec<_>>()
        };
        let (on0, on1) = (frames_of(0), frames_of(1));
        // Lost on both.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        for f in [&on0[0], &on1[0], &on0[2], &on0[3]] {
            rx.on_frame(f, t(0), sink.f());
        }
        assert_eq!(ids(&sink), [0], "link 1 may still bring 1");
        rx.on_frame(&on1[2], t(1), sink.f());
        assert_eq!(ids(&sink), [0, 2, 3], "both links went past 1");
        let s = rx.stats();
        assert_eq!(
            (s.gaps_passed, s.reorder.lost, s.reorder.hold_expired),
            (1, 1, 0)
        );
        // Lost on link 0 only: link 1's copy fills the gap.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        for f in [&on0[0], &on1[0], &on0[2], &on0[3], &on1[1]] {
            rx.on_frame(f, t(0), sink.f());
        }
        assert_eq!(ids(&sink), [0, 1, 2, 3]);
        assert_eq!(rx.stats().reorder.lost, 0);
        // Link 1 silent for a hold time (3 ms) while link 0 flows: it no longer holds the gap.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        rx.on_frame(&on1[0], t(0), sink.f());
        rx.on_frame(&on0[0], t(0), sink.f());
        rx.on_frame(&on0[2], t(2), sink.f());
        assert_eq!(ids(&sink), [0], "link 1 may still bring 1");
        rx.on_frame(&on0[3], t(3), sink.f());
        assert_eq!(ids(&sink), [0, 2, 3], "link 1 silent for the hold time");
        let s = rx.stats();
        assert_eq!((s.gaps_passed, s.reorder.hold_expired), (1, 0));
    }

    #[test]
    fn a_probe_tells_that_its_lane_went_past_a_gap() {
        // Striped: 0 and 2 on link 0, 1 on link 1 and lost there. Link 1 stays heard; its
        // probe says the next number its sender gives is 3, so nothing below 3 will come on it.
        let mut tx = Sender::new(5);
        let f0 = packet_frame(&mut tx, 0);
        let f1 = packet_frame(&mut tx, 1);
        let f2 = packet_frame(&mut tx, 0);
        let probe_frame = |tx: &Sender, seq| {
            let mut buf = [0u8; 64];
            let stamp = Stamp {
                lane_seq: seq,
                ..Stamp::on(1)
            };
            let n = tx
                .probe(stamp, ProbeRepr::default())
                .emit(&mut buf)
                .unwrap();
            buf[..n].to_vec()
        };
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        rx.on_frame(&f0, t(0), sink.f());
        // An early probe of link 1 (sent before 1): the lane is known and may bring 1.
        let mut early = Sender::new(5);
        early.plan(1, 1500).unwrap();
        rx.on_frame(&probe_frame(&early, 0), t(0), sink.f());
        drop(f1);
        rx.on_frame(&f2, t(1), sink.f());
        assert_eq!(ids(&sink), [0], "link 1 may still bring 1");
        rx.on_frame(&probe_frame(&tx, 1), t(2), sink.f());
        assert_eq!(ids(&sink), [0, 2], "link 1's probe went past 1");
        let s = rx.stats();
        assert_eq!((s.gaps_passed, s.reorder.lost, s.probes), (1, 1, 2));
        // A forged probe far ahead releases nothing the stream has not gone past.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        rx.on_frame(&f0, t(0), sink.f());
        rx.on_frame(&probe_frame(&early, 0), t(0), sink.f());
        rx.on_frame(&f2, t(1), sink.f());
        let mut far = Sender::with_first_seq(5, 1 << 40);
        far.plan(1, 1500).unwrap();
        rx.on_frame(&probe_frame(&far, 1), t(2), sink.f());
        // Link 1's top is capped at 2, the highest seen: 1 is passed, nothing beyond.
        assert_eq!(ids(&sink), [0, 2]);
        assert_eq!(rx.stats().reorder.lost, 1);
    }

    #[test]
    fn feedback_reaches_link_health_whatever_the_peer_epoch() {
        use crate::health::{Condition, micros};
        let mut rx = receiver().with_health(2, t(0));
        let mut data = Sender::new(5);
        rx.on_frame(&packet_frame(&mut data, 0), t(0), |_: &[u8]| {});
        // The peer reports on this host's lane 0 of link 1, from another start than its data's.
        let peer = Sender::new(9);
        let eth = EthernetRepr {
            dst: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            src: crate::wire::MacAddr([2, 0, 0, 0, 0, 2]),
            ethertype: crate::wire::DEFAULT_ETHERTYPE,
        };
        let mut buf = [0u8; 256];
        for i in 1..=3u64 {
            let report = LaneReport {
                highest: 10 * i,
                received: 10 * i as u32,
                echo_time: micros(t(10 * i - 4)),
                echo_delay: 1_000,
                ..LaneReport::default()
            };
            let stamp = Stamp {
                tx_time: micros(t(10 * i - 1)),
                ..Stamp::on(1)
            };
            let n = peer
                .emit_feedback(stamp, &[report], &eth, &mut buf)
                .unwrap();
            let outcome = rx.on_frame(&buf[ETH_HDR_LEN..n], t(10 * i), |_: &[u8]| {});
            assert_eq!(outcome, RxOutcome::Feedback { link: 1 });
        }
        let view = rx.health().link(1).unwrap().view();
        assert_eq!(view.condition, Condition::Up);
        assert_eq!(view.srtt, Some(Duration::from_millis(3)));
        assert_eq!(rx.stats().feedback, 3);
        // The peer's frames were metered on their lanes.
        let mut reports = Vec::new();
        rx.health().meters.reports(1, t(40), &mut reports);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].received, 3);
        // Link 0 has no feedback: still unknown.
        let view = rx.health().link(0).unwrap().view();
        assert_eq!(view.condition, Condition::Unknown);
    }

    #[test]
    fn the_hold_follows_the_delay_spread_between_the_floor_and_the_ceiling() {
        let mut rx = Receiver::new(&ReceiverConfig {
            hold_time: Duration::from_millis(100),
            ..ReceiverConfig::default()
        })
        .unwrap()
        .with_health(2, t(0));
        assert_eq!(rx.hold_time(), Duration::from_millis(100));
        // Nothing heard: the floor.
        rx.adapt_hold(t(1));
        assert_eq!(rx.hold_time(), HOLD_FLOOR);
        // Link 1 delivers 20 ms after link 0, steadily: 20 ms and the margin.
        let mut tx = Sender::new(5);
        for i in 0..100u64 {
            let plan = tx.plan(100, 1500).unwrap();
            let pkt = packet(plan.seq(), 100);
            for (link, transit) in [(0u8, 5u64), (1, 25)] {
                let mut out = vec![0u8; 1500];
                let stamp = Stamp {
                    link,
                    lane: 0,
                    lane_seq: i,
                    tx_time: crate::health::micros(t(10 * i)),
                };
                let n = plan.emit(0, stamp, &pkt, &mut out).unwrap();
                rx.on_frame(&out[..n], t(10 * i + transit), |_: &[u8]| {});
            }
        }
        rx.adapt_hold(t(1_000));
        assert_eq!(rx.hold_time(), Duration::from_millis(21));
        // Spread beyond the ceiling: the ceiling.
        let mut rx = Receiver::new(&ReceiverConfig {
            hold_time: Duration::from_millis(10),
            ..ReceiverConfig::default()
        })
        .unwrap()
        .with_health(2, t(0));
        for (link, transit) in [(0u8, 5u64), (1, 25)] {
            let plan = tx.plan(100, 1500).unwrap();
            let pkt = packet(plan.seq(), 100);
            let mut out = vec![0u8; 1500];
            let n = plan.emit(0, Stamp::on(link), &pkt, &mut out).unwrap();
            rx.on_frame(&out[..n], t(transit), |_: &[u8]| {});
        }
        rx.adapt_hold(t(30));
        assert_eq!(rx.hold_time(), Duration::from_millis(10));
    }

    #[test]
    fn bundles_deliver_each_packet_once_and_fill_gaps() {
        let mut tx = Sender::new(1);
        let mut rx = holding_receiver();
        let mut sink = Sink(Vec::new());
        let f0 = packet_frame(&mut tx, 0);
        let small: Vec<Vec<u8>> = (1..=3).map(|seq| packet(seq, 40 + seq as usize)).collect();
        let b0 = bundle_frame(&mut tx, &small, 0);
        let b1 = bundle_frame(&mut Sender::with_first_seq(1, 1), &small, 1);
        let f4 = packet_frame(&mut tx, 0);
        assert_eq!(tx.next_seq(), 5);
        assert_eq!((tx.stats().bundles, tx.stats().bundled), (1, 3));
        rx.on_frame(&f0, t(0), sink.f());
        // 4 arrives before the bundle carrying 1..=3: held, then released by the bundle.
        rx.on_frame(&f4, t(0), sink.f());
        assert_eq!(sink.0.len(), 1);
        assert_eq!(
            rx.on_frame(&b0, t(1), sink.f()),
            RxOutcome::Bundle {
                link: 0,
                seq: 1,
                count: 3,
                accepted: 3
            }
        );
        // The copy from the other link: every packet a duplicate.
        assert_eq!(
            rx.on_frame(&b1, t(1), sink.f()),
            RxOutcome::Bundle {
                link: 1,
                seq: 1,
                count: 3,
                accepted: 0
            }
        );
        let seqs: Vec<u8> = sink.0.iter().map(|p| p[7]).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert_eq!(sink.0[2], small[1]);
        let s = rx.stats();
        assert_eq!((s.bundles, s.dedup.passed, s.dedup.discarded), (2, 5, 3));
        assert_eq!(rx.held(), 0);
    }

    #[test]
    fn senders_sharing_a_number_space_make_one_stream() {
        let next = Arc::new(AtomicU64::new(1000));
        let (mut w0, mut w1) = (
            Sender::shared(9, Arc::clone(&next)),
            Sender::shared(9, Arc::clone(&next)),
        );
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        // Worker 0 numbers a packet and a bundle, worker 1 two packets in between; worker 1's
        // frames reach the link first.
        let a = packet_frame(&mut w0, 0);
        let b = packet_frame(&mut w1, 1);
        let small: Vec<Vec<u8>> = (0..2).map(|i| packet(100 + i, 30)).collect();
        let c = bundle_frame(&mut w0, &small, 0);
        let d = packet_frame(&mut w1, 1);
        assert_eq!(next.load(Relaxed), 1005, "five numbers taken");
        for frame in [&a, &b, &d, &c] {
            rx.on_frame(frame, t(0), sink.f());
        }
        assert_eq!(sink.0.len(), 5);
        let s = rx.stats();
        assert_eq!((s.dedup.passed, s.reorder.lost, s.reorder.late), (5, 0, 0));
        assert_eq!(
            s.reorder.reordered, 1,
            "d waited for the bundle numbered before it"
        );
    }

    #[test]
    fn a_bundle_of_one_is_a_data_frame() {
        let mut tx = Sender::new(1);
        let frame = bundle_frame(&mut tx, &[packet(0, 100)], 0);
        assert_eq!(frame.len(), DATA_HEADER_LEN + 100);
        assert_eq!(frame[1], 1);
        assert_eq!(tx.stats().bundles, 0);
        let mut bundler = Bundler::new();
        // Too large for a bundle, and no mixing of MTUs within one.
        assert!(!bundler.push(&[0; 1500 - BUNDLE_HEADER_LEN - 1], 1500));
        assert!(bundler.push(&[0; 100], 1500));
        assert!(!bundler.push(&[0; 100], 1400));
        assert!(!bundler.push(&[], 1500));
        assert_eq!(bundler.len(), 1);
        bundler.clear();
        assert!(bundler.is_empty() && bundler.seal(&mut tx).is_none());
    }

    #[test]
    fn fragment_loss_becomes_a_lost_packet_after_timeouts() {
        let mut tx = Sender::new(1);
        let mut rx = holding_receiver();
        let mut sink = Sink(Vec::new());
        let f0 = packet_frame(&mut tx, 0);
        let big = packet(1, 4000);
        let frags = frames(&mut tx, &big, 1500, 0);
        assert_eq!(frags.len(), 3);
        let f2 = packet_frame(&mut tx, 0);
        rx.on_frame(&f0, t(0), sink.f());
        assert_eq!(
            rx.on_frame(&frags[0], t(0), sink.f()),
            RxOutcome::FragmentStored { link: 0, seq: 1 }
        );
        assert_eq!(
            rx.on_frame(&frags[0], t(0), sink.f()),
            RxOutcome::Duplicate { link: 0, seq: 1 }
        );
        rx.on_frame(&frags[2], t(0), sink.f());
        assert_eq!(
            rx.on_frame(&f2, t(1), sink.f()),
            RxOutcome::Accepted {
                link: 0,
                seq: 2,
                order: Order::Held
            }
        );
        assert_eq!(rx.next_deadline(), Some(t(4)));
        rx.poll(t(4), sink.f());
        assert_eq!(sink.0.len(), 2);
        assert_eq!(rx.stats().reorder.lost, 1);
        assert_eq!(rx.next_deadline(), Some(t(10)));
        rx.poll(t(10), sink.f());
        assert_eq!(rx.stats().reassembly.timeouts, 1);
        assert_eq!(rx.next_deadline(), None);
    }

    fn packet_frame(tx: &mut Sender, link: LinkId) -> Vec<u8> {
        let pkt = packet(tx.next_seq(), 64);
        frames(tx, &pkt, 1500, link).remove(0)
    }

    /// A sealed data frame of `tx` (which sets the flags) carrying a packet, on a lane of its own.
    fn sealed_frame(
        tx: &mut Sender,
        key: &crate::auth::FrameKey,
        lane: &mut crate::Lane,
    ) -> Vec<u8> {
        let pkt = packet(tx.next_seq(), 64);
        let room = 1500 - tx.overhead();
        let plan = tx.plan(pkt.len(), room).unwrap();
        let mut out = vec![0u8; 1600];
        let n = plan.emit(0, lane.stamp(t(0)), &pkt, &mut out).unwrap();
        let n = key.seal(&mut out, n).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn with_a_key_only_frames_whose_tag_verifies_reach_any_state() {
        use crate::auth::{FrameKey, Keyring, SiteKey};
        use crate::wire::{FLAG_ENCRYPTED, epoch};
        let site = SiteKey::from_bytes([5; 32]);
        for flags in [FLAG_AUTH, FLAG_AUTH | FLAG_ENCRYPTED] {
            let now_epoch = epoch(1_000_000, 7);
            let mut tx = Sender::new(now_epoch).with_flags(flags);
            let key = FrameKey::derive(&site, now_epoch);
            let mut lane = crate::Lane::new(0, 0);
            let mut rx = receiver().with_keyring(Keyring::new(site.clone()));
            let mut sink = Sink(Vec::new());
            let first = sealed_frame(&mut tx, &key, &mut lane);
            assert!(matches!(
                rx.on_frame(&first, t(0), sink.f()),
                RxOutcome::Accepted { .. }
            ));
            // The next packet, changed in one byte: refused before it takes its number; the
            // genuine one after it is delivered.
            let second = sealed_frame(&mut tx, &key, &mut lane);
            let mut forged = second.clone();
            let last = forged.len() - 20;
            forged[last] ^= 1;
            assert_eq!(
                rx.on_frame(&forged, t(0), sink.f()),
                RxOutcome::Unauthenticated(AuthError::Failed)
            );
            assert!(matches!(
                rx.on_frame(&second, t(0), sink.f()),
                RxOutcome::Accepted { .. }
            ));
            // A replay is a duplicate; a frame without a tag is refused.
            assert!(matches!(
                rx.on_frame(&second, t(1), sink.f()),
                RxOutcome::Duplicate { .. }
            ));
            let mut plain_tx = Sender::with_first_seq(now_epoch, 2);
            let plain = packet_frame(&mut plain_tx, 0);
            assert_eq!(
                rx.on_frame(&plain, t(1), sink.f()),
                RxOutcome::Unauthenticated(AuthError::Missing)
            );
            // Authenticated frames of a start before the current one are never believed, however
            // many come while the stream is quiet: recorded frames cannot bring an old epoch back.
            let old_epoch = epoch(999_000, 9);
            let old_key = FrameKey::derive(&site, old_epoch);
            let mut old_tx = Sender::with_first_seq(old_epoch, 500).with_flags(flags);
            let mut old_lane = crate::Lane::new(1, 0);
            for i in 0..8 {
                let f = sealed_frame(&mut old_tx, &old_key, &mut old_lane);
                let outcome = rx.on_frame(&f, t(100 + i), sink.f());
                assert!(
                    matches!(outcome, RxOutcome::StaleEpoch { .. }),
                    "{outcome:?}"
                );
            }
            assert_eq!(rx.peer_epoch(), Some(now_epoch));
            assert_eq!(sink.0.len(), 2, "only the two genuine packets");
            let stats = rx.stats();
            assert_eq!((stats.auth_failed, stats.unauthenticated), (1, 1));
            assert_eq!(stats.dedup.passed, 2);
            // A receiver without the key delivers none of it, and says why.
            let mut keyless = receiver();
            let third = sealed_frame(&mut tx, &key, &mut lane);
            assert_eq!(
                keyless.on_frame(&third, t(0), sink.f()),
                RxOutcome::Unauthenticated(AuthError::Missing)
            );
            assert_eq!(keyless.stats().auth_unexpected, 1);
            assert_eq!(keyless.stats().dedup.passed, 0);
        }
    }

    #[test]
    fn a_restart_is_adopted_once_the_old_epoch_is_quiet() {
        // Epoch 1 holds 1002 behind a gap when the peer restarts as epoch 2, numbering from 0.
        // The new epoch is believed on its fourth number if epoch 1 has been quiet for the hold
        // time (3 ms) by then, else on its first frame after that; the frames before are kept
        // and delivered then, after what epoch 1 held.
        let cases: &[(&str, [u64; 6], usize)] = &[
            ("restart after 10 ms", [10, 10, 10, 10, 11, 11], 3),
            ("restart within the hold time", [1, 1, 2, 2, 3, 4], 4),
        ];
        for &(name, times, adopted_at) in cases {
            let mut old = Sender::with_first_seq(1, 1000);
            let mut rx = holding_receiver();
            let mut sink = Sink(Vec::new());
            let f0 = packet_frame(&mut old, 0);
            let _gap = packet_frame(&mut old, 0);
            let f2 = packet_frame(&mut old, 0);
            let straggler = packet_frame(&mut old, 1);
            rx.on_frame(&f0, t(0), sink.f());
            rx.on_frame(&f2, t(0), sink.f());
            assert_eq!(rx.held(), 1);
            let mut new = Sender::new(2);
            for (i, &at) in times.iter().enumerate() {
                let outcome = rx.on_frame(&packet_frame(&mut new, 0), t(at), sink.f());
                let want = if i < adopted_at {
                    RxOutcome::UnknownEpoch {
                        link: 0,
                        seq: i as u64,
                    }
                } else {
                    RxOutcome::Accepted {
                        link: 0,
                        seq: i as u64,
                        order: Order::InOrder,
                    }
                };
                assert_eq!(outcome, want, "{name}: frame {i}");
            }
            assert_eq!(ids(&sink), [1000, 1002, 0, 1, 2, 3, 4, 5], "{name}");
            assert_eq!(rx.peer_epoch(), Some(2), "{name}");
            // A frame of the old epoch still in flight does not flip the epoch back.
            assert_eq!(
                rx.on_frame(&straggler, t(12), sink.f()),
                RxOutcome::StaleEpoch { link: 1 },
                "{name}"
            );
            let s = rx.stats();
            assert_eq!(
                (
                    s.epoch_changes,
                    s.stale_epoch,
                    s.unknown_epoch,
                    s.pending_lost
                ),
                (1, 1, adopted_at as u64, 0),
                "{name}"
            );
        }
    }

    #[test]
    fn a_restarted_peer_with_sparse_traffic_is_believed_and_the_past_is_not() {
        // Epochs as senders make them: start time in ms above 16 random bits. The peer ran
        // epoch `old`, restarts as `new` and sends a packet a second (a ping): the new epoch is
        // believed on its fourth, and the three before are delivered then. Frames of an epoch
        // that started before `old`, arriving as sparsely, never are.
        let (past, old, new) = (500 << 16 | 3, 1000 << 16 | 9, 2000 << 16 | 1);
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        for seq in 40..44 {
            rx.on_frame(&frame_at(old, seq, 0), t(0), sink.f());
        }
        for (i, at) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
            let frame = frame_at(past, 70 + i as u64, 0);
            assert!(
                matches!(
                    rx.on_frame(&frame, t(at), sink.f()),
                    RxOutcome::UnknownEpoch { .. }
                ),
                "frame {i} of the past"
            );
        }
        for (seq, at) in [(0u64, 4_000u64), (1, 5_000), (2, 6_000)] {
            rx.on_frame(&frame_at(new, seq, 1), t(at), sink.f());
            assert_eq!(rx.peer_epoch(), Some(old), "not yet at {seq}");
        }
        rx.on_frame(&frame_at(past, 73, 0), t(6_500), sink.f());
        assert_eq!(
            rx.peer_epoch(),
            Some(old),
            "the past's fourth frame, sparse"
        );
        rx.on_frame(&frame_at(new, 3, 1), t(7_000), sink.f());
        assert_eq!(rx.peer_epoch(), Some(new));
        assert_eq!(ids(&sink), [40, 41, 42, 43, 0, 1, 2, 3]);
        // Frames further apart than the window start the evidence over.
        let mut rx = receiver();
        rx.on_frame(&frame_at(old, 40, 0), t(0), sink.f());
        let gap = RESTART_EVIDENCE_WINDOW.as_millis() as u64 + 1;
        for seq in 0..6u64 {
            rx.on_frame(&frame_at(new, seq, 1), t(1 + seq * gap), sink.f());
        }
        assert_eq!(rx.peer_epoch(), Some(old));
    }

    #[test]
    fn one_frame_seen_before_the_peer_does_not_hold_its_sparse_stream_back() {
        // A forged frame, of an epoch started later than the peer's, arrives before the peer's
        // first: it is adopted at once (the first epoch seen is). The peer's ping a second is
        // believed on its fourth all the same, and the three before are delivered then.
        let (peer, forged) = (1000 << 16 | 9, 9000 << 16 | 1);
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        rx.on_frame(&frame_at(forged, 77, 0), t(0), sink.f());
        assert_eq!(rx.peer_epoch(), Some(forged));
        for seq in 0..4u64 {
            rx.on_frame(&frame_at(peer, seq, 1), t(1_000 * (seq + 1)), sink.f());
        }
        assert_eq!(rx.peer_epoch(), Some(peer));
        assert_eq!(ids(&sink), [77, 0, 1, 2, 3]);
    }

    #[test]
    fn a_restart_reordered_over_several_regions_loses_nothing() {
        // The new epoch's first frames span more than one candidate region (64 numbers): when
        // one region is believed, the frames kept in the others are handled too.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        rx.on_frame(&frame_at(1, 50, 0), t(0), sink.f());
        for s in [100, 0, 101, 1, 2, 3] {
            rx.on_frame(&frame_at(2, s, 0), t(10), sink.f());
        }
        assert_eq!(rx.peer_epoch(), Some(2));
        // 100 and 101 wait for the gap before them.
        rx.poll(t(20), sink.f());
        let mut got = ids(&sink);
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 50, 100, 101]);
        assert_eq!(rx.stats().pending_lost, 0);
    }

    #[test]
    fn a_wrong_epoch_believed_gives_way_to_the_genuine_one_without_duplicates() {
        // The peer (epoch 7) is idle when frames of an old epoch are replayed: after the hold
        // time they are believed. When epoch 7 resumes it is believed again, where it was: a
        // late copy of a packet already delivered stays a duplicate.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        for s in 0..10 {
            rx.on_frame(&frame_at(7, s, 0), t(0), sink.f());
        }
        for s in 900..906 {
            rx.on_frame(&frame_at(5, s, 0), t(10), sink.f());
        }
        assert_eq!(rx.peer_epoch(), Some(5));
        for s in [10, 11, 5, 12, 13, 14, 15] {
            rx.on_frame(&frame_at(7, s, 1), t(20), sink.f());
        }
        assert_eq!(rx.peer_epoch(), Some(7));
        let mut want: Vec<u64> = (0..10).collect();
        want.extend(900..906);
        want.extend(10..16);
        assert_eq!(ids(&sink), want);
        assert_eq!(rx.stats().epoch_changes, 2);
    }

    /// The data frame of packet `seq` of `epoch` on `link`.
    fn frame_at(epoch: u64, seq: u64, link: LinkId) -> Vec<u8> {
        packet_frame(&mut Sender::with_first_seq(epoch, seq), link)
    }

    /// The sequence numbers of the packets delivered (`packet` puts them first).
    fn ids(sink: &Sink) -> Vec<u64> {
        sink.0
            .iter()
            .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_packet_the_host_refuses_takes_no_number() {
        // Admission refuses packets whose byte 8 is 0xee. A forged frame numbered like the next
        // genuine packet, whole or in fragments, carrying such a packet, is refused; the genuine
        // packet of that number is delivered after it.
        for len in [64usize, 4000] {
            let admit = |p: &[u8]| (p[8] != 0xee).then_some(p.len());
            let mut rx = receiver().with_admission(Admission::new(admit));
            let mut sink = Sink(Vec::new());
            let mut genuine = Sender::new(3);
            let mut forger = Sender::new(3);
            let good = packet(0, len);
            let mut bad = good.clone();
            bad[8] = 0xee;
            for frame in frames(&mut forger, &bad, 1500, 0) {
                rx.on_frame(&frame, t(0), sink.f());
            }
            for frame in frames(&mut genuine, &good, 1500, 1) {
                rx.on_frame(&frame, t(0), sink.f());
            }
            assert_eq!(sink.0, [good], "{len} bytes");
            assert_eq!(rx.stats().inadmissible, 1, "{len} bytes");
        }
    }

    #[test]
    fn one_foreign_frame_does_not_stop_the_stream() {
        // Epoch 7 streams 0..20, one frame every 0.1 ms; frame 10 is followed by an injected one.
        // Whatever it is, every genuine packet is delivered, and the epoch stays.
        let mut two_restarts_old = Sender::with_first_seq(5, 900);
        let cases: &[(&str, Vec<u8>)] = &[
            ("random epoch, next number", frame_at(0xdead_beef, 11, 0)),
            ("random epoch, far number", frame_at(0x1234, 1 << 40, 1)),
            (
                "epoch two restarts old",
                packet_frame(&mut two_restarts_old, 1),
            ),
            ("implausible jump", frame_at(7, 10 + (1 << 62), 0)),
        ];
        let mut failed = Vec::new();
        for (name, injected) in cases {
            let mut rx = receiver();
            let mut sink = Sink(Vec::new());
            // A history: epochs 5 and 6 came and went before 7.
            for (epoch, at) in [(5, 0), (6, 100)] {
                for s in 0..8 {
                    rx.on_frame(&frame_at(epoch, s, 0), t(at + s), sink.f());
                }
            }
            sink.0.clear();
            let base = 200 * MS;
            for s in 0..20u64 {
                let now = Timestamp::from_nanos(base + s * MS / 10);
                rx.on_frame(&frame_at(7, s, 0), now, sink.f());
                if s == 10 {
                    rx.on_frame(injected, now, sink.f());
                }
            }
            rx.poll(t(1000), sink.f());
            let (got, lost) = (ids(&sink), rx.stats().reorder.lost);
            if got != (0..20).collect::<Vec<_>>() || rx.peer_epoch() != Some(7) || lost > 1 {
                failed.push(format!("{name}: delivered {got:?}, lost {lost}"));
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn rejected_frames_consume_no_number() {
        // Frames the receiver does not believe (another epoch, too far ahead) carry numbers the
        // genuine stream still uses: each is delivered from its genuine frame afterwards.
        let small = ReceiverConfig {
            dedup_window: 64,
            reorder_capacity: 16,
            max_packet_len: 1000,
            ..ReceiverConfig::default()
        };
        let oversized = frames(&mut Sender::with_first_seq(7, 3), &packet(3, 1200), 1500, 1);
        let big = packet(0, 4000);
        let foreign_frags = frames(&mut Sender::with_first_seq(99, 3), &big, 1500, 1);
        let too_long = frames(&mut Sender::with_first_seq(7, 3), &big, 1500, 1);
        let forty: Vec<Vec<u8>> = (0..40).map(|s| packet(5 + s, 30)).collect();
        let far_bundle = bundle_frame(&mut Sender::with_first_seq(7, 5), &forty, 1);
        let cases: &[(&str, Vec<u8>)] = &[
            ("data frame of another epoch", frame_at(99, 3, 1)),
            ("fragment of another epoch", foreign_frags[0].clone()),
            ("bundle reaching far ahead", far_bundle),
            ("packet over max_packet_len", oversized[0].clone()),
            ("fragment over max_packet_len", too_long[0].clone()),
        ];
        for (name, injected) in cases {
            let mut rx = Receiver::new(&small).unwrap();
            let mut sink = Sink(Vec::new());
            for s in 0..3 {
                rx.on_frame(&frame_at(7, s, 0), t(0), sink.f());
            }
            rx.on_frame(injected, t(0), sink.f());
            for s in 3..8 {
                assert!(
                    matches!(
                        rx.on_frame(&frame_at(7, s, 0), t(0), sink.f()),
                        RxOutcome::Accepted { .. }
                    ),
                    "{name}: genuine {s}"
                );
            }
            assert_eq!(ids(&sink), (0..8).collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn a_jump_is_believed_only_from_a_quiet_stream() {
        // The peer's links were all down for a while: the stream resumes 100 000 numbers on.
        // The first frames of the new region wait until the old one has been quiet for the
        // hold time and the new one has shown four numbers; then all of them are delivered.
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        for s in 0..5 {
            rx.on_frame(&frame_at(7, s, 0), t(0), sink.f());
        }
        let resumed: Vec<u64> = (100_000..100_010).collect();
        for (i, &s) in resumed.iter().enumerate() {
            rx.on_frame(&frame_at(7, s, 0), t(10 + i as u64), sink.f());
        }
        let mut want: Vec<u64> = (0..5).collect();
        want.extend(&resumed);
        assert_eq!(ids(&sink), want);
        let s = rx.stats();
        assert_eq!(s.reorder.lost, 100_000 - 5, "the outage's numbers");
    }

    #[test]
    fn malformed_frames_are_counted_never_panic() {
        let mut rx = receiver();
        let mut sink = Sink(Vec::new());
        let mut f = packet_frame(&mut Sender::new(1), 0);
        assert!(matches!(
            rx.on_frame(&f[..10], t(0), sink.f()),
            RxOutcome::Malformed(WireError::Truncated)
        ));
        f[0] = 9;
        assert!(matches!(
            rx.on_frame(&f, t(0), sink.f()),
            RxOutcome::Malformed(WireError::BadVersion(9))
        ));
        f[0] = crate::wire::VERSION;
        f[1] = 200;
        assert!(matches!(
            rx.on_frame(&f, t(0), sink.f()),
            RxOutcome::Malformed(WireError::UnknownType(200))
        ));
        let s = rx.stats();
        assert_eq!((s.malformed, s.bad_version, s.unknown_type), (1, 1, 1));
        assert!(sink.0.is_empty());
    }

    #[test]
    fn probes_are_reported() {
        let tx = Sender::new(5);
        let mut rx = receiver();
        let probe = ProbeRepr {
            echo_time: 7,
            echo_delay: 2,
        };
        let mut buf = [0u8; 64];
        let n = tx
            .probe(
                Stamp {
                    lane_seq: 99,
                    ..Stamp::on(3)
                },
                probe,
            )
            .emit(&mut buf)
            .unwrap();
        assert_eq!(
            rx.on_frame(&buf[..n], t(0), |_: &[u8]| {}),
            RxOutcome::Probe {
                link: 3,
                seq: 99,
                probe
            }
        );
        assert_eq!(rx.stats().probes, 1);
    }

    #[test]
    fn plan_limits() {
        let mut tx = Sender::new(0);
        assert_eq!(tx.plan(0, 1500), Err(PlanError::Empty));
        assert_eq!(tx.plan(1465, 1500).unwrap().frame_count(), 2);
        assert_eq!(tx.plan(1464, 1500).unwrap().frame_count(), 1);
        assert_eq!(tx.plan(100, 48), Err(PlanError::MtuTooSmall(48)));
        assert!(matches!(
            tx.plan(65_535, 100),
            Err(PlanError::TooManyFragments { .. })
        ));
        // A data frame's length field is 16 bits: larger packets fragment even on huge MTUs.
        let plan = tx.plan(70_000, 200_000).unwrap();
        assert!(plan.is_fragmented());
        assert_eq!(tx.next_seq(), 3);
        let plan = tx.plan(10, 1500).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(
            plan.emit(0, Stamp::on(0), &[0; 9], &mut out),
            Err(WireError::FieldOverflow)
        );
        assert_eq!(
            plan.emit(1, Stamp::on(0), &[0; 10], &mut out),
            Err(WireError::BadFragment)
        );
        assert_eq!(plan.frame_len(0), 46);
    }

    #[test]
    fn emit_ethernet_prefixes_the_header() {
        let mut tx = Sender::new(0);
        let eth = EthernetRepr {
            dst: crate::wire::MacAddr([1; 6]),
            src: crate::wire::MacAddr([2; 6]),
            ethertype: 0x88b6,
        };
        let plan = tx.plan(4, 1500).unwrap();
        let mut out = [0u8; 64];
        let n = plan
            .emit_ethernet(0, Stamp::on(0), &eth, &[1, 2, 3, 4], &mut out)
            .unwrap();
        assert_eq!(n, 14 + 40);
        assert_eq!(&out[12..14], &[0x88, 0xb6]);
        assert_eq!(&out[50..54], &[1, 2, 3, 4]);
    }

    #[test]
    fn config_validation() {
        assert!(ReceiverConfig::default().validate().is_ok());
        let small = ReceiverConfig {
            dedup_window: 512,
            ..Default::default()
        };
        assert!(matches!(
            small.validate(),
            Err(ConfigError::WindowSmallerThanReorder { .. })
        ));
        let zero = ReceiverConfig {
            large_slots: 0,
            ..Default::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(ConfigError::OutOfRange {
                name: "large_slots",
                ..
            })
        ));
    }
}
