//! The transmit stage: numbering ([`Sender`]), scheduling (the configured [`AnyScheduler`]),
//! bundling ([`Bundler`]) and staging frames on the links' transmit halves ([`FrameTx`]). It is
//! the capture stage's [`Outbound`].
//!
//! Every frame carries its lane's stamp (`alagg_proto::Lane`: this worker on that link, with
//! the lane's frame counter and the send time); with `[auth]` every frame is sealed
//! ([`FrameKey::seal`]) once written.
//!
//! Link health (`alagg_proto::health`): the schedulers see each link's health as the receive
//! stage publishes it ([`crate::port::HealthBoard`]). Worker 0 sends feedback on every link
//! with a carrier every [`FEEDBACK_INTERVAL`] (the reports the receive stage published; it is
//! also the link's keepalive); every worker sends a probe on a lane idle for
//! [`PROBE_INTERVAL`] while it carried packets in the last [`ACTIVE_FOR`], so the peer learns
//! how far each lane has come (`docs/PROTOCOL.md`, *Lane floors*). When health says every link
//! with a carrier is down (the peer sends no feedback, say), they are all used as if unknown:
//! traffic is never dropped for want of feedback.
//!
//! Invariant: sequence numbers follow capture order, bundles included: a packet that goes on
//! its own is numbered after the bundle built before it.

use std::{collections::VecDeque, sync::atomic::Ordering::Relaxed, time::Duration};

use alagg_proto::{
    AnyScheduler, Bundler, Lane, LinkSet, LinkState, Scheduler as _, Sender, Stamp, Timestamp,
    auth::FrameKey,
    fec::{AutoFec, Encoder},
    health::{Condition, FEEDBACK_INTERVAL, PROBE_INTERVAL},
    wire::{
        BUNDLE_ENTRY_HEADER_LEN, DATA_HEADER_LEN, ETH_HDR_LEN, EthernetRepr, FecParams, Frame,
        LaneReport, Member, ProbeRepr, WireError,
    },
};

use alagg_packet::offload;

pub(crate) use crate::port::{FecPlan, FecPolicy};
use crate::{
    counters::{LinkTxCounters, WorkerCounters},
    port::{FrameTx, LinkControl, Outbound, Schedule, TxLosses},
};

/// How long after its last packet a worker keeps probing its idle lanes.
pub(crate) const ACTIVE_FOR: Duration = Duration::from_secs(1);
/// How soon a link's transmit half is flushed again when its last flush left frames for the
/// device ([`FrameTx::behind`]): a slow link's rest goes out without waiting for new packets.
const BEHIND_RETRY: Duration = Duration::from_micros(100);

/// How far back failover resends: what a link carried in the time it takes to find it down
/// ([`alagg_proto::health::DOWN_AFTER`]) and the feedback's delay.
pub(crate) const RESEND_WINDOW: Duration = Duration::from_millis(150);
/// Loss ratio of a link above which TCP sent alone on it is cut into segments.
const SEGMENT_LOSS: f32 = 0.005;
/// Frames a worker keeps for failover at most, and their bytes.
const RESEND_FRAMES: usize = 16_384;
const RESEND_BYTES: usize = 8 << 20;

/// The frames this worker sent lately on links that carry each packet alone (not
/// redundant), unsealed, so that when a link goes down what it carried in its last
/// [`RESEND_WINDOW`] goes out again on another (failover). Buffers are reused: no allocation
/// per frame once warm.
#[derive(Debug, Default)]
struct Recent {
    kept: VecDeque<Kept>,
    pool: Vec<Vec<u8>>,
    bytes: usize,
}

/// One frame kept for failover: when and on which link it went, and its alagg header and
/// payload (before any tag).
#[derive(Debug)]
struct Kept {
    at: Timestamp,
    link: usize,
    frame: Vec<u8>,
}

