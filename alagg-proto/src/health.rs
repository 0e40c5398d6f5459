//! Link health: what each host measures of the links, tells its peer, and learns back.
//!
//! Every frame carries its lane's stamp ([`Stamp`]: link, lane, the lane's frame counter and the
//! send time). The receiving host meters each lane it hears ([`Meters`]) and reports what it saw
//! in feedback frames ([`LaneReport`], `docs/PROTOCOL.md`), every [`FEEDBACK_INTERVAL`] on every
//! link. The sending host turns the reports on its own lanes into what it needs to schedule
//! ([`LinkHealth`]): round-trip time, loss rate, delivery rate, and a [`Condition`] with
//! hysteresis:
//! - a link whose reports stop showing progress for [`DOWN_AFTER`] is `Down` (frames go out on
//!   every link at least every [`PROBE_INTERVAL`], so a working link always shows progress);
//! - a `Down` link comes back `Up` after [`RECOVER_REPORTS`] reports with progress and a hold-down
//!   that doubles with each failure close to the previous one (from [`HOLDDOWN_MIN`] to
//!   [`HOLDDOWN_MAX`]), so a flapping link is not trusted again at once;
//! - an `Up` link losing more than [`DEGRADED_ENTER`] of its frames is `Degraded`, and `Up` again
//!   below [`DEGRADED_LEAVE`].
//!
//! Nothing here reads a clock: times come in as [`Timestamp`]s, as everywhere in the engine.
//! Invariant: memory is bounded ([`MAX_METERED`] lanes, [`MAX_REPORTED_LANES`] per link), and no
//! input, however forged, panics or makes a figure overflow.

use core::time::Duration;

use crate::Timestamp;
use crate::wire::{FEEDBACK_REPORT_LEN, LaneReport, LinkId, Stamp};

/// How often a host sends feedback on each link.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(10);
/// Longest a lane that carried traffic recently stays without a frame: a probe goes out then.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// A link whose feedback shows no progress for this long is down: 8 feedback intervals, short
/// enough that a silent failure's gap (this, and the resend) stays under 100 ms.
pub const DOWN_AFTER: Duration = Duration::from_millis(80);
/// Reports with progress a down link needs before it is up again.
pub const RECOVER_REPORTS: u32 = 5;
/// Shortest time a link that went down stays down.
pub const HOLDDOWN_MIN: Duration = Duration::from_millis(200);
/// Longest: a link that keeps failing is tried again at most this often.
pub const HOLDDOWN_MAX: Duration = Duration::from_secs(10);
/// A link up this long has its failures forgiven: the next hold-down is the shortest again.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a link that was never heard from may stay `Unknown` while others are heard.
pub const STARTUP_GRACE: Duration = Duration::from_secs(1);
/// Loss ratio at which an up link becomes degraded.
pub const DEGRADED_ENTER: f32 = 0.10;
/// Loss ratio under which a degraded link is up again.
pub const DEGRADED_LEAVE: f32 = 0.03;
/// Lanes metered at once, over all links (the least recently heard is forgotten first).
pub const MAX_METERED: usize = 128;
/// Lane reports one feedback frame carries at most (a 1500-byte link has room for more).
pub const MAX_REPORTED_LANES: usize = 32;
/// A lane counter that jumps further than this is not believed (no real loss explains it).
const MAX_LANE_JUMP: u64 = 1 << 24;
/// A round-trip time above this is not a measurement (a stale or forged echo).
const MAX_RTT_US: u32 = 10_000_000;
/// Loss is measured over windows of at least this many frames sent...
const LOSS_WINDOW_FRAMES: u64 = 50;
/// ... and this long.
const LOSS_WINDOW: Duration = Duration::from_millis(100);
/// Delivery rate is measured over windows of at least this long (the peer's clock)...
const RATE_WINDOW_US: u32 = 50_000;
/// ... and is the highest of the last this many windows.
const RATE_WINDOWS: usize = 4;

/// How long a lane's lowest transit is taken over (two windows are kept).
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// Whether microsecond time `a` comes before `b`, modulo 2^32 (serial arithmetic).
fn serial_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `now` as the wire's microsecond clock (`tx_time`, modulo 2^32).
pub fn micros(now: Timestamp) -> u32 {
    // Modulo 2^32 by design: only differences are used, in serial arithmetic.
    (now.as_nanos() / 1_000) as u32
}

