//! What the worker threads run (see the parent module for who owns what): a capture [`Stage`]
//! per NFQUEUE worker, the receive stage, and [`run`], the loop that drives a stage on its
//! thread: busy polling after traffic, then sleeping in `poll(2)`.

use std::{
    io,
    os::fd::AsRawFd as _,
    sync::{
        PoisonError,
        atomic::{
            AtomicBool,
            Ordering::{Acquire, Relaxed},
        },
    },
    thread,
    time::{Duration, Instant},
};

use alagg_proto::{
    Bundler, LinkSet, LinkState, Receiver, Redundant, RxOutcome, Scheduler, Sender, Timestamp,
    stats::RxStats,
    wire::{ETH_HDR_LEN, EthernetRepr},
};
use ipnet::IpNet;

use super::{CAPTURE_BATCH, Counters, IDLE_WAKEUP, LinkControl, LinkCounters, PUBLISH_INTERVAL};
use crate::{
    ip,
    nfqueue::{Batch, NfQueue, Packet, Verdict},
    offload::{Coalescer, Flushed, Offer, is_tcp, split_gso, tcp_segmentation},
    packet::{PacketRx, PacketTx},
    pmtu::PathMtu,
    tun::Tun,
    xsk::{XskError, XskRx, XskTx},
};

/// A receive half of one link (a link has one per capture worker with AF_XDP).
pub(super) struct RxLink {
    /// The link's index.
    pub(super) link: usize,
    pub(super) io: LinkRx,
    pub(super) peer_mac: [u8; 6],
    pub(super) ethertype: u16,
}

/// The transmit half of one link.
pub(super) struct TxLink {
    pub(super) io: LinkTx,
    pub(super) eth: EthernetRepr,
}

/// Frames a link's receive half hands over per call at most (both kinds batch the same).
const LINK_BATCH: usize = crate::xsk::BATCH;
const _: () = assert!(crate::xsk::BATCH == crate::packet::BATCH);

/// A link's receive half, whichever socket carries it.
#[derive(Debug)]
pub(super) enum LinkRx {
    Xsk(XskRx),
    Packet(PacketRx),
}

/// Errors of a link's sockets on the hot path, logged by the workers.
#[derive(Debug, thiserror::Error)]
enum LinkIoError {
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error("AF_PACKET: {0}")]
    Packet(#[from] io::Error),
}

impl LinkRx {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            LinkRx::Xsk(xsk) => xsk.fd(),
            LinkRx::Packet(packet) => packet.fd(),
        }
    }

    /// Up to [`LINK_BATCH`] frames to `each`; how many.
    fn recv(&mut self, each: impl FnMut(&[u8])) -> Result<usize, LinkIoError> {
        Ok(match self {
            LinkRx::Xsk(xsk) => xsk.recv(each)?,
            LinkRx::Packet(packet) => packet.recv(each)?,
        })
    }
}

/// A link's transmit half, whichever socket carries it.
#[derive(Debug)]
pub(super) enum LinkTx {
    Xsk(XskTx),
    Packet(PacketTx),
}

impl LinkTx {
    fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        match self {
            LinkTx::Xsk(xsk) => xsk.stage(write),
            LinkTx::Packet(packet) => packet.stage(write),
        }
    }

    /// Sends what is staged; returns the frames the device refused (dropped).
    fn flush(&mut self) -> Result<usize, LinkIoError> {
        match self {
            LinkTx::Xsk(xsk) => xsk.flush().map(|_| 0).map_err(Into::into),
            LinkTx::Packet(packet) => Ok(packet.flush()?.1),
        }
    }
}

fn now(start: Instant) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// What a worker thread runs: a capture stage or the receive stage.
pub(super) trait Stage {
    /// Does the work that is waiting, without blocking; returns how much there was (packets
    /// or frames).
    fn turn(&mut self) -> usize;

    /// What to sleep on when there is no work: the descriptors, whose `revents` `poll(2)`
    /// fills in, and the longest sleep.
    fn sleep_on(&mut self) -> (&mut [libc::pollfd], Duration);