impl Recent {
    /// Keeps `frame`, sent on `link` at `now`, forgetting what is too old or over the bounds.
    fn keep(&mut self, now: Timestamp, link: usize, frame: &[u8]) {
        self.expire(now);
        while self.kept.len() >= RESEND_FRAMES || self.bytes + frame.len() > RESEND_BYTES {
            if !self.drop_oldest() {
                return;
            }
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.bytes += buf.len();
        self.kept.push_back(Kept {
            at: now,
            link,
            frame: buf,
        });
    }

    /// Forgets frames sent more than [`RESEND_WINDOW`] before `now`.
    fn expire(&mut self, now: Timestamp) {
        while self
            .kept
            .front()
            .is_some_and(|k| k.at.saturating_add(RESEND_WINDOW) < now)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) -> bool {
        let Some(old) = self.kept.pop_front() else {
            return false;
        };
        self.bytes -= old.frame.len();
        self.pool.push(old.frame);
        true
    }
}

/// A worker's FEC: its encoder, and the policy that picks its block shape.
#[derive(Debug)]
struct Fec {
    encoder: Encoder,
    /// Whether frames get parity now (always with a fixed shape; as `auto` decides).
    active: bool,
    auto: Option<AutoFec>,
    timeout: Duration,
    /// With `auto`: when it looks at the loss next, and each link's frames sent then.
    next_look: Timestamp,
    sent: Vec<u64>,
}

/// How often `fec = "auto"` looks at the links' loss.
const AUTO_LOOK: Duration = Duration::from_millis(100);

impl Fec {
    fn new(plan: FecPlan, links: usize) -> Self {
        let (params, auto) = match plan.policy {
            FecPolicy::Fixed(params) => (params, None),
            // Until loss is measured: none (the encoder's shape is unused while inactive).
            FecPolicy::Auto => (FecParams { k: 8, m: 1 }, Some(AutoFec::default())),
        };
        Self {
            encoder: Encoder::new(params, links),
            active: auto.is_none(),
            auto,
            timeout: plan.timeout,
            next_look: Timestamp::ZERO,
            sent: Vec::new(),
        }
    }