/// What the receiving host saw of one lane of its peer.
#[derive(Clone, Copy, Debug)]
struct Meter {
    link: LinkId,
    lane: u8,
    epoch: u64,
    highest: u64,
    received: u32,
    bytes: u64,
    /// `tx_time` of the frame with `highest`, and when it arrived.
    echo_time: u32,
    arrived: Timestamp,
    /// The last frame's transit (arrival less `tx_time`, microseconds, modulo 2^32).
    transit: u32,
    /// The lowest transit of the current window (from `min_since`) and of the one before: the
    /// lane's delay without its queues, modulo 2^32 like the samples.
    transit_min: u32,
    transit_min_before: u32,
    min_since: Timestamp,
    /// RFC 3550 6.4.1 interarrival jitter, microseconds, times 16.
    jitter16: u32,
    /// When any frame last arrived on the lane.
    heard: Timestamp,
}

/// The lanes of the peer this host hears, metered frame by frame; see the module docs.
#[derive(Debug, Default)]
pub struct Meters {
    meters: Vec<Meter>,
}

impl Meters {
    /// A frame of `frame_len` bytes stamped `stamp`, of the peer's start `epoch`, arrived at `now`.
    pub fn saw(&mut self, epoch: u64, stamp: Stamp, frame_len: usize, now: Timestamp) {
        let arrival = micros(now);
        let transit = arrival.wrapping_sub(stamp.tx_time);
        let found = self
            .meters
            .iter()
            .position(|m| m.link == stamp.link && m.lane == stamp.lane);
        let index = match found {
            // A lane of another start counts from its first frame again.
            Some(i) if self.meters[i].epoch == epoch => i,
            found => {
                let fresh = Meter {
                    link: stamp.link,
                    lane: stamp.lane,
                    epoch,
                    highest: stamp.lane_seq,
                    received: 0,
                    bytes: 0,
                    echo_time: stamp.tx_time,
                    arrived: now,
                    transit,
                    transit_min: transit,
                    transit_min_before: transit,
                    min_since: now,
                    jitter16: 0,
                    heard: now,
                };
                let index = match found {
                    Some(i) => i,
                    None if self.meters.len() < MAX_METERED => {
                        self.meters.push(fresh);
                        self.meters.len() - 1
                    }
                    None => {
                        let oldest = self.meters.iter().enumerate().min_by_key(|(_, m)| m.heard);
                        let Some((i, _)) = oldest else {
                            return;
                        };
                        i
                    }
                };
                self.meters[index] = fresh;
                index
            }
        };
        let meter = &mut self.meters[index];
        meter.received = meter.received.wrapping_add(1);
        meter.bytes = meter.bytes.wrapping_add(frame_len as u64);
        meter.heard = now;
        // RFC 3550 6.4.1: J += (|D| - J) / 16, D the change in transit.
        let d = (transit.wrapping_sub(meter.transit) as i32).unsigned_abs();
        meter.transit = transit;
        if now.saturating_since(meter.min_since) >= MIN_WINDOW {
            meter.transit_min_before = meter.transit_min;
            meter.transit_min = transit;
            meter.min_since = now;
        } else if serial_before(transit, meter.transit_min) {
            meter.transit_min = transit;
        }
        let j = i64::from(meter.jitter16) + i64::from(d) - i64::from(meter.jitter16 >> 4);
        meter.jitter16 = u32::try_from(j.max(0)).unwrap_or(u32::MAX);
        let ahead = stamp.lane_seq.wrapping_sub(meter.highest);
        if ahead > 0 && ahead <= MAX_LANE_JUMP {
            meter.highest = stamp.lane_seq;
            meter.echo_time = stamp.tx_time;
            meter.arrived = now;
        }
    }

    /// Forgets every lane (the peer restarted, say).
    pub fn clear(&mut self) {
        self.meters.clear();
    }

    /// Appends to `out` the reports on `link`'s lanes at `now`, at most
    /// [`MAX_REPORTED_LANES`], the most recently heard first.
    pub fn reports(&self, link: LinkId, now: Timestamp, out: &mut Vec<LaneReport>) {
        let start = out.len();
        out.extend(self.meters.iter().filter(|m| m.link == link).map(|m| {
            let delay = now.saturating_since(m.arrived).as_micros();
            LaneReport {
                lane: m.lane,
                highest: m.highest,
                received: m.received,
                // Modulo 2^32 by design (the report's field).
                bytes_64: (m.bytes / 64) as u32,
                echo_time: m.echo_time,
                echo_delay: u32::try_from(delay).unwrap_or(u32::MAX),
                jitter: m.jitter16 >> 4,
            }
        }));
        if out.len() - start > MAX_REPORTED_LANES {
            let tail = &mut out[start..];
            tail.sort_by_key(|r| r.echo_delay);
            out.truncate(start + MAX_REPORTED_LANES);
        }
    }

