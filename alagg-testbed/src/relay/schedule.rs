//! The timing model of one direction of an impaired path, with no I/O and no clock read: a
//! frame's arrival time and length in, a verdict out (dropped, and why, or the time it leaves).
//!
//! The model is described in the [relay's documentation](super).
#![deny(unsafe_code)]

use std::time::Duration;

use super::{JitterShape, Path, QueueLimit};

/// Why a frame was not delivered, or when it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped: the link is cut.
    Cut,
    /// Dropped by random loss.
    Lost,
    /// Dropped: the queue ahead of the serializer is over its limit.
    QueueFull,
    /// Leaves at this time (ns, on the caller's clock).
    Leave(u64),
}

/// One direction's timing state: its settings, when the serializer is free, when the last
/// frame leaves, and the random number generator.
#[derive(Debug)]
pub(crate) struct Schedule {
    delay_ns: u64,
    jitter_ns: u64,
    shape: JitterShape,
    reorder: bool,
    loss: f64,
    rate_mbit: Option<u32>,
    queue_limit: QueueLimit,
    /// The serializer is busy until then (ns).
    busy_until: u64,
    /// Remainder of `bits * 1000 / rate_mbit` carried to the next frame, so that rounding
    /// serialization times to whole nanoseconds does not drift the rate.
    carry: u64,
    /// When the last delivered frame leaves (ns).
    last_leave: u64,
    rng: Rng,
    /// The link is cut (`Testbed::cut`).
    pub cut: bool,
    /// The link's own loss (`Testbed::set_loss`), 0 to 100.
    pub link_loss_percent: u8,
}

impl Schedule {
    pub fn new(path: &Path, seed: u64) -> Self {
        let mut schedule = Self {
            delay_ns: 0,
            jitter_ns: 0,
            shape: JitterShape::Uniform,
            reorder: false,
            loss: 0.0,
            rate_mbit: None,
            queue_limit: QueueLimit::default(),
            busy_until: 0,
            carry: 0,
            last_leave: 0,
            rng: Rng::new(seed),
            cut: false,
            link_loss_percent: 0,
        };
        schedule.configure(path);
        schedule
    }

    /// Takes new settings; frames already scheduled keep their times, the serializer and FIFO
    /// state carry over, and the generator is reseeded if the path gives a seed.
    pub fn configure(&mut self, path: &Path) {
        self.delay_ns = nanos(path.delay);
        self.jitter_ns = nanos(path.jitter);
        self.shape = path.jitter_shape;
        self.reorder = path.reorder;
        self.loss = f64::from(path.loss_percent.clamp(0.0, 100.0)) / 100.0;
        self.rate_mbit = path.rate_mbit.filter(|&r| r > 0);
        self.queue_limit = path.queue_limit;
        if let Some(seed) = path.seed {
            self.rng = Rng::new(seed);
        }
    }

    /// Whether this direction may reorder frames.
    pub fn reorders(&self) -> bool {
        self.reorder
    }

    /// The verdict on a frame of `wire_len` bytes arriving at `now`.
    pub fn admit(&mut self, now: u64, wire_len: usize) -> Verdict {
        if self.cut {
            return Verdict::Cut;
        }
        if self.loss > 0.0 && self.rng.unit() < self.loss {
            return Verdict::Lost;
        }
        if self.link_loss_percent > 0 && self.rng.unit() * 100.0 < f64::from(self.link_loss_percent)
        {
            return Verdict::Lost;
        }
        let mut sent = now;
        if let Some(mbit) = self.rate_mbit {
            let mbit = u64::from(mbit);
            let start = self.busy_until.max(now);
            let limit_ns = match self.queue_limit {
                QueueLimit::Time(limit) => nanos(limit),
                // bytes * 8 bits / (mbit * 1e6 bit/s) in ns.
                QueueLimit::Bytes(bytes) => (bytes as u64).saturating_mul(8000) / mbit,
            };
            if start - now > limit_ns {
                return Verdict::QueueFull;
            }
            let bits_x1000 = (wire_len as u64) * 8000 + self.carry;
            self.carry = bits_x1000 % mbit;
            self.busy_until = start + bits_x1000 / mbit;
            sent = self.busy_until;
        }
        let mut leave = (sent + self.delay_ns).saturating_add_signed(self.jitter());
        if !self.reorder {
            leave = leave.max(self.last_leave);
        }
        self.last_leave = self.last_leave.max(leave);
        Verdict::Leave(leave)
    }