    /// The member extension for the next data frame, numbered `seq`, if frames get parity.
    fn member(&mut self, seq: u64, now: Timestamp) -> Option<Member> {
        self.active.then(|| self.encoder.member(seq, now))
    }
}

/// The loss FEC of `shape` protects against well enough that `adaptive` need not copy: what
/// a block's parity rebuilds, `m` of `k + m` frames, with margin (a third of that share, so
/// 8+1 covers 3.7 %, 8+2 6.7 %); none without FEC, nor for a copy (1+1, the heaviest loss).
fn covers(shape: Option<FecParams>) -> f32 {
    match shape {
        Some(p) if p.k > 1 => f32::from(p.m) / (3.0 * p.total() as f32),
        _ => 0.0,
    }
}

/// The transmit half of one link and the Ethernet header of its frames.
#[derive(Debug)]
pub(crate) struct TxLink<T> {
    pub(crate) io: T,
    pub(crate) eth: EthernetRepr,
}

/// A link as the stage sends on it: its socket and header, and its lane.
#[derive(Debug)]
struct Link<T> {
    io: T,
    eth: EthernetRepr,
    lane: Lane,
    /// The socket's losses already added to the counters.
    reported: TxLosses,
    /// Whether the link's carrier is up (the runtime's view): frames go out only then.
    carrier: bool,
    /// When the lane last carried a frame.
    last_sent: Timestamp,
}

impl<T: FrameTx> Link<T> {
    /// Stages one frame on the link, counted: `write` gets the lane's next stamp, the link's
    /// Ethernet header and the buffer, and returns the frame's length (Ethernet header first,
    /// no tag); the frame is then sealed when frames are sealed ([`finish`]). The lane counts as
    /// used at `now`. Returns the frame's length before sealing, 0 if it was not staged.
    fn send(
        &mut self,
        counters: &LinkTxCounters,
        sealer: Option<&FrameKey>,
        now: Timestamp,
        write: impl FnOnce(Stamp, &EthernetRepr, &mut [u8]) -> Result<usize, WireError>,
    ) -> usize {
        let Link {
            io,
            eth,
            lane,
            last_sent,
            ..
        } = self;
        *last_sent = now;
        let mut len = 0;
        stage(io, counters, |buf| {
            let emitted = write(lane.stamp(now), eth, buf);
            len = emitted.as_ref().map_or(0, |n| *n);
            finish(sealer, buf, emitted)
        });
        len
    }
}

/// The transmit stage of one capture worker.
#[derive(Debug)]
pub(crate) struct Transmit<'a, R, T> {
    sender: Sender,
    scheduler: AnyScheduler,
    links: Vec<Link<T>>,
    /// With `[auth]`: seals every frame (the key of this start's epoch).
    sealer: Option<FrameKey>,
    /// The time of the packet handled last (a bundle sealed at the batch's end is sent then).
    now: Timestamp,
    link_states: Vec<LinkState>,
    /// Small packets of the current capture batch waiting to share a frame, when bundling.
    bundler: Option<Bundler>,
    /// The links the bundle being built goes to.
    bundle_links: LinkSet,
    counters: &'a WorkerCounters,
    /// Where link changes come from, and this worker's number there.
    control: (&'a LinkControl<R, T>, usize),
    seen_generation: u64,
    seen_health: u64,
    /// When worker 0 sends feedback next.
    next_feedback: Timestamp,
    /// Until when this worker probes its idle lanes (its last packet and [`ACTIVE_FOR`]).
    active_until: Option<Timestamp>,
    /// Where feedback's reports are copied to.
    reports: Vec<LaneReport>,
    /// Frames kept for failover, unless the scheduler sends every packet on every link.
    recent: Option<Recent>,
    /// Where TCP cut into segments is built ([`Transmit::cut_tcp`]).
    segments: Vec<u8>,
    /// Forward error correction, when on.
    fec: Option<Fec>,
    /// The number of the next FEC block when FEC comes back on after a reload.
    next_block: u32,
    last_error: Option<std::time::Instant>,
}

impl<'a, R, T: FrameTx> Transmit<'a, R, T> {
    /// A stage sending on `links` (in link order, with their states) as `scheduler` picks,
    /// numbering with `sender` (whose flags say whether frames are sealed, with `sealer`),
    /// bundling small packets when `bundle`; worker `worker` of `control`, which is its lane on
    /// every link.
    pub(crate) fn new(
        (sender, sealer): (Sender, Option<FrameKey>),
        (links, link_states): (Vec<TxLink<T>>, Vec<LinkState>),
        (scheduler, bundle, fec): (AnyScheduler, bool, Option<FecPlan>),
        counters: &'a WorkerCounters,
        (control, worker): (&'a LinkControl<R, T>, usize),
    ) -> Self {
        // At most 64 workers (the configuration's bound): a lane fits a byte.
        let lane = worker as u8;
        // Copies on every link: a slow link must not hold the others back (`FrameTx`).
        let redundant = scheduler.copies_everywhere();
        let links = links
            .into_iter()
            .zip(&link_states)
            .map(|(mut l, state)| {
                l.io.wait_for_device(!redundant);
                (l, state)
            })
            .map(|(l, state)| Link {
                io: l.io,
                eth: l.eth,
                lane: Lane::new(state.id, lane),
                reported: TxLosses::default(),
                carrier: true,
                last_sent: Timestamp::ZERO,
            })
            .collect();
        // Kept for failover unless every packet goes on every link.
        let recent = (!redundant).then(Recent::default);
        let fec = fec.map(|plan| Fec::new(plan, link_states.len()));
        let sender = sender.with_fec(fec.as_ref().is_some_and(|f| f.active));
        let mut scheduler = scheduler;
        let shape = fec
            .as_ref()
            .filter(|f| f.active)
            .map(|f| f.encoder.params());
        scheduler.set_fec_covers(covers(shape));
        Self {
            sender,
            scheduler,
            links,
            sealer,
            now: Timestamp::ZERO,
            link_states,
            bundler: bundle.then(Bundler::new),
            bundle_links: LinkSet::EMPTY,
            counters,
            control: (control, worker),
            seen_generation: 0,
            seen_health: 0,
            next_feedback: Timestamp::ZERO,
            active_until: None,
            reports: Vec::new(),
            recent,
            segments: Vec::new(),
            fec,
            next_block: 0,
            last_error: None,
        }
    }

    /// Takes a new schedule (the configuration was reloaded): what is being built (a bundle,
    /// an FEC block) goes out first under the old one; numbering, lanes and links go on, so
    /// the peer sees no gap.
    fn reschedule(&mut self, schedule: Schedule, now: Timestamp) {
        self.seal_bundle();
        self.send_parity(now);
        let Schedule {
            scheduler,
            bundle,
            fec,
        } = schedule;
        let copies = scheduler.copies_everywhere();
        if copies != self.scheduler.copies_everywhere() {
            for link in &mut self.links {
                link.io.wait_for_device(!copies);
            }
            self.recent = (!copies).then(Recent::default);
        }
        self.scheduler = scheduler;
        self.bundler = match (bundle, self.bundler.take()) {
            (true, Some(bundler)) => Some(bundler),
            (true, None) => Some(Bundler::new()),
            (false, _) => None,
        };
        self.bundle_links = LinkSet::EMPTY;
        // Blocks go on being numbered where the last encoder stopped.
        if let Some(old) = self.fec.as_ref() {
            self.next_block = old.encoder.next_block();
        }
        let (links, next_block) = (self.link_states.len(), self.next_block);
        self.fec = fec.map(|plan| {
            let mut fec = Fec::new(plan, links);
            fec.encoder = fec.encoder.resume_at(next_block);
            fec
        });
        let shape = self
            .fec
            .as_ref()
            .filter(|f| f.active)
            .map(|f| f.encoder.params());
        self.sender.set_fec(shape.is_some());
        self.scheduler.set_fec_covers(covers(shape));
        self.flush_links();
    }

    /// With `fec = "auto"`: every [`AUTO_LOOK`], follows the loss the frames see (the usable
    /// links', weighted by what this worker sent on each), closing the open block first when
    /// the shape changes.
    fn adapt_fec(&mut self, now: Timestamp) {
        let Some(fec) = self.fec.as_mut().filter(|f| f.auto.is_some()) else {
            return;
        };
        if now < fec.next_look {
            return;
        }
        fec.next_look = now.saturating_add(AUTO_LOOK);
        // The loss the frames see: each usable link's, weighted by the frames this worker put
        // on it since the last look (equally while it sent nothing), so a lossy link the
        // scheduler keeps clear of costs no parity.
        fec.sent.resize(self.links.len(), 0);
        let (mut weighted, mut frames, mut plain, mut usable) = (0.0f64, 0u64, 0.0f64, 0u32);
        for ((state, counters), last) in self
            .link_states
            .iter()
            .zip(&self.counters.links)
            .zip(fec.sent.iter_mut())
        {
            let total = counters.tx_frames.load(Relaxed);
            let sent = total.wrapping_sub(*last);
            *last = total;
            if state.usable {
                let loss = f64::from(state.health.loss);
                weighted += loss * sent as f64;
                frames += sent;
                plain += loss;
                usable += 1;
            }
        }
        let loss = if frames > 0 {
            weighted / frames as f64
        } else {
            plain / f64::from(usable.max(1))
        } as f32;
        let Some(auto) = fec.auto.as_mut() else {
            return;
        };
        let wanted = auto.decide(loss, now);
        let Some(fec) = self.fec.as_ref() else {
            return;
        };
        let current = fec.active.then(|| fec.encoder.params());
        if wanted != current {
            self.send_parity(now);
            if let Some(fec) = self.fec.as_mut() {
                fec.active = wanted.is_some();
                if let Some(params) = wanted {
                    fec.encoder.set_params(params);
                }
                self.sender.set_fec(fec.active);
                self.scheduler.set_fec_covers(covers(wanted));
            }
            tracing::info!(
                fec = %wanted.map_or("off".to_owned(), |p| p.to_string()),
                loss = %format!("{:.2} %", loss * 100.0),
                "FEC protection changed"
            );
        }
    }

    /// Closes the open FEC block, if any, and sends its parity: each parity frame on the
    /// usable link that carried the fewest of the block's frames so far (parity included), the
    /// one with the shortest round trip among equals, so one link's failure does not take a
    /// block's data and its parity together.
    fn send_parity(&mut self, now: Timestamp) {
        let Some(fec) = self.fec.as_mut() else {
            return;
        };
        let (epoch, flags) = (self.sender.epoch(), self.sender.flags());
        let k = fec.encoder.params().k;
        let Some(parity) = fec.encoder.close() else {
            return;
        };
        let partial = parity.count() < k;
        let counters = &self.counters.capture;
        counters.fec_blocks.fetch_add(1, Relaxed);
        if partial {
            counters.fec_partial.fetch_add(1, Relaxed);
        }
        // Frames of the block per link, parity added as it goes (at most 64 links).
        let mut carried = [0u32; alagg_proto::sched::MAX_LINKS];
        for (c, used) in carried.iter_mut().zip(parity.link_use()) {
            *c = u32::from(*used);
        }
        for j in 0..parity.len() {
            let target = self
                .link_states
                .iter()
                .enumerate()
                .filter(|(i, s)| s.usable && self.links.get(*i).is_some_and(|l| l.carrier))
                .min_by_key(|(i, s)| {
                    let srtt = s.health.srtt.unwrap_or(Duration::MAX);
                    (carried.get(*i).copied().unwrap_or(u32::MAX), srtt)
                })
                .map(|(i, _)| i);
            let Some(target) = target else {
                return;
            };
            if let Some(c) = carried.get_mut(target) {
                *c += 1;
            }
            let sealer = self.sealer.as_ref();
            let bytes = self.links[target].send(
                &self.counters.links[target],
                sealer,
                now,
                |stamp, eth, buf| {
                    let (repr, shard) = parity
                        .frame(j, stamp, epoch, flags)
                        .ok_or(WireError::FieldOverflow)?;
                    eth.emit(buf)?;
                    let out = buf
                        .get_mut(ETH_HDR_LEN..)
                        .ok_or(WireError::BufferTooSmall)?;
                    Ok(ETH_HDR_LEN + repr.emit_with_payload(shard, out)?)
                },
            );
            let mut one = LinkSet::EMPTY;
            one.insert(target);
            self.scheduler.charge(one, bytes, &self.link_states);
            counters.fec_parity_sent.fetch_add(1, Relaxed);
        }
    }

    /// Sends the open FEC block's parity if it is full, or has been open for the timeout.
    /// Returns whether it did.
    fn close_fec_block(&mut self, now: Timestamp) -> bool {
        let due = self.fec.as_ref().is_some_and(|f| {
            f.encoder.is_full() || f.encoder.deadline(f.timeout).is_some_and(|t| t <= now)
        });
        if due {
            self.send_parity(now);
        }
        due
    }

    /// Takes the links' health from the boards when it changed, then works out which links the
    /// scheduler may use: carrier up and health not down; or, when that leaves none, every link
    /// with a carrier (module docs).
    fn take_health(&mut self, force: bool, now: Timestamp) {
        let control = self.control.0;
        let was_usable: Vec<bool> = self.link_states.iter().map(|s| s.usable).collect();
        let generation = control.health_generation();
        if generation != self.seen_health || force {
            self.seen_health = generation;
            for (index, state) in self.link_states.iter_mut().enumerate() {
                if let Some(board) = control.health(index) {
                    state.health = board.view();
                }
            }
        }
        let healthy =
            |link: &Link<T>, state: &LinkState| link.carrier && state.health.condition.usable();
        let any = self
            .links
            .iter()
            .zip(&self.link_states)
            .any(|(l, s)| healthy(l, s));
        for (link, state) in self.links.iter().zip(self.link_states.iter_mut()) {
            state.usable = if any {
                healthy(link, state)
            } else {
                link.carrier
            };
            if !any && state.health.condition == Condition::Down {
                state.health.condition = Condition::Unknown;
            }
        }
        for (index, was) in was_usable.into_iter().enumerate() {
            if was && !self.link_states[index].usable {
                self.resend_from(index, now);
            }
        }
    }

    /// Link `failed` stopped being usable at `now`: what this worker sent on it in the last
    /// [`RESEND_WINDOW`] goes out again on the usable link with the shortest round trip, with
    /// a fresh stamp of that link's lane (and so a fresh nonce when sealed). The receiver
    /// drops the copies of what did arrive.
    fn resend_from(&mut self, failed: usize, now: Timestamp) {
        let Some(recent) = self.recent.as_mut() else {
            return;
        };
        recent.expire(now);
        let target = self
            .link_states
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != failed && s.usable)
            .min_by_key(|(_, s)| s.health.srtt.unwrap_or(Duration::MAX))
            .map(|(i, _)| i);
        let Some(target) = target else {
            return;
        };
        // Room for alagg header and payload: the tag, if any, comes after.
        let room = self.link_states[target]
            .mtu
            .saturating_sub(self.sender.overhead());
        let link = &mut self.links[target];
        let counters = &self.counters.links[target];
        let sealer = self.sealer.as_ref();
        let mut resent = 0;
        for kept in recent.kept.iter().filter(|k| k.link == failed) {
            if kept.frame.len() > room {
                continue;
            }
            link.send(counters, sealer, now, |stamp, eth, buf| {
                let len = ETH_HDR_LEN + kept.frame.len();
                let Some(out) = buf.get_mut(..len) else {
                    return Err(WireError::BufferTooSmall);
                };
                eth.emit(out)?;
                out[ETH_HDR_LEN..].copy_from_slice(&kept.frame);
                Frame::new_unchecked(&mut out[ETH_HDR_LEN..]).set_stamp(stamp);
                Ok(len)
            });
            resent += 1;
        }
        // The resent frames now count as sent on the target: they stay for its failure.
        for kept in recent.kept.iter_mut().filter(|k| k.link == failed) {
            kept.link = target;
        }
        if resent > 0 {
            counters.tx_resent.fetch_add(resent, Relaxed);
            tracing::info!(
                from = failed,
                to = target,
                frames = resent,
                "link down: its last frames sent again"
            );
            self.flush_links();
        }
    }