    /// Called after each sleep, to act on what `poll(2)` wrote into the descriptors.
    fn woke(&mut self) {}
}

/// Runs `stage` on this thread until `stop`, and hands it back. Right after traffic the thread
/// keeps turning for `busy_poll`, yielding the CPU in between; then it sleeps in `poll(2)` until
/// there is work or the stage's deadline comes.
pub(super) fn run<S: Stage>(mut stage: S, (stop, busy_poll): (&AtomicBool, Duration)) -> S {
    let mut busy_until = Instant::now();
    while !stop.load(Relaxed) {
        if stage.turn() > 0 {
            busy_until = Instant::now() + busy_poll;
            continue;
        }
        if Instant::now() < busy_until {
            thread::yield_now();
            continue;
        }
        let (fds, timeout) = stage.sleep_on();
        // To the nanosecond (ppoll(2)): a gap's deadline is kept, neither rounded nor spun
        // towards; never longer than IDLE_WAKEUP, so the stop flag is seen.
        let timeout = timeout.min(IDLE_WAKEUP);
        let timespec = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            // Below 10^9: fits a c_long everywhere.
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd of the length passed; `timespec` is a valid
        // timespec; a null signal mask leaves the mask as it is.
        let ready = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timespec,
                std::ptr::null(),
            )
        };
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            tracing::error!(error = %io::Error::last_os_error(), "poll on the worker's sockets");
            thread::sleep(Duration::from_millis(10));
        }
        stage.woke();
    }
    stage
}

/// The receive stage: the receive half of every link's sockets, the [`Receiver`] and the TUN
/// device. It drops frames not from the link's configured peer MAC, runs the engine and writes
/// deliverable packets whose source is in the configured destinations.
pub(super) struct Receive<'a> {
    links: Vec<RxLink>,
    /// A `poll(2)` entry per link socket, in `links` order; a socket that failed has a negative
    /// descriptor (the kernel skips it) until the monitor hands over a replacement.
    fds: Vec<libc::pollfd>,
    receiver: Receiver,
    delivery: Delivery<'a>,
    counters: &'a Counters,
    control: &'a LinkControl,
    start: Instant,
    published: Instant,
}

impl<'a> Receive<'a> {
    pub(super) fn new(
        links: Vec<RxLink>,
        receiver: Receiver,
        (tun, coalescer, destinations): (Tun, Option<Coalescer>, Vec<IpNet>),
        tun_mtu: usize,
        (counters, control): (&'a Counters, &'a LinkControl),
    ) -> Self {
        let start = Instant::now();
        Self {
            fds: poll_fds(&links),
            links,
            receiver,
            delivery: Delivery {
                tun,
                tun_mtu,
                path_mtu: PathMtu::new(),
                tcp_gso: true,
                scratch: Vec::new(),
                coalescer,
                destinations,
                counters,
            },
            counters,
            control,
            start,
            published: start,
        }
    }

    /// The engine's final counters, published.
    pub(super) fn finish(mut self) -> RxStats {
        self.delivery.flush();
        let stats = self.receiver.stats();
        publish(self.counters, stats);
        stats
    }

    /// Puts the monitor's new sockets for link `index` in place of its old ones.
    fn replace(&mut self, index: usize, sockets: Vec<LinkRx>) {
        let Some(old) = self.links.iter().find(|l| l.link == index) else {
            return;
        };
        let (peer_mac, ethertype) = (old.peer_mac, old.ethertype);
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
            peer_mac,
            ethertype,
        }));
        self.fds = poll_fds(&self.links);
        for (link, pollfd) in self.links.iter().zip(&mut self.fds) {
            if failed.contains(&link.link) {
                pollfd.fd = -pollfd.fd.abs() - 1;
            }
        }
    }
}

