//! The receive stage: the receive half of every link's sockets ([`FrameRx`]) and the
//! [`Receiver`]. It drops frames not from the link's configured peer MAC or not of alagg's
//! ethertype, runs the engine (dedup, reorder, reassembly) and hands what it delivers, in order,
//! to the delivery stage ([`Inbound`]).
//!
//! Every [`PUBLISH_INTERVAL`] (and when it stops, and before a socket is replaced) it asks
//! each socket what it lost ([`FrameRx::losses`]: AF_XDP's `XDP_STATISTICS`, AF_PACKET's
//! truncated frames and receive-buffer drops) and adds what is new to the link's counters.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use alagg_proto::{
    Receiver, RxOutcome, Timestamp,
    health::Condition,
    stats::RxStats,
    wire::{ETH_HDR_LEN, MacAddr},
};

use crate::{
    counters::{Counters, LinkRxCounters},
    port::{BATCH, FrameRx, Inbound, LinkControl, RxLosses},
    stamps::{self, Point},
};

/// Where a frame names the link it was sent on: the third byte of the alagg header
/// (`docs/PROTOCOL.md`).
const LINK_BYTE: usize = 2;

/// Batches taken from one link's socket per turn at most (each up to [`BATCH`] frames).
pub(crate) const TURN_BATCHES: usize = 4;

/// How often the engine's counters are published to the shared counters.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// How often link health is ticked and published for the transmit stages (their feedback
/// frames carry what was published last).
pub(crate) const HEALTH_INTERVAL: Duration = alagg_proto::health::FEEDBACK_INTERVAL;

/// A receive half of one link (a link has one per capture worker with AF_XDP).
#[derive(Debug)]
pub(crate) struct RxLink<R> {
    /// The link's index.
    pub(crate) link: usize,
    pub(crate) io: R,
    /// This host's MAC on the link: frames to any other destination are not for it.
    pub(crate) local_mac: MacAddr,
    pub(crate) peer_mac: MacAddr,
    pub(crate) ethertype: u16,
}

/// The receive stage; see the module documentation.
#[derive(Debug)]
pub(crate) struct Receive<'a, R, T, D> {
    links: Vec<RxLink<R>>,
    /// A `poll(2)` entry per link socket, in `links` order; a socket that failed has a negative
    /// descriptor (the kernel skips it) until the runtime hands over a replacement.
    fds: Vec<libc::pollfd>,
    /// Per socket, in `links` order: its losses already added to the counters.
    reported: Vec<RxLosses>,
    receiver: Receiver,
    delivery: D,
    /// With [`stamps`] on: the keys of the packets this turn delivered, stamped again once
    /// written.
    stamped: Vec<u64>,
    counters: &'a Counters,
    control: &'a LinkControl<R, T>,
    published: Option<Timestamp>,
    /// When link health was last published, and each link's condition then (changes are
    /// logged).
    health_published: Option<Timestamp>,
    conditions: Vec<Condition>,
    /// The engine's counters when last published, to see which [`NOTICES`] first rose.
    last: RxStats,
    /// Which [`NOTICES`] were logged already (each once per run).
    noticed: [bool; NOTICES.len()],
}

/// A counter of the engine's, read from its counters.
type EngineCount = fn(&RxStats) -> u64;

/// Counters whose first rise means the two hosts are not set up alike: each is logged once,
/// with what to check, the first time it moves (`alagg status` keeps counting).
const NOTICES: [(EngineCount, &str); 4] = [
    (
        |s| s.bad_version,
        "frames of another wire-format version arrive: the peer runs another alagg release",
    ),
    (
        |s| s.unauthenticated,
        "frames without an authentication tag arrive and are dropped: the peer has no [auth]",
    ),
    (
        |s| s.auth_failed,
        "frames whose authentication tag does not verify arrive and are dropped: the peer has \
         another [auth] key, or someone forges frames",
    ),
    (
        |s| s.auth_unexpected,
        "authenticated frames arrive and are dropped: the peer has [auth], this host has not",
    ),
];

impl<'a, R: FrameRx, T, D: Inbound> Receive<'a, R, T, D> {
    /// A stage receiving on `links` into `receiver`, delivering to `delivery`.
    pub(crate) fn new(
        links: Vec<RxLink<R>>,
        receiver: Receiver,
        delivery: D,
        counters: &'a Counters,
        control: &'a LinkControl<R, T>,
    ) -> Self {
        Self {
            fds: poll_fds(&links),
            reported: vec![RxLosses::default(); links.len()],
            links,
            receiver,
            delivery,
            stamped: Vec::new(),
            counters,
            control,
            published: None,
            health_published: None,
            conditions: vec![Condition::Unknown; counters.receiver.links.len()],
            last: RxStats::default(),
            noticed: [false; NOTICES.len()],
        }
    }