    /// Sends what is due at `now` without packets: worker 0's feedback on every link with a
    /// carrier, and probes on this worker's idle lanes while it is active; then flushes.
    fn send_control(&mut self, now: Timestamp) {
        let (control, worker) = self.control;
        let feedback = worker == 0 && now >= self.next_feedback;
        let active = self.active_until.is_some_and(|t| now < t);
        if !feedback && !active {
            return;
        }
        if feedback {
            self.next_feedback = now.saturating_add(FEEDBACK_INTERVAL);
        }
        let mut sent = false;
        for index in 0..self.links.len() {
            let link = &mut self.links[index];
            if !link.carrier {
                continue;
            }
            let counters = &self.counters.links[index];
            let (sender, sealer) = (&self.sender, self.sealer.as_ref());
            if feedback {
                match control.health(index) {
                    Some(board) => board.reports(&mut self.reports),
                    None => self.reports.clear(),
                }
                let reports = &self.reports;
                link.send(counters, sealer, now, |stamp, eth, buf| {
                    sender.emit_feedback(stamp, reports, eth, buf)
                });
                sent = true;
            } else if now.saturating_since(link.last_sent) >= PROBE_INTERVAL {
                link.send(counters, sealer, now, |stamp, eth, buf| {
                    sender.emit_probe(stamp, ProbeRepr::default(), eth, buf)
                });
                sent = true;
            }
        }
        if sent {
            self.flush_links();
        }
    }

