//! The latency budget of a ping's round trip through alagg, hop by hop, from the stamps both
//! hosts' alagg processes wrote (`ALAGG_STAMPS`, `alagg-user/src/stamps.rs`): one
//! `point key nanoseconds` line per stamp, `point` one of `captured` (read from NFQUEUE),
//! `sending` and `sent` (before and after the transmit flush, the links' send calls), `received`
//! (the frame that completed it taken from a link at the peer), `writing` (handed to the
//! delivery stage, which writes it to the TUN) and `written` (the end of that receive turn), the
//! key a hash of the packet, the time the machine's monotonic clock, which both hosts share.
//!
//! A round trip is an echo request A captured and B received, and B's next capture after B
//! began writing it (the reply, within [`TURNAROUND_MAX`]) which A wrote back. The hops
//! ([`HOPS`]) follow each other without overlap, so they add up to A's capture of the request
//! to the end of A's write of the reply.

use std::collections::HashMap;

use anyhow::{Context as _, bail};

/// The longest time from a request handed to B's TUN to the capture taken as its reply.
const TURNAROUND_MAX: u64 = 2_000_000;

/// The hops of a round trip, in order, with their names in the results.
pub const HOPS: [&str; 8] = [
    "A: NFQUEUE read to frames built",
    "A to B: send calls, wire, B taking the frame",
    "B: frame taken to TUN write",
    "B: TUN write to reply read from NFQUEUE",
    "B: NFQUEUE read to frames built",
    "B to A: send calls, wire, A taking the frame",
    "A: frame taken to TUN write",
    "A: TUN write (into ping's socket)",
];

/// Time spent inside calls that the hops above cut across: A's transmit flush for the
/// request (the kick of every link's socket, which carries the frame through veth, the bridge
/// and the peer's XDP program before it returns) and B's write of the request to its TUN
/// (which runs the kernel's echo reply before it returns).
pub const CALLS: [&str; 2] = ["A: transmit flush (send calls)", "B: TUN write call"];

/// One point's stamps: when each packet passed it.
type Times = HashMap<u64, u64>;

/// One host's stamps.
#[derive(Debug, Default)]
pub struct Stamps {
    captured: Times,
    sending: Times,
    sent: Times,
    received: Times,
    writing: Times,
    written: Times,
    /// Every capture, in time order: (time, key).
    captures: Vec<(u64, u64)>,
}

impl Stamps {
    /// Parses a stamps file. A packet stamped twice at one point (the same bytes sent twice)
    /// keeps its first stamp.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut stamps = Self::default();
        for (n, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let (Some(point), Some(key), Some(at), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                bail!("line {}: expected `point key nanoseconds`: {line:?}", n + 1);
            };
            let key = u64::from_str_radix(key, 16).with_context(|| format!("line {}", n + 1))?;
            let at: u64 = at.parse().with_context(|| format!("line {}", n + 1))?;
            let map = match point {
                "captured" => {
                    stamps.captures.push((at, key));
                    &mut stamps.captured
                }
                "sending" => &mut stamps.sending,
                "sent" => &mut stamps.sent,
                "received" => &mut stamps.received,
                "writing" => &mut stamps.writing,
                "written" => &mut stamps.written,
                other => bail!("line {}: unknown point {other:?}", n + 1),
            };
            map.entry(key).or_insert(at);
        }
        stamps.captures.sort_unstable();
        Ok(stamps)
    }

    /// The capture that follows `at` within [`TURNAROUND_MAX`].
    fn next_capture(&self, at: u64) -> Option<(u64, u64)> {
        let i = self.captures.partition_point(|&(t, _)| t < at);
        self.captures
            .get(i)
            .copied()
            .filter(|&(t, _)| t - at <= TURNAROUND_MAX)
    }
}

/// The stamps of packet `key` from host `from` to host `to`: captured, sending, sent at
/// `from`; received, writing, written at `to`. `None` if one is missing.
fn one_way(from: &Stamps, to: &Stamps, key: u64) -> Option<[u64; 6]> {
    Some([
        *from.captured.get(&key)?,
        *from.sending.get(&key)?,
        *from.sent.get(&key)?,
        *to.received.get(&key)?,
        *to.writing.get(&key)?,
        *to.written.get(&key)?,
    ])
}