    /// The engine's counters now.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> RxStats {
        self.receiver.stats()
    }

    /// Writes what is held, publishes the engine's final counters and the sockets' losses, and
    /// returns the engine's counters.
    pub(crate) fn finish(mut self) -> RxStats {
        self.delivery.flush();
        self.count_losses();
        let stats = self.receiver.stats();
        publish(self.counters, stats);
        stats
    }

    /// Puts the runtime's new sockets for link `index` in place of its old ones.
    fn replace(&mut self, index: usize, sockets: Vec<R>) {
        let Some(old) = self.links.iter().find(|l| l.link == index) else {
            return;
        };
        let (local_mac, peer_mac, ethertype) = (old.local_mac, old.peer_mac, old.ethertype);
        // What the old sockets lost counts before they go; the new ones count from 0.
        self.count_losses();
        let mut reported: Vec<RxLosses> = self
            .links
            .iter()
            .zip(&self.reported)
            .filter(|(l, _)| l.link != index)
            .map(|(_, r)| *r)
            .collect();
        // Sockets of other links that failed stay out of the poll set.
        let failed: Vec<usize> = self
            .links
            .iter()
            .zip(&self.fds)
            .filter(|(l, pollfd)| l.link != index && pollfd.fd < 0)
            .map(|(l, _)| l.link)
            .collect();
        self.links.retain(|l| l.link != index);
        self.links.extend(sockets.into_iter().map(|io| RxLink {
            link: index,
            io,
            local_mac,
            peer_mac,
            ethertype,
        }));
        reported.resize(self.links.len(), RxLosses::default());
        self.reported = reported;
        self.fds = poll_fds(&self.links);
        for (link, pollfd) in self.links.iter().zip(&mut self.fds) {
            if failed.contains(&link.link) {
                pollfd.fd = -pollfd.fd.abs() - 1;
            }
        }
    }

    /// Takes replacement sockets from the runtime, then takes what every link's ring holds (up
    /// to [`TURN_BATCHES`] batches each, so that no link starves the others) and gives up on
    /// gaps whose time is up; returns the frames received (the worker turns again at once
    /// while that is not zero).
    pub(crate) fn turn(&mut self, now: Timestamp) -> usize {
        while let Some((index, sockets)) = self.control.take_rx() {
            self.replace(index, sockets);
        }
        let Self {
            links,
            fds,
            receiver,
            delivery,
            counters,
            stamped,
            ..
        } = self;
        // With stamps on: when the frame being handled was taken from its link.
        let (stamping, taken_at) = (stamps::on(), std::cell::Cell::new(0));
        let mut deliver = |packet: &[u8]| {
            if stamping {
                let key = stamps::key(packet);
                stamps::record(Point::Received, key, taken_at.get());
                stamps::record(Point::Writing, key, stamps::now());
                stamped.push(key);
            }
            delivery.packet(packet);
        };
        let mut got = 0;
        for (link, pollfd) in links.iter_mut().zip(fds.iter()) {
            if pollfd.fd < 0 {
                continue;
            }
            let link_counters = &counters.receiver.links[link.link];
            let (local_mac, peer_mac, ethertype) = (link.local_mac, link.peer_mac, link.ethertype);
            // Links are numbered alike on both hosts ([[link]] order): a frame names its link.
            let link_id = link.link as u8;
            // This link's ring in batches, at most TURN_BATCHES of them: a link flooded with
            // frames must not keep the others and the engine's timers waiting.
            for _ in 0..TURN_BATCHES {
                let result = link.io.recv(|frame| {
                    if stamping {
                        taken_at.set(stamps::now());
                    }
                    link_counters.rx_frames.fetch_add(1, Relaxed);
                    link_counters
                        .rx_bytes
                        .fetch_add(frame.len() as u64, Relaxed);
                    if frame.len() < ETH_HDR_LEN
                        || frame[0..6] != local_mac.0
                        || frame[6..12] != peer_mac.0
                        || frame[12..14] != ethertype.to_be_bytes()
                    {
                        link_counters.rx_foreign.fetch_add(1, Relaxed);
                        return;
                    }
                    if frame
                        .get(ETH_HDR_LEN + LINK_BYTE)
                        .is_some_and(|&id| id != link_id)
                    {
                        link_counters.rx_wrong_link.fetch_add(1, Relaxed);
                        return;
                    }
                    match receiver.on_frame(&frame[ETH_HDR_LEN..], now, &mut deliver) {
                        RxOutcome::Accepted { .. } => {
                            link_counters.first.fetch_add(1, Relaxed);
                        }
                        RxOutcome::Bundle { accepted, .. } => {
                            link_counters.first.fetch_add(u64::from(accepted), Relaxed);
                        }
                        _ => {}
                    }
                });
                match result {
                    Ok(n) => {
                        got += n;
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "link receive");
                        break;
                    }
                }
            }
        }
        if receiver.next_deadline().is_some_and(|d| d <= now) {
            receiver.poll(now, &mut deliver);
        }
        // What this turn delivered goes into the stack before the thread looks again or sleeps.
        delivery.flush();
        if !stamped.is_empty() {
            let written = stamps::now();
            for key in stamped.drain(..) {
                stamps::record(Point::Written, key, written);
            }
        }
        if self
            .health_published
            .is_none_or(|t| now.saturating_since(t) >= HEALTH_INTERVAL)
        {
            self.health_published = Some(now);
            self.publish_health(now);
        }
        let due = self
            .published
            .is_none_or(|t| now.saturating_since(t) >= PUBLISH_INTERVAL);
        if due {
            self.published = Some(now);
            let stats = self.receiver.stats();
            for (index, message) in first_rises(&self.last, &stats, &mut self.noticed) {
                let count = (NOTICES[index].0)(&stats);
                tracing::warn!(count, "{message}");
            }
            self.last = stats;
            publish(self.counters, stats);
            self.count_losses();
        }
        got
    }

    /// Ticks link health (a link whose carrier the runtime saw go is down at once) and
    /// publishes every link's health and the reports for the next feedback frames.
    fn publish_health(&mut self, now: Timestamp) {
        let links = self.counters.receiver.links.len();
        let health = self.receiver.health_mut();
        for link in 0..links {
            if !self.control.usable(link) {
                // At most 64 links: an index fits a byte.
                health.carrier_lost(link as u8, now);
            }
        }
        health.tick(now);
        self.receiver.adapt_hold(now);
        let health = self.receiver.health();
        for link in 0..links {
            let (Some(board), Some(state)) = (self.control.health(link), health.link(link as u8))
            else {
                continue;
            };
            let view = state.view();
            if let Some(was) = self.conditions.get_mut(link) {
                if *was != view.condition {
                    tracing::info!(
                        link,
                        from = was.name(),
                        to = view.condition.name(),
                        rtt_us = view.srtt.map(|d| d.as_micros() as u64),
                        loss = view.loss,
                        "link health changed"
                    );
                    *was = view.condition;
                }
            }
            board.set_view(&view);
            board.set_reports(|out| health.meters.reports(link as u8, now, out));
        }
        self.control.health_published();
    }

    /// Asks every socket what it lost and adds what is new to its link's counters.
    fn count_losses(&mut self) {
        for (link, reported) in self.links.iter_mut().zip(&mut self.reported) {
            if let Some(counters) = self.counters.receiver.links.get(link.link) {
                let now = link.io.losses();
                add_losses(&now.since(reported), counters);
                *reported = now;
            }
        }
    }

    /// The link sockets that have not failed, and how long to sleep on them at most: until the
    /// engine's next deadline.
    pub(crate) fn sleep_on(
        &mut self,
        now: Timestamp,
        idle: Duration,
    ) -> (&mut [libc::pollfd], Duration) {
        // Health is published every HEALTH_INTERVAL, even with no frame coming in (a silent
        // link must be seen going down).
        let health = self.health_published.map_or(Duration::ZERO, |t| {
            t.saturating_add(HEALTH_INTERVAL).saturating_since(now)
        });
        let timeout = self
            .receiver
            .next_deadline()
            .map_or(idle, |deadline| deadline.saturating_since(now))
            .min(health);
        (&mut self.fds, timeout)
    }

    /// The descriptors [`Receive::sleep_on`] hands out.
    pub(crate) fn poll_fds(&mut self) -> &mut [libc::pollfd] {
        &mut self.fds
    }

    /// Acts on what `poll(2)` wrote into the descriptors: a socket whose interface went away
    /// stops being polled until the runtime hands over a new one. What counts as that is the
    /// socket's to say ([`FrameRx::fatal_events`]): a packet socket's `POLLERR` reports its
    /// interface going down, and it works again once the interface is up, so no replacement
    /// would come.
    pub(crate) fn woke(&mut self) {
        for (link, pollfd) in self.links.iter().zip(&mut self.fds) {
            if pollfd.revents & link.io.fatal_events() != 0 {
                pollfd.fd = -pollfd.fd.abs() - 1;
            }
            pollfd.revents = 0;
        }
    }
}