    /// How far apart in time the copies or neighbours of a packet may arrive: the spread of
    /// the lanes' base delays (their lowest transit, arrival less send time, over the last one
    /// or two [`MIN_WINDOW`]s) among the lanes heard within `live` of `now`, plus twice the
    /// largest jitter among them. The peer stamps every lane from one clock, so the clocks'
    /// offset cancels out. A queue standing on an overloaded link is left out on purpose:
    /// waiting for copies stuck behind it would hold every gap as long as the queue. `None`
    /// when no lane was heard.
    pub fn delay_spread(&self, now: Timestamp, live: Duration) -> Option<Duration> {
        let heard = || {
            self.meters
                .iter()
                .filter(move |m| m.heard.saturating_add(live) > now)
        };
        let base = |m: &Meter| {
            if serial_before(m.transit_min_before, m.transit_min) {
                m.transit_min_before
            } else {
                m.transit_min
            }
        };
        let reference = base(heard().next()?);
        // Relative to one lane, in serial arithmetic: transits within 35 minutes of each other.
        let relative = || heard().map(|m| i64::from(base(m).wrapping_sub(reference) as i32));
        let spread = relative().max()? - relative().min()?;
        let jitter = heard().map(|m| m.jitter16 >> 4).max().unwrap_or(0);
        let micros = u64::try_from(spread).unwrap_or(0) + 2 * u64::from(jitter);
        Some(Duration::from_micros(micros))
    }

    /// When a frame last arrived on any lane of `link`.
    pub fn heard(&self, link: LinkId) -> Option<Timestamp> {
        self.meters
            .iter()
            .filter(|m| m.link == link)
            .map(|m| m.heard)
            .max()
    }
}

/// The reports of a feedback payload, in order; stops at the first that does not fit.
pub fn parse_reports(payload: &[u8]) -> impl Iterator<Item = LaneReport> + '_ {
    payload
        .chunks_exact(FEEDBACK_REPORT_LEN)
        .take(MAX_REPORTED_LANES)
        .filter_map(LaneReport::parse)
}

/// How usable a link is, as its sender judges from the peer's feedback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Condition {
    /// No feedback yet (just started, or the peer is not sending any): usable.
    #[default]
    Unknown,
    /// Frames arrive, loss is low.
    Up,
    /// Frames arrive, but too many are lost.
    Degraded,
    /// Nothing arrives (or the carrier is gone): not usable.
    Down,
}

impl Condition {
    /// The name shown in `alagg status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Condition::Unknown => "unknown",
            Condition::Up => "up",
            Condition::Degraded => "degraded",
            Condition::Down => "down",
        }
    }

    /// The condition from [`Condition::code`]; an unknown code is `Unknown`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => Condition::Up,
            2 => Condition::Degraded,
            3 => Condition::Down,
            _ => Condition::Unknown,
        }
    }

    /// A number for the condition (0 unknown, 1 up, 2 degraded, 3 down), to share it atomically.
    pub const fn code(self) -> u8 {
        match self {
            Condition::Unknown => 0,
            Condition::Up => 1,
            Condition::Degraded => 2,
            Condition::Down => 3,
        }
    }

    /// Whether a scheduler may send on the link.
    pub const fn usable(self) -> bool {
        !matches!(self, Condition::Down)
    }
}

/// What a sender knows of one of its links; see [`LinkHealth`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HealthView {
    /// Usability, with hysteresis.
    pub condition: Condition,
    /// Smoothed round-trip time (RFC 6298), if measured.
    pub srtt: Option<Duration>,
    /// Lowest round-trip time seen.
    pub min_rtt: Option<Duration>,
    /// Loss ratio of the link's frames, 0.0 to 1.0.
    pub loss: f32,
    /// Highest delivery rate of the last windows, bits per second (0 until measured).
    pub rate_bps: u64,
    /// Times the link went down.
    pub downs: u64,
}

/// What the sender saw last of one of its lanes in the peer's reports.
#[derive(Clone, Copy, Debug)]
struct LaneSeen {
    lane: u8,
    highest: u64,
    received: u32,
    bytes_64: u32,
}

/// The health of one link, as its sender learns it from feedback; see the module docs.
#[derive(Debug)]
pub struct LinkHealth {
    condition: Condition,
    started: Timestamp,
    lanes: Vec<LaneSeen>,
    srtt_us: Option<f64>,
    rttvar_us: f64,
    min_rtt_us: Option<u32>,
    loss: f32,
    /// Frames sent and received in the current loss window, and when it began.
    window: (u64, u64, Option<Timestamp>),
    /// Bytes delivered in the current rate window, and the peer's time when it began.
    rate_bytes: u64,
    rate_start: Option<u32>,
    rates: [u64; RATE_WINDOWS],
    rate_next: usize,
    last_progress: Option<Timestamp>,
    streak: u32,
    holddown: Duration,
    hold_until: Timestamp,
    up_since: Timestamp,
    downs: u64,
}