    /// TCP captured whole (up to 64 KiB) travels as up to 45 fragments and is lost with any
    /// one of them: where a scheduler that does not copy every packet everywhere may put it on
    /// a link losing frames, it is cut into TCP segments that fit one frame each (as the kernel
    /// would have cut it), each scheduled and numbered on its own, so a lost frame costs one
    /// segment. Returns whether it was (and the segments sent).
    fn cut_tcp(&mut self, payload: &[u8], now: Timestamp) -> bool {
        if self.scheduler.copies_everywhere() {
            return false;
        }
        let usable = || self.link_states.iter().filter(|s| s.usable);
        let lossy = usable()
            .any(|s| s.health.loss > SEGMENT_LOSS || s.health.condition == Condition::Degraded);
        let Some(mtu) = usable().map(|s| s.mtu).min() else {
            return false;
        };
        let mtu = mtu.saturating_sub(self.sender.overhead());
        if !lossy || payload.len() + DATA_HEADER_LEN <= mtu {
            return false;
        }
        let Some(gso) = offload::tcp_segmentation(payload, mtu - DATA_HEADER_LEN) else {
            return false;
        };
        self.counters.capture.tcp_segmented.fetch_add(1, Relaxed);
        let mut scratch = std::mem::take(&mut self.segments);
        let _ = offload::split_gso(payload, &gso.header, &mut scratch, |segment| {
            self.packet(segment, now);
            Ok::<(), std::convert::Infallible>(())
        });
        self.segments = scratch;
        true
    }