/// The [`NOTICES`] that rose from `before` to `after` and were not yet `noticed` (marked now).
fn first_rises(
    before: &RxStats,
    after: &RxStats,
    noticed: &mut [bool; NOTICES.len()],
) -> Vec<(usize, &'static str)> {
    let mut rose = Vec::new();
    for (index, &(count, message)) in NOTICES.iter().enumerate() {
        if !noticed[index] && count(after) > count(before) {
            noticed[index] = true;
            rose.push((index, message));
        }
    }
    rose
}

/// Adds `new` losses to a link's counters.
fn add_losses(new: &RxLosses, counters: &LinkRxCounters) {
    let pairs = [
        (&counters.rx_truncated, new.truncated),
        (&counters.rx_buffer_full, new.buffer_full),
        (&counters.xsk_rx_dropped, new.xsk_rx_dropped),
        (&counters.xsk_rx_ring_full, new.xsk_rx_ring_full),
        (&counters.xsk_rx_invalid, new.xsk_rx_invalid),
        (&counters.xsk_fill_empty, new.xsk_fill_empty),
        (&counters.xsk_tx_invalid, new.xsk_tx_invalid),
        (&counters.xsk_tx_ring_empty, new.xsk_tx_ring_empty),
    ];
    for (counter, value) in pairs {
        if value > 0 {
            counter.fetch_add(value, Relaxed);
        }
    }
}