impl LinkHealth {
    /// A link that has heard nothing yet, created at `now`.
    pub fn new(now: Timestamp) -> Self {
        LinkHealth {
            condition: Condition::Unknown,
            started: now,
            lanes: Vec::new(),
            srtt_us: None,
            rttvar_us: 0.0,
            min_rtt_us: None,
            loss: 0.0,
            window: (0, 0, None),
            rate_bytes: 0,
            rate_start: None,
            rates: [0; RATE_WINDOWS],
            rate_next: 0,
            last_progress: None,
            streak: 0,
            holddown: HOLDDOWN_MIN,
            hold_until: now,
            up_since: now,
            downs: 0,
        }
    }

    /// What the link looks like now.
    pub fn view(&self) -> HealthView {
        let us = |v: f64| Duration::from_micros(v.max(0.0) as u64);
        HealthView {
            condition: self.condition,
            srtt: self.srtt_us.map(us),
            min_rtt: self.min_rtt_us.map(|v| Duration::from_micros(u64::from(v))),
            loss: self.loss,
            rate_bps: self.rates.iter().copied().max().unwrap_or(0),
            downs: self.downs,
        }
    }

    /// The peer's feedback frame sent at `sent` (its `tx_time`) with `reports` on this link's
    /// lanes, arrived at `now`.
    pub fn on_feedback(
        &mut self,
        sent: u32,
        reports: impl IntoIterator<Item = LaneReport>,
        now: Timestamp,
    ) {
        let mut progress = false;
        let (mut sent_frames, mut got_frames, mut bytes) = (0u64, 0u64, 0u64);
        for report in reports {
            let Some(seen) = self.lanes.iter_mut().find(|l| l.lane == report.lane) else {
                if self.lanes.len() < MAX_REPORTED_LANES {
                    self.lanes.push(LaneSeen {
                        lane: report.lane,
                        highest: report.highest,
                        received: report.received,
                        bytes_64: report.bytes_64,
                    });
                    progress |= report.received > 0;
                }
                continue;
            };
            let ahead = report.highest.wrapping_sub(seen.highest);
            let got = report.received.wrapping_sub(seen.received);
            if ahead > MAX_LANE_JUMP || got > u32::MAX / 2 {
                // The peer restarted (its counters began again) or the report is stale: a new
                // baseline, no sample.
                *seen = LaneSeen {
                    lane: report.lane,
                    highest: report.highest,
                    received: report.received,
                    bytes_64: report.bytes_64,
                };
                continue;
            }
            if got == 0 {
                continue;
            }
            progress = true;
            sent_frames += ahead;
            got_frames += u64::from(got);
            bytes += u64::from(report.bytes_64.wrapping_sub(seen.bytes_64)) * 64;
            *seen = LaneSeen {
                lane: report.lane,
                highest: report.highest,
                received: report.received,
                bytes_64: report.bytes_64,
            };
            if ahead > 0 && report.echo_time != 0 {
                let rtt = micros(now)
                    .wrapping_sub(report.echo_time)
                    .wrapping_sub(report.echo_delay);
                if rtt < MAX_RTT_US {
                    self.rtt_sample(rtt);
                }
            }
        }
        self.rate_sample(sent, bytes);
        if !progress {
            return;
        }
        self.last_progress = Some(now);
        self.loss_sample(sent_frames, got_frames, now);
        match self.condition {
            Condition::Unknown => self.become_up(now),
            Condition::Down => {
                self.streak += 1;
                if self.streak >= RECOVER_REPORTS && now >= self.hold_until {
                    self.become_up(now);
                }
            }
            Condition::Up if self.loss > DEGRADED_ENTER => self.condition = Condition::Degraded,
            Condition::Degraded if self.loss < DEGRADED_LEAVE => self.condition = Condition::Up,
            Condition::Up | Condition::Degraded => {}
        }
    }

    /// Looks at the clock: a link whose feedback has shown no progress for [`DOWN_AFTER`] goes
    /// down; one never heard from goes down once the peer has been heard on other links
    /// (since `peer_heard`) for [`STARTUP_GRACE`], counted from this link's creation at the
    /// earliest.
    pub fn tick(&mut self, now: Timestamp, peer_heard: Option<Timestamp>) {
        match self.condition {
            Condition::Down => {}
            Condition::Unknown => {
                let since = peer_heard.map(|t| t.max(self.started));
                if since.is_some_and(|t| now.saturating_since(t) >= STARTUP_GRACE) {
                    self.become_down(now);
                }
            }
            Condition::Up | Condition::Degraded => {
                if self
                    .last_progress
                    .is_some_and(|t| now.saturating_since(t) >= DOWN_AFTER)
                {
                    self.become_down(now);
                }
            }
        }
    }

    /// The link's carrier is gone: down at once.
    pub fn carrier_lost(&mut self, now: Timestamp) {
        if self.condition != Condition::Down {
            self.become_down(now);
        }
    }