    /// Kicks every link with a carrier and counts what each link's socket dropped. A link
    /// without one is not kicked (frames left on its ring wait until it is back), but what it
    /// dropped is counted.
    fn flush_links(&mut self) {
        let links = self.links.iter_mut().zip(&self.counters.links);
        for (link, link_counters) in links {
            let result = if link.carrier {
                link.io.flush()
            } else {
                Ok(())
            };
            count_losses(&mut link.reported, link.io.losses(), link_counters);
            if let Err(error) = result {
                // At most once a second: a broken link must not flood the log.
                if self
                    .last_error
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(%error, "transmit");
                    self.last_error = Some(std::time::Instant::now());
                }
            }
        }
    }

    /// Numbers the bundle being built and stages its frame on its links.
    fn seal_bundle(&mut self) {
        let Some(bundler) = self.bundler.as_mut() else {
            return;
        };
        if let Some(sealed) = bundler.seal(&mut self.sender) {
            let member = self
                .fec
                .as_mut()
                .and_then(|f| f.member(sealed.seq(), self.now));
            for index in self.bundle_links.iter() {
                let (sealer, now) = (self.sealer.as_ref(), self.now);
                let (recent, fec) = (&mut self.recent, &mut self.fec);
                let counters = &self.counters.links[index];
                self.links[index].send(counters, sealer, now, |stamp, eth, buf| {
                    let emitted = sealed.emit_ethernet(stamp, eth, buf);
                    let emitted = join_block(fec, member, index, buf, emitted);
                    keep(recent, now, index, buf, &emitted);
                    emitted
                });
            }
        }
        bundler.clear();
        self.close_fec_block(self.now);
    }
}

