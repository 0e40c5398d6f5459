//! Scheduling: which links carry a packet.
//!
//! A [`Scheduler`] looks at the links' state and the packet and returns a [`LinkSet`], a bit set
//! of indexes into the caller's link table. The engine never looks inside. The links' state
//! ([`LinkState`]) carries their health as the peer's feedback shows it ([`HealthView`], from
//! [`crate::health`]): condition, round-trip time, loss and delivery rate.
//! - [`Redundant`]: every usable link (a packet survives if any one delivers it);
//! - [`Stripe`]: the one link where the packet would arrive first (earliest delivery time);
//! - [`Backup`]: the best healthy link by priority;
//! - [`Adaptive`]: as [`Stripe`], plus a copy on a second link when the first is lossy or
//!   far slower than the best.
//!
//! All copies of one packet must use the same fragment boundaries, so the sender plans a packet
//! with the smallest MTU of the chosen links ([`LinkSet::min_mtu`]).

use core::time::Duration;

use crate::Timestamp;
use crate::health::{Condition, HealthView};
use crate::wire::LinkId;

/// Most links a [`LinkSet`] can name.
pub const MAX_LINKS: usize = 64;

/// What the datapath knows about one link, as schedulers see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkState {
    /// The id this side writes into frames sent on the link.
    pub id: LinkId,
    /// Whether the link may carry traffic: its carrier is up and its health is not `Down`.
    pub usable: bool,
    /// For [`Backup`]: lower is preferred.
    pub priority: u32,
    /// The sender's cap on the link's rate, bits per second; 0 for none (measured).
    pub rate_cap_bps: u64,
    /// Bytes available after the Ethernet header: the interface MTU.
    pub mtu: usize,
    /// The link's health from the peer's feedback.
    pub health: HealthView,
}

impl LinkState {
    /// A usable link of `mtu` bytes with id `id`, priority `id`, no cap and no health yet.
    pub fn new(id: LinkId, mtu: usize) -> Self {
        LinkState {
            id,
            usable: true,
            priority: u32::from(id),
            rate_cap_bps: 0,
            mtu,
            health: HealthView::default(),
        }
    }

    /// How much a scheduler should prefer the link, best first: up (or not yet known), then
    /// degraded; `None` if not usable.
    fn class(&self) -> Option<u8> {
        if !self.usable {
            return None;
        }
        match self.health.condition {
            Condition::Up | Condition::Unknown => Some(0),
            Condition::Degraded => Some(1),
            Condition::Down => None,
        }
    }
}

/// A set of link indexes (positions in the caller's link table), at most [`MAX_LINKS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkSet(u64);

impl LinkSet {
    /// No link.
    pub const EMPTY: LinkSet = LinkSet(0);

    /// Adds link `index`; indexes at or over [`MAX_LINKS`] are ignored.
    pub fn insert(&mut self, index: usize) {
        if index < MAX_LINKS {
            self.0 |= 1 << index;
        }
    }

    /// Whether link `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        index < MAX_LINKS && self.0 & (1 << index) != 0
    }

    /// Number of links.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The link indexes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + use<> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }

    /// The smallest MTU among the chosen links of `links`, or `None` if none is chosen.
    pub fn min_mtu(&self, links: &[LinkState]) -> Option<usize> {
        self.iter()
            .filter_map(|i| links.get(i))
            .map(|l| l.mtu)
            .min()
    }
}

/// Decides, packet by packet, which links carry it.
pub trait Scheduler {
    /// The links to send a `packet_len`-byte packet on; indexes into `links`. An empty set means
    /// the packet is dropped (no usable link).
    fn select(&mut self, packet_len: usize, links: &[LinkState], now: Timestamp) -> LinkSet;

    /// `bytes` more went on `chosen` without a [`Scheduler::select`] (a packet that joined a
    /// bundle chosen before it); ignored unless the scheduler models the links' queues.
    fn charge(&mut self, chosen: LinkSet, bytes: usize, links: &[LinkState]) {
        let _ = (chosen, bytes, links);
    }
}

/// Sends every packet on every usable link: a packet survives if any one link delivers it
/// (the replication of IEEE 802.1CB, without the tags). alagg's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Redundant;

impl Scheduler for Redundant {
    fn select(&mut self, _packet_len: usize, links: &[LinkState], _now: Timestamp) -> LinkSet {
        let mut set = LinkSet::EMPTY;
        for (i, link) in links.iter().enumerate().take(MAX_LINKS) {
            if link.usable {
                set.insert(i);
            }
        }
        set
    }
}