/// A `poll(2)` entry for each receive half.
fn poll_fds<R: FrameRx>(links: &[RxLink<R>]) -> Vec<libc::pollfd> {
    links
        .iter()
        .map(|l| libc::pollfd {
            fd: l.io.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

fn publish(counters: &Counters, stats: RxStats) {
    *counters
        .engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = stats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_losses_reach_the_link_counters_each_once() {
        let counters = LinkRxCounters::default();
        let first = RxLosses {
            truncated: 1,
            buffer_full: 2,
            xsk_rx_dropped: 3,
            xsk_rx_ring_full: 4,
            xsk_rx_invalid: 5,
            xsk_fill_empty: 6,
            xsk_tx_invalid: 7,
            xsk_tx_ring_empty: 8,
        };
        let later = RxLosses {
            buffer_full: 12,
            ..first
        };
        add_losses(&first.since(&RxLosses::default()), &counters);
        add_losses(&later.since(&first), &counters);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        let seen = [
            load(&counters.rx_truncated),
            load(&counters.rx_buffer_full),
            load(&counters.xsk_rx_dropped),
            load(&counters.xsk_rx_ring_full),
            load(&counters.xsk_rx_invalid),
            load(&counters.xsk_fill_empty),
            load(&counters.xsk_tx_invalid),
            load(&counters.xsk_tx_ring_empty),
        ];
        assert_eq!(seen, [1, 12, 3, 4, 5, 6, 7, 8]);
        assert_eq!(load(&counters.rx_frames), 0);
    }

    #[test]
    fn each_notice_is_given_once_when_its_counter_first_rises() {
        let mut noticed = [false; NOTICES.len()];
        let quiet = RxStats::default();
        assert!(first_rises(&quiet, &quiet, &mut noticed).is_empty());
        let failing = RxStats {
            auth_failed: 3,
            ..RxStats::default()
        };
        let given = first_rises(&quiet, &failing, &mut noticed);
        assert_eq!(given.len(), 1);
        assert!(given[0].1.contains("another [auth] key"), "{given:?}");
        let more = RxStats {
            auth_failed: 9,
            unauthenticated: 1,
            ..RxStats::default()
        };
        let given = first_rises(&failing, &more, &mut noticed);
        assert_eq!(given.len(), 1, "auth_failed was noticed already: {given:?}");
        assert!(given[0].1.contains("no [auth]"), "{given:?}");
        assert!(
            first_rises(
                &more,
                &RxStats {
                    auth_failed: 20,
                    unauthenticated: 5,
                    ..RxStats::default()
                },
                &mut noticed
            )
            .is_empty()
        );
    }
}
