//! The loop that drives a stage on its worker thread ([`run`]): right after traffic it keeps
//! turning for the busy-poll time, yielding the CPU in between; then it sleeps in `ppoll(2)`
//! until the stage's sockets have work, its deadline comes, or at most [`IDLE_WAKEUP`], so the
//! thread sees a stop request promptly. The clock is read here and handed to the stages.
//! Every turn of the loop raises the worker's heartbeat, so the caller can tell a worker that
//! still turns from one that is stuck (the systemd watchdog is fed only while all turn).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use alagg_proto::Timestamp;

use crate::{
    capture::Capture,
    engine::receive::Receive,
    port::{FrameRx, Inbound, Outbound, PacketSource},
};

/// Longest an idle worker waits before it looks at the stop flag again.
pub(crate) const IDLE_WAKEUP: Duration = Duration::from_millis(100);

/// What a worker thread runs: a capture stage or the receive stage.
pub(crate) trait Stage {
    /// Does the work that is waiting, without blocking; returns how much there was (packets
    /// or frames).
    fn turn(&mut self, now: Timestamp) -> usize;

    /// What to sleep on when there is no work: the descriptors, whose `revents` `poll(2)`
    /// fills in, and the longest sleep.
    fn sleep_on(&mut self, now: Timestamp) -> (&mut [libc::pollfd], Duration);

    /// Called after each sleep, to act on what `poll(2)` wrote into the descriptors.
    fn woke(&mut self) {}

    /// The descriptors [`Stage::sleep_on`] hands out, as they are now.
    fn poll_fds(&mut self) -> &mut [libc::pollfd];
}

impl<Q: PacketSource, O: Outbound> Stage for Capture<'_, Q, O> {
    fn turn(&mut self, now: Timestamp) -> usize {
        Capture::turn(self, now)
    }

    fn sleep_on(&mut self, now: Timestamp) -> (&mut [libc::pollfd], Duration) {
        let due = self.due(now).map_or(IDLE_WAKEUP, |d| d.min(IDLE_WAKEUP));
        (Capture::poll_fds(self), due)
    }

    fn poll_fds(&mut self) -> &mut [libc::pollfd] {
        Capture::poll_fds(self)
    }
}

impl<R: FrameRx, T, D: Inbound> Stage for Receive<'_, R, T, D> {
    fn turn(&mut self, now: Timestamp) -> usize {
        Receive::turn(self, now)
    }

    fn sleep_on(&mut self, now: Timestamp) -> (&mut [libc::pollfd], Duration) {
        Receive::sleep_on(self, now, IDLE_WAKEUP)
    }

    fn woke(&mut self) {
        Receive::woke(self);
    }

    fn poll_fds(&mut self) -> &mut [libc::pollfd] {
        Receive::poll_fds(self)
    }
}

/// Run to completion (`[cpu] run_to_completion`): two stages on one thread, `first` then
/// `then` in every turn, sleeping on both stages' descriptors at once. With the receive stage
/// first and a capture stage then, a packet that the receive stage's TUN write makes the host
/// answer (an echo reply, a TCP ACK: the kernel queues it to NFQUEUE inside that write) is
/// captured and sent in the same turn, without waking another thread.
#[derive(Debug)]
pub(crate) struct Joined<A, B> {
    pub(crate) first: A,
    pub(crate) then: B,
    /// Both stages' descriptors, `first`'s then `then`'s, as the last sleep saw them.
    fds: Vec<libc::pollfd>,
}

impl<A: Stage, B: Stage> Joined<A, B> {
    pub(crate) fn new(first: A, then: B) -> Self {
        Self {
            first,
            then,
            fds: Vec::new(),
        }
    }
}

impl<A: Stage, B: Stage> Stage for Joined<A, B> {
    fn turn(&mut self, now: Timestamp) -> usize {
        self.first.turn(now) + self.then.turn(now)
    }

    fn sleep_on(&mut self, now: Timestamp) -> (&mut [libc::pollfd], Duration) {
        self.fds.clear();
        let (fds, first) = self.first.sleep_on(now);
        self.fds.extend_from_slice(fds);
        let (fds, then) = self.then.sleep_on(now);
        self.fds.extend_from_slice(fds);
        (&mut self.fds, first.min(then))
    }

