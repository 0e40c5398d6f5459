//! Time as the caller sees it: a monotonic clock reading passed into the engine.
//!
//! The core never reads a clock. The datapath reads `CLOCK_MONOTONIC` (or anything monotonic) once
//! per batch and hands the value in, so every timer path is a deterministic unit test.

use core::time::Duration;

/// A reading of a monotonic clock, in nanoseconds since an arbitrary origin.
///
/// Only differences between timestamps of the same clock mean anything. 64 bits of nanoseconds
/// last 584 years, so arithmetic saturates instead of wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin of the clock.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}