impl<R, T: FrameTx> Outbound for Transmit<'_, R, T> {
    /// Link changes from the runtime and health from the receive stage, looked at every turn
    /// (two atomic loads), so a worker whose queue stays empty still drops a dead link's socket
    /// promptly; then what is due without packets (probes, feedback) goes out.
    fn refresh(&mut self, now: Timestamp) {
        let (control, worker) = self.control;
        let generation = control.generation();
        let links_changed = generation != self.seen_generation;
        if links_changed {
            self.seen_generation = generation;
            if let Some(schedule) = control.take_schedule(worker) {
                self.reschedule(schedule, now);
            }
            while let Some((index, io, eth)) = control.take_tx(worker) {
                // The lane goes on counting: its counter is the nonce of sealed frames.
                if let (Some(link), Some(counters)) =
                    (self.links.get_mut(index), self.counters.links.get(index))
                {
                    // What the old socket dropped counts before it goes; the new one counts
                    // from 0.
                    count_losses(&mut link.reported, link.io.losses(), counters);
                    let mut io = io;
                    io.wait_for_device(!self.scheduler.copies_everywhere());
                    link.io = io;
                    link.eth = eth;
                    link.reported = TxLosses::default();
                }
            }
            for (index, link) in self.links.iter_mut().enumerate() {
                link.carrier = control.usable(index);
            }
        }
        self.take_health(links_changed, now);
        self.adapt_fec(now);
        let parity = self.close_fec_block(now);
        self.send_control(now);
        // What a slow link's last flush left on its ring goes when it is kicked again.
        if parity || self.links.iter().any(|l| l.carrier && l.io.behind()) {
            self.flush_links();
        }
    }

    fn due(&self, now: Timestamp) -> Option<Duration> {
        let feedback = (self.control.1 == 0).then(|| self.next_feedback.saturating_since(now));
        let probe = self
            .active_until
            .filter(|t| now < *t)
            .and_then(|_| {
                self.links
                    .iter()
                    .filter(|l| l.carrier)
                    .map(|l| l.last_sent.saturating_add(PROBE_INTERVAL))
                    .min()
            })
            .map(|t| t.saturating_since(now));
        let block = self
            .fec
            .as_ref()
            .and_then(|f| f.encoder.deadline(f.timeout))
            .map(|t| t.saturating_since(now));
        let behind = self
            .links
            .iter()
            .any(|l| l.carrier && l.io.behind())
            .then_some(BEHIND_RETRY);
        [feedback, probe, block, behind].into_iter().flatten().min()
    }

    /// Encapsulates one captured packet and stages its frames on the links the scheduler picks;
    /// a small one joins the bundle being built instead, which goes out (numbered before this
    /// packet) when it is full or the batch ends.
    fn packet(&mut self, payload: &[u8], now: Timestamp) {
        self.now = now;
        self.active_until = Some(now.saturating_add(ACTIVE_FOR));
        // A small packet joins the bundle being built, on the links chosen when it began (a
        // scheduler that picks one link per packet would otherwise end a bundle at every
        // packet), and the scheduler is charged for it.
        if let Some(bundler) = self.bundler.as_mut().filter(|b| !b.is_empty()) {
            let mtu = self
                .bundle_links
                .min_mtu(&self.link_states)
                .unwrap_or(0)
                .saturating_sub(self.sender.overhead());
            let usable = self.bundle_links.iter().all(|i| self.link_states[i].usable);
            if usable && Bundler::bundleable(payload.len(), mtu) && bundler.push(payload, mtu) {
                let bytes = payload.len() + BUNDLE_ENTRY_HEADER_LEN;
                self.scheduler
                    .charge(self.bundle_links, bytes, &self.link_states);
                return;
            }
        }
        if self.cut_tcp(payload, now) {
            return;
        }
        let chosen = self.scheduler.select(payload.len(), &self.link_states, now);
        let Some(mtu) = chosen.min_mtu(&self.link_states) else {
            self.counters.capture.dropped.fetch_add(1, Relaxed);
            return;
        };
        // Room for alagg header and payload: the tag, if any, comes after.
        let mtu = mtu.saturating_sub(self.sender.overhead());
        if self.bundler.is_some() && Bundler::bundleable(payload.len(), mtu) {
            let same_links = chosen == self.bundle_links;
            if same_links && self.bundler.as_mut().is_some_and(|b| b.push(payload, mtu)) {
                return;
            }
            self.seal_bundle();
            self.bundle_links = chosen;
            if self.bundler.as_mut().is_some_and(|b| b.push(payload, mtu)) {
                return;
            }
        }
        // Sent on its own, after whatever was bundled before it, so numbers follow capture order.
        self.seal_bundle();
        let Ok(plan) = self.sender.plan(payload.len(), mtu) else {
            self.counters.capture.dropped.fetch_add(1, Relaxed);
            return;
        };
        for i in 0..plan.frame_count() {
            let member = self.fec.as_mut().and_then(|f| f.member(plan.seq(), now));
            for index in chosen.iter() {
                let (sealer, recent, fec) = (self.sealer.as_ref(), &mut self.recent, &mut self.fec);
                let counters = &self.counters.links[index];
                self.links[index].send(counters, sealer, now, |stamp, eth, buf| {
                    let emitted = plan.emit_ethernet(i, stamp, eth, payload, buf);
                    let emitted = join_block(fec, member, index, buf, emitted);
                    keep(recent, now, index, buf, &emitted);
                    emitted
                });
            }
            self.close_fec_block(now);
        }
    }

    /// Seals the bundle and sends what every link with a carrier has staged, and counts what
    /// each link's socket dropped.
    fn flush(&mut self) {
        self.seal_bundle();
        self.flush_links();
    }
}

/// With FEC, makes the frame `emitted` into `buf` (Ethernet header first) a member of the open
/// block: inserts `member`'s extension and gives the block the frame's shard (once per frame:
/// copies on other links only count for where parity goes). Returns the frame's length.
fn join_block(
    fec: &mut Option<Fec>,
    member: Option<Member>,
    link: usize,
    buf: &mut [u8],
    emitted: Result<usize, WireError>,
) -> Result<usize, WireError> {
    let len = emitted?;
    let (Some(fec), Some(member)) = (fec.as_mut(), member) else {
        return Ok(len);
    };
    let frame = buf
        .get_mut(ETH_HDR_LEN..)
        .ok_or(WireError::BufferTooSmall)?;
    let len = ETH_HDR_LEN + member.insert(frame, len - ETH_HDR_LEN)?;
    fec.encoder.push(&buf[ETH_HDR_LEN..len]);
    fec.encoder.carried(link);
    Ok(len)
}