impl Stage for Receive<'_> {
    /// Takes replacement sockets from the monitor, then drains every link's ring and gives up
    /// on gaps whose time is up; returns the frames received.
    fn turn(&mut self) -> usize {
        while let Some((index, sockets)) = self.control.new_rx.pop() {
            self.replace(index, sockets);
        }
        let Self {
            links,
            fds,
            receiver,
            delivery,
            counters,
            start,
            ..
        } = self;
        let mut deliver = |packet: &[u8]| delivery.packet(packet);
        let t = now(*start);
        let mut got = 0;
        for (link, pollfd) in links.iter_mut().zip(fds.iter()) {
            if pollfd.fd < 0 {
                continue;
            }
            let link_counters = &counters.links[link.link];
            let (peer_mac, ethertype) = (link.peer_mac, link.ethertype);
            // Drain this link's ring in batches.
            loop {
                let result = link.io.recv(|frame| {
                    link_counters.rx_frames.fetch_add(1, Relaxed);
                    link_counters
                        .rx_bytes
                        .fetch_add(frame.len() as u64, Relaxed);
                    if frame.len() < ETH_HDR_LEN
                        || frame[6..12] != peer_mac
                        || frame[12..14] != ethertype.to_be_bytes()
                    {
                        link_counters.rx_foreign.fetch_add(1, Relaxed);
                        return;
                    }
                    match receiver.on_frame(&frame[ETH_HDR_LEN..], t, &mut deliver) {
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
                        if n < LINK_BATCH {
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
        if receiver.next_deadline().is_some_and(|d| d <= now(*start)) {
            receiver.poll(now(*start), &mut deliver);
        }
        // What this turn delivered goes into the stack before the thread looks again or sleeps.
        delivery.flush();
        if self.published.elapsed() >= PUBLISH_INTERVAL {
            self.published = Instant::now();
            publish(self.counters, self.receiver.stats());
        }
        got
    }

    /// Sleeps on every link socket that has not failed until the engine's next deadline.
    fn sleep_on(&mut self) -> (&mut [libc::pollfd], Duration) {
        let timeout = self
            .receiver
            .next_deadline()
            .map_or(IDLE_WAKEUP, |deadline| {
                deadline.saturating_since(now(self.start))
            });
        (&mut self.fds, timeout)
    }

    /// A socket whose interface went away stops being polled until the monitor hands over a
    /// new one. A packet socket's `POLLERR` is not that: it reports its interface going down
    /// (`ENETDOWN`), and the next receive clears it; the socket works again once the interface
    /// is up, under the same index, so no replacement would come.
    fn woke(&mut self) {
        for (link, pollfd) in self.links.iter().zip(&mut self.fds) {
            let mut fatal = libc::POLLNVAL | libc::POLLHUP;
            if matches!(link.io, LinkRx::Xsk(_)) {
                fatal |= libc::POLLERR;
            }
            if pollfd.revents & fatal != 0 {
                pollfd.fd = -pollfd.fd.abs() - 1;
            }
            pollfd.revents = 0;
        }
    }
}

/// IPv4's minimum MTU (RFC 791): no route is smaller, so no smaller TCP packet needs cutting.
const MIN_MTU: usize = 576;

/// The delivery edge: admission, UDP coalescing and the TUN device.
struct Delivery<'a> {
    tun: Tun,
    /// Larger TCP packets are announced as GSO with segments that fit it.
    tun_mtu: usize,
    /// Route MTUs of destinations (forwarded TCP is cut to fit the route on).
    path_mtu: PathMtu,
    /// Large TCP goes as GSO (until the kernel refuses it).
    tcp_gso: bool,
    /// Where [`split_gso`] builds segments.
    scratch: Vec<u8>,
    /// `None`: every packet is written on its own.
    coalescer: Option<Coalescer>,
    destinations: Vec<IpNet>,
    counters: &'a Counters,
}

impl Delivery<'_> {
    /// Takes a packet the engine delivered: written to the TUN device (now, or coalesced with
    /// the next ones by [`Delivery::flush`]) if its source is one of the destinations and its
    /// IP header is sane; counts what became of it.
    fn packet(&mut self, packet: &[u8]) {
        let packet = match ip::admit(packet, &self.destinations) {
            Ok(packet) => packet,
            Err(ip::Reject::Source) => {
                self.counters.rejected_source.fetch_add(1, Relaxed);
                return;
            }
            Err(ip::Reject::Malformed) => {
                self.counters.rejected_malformed.fetch_add(1, Relaxed);
                return;
            }
        };
        let offer = self
            .coalescer
            .as_mut()
            .map_or(Offer::Alone, |c| c.offer(packet));
        if offer == Offer::Taken {
            return;
        }
        // What is waiting goes first: packets enter the stack in the order they came. Then an
        // empty coalescer takes a datagram it could not join to the others; anything else (or
        // all, if the kernel refused coalescing just now) goes alone.
        self.flush();
        let taken = offer == Offer::Flush
            && self
                .coalescer
                .as_mut()
                .is_some_and(|c| c.offer(packet) == Offer::Taken);
        if !taken {
            let result = self.write_alone(packet);
            self.count(result, 1, packet.len());
        }
    }

    /// Writes one packet; TCP that does not fit the route on (the TUN's MTU, or a smaller one
    /// to a forwarded destination) goes as GSO with segments that do.
    fn write_alone(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.tcp_gso && packet.len() > MIN_MTU && is_tcp(packet) {
            let route = ip::destination(packet).and_then(|d| self.path_mtu.get(d));
            let mtu = route.map_or(self.tun_mtu, |m| m.min(self.tun_mtu));
            if let Some(gso) = tcp_segmentation(packet, mtu) {
                if gso.cwr {
                    let tun = &self.tun;
                    return split_gso(packet, &gso.header, &mut self.scratch, |segment| {
                        tun.write(segment)
                    });
                }
                let (before, after) = packet.split_at(gso.check_at);
                let result = self
                    .tun
                    .write_parts(&gso.header, &[before, &gso.check, &after[2..]]);
                match result {
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        // A kernel that refuses GSO TCP from a TUN after all: whole from now on.
                        tracing::warn!(%error, "the kernel refused a GSO TCP packet; sending TCP whole");
                        self.tcp_gso = false;
                    }
                    result => return result,
                }
            }
        }
        self.tun.write(packet)
    }

    /// Writes what the coalescer holds.
    fn flush(&mut self) {
        let Some(coalescer) = self.coalescer.as_mut() else {
            return;
        };
        let mut refused = false;
        let (result, packets, bytes) = match coalescer.flush() {
            Flushed::Nothing => return,
            Flushed::Plain(packet) => (self.tun.write(packet), 1, packet.len()),
            Flushed::Gso {
                header,
                packet,
                segments,
                bytes,
            } => {
                let mut result = self.tun.write_parts(&header, &[packet]);
                match &result {
                    Ok(()) => {
                        self.counters.coalesced.fetch_add(segments as u64, Relaxed);
                    }
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        // A kernel that does not take GSO UDP from a TUN device after all: these
                        // datagrams are cut here and sent alone, and so is everything after.
                        tracing::warn!(%error, "the kernel refused a coalesced UDP packet; coalescing off");
                        refused = true;
                        let tun = &self.tun;
                        result = split_gso(packet, &header, &mut self.scratch, |datagram| {
                            tun.write(datagram)
                        });
                    }
                    Err(_) => {}
                }
                (result, segments, bytes)
            }
        };
        if refused {
            self.coalescer = None;
        }
        self.count(result, packets, bytes);
    }

    fn count(&self, result: io::Result<()>, packets: usize, bytes: usize) {
        if result.is_ok() {
            self.counters.delivered.fetch_add(packets as u64, Relaxed);
            self.counters
                .delivered_bytes
                .fetch_add(bytes as u64, Relaxed);
        } else {
            self.counters.tun_errors.fetch_add(packets as u64, Relaxed);
        }
    }
}

/// A `poll(2)` entry for each receive half.
fn poll_fds(links: &[RxLink]) -> Vec<libc::pollfd> {
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
        .unwrap_or_else(PoisonError::into_inner) = stats;
}

/// One NFQUEUE socket of a capture stage and its receive batch.
pub(super) struct CaptureQueue {
    queue: NfQueue,
    batch: Batch,
}

impl CaptureQueue {
    pub(super) fn new(queue: NfQueue) -> Self {
        Self {
            queue,
            batch: Batch::new(CAPTURE_BATCH),
        }
    }
}

/// The capture stage of one worker: its NFQUEUE sockets and its [`Transmit`] side.
pub(super) struct Capture<'a> {
    worker: usize,
    queues: Vec<CaptureQueue>,
    /// A `poll(2)` entry per queue, in `queues` order.
    fds: Vec<libc::pollfd>,
    tx: Transmit<'a>,
    control: &'a LinkControl,
    start: Instant,
    /// The queues' overrun and error counts already added to the shared counters.
    reported: (u64, u64),
    seen_generation: u64,
    last_error: Option<Instant>,
}