    /// When [`LinkHealth::tick`] must run next to see a silence in time.
    pub fn deadline(&self) -> Option<Timestamp> {
        match self.condition {
            Condition::Up | Condition::Degraded => {
                self.last_progress.map(|t| t.saturating_add(DOWN_AFTER))
            }
            Condition::Unknown | Condition::Down => None,
        }
    }

    fn become_up(&mut self, now: Timestamp) {
        self.condition = Condition::Up;
        self.up_since = now;
        self.streak = 0;
        // What was lost while the link was down says nothing of it now; its rate is learnt
        // again from the start (a link coming back ramps up).
        self.loss = 0.0;
        self.window = (0, 0, None);
        self.rates = [0; RATE_WINDOWS];
        self.rate_start = None;
        self.rate_bytes = 0;
    }

    fn become_down(&mut self, now: Timestamp) {
        let was_up = matches!(self.condition, Condition::Up | Condition::Degraded);
        // Failures close together lengthen the next hold-down; a long good spell forgives them.
        self.holddown = if was_up && now.saturating_since(self.up_since) < STABLE_AFTER {
            (self.holddown * 2).min(HOLDDOWN_MAX)
        } else {
            HOLDDOWN_MIN
        };
        self.condition = Condition::Down;
        self.hold_until = now.saturating_add(self.holddown);
        self.streak = 0;
        self.downs += 1;
    }

    /// RFC 6298 smoothing of a round-trip sample.
    fn rtt_sample(&mut self, rtt_us: u32) {
        let r = f64::from(rtt_us);
        self.min_rtt_us = Some(self.min_rtt_us.map_or(rtt_us, |m| m.min(rtt_us)));
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2.0;
            }
            Some(s) => {
                self.rttvar_us = 0.75 * self.rttvar_us + 0.25 * (s - r).abs();
                self.srtt_us = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    /// Adds frames sent and received to the loss window; a full window moves the loss ratio.
    fn loss_sample(&mut self, sent: u64, got: u64, now: Timestamp) {
        let (s, g, start) = &mut self.window;
        *s += sent;
        *g += got;
        let start = *start.get_or_insert(now);
        if *s < LOSS_WINDOW_FRAMES || now.saturating_since(start) < LOSS_WINDOW {
            return;
        }
        // Frames counted received may exceed those seen sent when a report lands between a
        // lane's reordered frames: no loss then.
        let ratio = (s.saturating_sub(*g) as f64 / *s as f64) as f32;
        self.loss = 0.7 * self.loss + 0.3 * ratio.clamp(0.0, 1.0);
        self.window = (0, 0, None);
    }

    /// Adds `bytes` delivered, reported at the peer's time `sent`, to the rate window.
    fn rate_sample(&mut self, sent: u32, bytes: u64) {
        let Some(start) = self.rate_start else {
            self.rate_start = Some(sent);
            self.rate_bytes = 0;
            return;
        };
        self.rate_bytes = self.rate_bytes.saturating_add(bytes);
        let elapsed = sent.wrapping_sub(start);
        if elapsed > u32::MAX / 2 {
            // The peer's clock went back (a restart): begin again.
            self.rate_start = Some(sent);
            self.rate_bytes = 0;
            return;
        }
        if elapsed < RATE_WINDOW_US {
            return;
        }
        let bps = self.rate_bytes.saturating_mul(8_000_000) / u64::from(elapsed);
        self.rates[self.rate_next] = bps;
        self.rate_next = (self.rate_next + 1) % RATE_WINDOWS;
        self.rate_start = Some(sent);
        self.rate_bytes = 0;
    }
}

/// Both halves of link health at one host: the meters of the peer's lanes and the health of
/// this host's links (at most [`crate::sched::MAX_LINKS`]).
#[derive(Debug, Default)]
pub struct Health {
    /// The peer's lanes, as this host hears them.
    pub meters: Meters,
    links: Vec<LinkHealth>,
    /// When a link first showed progress: the peer is running.
    peer_heard: Option<Timestamp>,
}

impl Health {
    /// Health for `links` links, created at `now`.
    pub fn new(links: usize, now: Timestamp) -> Self {
        let links = links.min(crate::sched::MAX_LINKS);
        Health {
            meters: Meters::default(),
            links: (0..links).map(|_| LinkHealth::new(now)).collect(),
            peer_heard: None,
        }
    }

    /// The health of link `link`, if there is such a link.
    pub fn link(&self, link: LinkId) -> Option<&LinkHealth> {
        self.links.get(usize::from(link))
    }

    /// Link `link`'s carrier is gone.
    pub fn carrier_lost(&mut self, link: LinkId, now: Timestamp) {
        if let Some(l) = self.links.get_mut(usize::from(link)) {
            l.carrier_lost(now);
        }
    }

