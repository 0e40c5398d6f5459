//! Latency stamps: where a packet's time goes, hop by hop (issue 14's budget). Off unless
//! `ALAGG_STAMPS` names a file when alagg starts; then every packet is stamped at six points
//! ([`Point`]) with the machine's monotonic clock and its [`key`], and the stamps are written
//! to that file when alagg stops, one `point key nanoseconds` line each. The clock is the
//! machine's, not the process's, so the stamps of two alagg processes on one machine (the
//! testbed's two hosts) join: `cargo xtask bench` matches them by key into a budget per hop of a
//! ping's round trip.
//!
//! Off, a stamp costs one relaxed load per batch or packet; on, a lock and a push per stamp:
//! for measuring sparse traffic such as pings, not for throughput runs.

use std::{
    fs,
    hash::{DefaultHasher, Hasher as _},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

/// The environment variable naming the file the stamps go to.
pub(crate) const ENV: &str = "ALAGG_STAMPS";

/// At most this many stamps are kept (24 bytes each); later ones are not recorded.
const CAPACITY: usize = 1 << 20;

/// Where on its path a packet is stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// Read from NFQUEUE, its checksum completed (sending host).
    Captured,
    /// Its frames built, the transmit flush (the links' send calls) about to start.
    Sending,
    /// The transmit flush done: its frames handed to the links.
    Sent,
    /// The frame that completed it taken from a link (receiving host).
    Received,
    /// Handed to the delivery stage, which writes it to the TUN device at once (UDP that it
    /// coalesces: at the end of the receive turn).
    Writing,
    /// Written to the TUN device: the end of the receive turn that delivered it, after the
    /// delivery flush.
    Written,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Captured => "captured",
            Point::Sending => "sending",
            Point::Sent => "sent",
            Point::Received => "received",
            Point::Writing => "writing",
            Point::Written => "written",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static STAMPS: Mutex<Vec<(Point, u64, u64)>> = Mutex::new(Vec::new());

/// Turns stamping on when [`ENV`] names a file; returns the file.
pub(crate) fn start_from_env() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(ENV)?);
    ON.store(true, Relaxed);
    Some(path)
}

/// Whether packets are stamped.
pub(crate) fn on() -> bool {
    ON.load(Relaxed)
}

/// The machine's monotonic clock in nanoseconds, as stamps read it.
pub(crate) fn now() -> u64 {
    nanos(crate::sys::monotonic())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A packet's name in the stamps: a hash of its bytes, which alagg carries unchanged from
/// capture to the peer's TUN, so both hosts compute the same key for it.
pub(crate) fn key(packet: &[u8]) -> u64 {
    // `DefaultHasher::new` has fixed keys: the same hash in every process.
    let mut hasher = DefaultHasher::new();
    hasher.write(packet);
    hasher.finish()
}

/// Records that the packet `key` passed `point` at `at` (from [`now`]).
pub(crate) fn record(point: Point, key: u64, at: u64) {
    let mut stamps = STAMPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if stamps.len() < CAPACITY {
        stamps.push((point, key, at));
    }
}

/// Writes every stamp recorded to `path` and forgets them.
pub(crate) fn dump(path: &Path) -> io::Result<usize> {
    let stamps = std::mem::take(
        &mut *STAMPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut out = BufWriter::new(fs::File::create(path)?);
    for (point, key, at) in &stamps {
        writeln!(out, "{} {key:016x} {at}", point.name())?;
    }
    out.flush()?;
    Ok(stamps.len())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    #[test]
    fn a_packet_has_one_key_and_others_another() {
        let packet = [0x45_u8, 0, 0, 84, 1, 2, 3, 4];
        assert_eq!(key(&packet), key(&packet.clone()));
        let mut other = packet;
        other[7] ^= 1;
        assert_ne!(key(&packet), key(&other));
    }

    #[test]
    fn stamps_are_written_one_per_line_and_forgotten() {
        let path = std::env::temp_dir().join(format!("alagg-stamps-test-{}", std::process::id()));
        record(Point::Captured, 0xab, 10);
        record(Point::Written, 0xab, 25);
        let written = dump(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // Other tests of this binary record nothing, so these two are all there is.
        assert_eq!(written, 2, "{text}");
        assert_eq!(
            text,
            "captured 00000000000000ab 10\nwritten 00000000000000ab 25\n"
        );
        assert_eq!(dump(&path).unwrap(), 0);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_clock_moves_forward() {
        let (a, b) = (now(), now());
        assert!(a > 0 && b >= a, "{a} {b}");
    }
}
