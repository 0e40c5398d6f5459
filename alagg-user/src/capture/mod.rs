//! The capture stage: outbound packets taken from NFQUEUE ([`nfqueue`]) in batches, checked,
//! counted and handed to the transmit stage (through [`Outbound`]), then stolen with one
//! verdict per batch once their frames are out.
//!
//! Per turn and per queue: one receive of up to [`crate::port::BATCH`] packets; each packet
//! whose partial checksum can be completed goes to [`Outbound::packet`]; then
//! [`Outbound::flush`] sends the frames, and only then [`PacketSource::steal`] settles the batch
//! (the verdict's syscall does not delay the frames).

pub(crate) mod nfqueue;

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use alagg_proto::Timestamp;

use crate::{
    counters::WorkerCounters,
    ip,
    port::{Captured, Outbound, PacketSource, SourceLosses},
    stamps::{self, Point},
};

/// The capture stage of one worker: its queues (the packet queue and, with GSO, its TCP queue)
/// and what it hands their packets to.
#[derive(Debug)]
pub(crate) struct Capture<'a, Q, O> {
    queues: Vec<Q>,
    /// A `poll(2)` entry per queue, in `queues` order.
    fds: Vec<libc::pollfd>,
    out: O,
    counters: &'a WorkerCounters,
    /// The queues' losses already added to the shared counters.
    reported: SourceLosses,
    last_error: Option<Instant>,
    /// With [`stamps`] on: the keys of the batch's packets, stamped again once sent.
    stamped: Vec<u64>,
}

impl<'a, Q: PacketSource, O: Outbound> Capture<'a, Q, O> {
    /// A stage reading `queues` and handing their packets to `out`.
    pub(crate) fn new(queues: Vec<Q>, out: O, counters: &'a WorkerCounters) -> Self {
        let fds = queues
            .iter()
            .map(|q| libc::pollfd {
                fd: q.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Self {
            queues,
            fds,
            out,
            counters,
            reported: SourceLosses::default(),
            last_error: None,
            stamped: Vec::new(),
        }
    }

    /// The queues read.
    #[cfg(test)]
    pub(crate) fn queues_mut(&mut self) -> &mut [Q] {
        &mut self.queues
    }

    /// Takes one batch from each queue and sends it on: see the module documentation. Returns
    /// the packets taken.
    pub(crate) fn turn(&mut self, now: Timestamp) -> usize {
        self.out.refresh(now);
        let Self {
            queues,
            out,
            counters,
            last_error,
            stamped,
            ..
        } = self;
        // Errors are logged at most once a second: a broken queue must not flood the log.
        let mut report = |error: &dyn std::fmt::Display| {
            if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(%error, "NFQUEUE");
                *last_error = Some(Instant::now());
            }
        };
        let mut received = 0;
        for queue in queues.iter_mut() {
            let n = match queue.recv(|packet| take(packet, now, out, counters, stamped)) {
                Ok(n) => n,
                Err(error) => {
                    report(&error);
                    0
                }
            };
            if n == 0 {
                continue;
            }
            received += n;
            counters.capture.batches.fetch_add(1, Relaxed);
            let sending = (!stamped.is_empty()).then(stamps::now);
            out.flush();
            if let Some(sending) = sending {
                let sent = stamps::now();
                for key in stamped.drain(..) {
                    stamps::record(Point::Sending, key, sending);
                    stamps::record(Point::Sent, key, sent);
                }
            }
            // Stolen, the whole batch at once: alagg carries these packets from here.
            if let Err(error) = queue.steal() {
                report(&error);
            }
        }
        // The queues count from when they opened: add what is new since last time.
        let mut losses = SourceLosses::default();
        for queue in &self.queues {
            let seen = queue.losses();
            losses.overruns += seen.overruns;
            losses.errors += seen.errors;
        }
        counters.capture.overruns.fetch_add(
            losses.overruns.saturating_sub(self.reported.overruns),
            Relaxed,
        );
        counters
            .capture
            .errors
            .fetch_add(losses.errors.saturating_sub(self.reported.errors), Relaxed);
        self.reported = losses;
        received
    }

    /// The queues' descriptors, to sleep on when there is no work.
    /// How long the stage may sleep from `now` before its transmit side has something due.
    pub(crate) fn due(&self, now: Timestamp) -> Option<Duration> {
        self.out.due(now)
    }

    pub(crate) fn poll_fds(&mut self) -> &mut [libc::pollfd] {
        &mut self.fds
    }
}

/// Counts one captured packet, completes its checksum and hands it on (stamped, with
/// [`stamps`] on, its key kept in `stamped`).
fn take(
    packet: Captured<'_>,
    now: Timestamp,
    out: &mut impl Outbound,
    counters: &WorkerCounters,
    stamped: &mut Vec<u64>,
) {
    let counters = &counters.capture;
    counters.captured.fetch_add(1, Relaxed);
    counters
        .captured_bytes
        .fetch_add(packet.payload.len() as u64, Relaxed);
    if packet.payload.is_empty() || packet.truncated {
        counters.dropped.fetch_add(1, Relaxed);
        return;
    }
    if packet.csum_partial && !ip::finish_transport_checksum(packet.payload) {
        // A partial checksum alagg cannot complete: the peer would drop it anyway.
        counters.dropped.fetch_add(1, Relaxed);
        return;
    }
    if stamps::on() {
        let key = stamps::key(packet.payload);
        stamps::record(Point::Captured, key, stamps::now());
        stamped.push(key);
    }
    out.packet(packet.payload, now);
}