/// Rate assumed for a link whose delivery rate is not measured yet, bits per second.
pub const RATE_FLOOR_BPS: u64 = 10_000_000;
/// A link is given this much more than the highest rate it delivered lately, so that its share
/// grows while it keeps up (the probing of BBR, and of MUD's rate control).
const RATE_GAIN: f64 = 1.25;
/// Bytes on the wire per frame beyond the packet: Ethernet, alagg header, tag.
const FRAME_OVERHEAD: usize = 14 + 36 + 16;
/// When every link's queue (as the scheduler models it) is this far behind, all move back by
/// the same time: the order between them is kept and the numbers stay bounded.
const BACKLOG_RENORMALISE: Duration = Duration::from_millis(100);

/// The rate a scheduler counts on for `link`, bytes per second.
fn rate_bytes(link: &LinkState) -> f64 {
    let measured = (link.health.rate_bps as f64 * RATE_GAIN).max(RATE_FLOOR_BPS as f64);
    let bps = if link.rate_cap_bps > 0 {
        measured.min(link.rate_cap_bps as f64)
    } else {
        measured
    };
    bps / 8.0
}

/// Half the link's smoothed round-trip time, seconds: its one-way delay as far as comparing
/// links goes (0 until measured).
fn one_way(link: &LinkState) -> f64 {
    link.health.srtt.map_or(0.0, |rtt| rtt.as_secs_f64() / 2.0)
}

/// Stripes packets: each goes on the usable link where it would arrive first, its queue (the
/// bytes sent on it not yet drained at its rate) over its rate plus its one-way delay (earliest
/// delivery time, as in ECF and BLEST: a slow link is passed over when waiting for a faster one
/// delivers sooner). Links of different rates and delays are filled in proportion, and frames
/// arrive nearly in order. Degraded links are used only when no link is up.
///
/// The queues are the scheduler's model, not a pacer: what it sends goes out at once.
#[derive(Clone, Debug)]
pub struct Stripe {
    /// Modelled queue per link, bytes.
    backlog: [f64; MAX_LINKS],
    last: Option<Timestamp>,
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            backlog: [0.0; MAX_LINKS],
            last: None,
        }
    }
}

impl Stripe {
    /// Drains every link's modelled queue at its rate up to `now`.
    fn drain(&mut self, links: &[LinkState], now: Timestamp) {
        let elapsed = self
            .last
            .map_or(0.0, |t| now.saturating_since(t).as_secs_f64());
        self.last = Some(now);
        for (backlog, link) in self.backlog.iter_mut().zip(links) {
            *backlog = (*backlog - elapsed * rate_bytes(link)).max(0.0);
        }
    }

    /// The usable link of the best class with the earliest delivery, other than `except`.
    fn earliest(&self, links: &[LinkState], except: Option<usize>) -> Option<(usize, f64)> {
        self.earliest_of(links, |i, _| Some(i) != except)
    }