impl<'a> Capture<'a> {
    pub(super) fn new(
        worker: usize,
        queues: Vec<CaptureQueue>,
        tx: Transmit<'a>,
        control: &'a LinkControl,
    ) -> Self {
        let fds = queues
            .iter()
            .map(|q| libc::pollfd {
                fd: q.queue.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Self {
            worker,
            queues,
            fds,
            tx,
            control,
            start: Instant::now(),
            reported: (0, 0),
            seen_generation: 0,
            last_error: None,
        }
    }
}

impl Stage for Capture<'_> {
    /// Takes link changes from the monitor, then one batch from each queue: stages its frames
    /// on the links, flushes the usable links and steals the batch with one verdict. Returns
    /// the packets taken.
    fn turn(&mut self) -> usize {
        // Link changes from the monitor, looked at every turn (one atomic load), so a worker
        // whose queue stays empty still drops a dead link's socket promptly.
        let generation = self.control.generation.load(Acquire);
        if generation != self.seen_generation {
            self.seen_generation = generation;
            while let Some((index, io, eth)) = self.control.new_tx[self.worker].pop() {
                self.tx.links[index] = TxLink { io, eth };
            }
            for (state, usable) in self.tx.link_states.iter_mut().zip(&self.control.usable) {
                state.usable = usable.load(Relaxed);
            }
        }
        let Self {
            queues,
            tx,
            start,
            last_error,
            ..
        } = self;
        let counters = tx.counters;
        // Errors are logged at most once a second: a broken queue must not flood the log.
        let mut report = |error: &dyn std::fmt::Display| {
            if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(%error, "NFQUEUE");
                *last_error = Some(Instant::now());
            }
        };
        let mut received = 0;
        for CaptureQueue { queue, batch } in queues.iter_mut() {
            let n = match queue.recv_batch(batch) {
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
            counters.capture_batches.fetch_add(1, Relaxed);
            let t = now(*start);
            for index in 0..batch.len() {
                if let Some(packet) = batch.get(index) {
                    counters.captured.fetch_add(1, Relaxed);
                    counters
                        .captured_bytes
                        .fetch_add(packet.payload.len() as u64, Relaxed);
                }
                if batch.csum_not_ready(index)
                    && !batch
                        .payload_mut(index)
                        .is_some_and(ip::finish_transport_checksum)
                {
                    // A partial checksum alagg cannot complete: the peer would drop it anyway.
                    counters.capture_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                let Some(packet) = batch.get(index) else {
                    break;
                };
                tx.packet(&packet, t);
            }
            tx.seal_bundle();
            // The frames first, the verdict after: its syscall does not delay them. A link that
            // is not usable is not kicked (frames left on its ring wait until it is again).
            let links = tx
                .links
                .iter_mut()
                .zip(&tx.link_states)
                .zip(&counters.links);
            for ((link, state), link_counters) in links {
                if !state.usable {
                    continue;
                }
                match link.io.flush() {
                    Ok(0) => {}
                    Ok(dropped) => {
                        link_counters.tx_dropped.fetch_add(dropped as u64, Relaxed);
                    }
                    Err(error) => report(&format_args!("transmit: {error}")),
                }
            }
            // Stolen, the whole batch at once: alagg carries these packets from here.
            if let Some(last) = batch.last_id() {
                if let Err(error) = queue.verdict_batch(last, Verdict::Drop) {
                    report(&error);
                }
            }
        }
        // The counters are shared with the other workers: add what is new since last time.
        let (mut overruns, mut errors) = (0, 0);
        for CaptureQueue { queue, .. } in &self.queues {
            let seen = queue.counters();
            overruns += seen.enobufs;
            errors += seen.malformed + seen.kernel_errors;
        }
        counters
            .capture_overruns
            .fetch_add(overruns - self.reported.0, Relaxed);
        counters
            .capture_errors
            .fetch_add(errors - self.reported.1, Relaxed);
        self.reported = (overruns, errors);
        received
    }

    /// Sleeps on the queues, waking at least every [`IDLE_WAKEUP`] to see the stop flag.
    fn sleep_on(&mut self) -> (&mut [libc::pollfd], Duration) {
        (&mut self.fds, IDLE_WAKEUP)
    }
}

/// The transmit side of the capture thread: numbering, scheduling, bundling, and the links'
/// transmit halves.
pub(super) struct Transmit<'a> {
    pub(super) sender: Sender,
    pub(super) scheduler: Redundant,
    pub(super) links: Vec<TxLink>,
    pub(super) link_states: Vec<LinkState>,
    /// Small packets of the current capture batch waiting to share a frame, when bundling.
    pub(super) bundler: Option<Bundler>,
    /// The links the bundle being built goes to.
    pub(super) bundle_links: LinkSet,
    pub(super) counters: &'a Counters,
}

impl Transmit<'_> {
    /// Encapsulates one captured (and counted) packet and stages its frames on the links the
    /// scheduler picks; a small one joins the bundle being built instead, which goes out
    /// (numbered before this packet) when it is full or [`Transmit::seal_bundle`] is called.
    fn packet(&mut self, packet: &Packet<'_>, t: Timestamp) {
        let payload = packet.payload;
        if payload.is_empty() || packet.truncated {
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        }
        let chosen = self.scheduler.select(payload.len(), &self.link_states, t);
        let Some(mtu) = chosen.min_mtu(&self.link_states) else {
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        };
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
            self.counters.capture_dropped.fetch_add(1, Relaxed);
            return;
        };
        for index in chosen.iter() {
            let (link, state) = (&mut self.links[index], &self.link_states[index]);
            for i in 0..plan.frame_count() {
                stage(&mut link.io, &self.counters.links[index], |buf| {
                    plan.emit_ethernet(i, state.id, &link.eth, payload, buf)
                });
            }
        }
    }

    /// Numbers the bundle being built and stages its frame on its links.
    fn seal_bundle(&mut self) {
        let Some(bundler) = self.bundler.as_mut() else {
            return;
        };
        if let Some(sealed) = bundler.seal(&mut self.sender) {
            for index in self.bundle_links.iter() {
                let (link, state) = (&mut self.links[index], &self.link_states[index]);
                stage(&mut link.io, &self.counters.links[index], |buf| {
                    sealed.emit_ethernet(state.id, &link.eth, buf)
                });
            }
        }
        bundler.clear();
    }
}

/// Stages one frame, written by `emit`, on `link`, and counts it.
fn stage(
    link: &mut LinkTx,
    counters: &LinkCounters,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, alagg_proto::wire::WireError>,
) {
    let mut len = 0;
    let staged = link.stage(|buf| {
        len = emit(buf).unwrap_or(0);
        len
    });
    if staged {
        counters.tx_frames.fetch_add(1, Relaxed);
        counters.tx_bytes.fetch_add(len as u64, Relaxed);
    } else {
        counters.tx_dropped.fetch_add(1, Relaxed);
    }
}
