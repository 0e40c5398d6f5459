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
}

impl<Q: PacketSource, O: Outbound> Stage for Capture<'_, Q, O> {
    fn turn(&mut self, now: Timestamp) -> usize {
        Capture::turn(self, now)
    }

    fn sleep_on(&mut self, now: Timestamp) -> (&mut [libc::pollfd], Duration) {
        let due = self.due(now).map_or(IDLE_WAKEUP, |d| d.min(IDLE_WAKEUP));
        (self.poll_fds(), due)
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