/// A complete round trip: its hops ([`HOPS`]) and calls ([`CALLS`]), in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundTrip {
    pub hops: [u64; 8],
    pub calls: [u64; 2],
}

/// Every complete round trip, in the order A captured them; a trip whose stamps are out of
/// order (which a clock shared by both hosts rules out) is left out.
pub fn round_trips(a: &Stamps, b: &Stamps) -> Vec<RoundTrip> {
    let mut trips = Vec::new();
    for &(_, request) in &a.captures {
        let Some(there) = one_way(a, b, request) else {
            continue;
        };
        let Some((_, reply)) = b.next_capture(there[4]) else {
            continue;
        };
        let Some(back) = one_way(b, a, reply) else {
            continue;
        };
        let span = |from: u64, to: u64| to.checked_sub(from);
        let hops = [
            span(there[0], there[1]),
            span(there[1], there[3]),
            span(there[3], there[4]),
            span(there[4], back[0]),
            span(back[0], back[1]),
            span(back[1], back[3]),
            span(back[3], back[4]),
            span(back[4], back[5]),
        ];
        let calls = [span(there[1], there[2]), span(there[4], there[5])];
        if let (Some(hops), Some(calls)) = (collect(hops), collect(calls)) {
            trips.push(RoundTrip { hops, calls });
        }
    }
    trips
}

fn collect<const N: usize>(spans: [Option<u64>; N]) -> Option<[u64; N]> {
    let mut out = [0; N];
    for (o, s) in out.iter_mut().zip(spans) {
        *o = s?;
    }
    Some(out)
}

/// The `q` quantile (0..=1) of `values`, by the nearest rank; `None` when empty.
pub fn quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() - 1) as f64 * q).round() as usize;
    Some(values[rank])
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    fn host(lines: &[(&str, u64, u64)]) -> Stamps {
        let text: String = lines
            .iter()
            .map(|(p, k, t)| format!("{p} {k:016x} {t}\n"))
            .collect();
        Stamps::parse(&text).unwrap()
    }

    #[test]
    fn a_round_trip_is_joined_hop_by_hop_across_the_hosts() {
        // Request 0x1 from A, reply 0x2 from B; an unrelated capture at B long after. B takes
        // the request (1_050) before A's send call returns (1_060), as a busy-polling peer does,
        // and reads the reply (1_200) before its TUN write returns (1_210).
        let a = host(&[
            ("captured", 1, 1_000),
            ("sending", 1, 1_010),
            ("sent", 1, 1_060),
            ("received", 2, 1_300),
            ("writing", 2, 1_330),
            ("written", 2, 1_345),
        ]);
        let b = host(&[
            ("received", 1, 1_050),
            ("writing", 1, 1_070),
            ("written", 1, 1_210),
            ("captured", 2, 1_200),
            ("sending", 2, 1_240),
            ("sent", 2, 1_250),
            ("captured", 3, 9_000_000),
        ]);
        let trips = round_trips(&a, &b);
        assert_eq!(
            trips,
            vec![RoundTrip {
                hops: [10, 40, 20, 130, 40, 60, 30, 15],
                calls: [50, 140],
            }]
        );
        assert_eq!(trips[0].hops.iter().sum::<u64>(), 1_345 - 1_000);
    }

    #[test]
    fn incomplete_or_unanswered_requests_are_left_out() {
        let a = host(&[
            ("captured", 1, 1_000),
            ("sending", 1, 1_005),
            ("sent", 1, 1_010),
            ("captured", 4, 5_000),
            ("sending", 4, 5_005),
            ("sent", 4, 5_010),
        ]);
        // 0x1 written, but B captures nothing within the turnaround; 0x4 never arrives.
        let b = host(&[
            ("received", 1, 1_100),
            ("writing", 1, 1_110),
            ("written", 1, 1_120),
            ("captured", 2, 1_110 + TURNAROUND_MAX + 1),
        ]);
        assert!(round_trips(&a, &b).is_empty());
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let error = Stamps::parse("captured 01 5\nsent zz 6\n").unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
        assert!(Stamps::parse("lost 01 5\n").is_err());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(quantile(&mut v, 0.5), Some(3));
        assert_eq!(quantile(&mut v, 1.0), Some(5));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