    fn woke(&mut self) {
        // What poll(2) saw goes back to each stage's own descriptors, in the same order.
        let mut seen = self.fds.iter();
        for stage_fds in [self.first.poll_fds(), self.then.poll_fds()] {
            for (own, seen) in stage_fds.iter_mut().zip(seen.by_ref()) {
                own.revents = seen.revents;
            }
        }
        self.first.woke();
        self.then.woke();
    }

    fn poll_fds(&mut self) -> &mut [libc::pollfd] {
        &mut self.fds
    }
}

/// The engine's clock: the time since this process first read it, the same on every thread
/// (link health compares a send time a capture worker stamped with the time the receive thread
/// saw the peer's report of it).
pub(crate) fn clock() -> Timestamp {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Timestamp::from_nanos(u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Runs `stage` on this thread until `stop`, and hands it back; see the module documentation.
/// `beat` counts the loop's turns (a plain store of the thread's own count: no read-modify-write
/// on the hot path).
pub(crate) fn run<S: Stage>(
    mut stage: S,
    (stop, busy_poll, beat): (&AtomicBool, Duration, &AtomicU64),
) -> S {
    let mut busy_until = Instant::now();
    let mut turns = beat.load(Relaxed);
    while !stop.load(Relaxed) {
        turns = turns.wrapping_add(1);
        beat.store(turns, Relaxed);
        if stage.turn(clock()) > 0 {
            busy_until = Instant::now() + busy_poll;
            continue;
        }
        if Instant::now() < busy_until {
            thread::yield_now();
            continue;
        }
        let (fds, timeout) = stage.sleep_on(clock());
        // To the nanosecond: a gap's deadline is kept, neither rounded nor spun towards; never
        // longer than IDLE_WAKEUP, so the stop flag is seen.
        if let Err(error) = crate::sys::ppoll(fds, timeout.min(IDLE_WAKEUP)) {
            tracing::error!(%error, "poll on the worker's sockets");
            thread::sleep(Duration::from_millis(10));
        }
        stage.woke();
    }
    stage
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage with `work` packets waiting per turn, descriptors `fds` and a sleep of `sleep`.
    struct Fake {
        work: usize,
        turns: usize,
        fds: Vec<libc::pollfd>,
        sleep: Duration,
        woke_with: Vec<i16>,
    }

    impl Fake {
        fn new(work: usize, fds: &[i32], sleep: Duration) -> Self {
            Self {
                work,
                turns: 0,
                fds: fds
                    .iter()
                    .map(|&fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect(),
                sleep,
                woke_with: Vec::new(),
            }
        }
    }

    impl Stage for Fake {
        fn turn(&mut self, _now: Timestamp) -> usize {
            self.turns += 1;
            self.work
        }

        fn sleep_on(&mut self, _now: Timestamp) -> (&mut [libc::pollfd], Duration) {
            (&mut self.fds, self.sleep)
        }

        fn woke(&mut self) {
            self.woke_with = self.fds.iter().map(|p| p.revents).collect();
        }

        fn poll_fds(&mut self) -> &mut [libc::pollfd] {
            &mut self.fds
        }
    }

    #[test]
    fn joined_stages_turn_together_and_sleep_on_all_their_descriptors() {
        let first = Fake::new(2, &[3, 4], Duration::from_millis(7));
        let then = Fake::new(1, &[9], Duration::from_millis(2));
        let mut joined = Joined::new(first, then);
        assert_eq!(joined.turn(Timestamp::ZERO), 3);
        assert_eq!((joined.first.turns, joined.then.turns), (1, 1));

        let (fds, sleep) = joined.sleep_on(Timestamp::ZERO);
        let seen: Vec<i32> = fds.iter().map(|p| p.fd).collect();
        assert_eq!(seen, [3, 4, 9]);
        // The shorter of the two: the sooner deadline wakes the thread.
        assert_eq!(sleep, Duration::from_millis(2));
        // What poll(2) writes reaches the stage that owns the descriptor.
        fds[1].revents = libc::POLLERR;
        fds[2].revents = libc::POLLIN;
        joined.woke();
        assert_eq!(joined.first.woke_with, [0, libc::POLLERR]);
        assert_eq!(joined.then.woke_with, [libc::POLLIN]);
    }
}