/// Keeps the frame `emitted` into `buf` (Ethernet header first), sent on `link` at `now`, for
/// failover, when frames are kept.
fn keep(
    recent: &mut Option<Recent>,
    now: Timestamp,
    link: usize,
    buf: &[u8],
    emitted: &Result<usize, WireError>,
) {
    if let (Some(recent), Ok(len)) = (recent.as_mut(), emitted) {
        if let Some(frame) = buf.get(ETH_HDR_LEN..*len) {
            recent.keep(now, link, frame);
        }
    }
}

/// Seals a frame `emitted` into `buf` (Ethernet header first), when frames are sealed.
fn finish(
    sealer: Option<&FrameKey>,
    buf: &mut [u8],
    emitted: Result<usize, WireError>,
) -> Result<usize, WireError> {
    let len = emitted?;
    match sealer {
        None => Ok(len),
        Some(key) => {
            let frame = buf
                .get_mut(ETH_HDR_LEN..)
                .ok_or(WireError::BufferTooSmall)?;
            Ok(ETH_HDR_LEN + key.seal(frame, len - ETH_HDR_LEN)?)
        }
    }
}

/// Stages one frame, written by `emit`, on `link`, and counts it: sent, or dropped for want of
/// a free frame (`emit` never called) or because it could not be written.
fn stage(
    link: &mut impl FrameTx,
    counters: &LinkTxCounters,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, WireError>,
) {
    let mut len = 0;
    let mut written = false;
    let staged = link.stage(|buf| {
        written = true;
        len = emit(buf).unwrap_or(0);
        len
    });
    if staged {
        counters.tx_frames.fetch_add(1, Relaxed);
        counters.tx_bytes.fetch_add(len as u64, Relaxed);
    } else {
        counters.tx_dropped.fetch_add(1, Relaxed);
        let cause = if written {
            &counters.tx_unwritable
        } else {
            &counters.tx_no_frame
        };
        cause.fetch_add(1, Relaxed);
    }
}

/// Adds what a link's socket dropped since `reported` (its losses then) to the link's
/// counters, and remembers `now` as reported.
fn count_losses(reported: &mut TxLosses, now: TxLosses, counters: &LinkTxCounters) {
    let new = now.since(reported);
    *reported = now;
    if new == TxLosses::default() {
        return;
    }
    counters.tx_stalled.fetch_add(new.stalled, Relaxed);
    counters.tx_refused.fetch_add(new.refused, Relaxed);
    counters.tx_send_errors.fetch_add(new.send_errors, Relaxed);
    counters
        .tx_dropped
        .fetch_add(new.stalled.wrapping_add(new.refused), Relaxed);
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A transmit half with room for `room` frames, that has dropped `losses`.
    struct Stub {
        room: usize,
        losses: TxLosses,
    }

    impl FrameTx for Stub {
        type Error = Infallible;

        fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
            if self.room == 0 {
                return false;
            }
            let mut buf = [0u8; 64];
            let written = write(&mut buf) > 0;
            self.room -= usize::from(written);
            written
        }

        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }

        fn losses(&self) -> TxLosses {
            self.losses
        }
    }

    #[test]
    fn every_frame_not_staged_is_dropped_with_its_cause() {
        let counters = LinkTxCounters::default();
        let mut link = Stub {
            room: 1,
            losses: TxLosses::default(),
        };
        stage(&mut link, &counters, |_| Ok(60));
        stage(&mut link, &counters, |_| Ok(60));
        link.room = 1;
        stage(&mut link, &counters, |_| Err(WireError::BufferTooSmall));
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        assert_eq!(load(&counters.tx_frames), 1);
        assert_eq!(load(&counters.tx_bytes), 60);
        assert_eq!(load(&counters.tx_no_frame), 1);
        assert_eq!(load(&counters.tx_unwritable), 1);
        assert_eq!(load(&counters.tx_dropped), 2);
    }

    #[test]
    fn socket_losses_are_counted_once_each() {
        let counters = LinkTxCounters::default();
        let mut reported = TxLosses::default();
        let steps = [
            TxLosses {
                stalled: 0,
                refused: 3,
                send_errors: 1,
            },
            // Nothing new: nothing added.
            TxLosses {
                stalled: 0,
                refused: 3,
                send_errors: 1,
            },
            TxLosses {
                stalled: 64,
                refused: 5,
                send_errors: 2,
            },
        ];
        for now in steps {
            count_losses(&mut reported, now, &counters);
        }
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        assert_eq!(load(&counters.tx_stalled), 64);
        assert_eq!(load(&counters.tx_refused), 5);
        assert_eq!(load(&counters.tx_send_errors), 2);
        assert_eq!(load(&counters.tx_dropped), 69);
        // A replacement socket counts from zero again.
        let mut reported = TxLosses::default();
        count_losses(
            &mut reported,
            TxLosses {
                refused: 1,
                ..TxLosses::default()
            },
            &counters,
        );
        assert_eq!(load(&counters.tx_dropped), 70);
    }
}