    /// The usable link of the best class among those `keep` takes, with the earliest delivery
    /// (in seconds from now).
    fn earliest_of(
        &self,
        links: &[LinkState],
        keep: impl Fn(usize, &LinkState) -> bool,
    ) -> Option<(usize, f64)> {
        let best_class = links
            .iter()
            .enumerate()
            .filter(|&(i, l)| keep(i, l))
            .filter_map(|(_, l)| l.class())
            .min()?;
        links
            .iter()
            .enumerate()
            .take(MAX_LINKS)
            .filter(|&(i, l)| keep(i, l) && l.class() == Some(best_class))
            .map(|(i, l)| (i, self.backlog[i] / rate_bytes(l) + one_way(l)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Counts `bytes` onto link `index`'s queue, keeping the queues bounded.
    fn enqueue(&mut self, index: usize, bytes: usize, links: &[LinkState]) {
        self.backlog[index] += bytes as f64;
        let behind = links
            .iter()
            .zip(&self.backlog)
            .filter(|(l, _)| l.class().is_some())
            .map(|(l, b)| b / rate_bytes(l))
            .reduce(f64::min)
            .unwrap_or(0.0);
        if behind > BACKLOG_RENORMALISE.as_secs_f64() {
            for (backlog, link) in self.backlog.iter_mut().zip(links) {
                *backlog = (*backlog - behind * rate_bytes(link)).max(0.0);
            }
        }
    }

    /// The bytes a `packet_len`-byte packet puts on a link.
    fn wire_bytes(packet_len: usize, mtu: usize) -> usize {
        let per_frame = mtu.saturating_sub(FRAME_OVERHEAD).max(1);
        packet_len + packet_len.div_ceil(per_frame) * FRAME_OVERHEAD
    }
}

impl Scheduler for Stripe {
    fn charge(&mut self, chosen: LinkSet, bytes: usize, links: &[LinkState]) {
        for index in chosen.iter().filter(|&i| i < links.len()) {
            self.enqueue(index, bytes, links);
        }
    }

    fn select(&mut self, packet_len: usize, links: &[LinkState], now: Timestamp) -> LinkSet {
        self.drain(links, now);
        let mut set = LinkSet::EMPTY;
        if let Some((index, _)) = self.earliest(links, None) {
            self.enqueue(index, Self::wire_bytes(packet_len, links[index].mtu), links);
            set.insert(index);
        }
        set
    }
}

/// All traffic on one link: the usable link of the best class (up before degraded) with the
/// lowest priority (then the lowest index). The others carry only probes. A link that failed
/// comes back only once its health is up again, after its hold-down (`health` module), so
/// traffic does not flap back to a primary that is not yet sound.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backup;

impl Scheduler for Backup {
    fn select(&mut self, _packet_len: usize, links: &[LinkState], _now: Timestamp) -> LinkSet {
        let best = links
            .iter()
            .enumerate()
            .take(MAX_LINKS)
            .filter_map(|(i, l)| l.class().map(|c| ((c, l.priority, i), i)))
            .min_by_key(|(key, _)| *key);
        let mut set = LinkSet::EMPTY;
        if let Some((_, index)) = best {
            set.insert(index);
        }
        set
    }
}

/// Loss ratio above which [`Adaptive`] sends a second copy.
pub const ADAPTIVE_LOSS: f32 = 0.01;
/// A link whose one-way delay exceeds the best link's by this much and this factor gets a
/// second copy from [`Adaptive`] too.
const ADAPTIVE_SLOWER: Duration = Duration::from_millis(20);
/// How much later than on an at-risk link [`Adaptive`] lets a packet arrive on a sound link
/// rather than send it twice: while the sound links have room, nothing is copied.
const ADAPTIVE_WAIT: Duration = Duration::from_millis(2);

/// Stripes as [`Stripe`] while the links are clean. A packet whose earliest link loses more
/// than [`ADAPTIVE_LOSS`] of its frames (or is degraded, or far slower than the best link) goes
/// on the earliest sound link instead if it arrives there at most [`ADAPTIVE_WAIT`] later;
/// else it goes on both its link and the next-earliest, so residual loss stays low with the
/// least extra traffic: copies only for what the sound links have no room for.
///
/// With FEC on ([`Adaptive::set_fec_covers`]), a packet at risk only by a loss FEC covers is
/// not copied: parity on another link protects it for less.
#[derive(Clone, Debug, Default)]
pub struct Adaptive {
    stripe: Stripe,
    /// Loss ratio up to which FEC protects what is sent (0: no FEC).
    fec_covers: f32,
}

impl Adaptive {
    /// Tells the scheduler that FEC protects frames on links losing up to `loss` (a ratio; 0
    /// when FEC is off): it then copies only for what is lossier or slow.
    pub fn set_fec_covers(&mut self, loss: f32) {
        self.fec_covers = loss;
    }

    /// Whether a packet sent on `link` alone is at risk.
    fn at_risk(link: &LinkState, links: &[LinkState]) -> bool {
        if link.health.condition == Condition::Degraded || link.health.loss > ADAPTIVE_LOSS {
            return true;
        }
        Self::slow(link, links)
    }

    /// Whether `link` is far slower than the best.
    fn slow(link: &LinkState, links: &[LinkState]) -> bool {
        let best = links
            .iter()
            .filter(|l| l.class().is_some())
            .map(one_way)
            .reduce(f64::min)
            .unwrap_or(0.0);
        let slow = one_way(link);
        slow > 2.0 * best && slow - best > ADAPTIVE_SLOWER.as_secs_f64()
    }
}

impl Scheduler for Adaptive {
    fn charge(&mut self, chosen: LinkSet, bytes: usize, links: &[LinkState]) {
        self.stripe.charge(chosen, bytes, links);
    }

    fn select(&mut self, packet_len: usize, links: &[LinkState], now: Timestamp) -> LinkSet {
        let stripe = &mut self.stripe;
        stripe.drain(links, now);
        let mut set = LinkSet::EMPTY;
        let Some((earliest, at)) = stripe.earliest(links, None) else {
            return set;
        };
        let mut first = earliest;
        let mut copy = Self::at_risk(&links[earliest], links);
        if copy {
            let sound = stripe.earliest_of(links, |_, l| !Self::at_risk(l, links));
            if let Some((sound, when)) = sound {
                if when <= at + ADAPTIVE_WAIT.as_secs_f64() {
                    (first, copy) = (sound, false);
                }
            }
        }
        // At risk only by a loss FEC covers: the parity protects it.
        if copy && links[first].health.loss <= self.fec_covers && !Self::slow(&links[first], links)
        {
            copy = false;
        }
        set.insert(first);
        stripe.enqueue(
            first,
            Stripe::wire_bytes(packet_len, links[first].mtu),
            links,
        );
        if copy {
            if let Some((second, _)) = stripe.earliest(links, Some(first)) {
                set.insert(second);
                let bytes = Stripe::wire_bytes(packet_len, links[second].mtu);
                stripe.enqueue(second, bytes, links);
            }
        }
        set
    }
}

/// One of the schedulers, chosen by configuration: static dispatch, no allocation.
#[derive(Clone, Debug)]
pub enum AnyScheduler {
    /// [`Redundant`].
    Redundant(Redundant),
    /// [`Stripe`].
    Stripe(Stripe),
    /// [`Backup`].
    Backup(Backup),
    /// [`Adaptive`].
    Adaptive(Adaptive),
}

impl AnyScheduler {
    /// Whether every packet goes on every usable link (`redundant`): nothing is kept for
    /// failover, and no link waits for another.
    pub const fn copies_everywhere(&self) -> bool {
        matches!(self, AnyScheduler::Redundant(_))
    }

    /// FEC protects frames on links losing up to `loss` (0: FEC off); only [`Adaptive`]
    /// acts on it.
    pub fn set_fec_covers(&mut self, loss: f32) {
        if let AnyScheduler::Adaptive(adaptive) = self {
            adaptive.set_fec_covers(loss);
        }
    }
}

impl Scheduler for AnyScheduler {
    #[inline]
    fn select(&mut self, packet_len: usize, links: &[LinkState], now: Timestamp) -> LinkSet {
        match self {
            AnyScheduler::Redundant(s) => s.select(packet_len, links, now),
            AnyScheduler::Stripe(s) => s.select(packet_len, links, now),
            AnyScheduler::Backup(s) => s.select(packet_len, links, now),
            AnyScheduler::Adaptive(s) => s.select(packet_len, links, now),
        }
    }

    fn charge(&mut self, chosen: LinkSet, bytes: usize, links: &[LinkState]) {
        match self {
            AnyScheduler::Redundant(s) => s.charge(chosen, bytes, links),
            AnyScheduler::Stripe(s) => s.charge(chosen, bytes, links),
            AnyScheduler::Backup(s) => s.charge(chosen, bytes, links),
            AnyScheduler::Adaptive(s) => s.charge(chosen, bytes, links),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: LinkId, usable: bool, mtu: usize) -> LinkState {
        LinkState {
            usable,
            ..LinkState::new(id, mtu)
        }
    }

    /// A link measured at `mbit` Mbit/s with `rtt_ms` round trip, in `condition`.
    fn measured(id: LinkId, mbit: u64, rtt_ms: u64, condition: Condition) -> LinkState {
        LinkState {
            health: HealthView {
                condition,
                srtt: Some(Duration::from_millis(rtt_ms)),
                rate_bps: mbit * 1_000_000,
                ..HealthView::default()
            },
            ..LinkState::new(id, 1500)
        }
    }

    fn at_us(us: u64) -> Timestamp {
        Timestamp::from_nanos(us * 1_000)
    }

    /// Bytes of `packets` 1400-byte packets sent one per `gap_us` that `scheduler` puts on each
    /// of `links`, and the packets that got two copies.
    fn share(
        scheduler: &mut impl Scheduler,
        links: &[LinkState],
        packets: usize,
        gap_us: u64,
    ) -> (Vec<usize>, usize) {
        let mut bytes = vec![0; links.len()];
        let mut doubled = 0;
        for i in 0..packets {
            let set = scheduler.select(1400, links, at_us(i as u64 * gap_us));
            doubled += usize::from(set.len() > 1);
            for l in set.iter() {
                bytes[l] += 1400;
            }
        }
        (bytes, doubled)
    }

    #[test]
    fn stripe_fills_links_in_proportion_to_their_rates() {
        // 200 and 100 Mbit/s measured (so counted at 1.25 times that), same delay, offered
        // 560 Mbit/s (1400 bytes every 20 us): 2 to 1.
        let links = [
            measured(0, 200, 2, Condition::Up),
            measured(1, 100, 2, Condition::Up),
        ];
        let (bytes, doubled) = share(&mut Stripe::default(), &links, 30_000, 20);
        let ratio = bytes[0] as f64 / bytes[1] as f64;
        assert!((ratio - 2.0).abs() < 0.05, "ratio {ratio}");
        assert_eq!(doubled, 0);
        // Offered below the fast link's rate, with the slow link 20 ms further away: all on the
        // fast link (waiting there is quicker than the slow link's delay).
        let links = [
            measured(0, 200, 2, Condition::Up),
            measured(1, 100, 42, Condition::Up),
        ];
        let (bytes, _) = share(&mut Stripe::default(), &links, 10_000, 100);
        assert_eq!(bytes[1], 0);
        // Links without measurements share alike.
        let links = [link(0, true, 1500), link(1, true, 1500)];
        let (bytes, _) = share(&mut Stripe::default(), &links, 1_000, 10);
        assert_eq!(bytes[0], bytes[1]);
    }

    #[test]
    fn stripe_keeps_its_proportions_when_every_link_is_overrun() {
        // 2 Gbit/s offered onto 200 + 100 Mbit/s for 2 s: the queues are renormalised, the
        // proportion holds.
        let links = [
            measured(0, 200, 2, Condition::Up),
            measured(1, 100, 2, Condition::Up),
        ];
        let mut stripe = Stripe::default();
        let (bytes, _) = share(&mut stripe, &links, 350_000, 5);
        let ratio = bytes[0] as f64 / bytes[1] as f64;
        assert!((ratio - 2.0).abs() < 0.05, "ratio {ratio}");
        assert!(stripe.backlog.iter().all(|b| b.is_finite() && *b < 1e8));
    }

    #[test]
    fn stripe_avoids_down_and_degraded_links() {
        let links = [
            measured(0, 100, 2, Condition::Down),
            measured(1, 100, 2, Condition::Degraded),
            measured(2, 100, 2, Condition::Up),
        ];
        let (bytes, _) = share(&mut Stripe::default(), &links, 100, 10);
        assert_eq!(bytes, [0, 0, 140_000]);
        // Degraded is better than nothing.
        let links = [links[0], links[1]];
        let (bytes, _) = share(&mut Stripe::default(), &links, 100, 10);
        assert_eq!(bytes, [0, 140_000]);
        // Nothing usable: the packet is dropped.
        let set = Stripe::default().select(100, &[links[0]], Timestamp::ZERO);
        assert!(set.is_empty());
    }

    #[test]
    fn backup_uses_the_best_healthy_link_by_priority() {
        let mut links = [
            measured(0, 100, 2, Condition::Up),
            measured(1, 100, 2, Condition::Up),
            measured(2, 100, 2, Condition::Up),
        ];
        links[0].priority = 5;
        links[1].priority = 1;
        links[2].priority = 1;
        let pick = |links: &[LinkState]| {
            Backup
                .select(100, links, Timestamp::ZERO)
                .iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&links), [1], "lowest priority, then lowest index");
        links[1].health.condition = Condition::Down;
        assert_eq!(pick(&links), [2]);
        links[2].health.condition = Condition::Degraded;
        assert_eq!(pick(&links), [0], "up before degraded");
        links[0].usable = false;
        assert_eq!(pick(&links), [2]);
        links[2].usable = false;
        assert!(pick(&links).is_empty());
    }

    #[test]
    fn adaptive_copies_only_what_a_lossy_or_slow_link_carries() {
        let clean = [
            measured(0, 100, 2, Condition::Up),
            measured(1, 100, 2, Condition::Up),
        ];
        let (_, doubled) = share(&mut Adaptive::default(), &clean, 1_000, 100);
        assert_eq!(doubled, 0);
        // Link 1 loses 3 %: under a load that needs both links, the packets it carries get a
        // copy on link 0; link 0's do not.
        let mut lossy = clean;
        lossy[1].health.loss = 0.03;
        let (bytes, doubled) = share(&mut Adaptive::default(), &lossy, 1_000, 5);
        assert!(doubled > 0 && doubled < 1_000, "doubled {doubled}");
        assert_eq!(bytes[0] + bytes[1], (1_000 + doubled) * 1400);
        // With FEC covering 3 %, the same load is striped over both links and nothing copied.
        let mut covered = Adaptive::default();
        covered.set_fec_covers(0.12);
        let (bytes, doubled) = share(&mut covered, &lossy, 1_000, 5);
        assert_eq!(doubled, 0);
        assert!(bytes[1] > 0, "{bytes:?}");
        // Under a load one link carries alone (56 Mbit/s), nothing goes on the lossy link
        // and nothing is copied, even where the lossy link comes first.
        let (bytes, doubled) = share(&mut Adaptive::default(), &lossy, 1_000, 200);
        assert_eq!((bytes[1], doubled), (0, 0), "{bytes:?}");
        let mut lossy_first = clean;
        lossy_first[0].health.loss = 0.03;
        let (bytes, doubled) = share(&mut Adaptive::default(), &lossy_first, 1_000, 200);
        assert_eq!((bytes[0], doubled), (0, 0), "{bytes:?}");
        // A link far slower than the best: its packets get a copy too.
        let slow = [
            measured(0, 100, 2, Condition::Up),
            measured(1, 100, 100, Condition::Up),
        ];
        let mut adaptive = Adaptive::default();
        let mut doubled = 0;
        for i in 0..20_000u64 {
            let set = adaptive.select(1400, &slow, at_us(i * 5));
            if set.contains(1) {
                doubled += usize::from(set.len() == 2);
                assert_eq!(
                    set.len(),
                    2,
                    "a packet on the slow link goes on the fast one too"
                );
            }
        }
        assert!(doubled > 0);
    }

    #[test]
    fn bytes_charged_without_a_selection_count_in_the_queues() {
        let links = [link(0, true, 1500), link(1, true, 1500)];
        let mut stripe = Stripe::default();
        let first = stripe.select(100, &links, Timestamp::ZERO);
        // A bundle on link 0 grows by 10 000 bytes: the next packet goes on link 1, twice.
        let mut bundle = LinkSet::EMPTY;
        bundle.insert(0);
        AnyScheduler::Stripe(Stripe::default()).charge(bundle, 1, &links);
        stripe.charge(bundle, 10_000, &links);
        assert!(first.contains(0));
        for _ in 0..2 {
            assert!(stripe.select(100, &links, Timestamp::ZERO).contains(1));
        }
    }

    #[test]
    fn any_scheduler_dispatches() {
        let links = [link(0, true, 1500), link(1, true, 1500)];
        let mut redundant = AnyScheduler::Redundant(Redundant);
        assert_eq!(redundant.select(100, &links, Timestamp::ZERO).len(), 2);
        let mut backup = AnyScheduler::Backup(Backup);
        assert_eq!(backup.select(100, &links, Timestamp::ZERO).len(), 1);
        let mut stripe = AnyScheduler::Stripe(Stripe::default());
        assert_eq!(stripe.select(100, &links, Timestamp::ZERO).len(), 1);
        let mut adaptive = AnyScheduler::Adaptive(Adaptive::default());
        assert_eq!(adaptive.select(100, &links, Timestamp::ZERO).len(), 1);
    }

    #[test]
    fn redundant_picks_every_usable_link() {
        let links = [
            link(0, true, 1500),
            link(1, false, 1400),
            link(2, true, 9000),
        ];
        let set = Redundant.select(100, &links, Timestamp::ZERO);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.min_mtu(&links), Some(1500));
        let none = Redundant.select(100, &[link(0, false, 1500)], Timestamp::ZERO);
        assert!(none.is_empty());
        assert_eq!(none.min_mtu(&links), None);
    }

    #[test]
    fn link_set_bounds() {
        let mut set = LinkSet::EMPTY;
        set.insert(63);
        set.insert(64);
        assert!(set.contains(63));
        assert!(!set.contains(64));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![63]);
    }
}