    /// A jitter draw in ns, within ±jitter and never making the delay negative.
    fn jitter(&mut self) -> i64 {
        if self.jitter_ns == 0 {
            return 0;
        }
        let jitter = self.jitter_ns as f64;
        let offset = match self.shape {
            JitterShape::Uniform => (self.rng.unit() * 2.0 - 1.0) * jitter,
            // Standard deviation jitter/2, truncated at ±jitter by drawing again.
            JitterShape::Normal => loop {
                let z = self.rng.normal();
                if z.abs() <= 2.0 {
                    break z * jitter / 2.0;
                }
            },
        };
        (offset as i64).max(-(self.delay_ns as i64))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX / 4)
}

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014):
/// small, fast and good enough for loss and jitter draws.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn path() -> Path {
        Path {
            seed: Some(7),
            ..Path::default()
        }
    }

    #[test]
    fn a_plain_delay_adds_the_same_time_to_every_frame() {
        let mut s = Schedule::new(
            &Path {
                delay: Duration::from_millis(10),
                ..path()
            },
            1,
        );
        assert_eq!(s.admit(0, 100), Verdict::Leave(10 * MS));
        assert_eq!(s.admit(5, 1500), Verdict::Leave(10 * MS + 5));
    }

    #[test]
    fn jitter_stays_within_bounds_and_keeps_order_unless_reordering_is_allowed() {
        for shape in [JitterShape::Uniform, JitterShape::Normal] {
            for reorder in [false, true] {
                let mut s = Schedule::new(
                    &Path {
                        delay: Duration::from_millis(10),
                        jitter: Duration::from_millis(3),
                        jitter_shape: shape,
                        reorder,
                        ..path()
                    },
                    1,
                );
                let (mut last, mut reordered, mut spread) = (0, false, (u64::MAX, 0));
                for i in 0..10_000u64 {
                    let now = i * 100_000; // every 0.1 ms: far denser than the jitter
                    let Verdict::Leave(at) = s.admit(now, 100) else {
                        panic!("dropped")
                    };
                    let delay = at - now;
                    spread = (spread.0.min(delay), spread.1.max(delay));
                    reordered |= at < last;
                    last = at;
                    if reorder {
                        assert!((7 * MS..=13 * MS).contains(&delay), "{shape:?}: {delay}");
                    }
                }
                assert_eq!(reordered, reorder, "{shape:?}, reorder {reorder}");
                assert!(spread.1 - spread.0 > MS, "{shape:?}: {spread:?}");
                assert!(spread.1 <= 13 * MS, "{shape:?}: {spread:?}");
            }
        }
    }

    #[test]
    fn jitter_never_makes_a_delay_negative() {
        let mut s = Schedule::new(
            &Path {
                delay: Duration::from_millis(1),
                jitter: Duration::from_millis(5),
                reorder: true,
                ..path()
            },
            3,
        );
        for i in 0..1000 {
            let now = 100 * MS + i * MS;
            let Verdict::Leave(at) = s.admit(now, 64) else {
                panic!()
            };
            assert!(at >= now);
        }
    }

    #[test]
    fn loss_drops_about_its_share_and_a_seed_repeats_it() {
        let run = |seed| {
            let mut s = Schedule::new(
                &Path {
                    loss_percent: 20.0,
                    seed: Some(seed),
                    ..Path::default()
                },
                0,
            );
            (0..10_000)
                .map(|i| s.admit(i, 64) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        let lost = run(42).iter().filter(|&&l| l).count();
        assert!((1800..=2200).contains(&lost), "{lost}");
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn cut_and_link_loss_apply_on_top_of_the_path() {
        let mut s = Schedule::new(&path(), 0);
        s.cut = true;
        assert_eq!(s.admit(0, 64), Verdict::Cut);
        s.cut = false;
        s.link_loss_percent = 100;
        assert_eq!(s.admit(0, 64), Verdict::Lost);
        s.link_loss_percent = 0;
        assert_eq!(s.admit(0, 64), Verdict::Leave(0));
    }

    #[test]
    fn rate_spaces_frames_by_their_serialization_time_and_drops_the_tail() {
        // 100 Mbit/s: a 1250-byte frame takes 100 us; 1 ms of queue holds 10 of them.
        let mut s = Schedule::new(
            &Path {
                rate_mbit: Some(100),
                delay: Duration::from_millis(5),
                queue_limit: QueueLimit::Time(Duration::from_millis(1)),
                ..path()
            },
            0,
        );
        let verdicts: Vec<_> = (0..14).map(|_| s.admit(0, 1250)).collect();
        for (i, verdict) in verdicts.iter().take(11).enumerate() {
            assert_eq!(*verdict, Verdict::Leave((i as u64 + 1) * 100_000 + 5 * MS));
        }
        assert!(verdicts[11..].iter().all(|v| *v == Verdict::QueueFull));
        // Once the queue drains, frames go straight through again.
        assert_eq!(
            s.admit(10 * MS, 1250),
            Verdict::Leave(10 * MS + 100_000 + 5 * MS)
        );
    }

    #[test]
    fn a_byte_queue_limit_is_the_same_as_its_time_at_the_rate() {
        let mut s = Schedule::new(
            &Path {
                rate_mbit: Some(100),
                queue_limit: QueueLimit::Bytes(12_500),
                ..path()
            },
            0,
        );
        let delivered = (0..20)
            .filter(|_| matches!(s.admit(0, 1250), Verdict::Leave(_)))
            .count();
        assert_eq!(delivered, 11);
    }

    #[test]
    fn odd_rates_do_not_drift() {
        // 7 Mbit/s: 1500 bytes take 1714285.71 ns; 7000 of them take exactly 12 s.
        let mut s = Schedule::new(
            &Path {
                rate_mbit: Some(7),
                queue_limit: QueueLimit::Time(Duration::from_secs(100)),
                ..path()
            },
            0,
        );
        let mut last = Verdict::Cut;
        for _ in 0..7000 {
            last = s.admit(0, 1500);
        }
        assert_eq!(last, Verdict::Leave(12_000_000_000));
    }
}