    /// A feedback frame on `link`, sent at the peer's `sent`, with `payload` (whole reports).
    pub fn on_feedback(&mut self, link: LinkId, sent: u32, payload: &[u8], now: Timestamp) {
        if let Some(l) = self.links.get_mut(usize::from(link)) {
            l.on_feedback(sent, parse_reports(payload), now);
        }
    }

    /// Ticks every link ([`LinkHealth::tick`]).
    pub fn tick(&mut self, now: Timestamp) {
        if self.peer_heard.is_none() && self.links.iter().any(|l| l.last_progress.is_some()) {
            self.peer_heard = Some(now);
        }
        for link in &mut self.links {
            link.tick(now, self.peer_heard);
        }
    }

    /// When [`Health::tick`] must run next.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.links.iter().filter_map(LinkHealth::deadline).min()
    }
}

#[cfg(test)]
#[expect(clippy::expect_used, clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    fn stamp(link: LinkId, lane: u8, lane_seq: u64, tx_ms: u64) -> Stamp {
        Stamp {
            link,
            lane,
            lane_seq,
            tx_time: micros(at(tx_ms)),
        }
    }

    /// One lane's report with `highest` and `received`, echoing `echo_ms` after `delay_ms`.
    fn report(highest: u64, received: u32, echo_ms: u64, delay_ms: u64) -> LaneReport {
        LaneReport {
            lane: 0,
            highest,
            received,
            bytes_64: received * 20,
            echo_time: micros(at(echo_ms)),
            echo_delay: (delay_ms * 1000) as u32,
            jitter: 0,
        }
    }

    #[test]
    fn meters_report_what_arrived_per_lane() {
        let mut meters = Meters::default();
        // Lane 0 of link 1: frames 0, 1, 3 (2 lost), each 1280 bytes, 2 ms transit.
        for seq in [0, 1, 3] {
            meters.saw(7, stamp(1, 0, seq, 10 * seq), 1280, at(10 * seq + 2));
        }
        // Another link's lane is not reported on link 1.
        meters.saw(7, stamp(2, 0, 5, 0), 64, at(1));
        let mut out = Vec::new();
        meters.reports(1, at(35), &mut out);
        assert_eq!(out.len(), 1);
        let r = out[0];
        assert_eq!((r.lane, r.highest, r.received), (0, 3, 3));
        assert_eq!(r.bytes_64, 3 * 1280 / 64);
        assert_eq!(r.echo_time, micros(at(30)));
        assert_eq!(r.echo_delay, 3_000);
        // Constant transit: no jitter.
        assert_eq!(r.jitter, 0);
        assert_eq!(meters.heard(1), Some(at(32)));
        assert_eq!(meters.heard(3), None);
    }

    #[test]
    fn meters_ignore_implausible_jumps_and_restart_with_an_epoch() {
        let mut meters = Meters::default();
        meters.saw(7, stamp(0, 0, 10, 0), 100, at(1));
        // A forged counter far ahead is counted but does not move `highest`.
        meters.saw(7, stamp(0, 0, 10 + (1 << 40), 0), 100, at(2));
        // An older frame neither.
        meters.saw(7, stamp(0, 0, 9, 0), 100, at(3));
        let mut out = Vec::new();
        meters.reports(0, at(3), &mut out);
        assert_eq!((out[0].highest, out[0].received), (10, 3));
        // The peer's next start counts afresh.
        meters.saw(8, stamp(0, 0, 0, 0), 100, at(4));
        out.clear();
        meters.reports(0, at(4), &mut out);
        assert_eq!((out[0].highest, out[0].received), (0, 1));
    }

    #[test]
    fn the_delay_spread_is_how_far_apart_the_links_deliver() {
        let mut meters = Meters::default();
        assert_eq!(meters.delay_spread(at(0), Duration::from_secs(1)), None);
        // Link 0 takes 5 ms, link 1 25 ms, both steady (no jitter); the peer's clock runs
        // 1000 s ahead of this host's.
        let ahead = 1_000_000;
        for i in 0..200u64 {
            for (link, transit) in [(0, 5), (1, 25)] {
                let stamp = stamp(link, 0, i, ahead + i);
                meters.saw(1, stamp, 100, at(i + transit));
            }
        }
        let spread = meters
            .delay_spread(at(230), Duration::from_secs(1))
            .unwrap();
        let off = spread.abs_diff(Duration::from_millis(20));
        assert!(off < Duration::from_micros(100), "{spread:?}");
        // A queue building on link 1 (transit growing to 75 ms) is not delay to wait for.
        for i in 200..400u64 {
            meters.saw(1, stamp(0, 0, i, ahead + i), 100, at(i + 5));
            let queued = 25 + (i - 200) / 4;
            meters.saw(1, stamp(1, 0, i, ahead + i), 100, at(i + queued));
        }
        let spread = meters
            .delay_spread(at(430), Duration::from_secs(1))
            .unwrap();
        assert!(spread < Duration::from_millis(22), "{spread:?}");
        // A lane not heard for a while no longer counts.
        let spread = meters.delay_spread(at(1_500), Duration::from_secs(1));
        assert_eq!(spread, None);
        // Jitter counts twice: one lane whose transit alternates 1 and 3 ms.
        let mut meters = Meters::default();
        for i in 0..400u64 {
            let transit = if i % 2 == 0 { 1 } else { 3 };
            meters.saw(1, stamp(0, 0, i, 10 * i), 100, at(10 * i + transit));
        }
        let spread = meters
            .delay_spread(at(4_000), Duration::from_secs(1))
            .unwrap();
        assert!(
            spread > Duration::from_micros(3_500) && spread <= Duration::from_millis(4),
            "{spread:?}"
        );
    }

    #[test]
    fn meters_stay_bounded() {
        let mut meters = Meters::default();
        for i in 0..(MAX_METERED as u64 * 3) {
            meters.saw(1, stamp((i % 64) as u8, (i / 64) as u8, 0, 0), 60, at(i));
        }
        assert_eq!(meters.meters.len(), MAX_METERED);
        let mut out = Vec::new();
        for link in 0..64 {
            meters.reports(link, at(1_000), &mut out);
        }
        assert_eq!(out.len(), MAX_METERED);
    }

    #[test]
    fn feedback_gives_rtt_loss_and_rate() {
        let mut link = LinkHealth::new(at(0));
        // Every 10 ms the peer reports 100 more frames seen sent, 90 of them received: 10 % loss;
        // the newest was sent 10 ms before the report arrives and held 2 ms: RTT 8 ms. Each
        // frame is 1280 bytes: 90 * 1280 bytes per 10 ms is 92.16 Mbit/s.
        for i in 1..=200u64 {
            let now = at(10 * i);
            let r = LaneReport {
                bytes_64: (i as u32) * 90 * 20,
                ..report(100 * i, (90 * i) as u32, 10 * i - 10, 2)
            };
            link.on_feedback(micros(now), [r], now);
        }
        let view = link.view();
        assert_eq!(view.srtt, Some(Duration::from_millis(8)));
        assert_eq!(view.min_rtt, Some(Duration::from_millis(8)));
        assert!((view.loss - 0.10).abs() < 0.01, "loss {}", view.loss);
        assert_eq!(view.rate_bps, 92_160_000);
        // 10 % loss is at the degraded threshold, not over it.
        assert_eq!(view.condition, Condition::Up);
    }

    /// Feeds `link` reports every 10 ms from `from_ms` to `to_ms`, losing `lost_per_10` of every
    /// 10 frames sent (one frame per ms); returns the last lane state (highest, received).
    fn feed(
        link: &mut LinkHealth,
        (from_ms, to_ms): (u64, u64),
        lost_per_10: u64,
        (mut highest, mut received): (u64, u32),
    ) -> (u64, u32) {
        let mut t = from_ms;
        while t <= to_ms {
            highest += 10;
            received += (10 - lost_per_10) as u32;
            link.on_feedback(micros(at(t)), [report(highest, received, t, 0)], at(t));
            link.tick(at(t), Some(at(0)));
            t += 10;
        }
        (highest, received)
    }

    #[test]
    fn a_silent_link_goes_down_within_the_window_and_recovers_with_holddown() {
        let mut link = LinkHealth::new(at(0));
        let lane = feed(&mut link, (10, 500), 0, (0, 0));
        assert_eq!(link.view().condition, Condition::Up);
        // Silence from 500 ms: still up at 570, down by 580.
        link.tick(at(570), Some(at(0)));
        assert_eq!(link.view().condition, Condition::Up);
        assert_eq!(link.deadline(), Some(at(580)));
        link.tick(at(580), Some(at(0)));
        assert_eq!(link.view().condition, Condition::Down);
        assert_eq!(link.view().downs, 1);
        // Reports come back at 680: up after RECOVER_REPORTS of them and the hold-down (it went
        // down after less than STABLE_AFTER up, so 2 * HOLDDOWN_MIN = 400 ms, until 980 ms).
        let lane = feed(&mut link, (680, 970), 0, lane);
        assert_eq!(link.view().condition, Condition::Down);
        feed(&mut link, (980, 980), 0, lane);
        assert_eq!(link.view().condition, Condition::Up);
        // Loss from the silence is forgotten.
        assert_eq!(link.view().loss, 0.0);
    }

    #[test]
    fn feedback_without_progress_takes_the_link_down() {
        let mut link = LinkHealth::new(at(0));
        let (highest, received) = feed(&mut link, (10, 100), 0, (0, 0));
        // The peer keeps reporting, but nothing new arrived from this host (the link fails in
        // this direction only).
        for t in (110..=300).step_by(10) {
            link.on_feedback(micros(at(t)), [report(highest, received, 100, 0)], at(t));
            link.tick(at(t), Some(at(0)));
        }
        assert_eq!(link.view().condition, Condition::Down);
    }

    #[test]
    fn heavy_loss_degrades_without_flapping() {
        let mut link = LinkHealth::new(at(0));
        let mut lane = feed(&mut link, (10, 1000), 0, (0, 0));
        assert_eq!(link.view().condition, Condition::Up);
        // 20 % loss for 20 s: degraded, never down, changing state once.
        let mut changes = 0;
        let mut last = link.view().condition;
        for second in 1..=20 {
            let from = 1000 * second + 10;
            lane = feed(&mut link, (from, from + 990), 2, lane);
            let now = link.view().condition;
            changes += usize::from(now != last);
            last = now;
        }
        assert_eq!(last, Condition::Degraded);
        assert_eq!(changes, 1);
        assert_eq!(link.view().downs, 0);
        // Clean again: up.
        feed(&mut link, (22_000, 25_000), 0, lane);
        assert_eq!(link.view().condition, Condition::Up);
    }

    #[test]
    fn flapping_lengthens_the_holddown() {
        let mut link = LinkHealth::new(at(0));
        let mut lane = (0, 0);
        let mut t = 10;
        let mut holds = Vec::new();
        for _ in 0..8 {
            // Good until up, then silent until down.
            while link.view().condition != Condition::Up {
                lane = feed(&mut link, (t, t), 0, lane);
                t += 10;
            }
            t += DOWN_AFTER.as_millis() as u64;
            link.tick(at(t), Some(at(0)));
            assert_eq!(link.view().condition, Condition::Down);
            holds.push(link.hold_until.saturating_since(at(t)));
        }
        assert_eq!(holds[0], HOLDDOWN_MIN * 2);
        assert!(holds.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*holds.last().unwrap_or(&Duration::ZERO), HOLDDOWN_MAX);
    }

    #[test]
    fn a_restarted_peer_gives_a_new_baseline_not_a_loss() {
        let mut link = LinkHealth::new(at(0));
        feed(&mut link, (10, 500), 0, (0, 0));
        // The peer's meters start again from its first frame: counters lower than before.
        feed(&mut link, (510, 1000), 0, (0, 0));
        let view = link.view();
        assert_eq!(view.condition, Condition::Up);
        assert_eq!(view.loss, 0.0);
    }

    #[test]
    fn a_link_never_heard_from_goes_down_when_others_are() {
        let mut health = Health::new(2, at(0));
        let mut reports = [0u8; FEEDBACK_REPORT_LEN];
        for t in (10..=1_500).step_by(10) {
            let r = report(t, t as u32, t, 0);
            r.emit(&mut reports).expect("room for a report");
            health.on_feedback(0, micros(at(t)), &reports, at(t));
            health.tick(at(t));
        }
        let condition = |h: &Health, l| h.link(l).map(|l| l.view().condition);
        assert_eq!(condition(&health, 0), Some(Condition::Up));
        assert_eq!(condition(&health, 1), Some(Condition::Down));
        // Out-of-range links and truncated payloads are ignored.
        health.on_feedback(9, 0, &reports, at(1_600));
        health.on_feedback(0, 0, &reports[..10], at(1_600));
        assert!(health.link(9).is_none());
        health.carrier_lost(0, at(1_600));
        assert_eq!(condition(&health, 0), Some(Condition::Down));
    }

    #[test]
    fn the_startup_grace_counts_from_when_the_peer_was_first_heard() {
        // This host started 5 s before its peer: link 1 is heard first, link 0 a little after,
        // within the grace; it must not be taken down for the time before the peer ran.
        let mut health = Health::new(2, at(0));
        let mut reports = [0u8; FEEDBACK_REPORT_LEN];
        for t in (5_000..5_500).step_by(10) {
            for link in [1, 0] {
                if link == 0 && t < 5_300 {
                    continue;
                }
                report(t, t as u32, t, 0).emit(&mut reports).expect("room");
                health.on_feedback(link, micros(at(t)), &reports, at(t));
            }
            health.tick(at(t));
        }
        let view = health.link(0).map(LinkHealth::view).expect("link 0");
        assert_eq!((view.condition, view.downs), (Condition::Up, 0));
    }

    #[test]
    fn condition_codes_round_trip() {
        for c in [
            Condition::Unknown,
            Condition::Up,
            Condition::Degraded,
            Condition::Down,
        ] {
            assert_eq!(Condition::from_code(c.code()), c);
        }
        assert_eq!(Condition::from_code(200), Condition::Unknown);
    }
}
