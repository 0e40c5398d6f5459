//! Liveness under injected frames, with seeded, deterministic randomness.
//!
//! v1 frames are not authenticated, so the receiver cannot tell a forged frame of the current
//! epoch from a genuine one; what it promises (`docs/PROTOCOL.md`, *Receiver behaviour*) is
//! that no single frame, and no frame from the past, stops the genuine stream. The property:
//! a genuine stream (loss, duplication, jitter across links, fragments, bundles), after two
//! earlier epochs of the same peer, interleaved with arbitrary injected frames, still delivers
//! every surviving genuine packet exactly once, except packets whose number an injected frame
//! took. Precisely, an injected frame *taints* the numbers it carries if it parses as a
//! data, fragment or bundle frame of the genuine (current) epoch: its number, or a bundle's
//! numbers. The oracle:
//! - every genuine packet is delivered at most once, and none is corrupted;
//! - every surviving genuine packet whose number is not tainted is delivered;
//! - every other delivery is of a tainted number, at most one per number;
//! - the genuine epoch is current at the end, and no epoch change or jump happened after it
//!   was adopted.
//!
//! Injected frames: frames of random epochs at numbers near the stream or anywhere, replays and
//! mutations of the earlier epochs' frames, frames of the current epoch at numbers near the
//! stream (behind and ahead), far ahead (2^62 and random), genuine frames with random header
//! bytes, random bytes, probes. They arrive only while the genuine stream flows (it delivers a
//! new packet at least every hold time): a stream of injected frames sent while the peer is
//! idle can be believed, which the docs state as a limit of v1.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use alagg_proto::wire::{ETH_HDR_LEN, EthernetRepr, Frame, Kind, MacAddr, ProbeRepr, Repr};
use alagg_proto::{Bundler, Receiver, ReceiverConfig, Sender, Stamp, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x0a1a_6602),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// splitmix64: the per-case randomness, seeded by proptest so cases shrink and replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// A genuine packet: its number, then a pattern only it has.
fn packet(seq: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq) as u8).collect();
    let n = len.min(8);
    p[..n].copy_from_slice(&seq.to_be_bytes()[..n]);
    p
}

/// The number of a delivered genuine packet, or `None` for anything else.
fn genuine_id(p: &[u8], sent: &HashSet<u64>) -> Option<u64> {
    let id = u64::from_be_bytes(p.get(..8)?.try_into().ok()?);
    (sent.contains(&id) && p == packet(id, p.len())).then_some(id)
}

const MTU: usize = 1500;
const ETH: EthernetRepr = EthernetRepr {
    dst: MacAddr([2, 0, 0, 0, 0, 2]),
    src: MacAddr([2, 0, 0, 0, 0, 1]),
    ethertype: alagg_proto::wire::DEFAULT_ETHERTYPE,
};
const GENUINE: u64 = 0xfeed;
const OLD: [u64; 2] = [0x01d1, 0x01d2];
const MS: u64 = 1_000_000;
const SPACING_NS: u64 = 10_000;
const MAX_BASE_DELAY_NS: u64 = 500_000;
const MAX_JITTER_NS: u64 = 1_000_000;
const HOLD: Duration = Duration::from_millis(3);
/// When the genuine epoch starts (the earlier ones before it, each quiet for a hold time).
const START_NS: u64 = 20 * MS;
/// Units at the start sent without loss or jitter: the genuine epoch is believed on them.
const CLEAN_START: usize = 8;

/// Frames of one packet (or bundle) of `tx` with payload `content`, for `link`.
fn emit_packet(tx: &mut Sender, content: &[u8], link: u8) -> Vec<Vec<u8>> {
    let plan = tx.plan(content.len(), MTU).unwrap();
    (0..plan.frame_count())
        .map(|f| {
            let mut buf = vec![0u8; MTU];
            let n = plan.emit(f, Stamp::on(link), content, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

fn emit_bundle(tx: &mut Sender, packets: &[Vec<u8>], links: usize) -> Vec<Vec<u8>> {
    let mut bundler = Bundler::new();
    for p in packets {
        assert!(bundler.push(p, MTU));
    }
    let sealed = bundler.seal(tx).unwrap();
    (0..links)
        .map(|link| {
            let mut buf = vec![0u8; ETH_HDR_LEN + MTU];
            let n = sealed
                .emit_ethernet(Stamp::on(link as u8), &ETH, &mut buf)
                .unwrap();
            buf[ETH_HDR_LEN..n].to_vec()
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Scenario {
    packets: usize,
    links: usize,
    loss_pct: u64,
    dup_pct: u64,
    frag_pct: u64,
    bundle_pct: u64,
    /// Injected frames per 100 genuine units.
    inject_pct: u64,
    first_seq: u64,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (20usize..400, 1usize..4, 0u64..40, 0u64..30),
        (0u64..10, 0u64..40, 1u64..60),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (packets, links, loss_pct, dup_pct),
                (frag_pct, bundle_pct, inject_pct),
                first_seq,
                seed,
            )| Scenario {
                packets,
                links,
                loss_pct,
                dup_pct,
                frag_pct,
                bundle_pct,
                inject_pct,
                first_seq: if seed % 4 == 0 {
                    u64::MAX - (seed % 300)
                } else {
                    first_seq
                },
                seed,
            },
        )
}

struct Arrival {
    at: u64,
    order: u64,
    bytes: Vec<u8>,
    injected: bool,
}

/// The genuine stream: arrivals, the numbers sent, and those surviving (every fragment of
/// them arrives at least once).
fn genuine(s: &Scenario, rng: &mut Rng) -> (Vec<Arrival>, HashSet<u64>, HashSet<u64>) {
    let mut tx = Sender::with_first_seq(GENUINE, s.first_seq);
    let base: Vec<u64> = (0..s.links).map(|_| rng.below(MAX_BASE_DELAY_NS)).collect();
    let (mut arrivals, mut sent, mut survivors) = (Vec::new(), HashSet::new(), HashSet::new());
    let mut unit_index = 0;
    while sent.len() < s.packets {
        let first = tx.next_seq();
        let clean = unit_index < CLEAN_START;
        let frames: Vec<Vec<Vec<u8>>> = if !clean && rng.percent(s.bundle_pct) {
            let count = (2 + rng.below(20) as usize)
                .min(s.packets - sent.len())
                .max(2);
            let packets: Vec<Vec<u8>> = (0..count)
                .map(|k| packet(first.wrapping_add(k as u64), 8 + rng.below(52) as usize))
                .collect();
            emit_bundle(&mut tx, &packets, s.links)
                .into_iter()
                .map(|f| vec![f])
                .collect()
        } else {
            let len = if !clean && rng.percent(s.frag_pct) {
                1500 + rng.below(20_000) as usize
            } else {
                20 + rng.below(1460) as usize
            };
            let content = packet(first, len);
            let plan = tx.plan(len, MTU).unwrap();
            (0..s.links)
                .map(|link| {
                    (0..plan.frame_count())
                        .map(|f| {
                            let mut buf = vec![0u8; MTU];
                            let n = plan
                                .emit(f, Stamp::on(link as u8), &content, &mut buf)
                                .unwrap();
                            buf.truncate(n);
                            buf
                        })
                        .collect()
                })
                .collect()
        };
        let unit: Vec<u64> = (0..tx.next_seq().wrapping_sub(first))
            .map(|k| first.wrapping_add(k))
            .collect();
        let send_at = START_NS + unit_index as u64 * SPACING_NS;
        let mut fragment_survives = vec![false; frames[0].len()];
        for (link, delay) in base.iter().enumerate() {
            for (f, survives) in fragment_survives.iter_mut().enumerate() {
                let copies = if clean {
                    1
                } else if rng.percent(s.loss_pct) {
                    0
                } else if rng.percent(s.dup_pct) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    *survives = true;
                    // The clean start arrives in order on each link, so the genuine epoch is
                    // believed on its first numbers (a restart reordered over more than the
                    // 8 frames a candidate keeps loses packets, counted `pending_lost`).
                    let jitter = if clean { 0 } else { rng.below(MAX_JITTER_NS) };
                    arrivals.push(Arrival {
                        at: send_at + delay + jitter,
                        order: rng.next(),
                        bytes: frames[link][f].clone(),
                        injected: false,
                    });
                }
            }
        }
        if fragment_survives.iter().all(|&x| x) {
            survivors.extend(unit.iter().copied());
        }
        sent.extend(unit);
        unit_index += 1;
    }
    (arrivals, sent, survivors)
}

/// Frames of the peer's two earlier epochs (10 packets each, 10 ms apart, from 0 ms).
fn earlier_epochs() -> Vec<Vec<Vec<u8>>> {
    OLD.iter()
        .enumerate()
        .map(|(i, &epoch)| {
            let mut tx = Sender::with_first_seq(epoch, 1 << (50 + i));
            (0..10)
                .map(|_| {
                    let content = packet(0xa11 << 40, 60);
                    emit_packet(&mut tx, &content, 0).remove(0)
                })
                .collect()
        })
        .collect()
}

/// One injected frame, `near` being a number of the genuine stream about its arrival time.
fn injected(rng: &mut Rng, near: u64, old: &[Vec<Vec<u8>>], genuine: &[Arrival]) -> Vec<u8> {
    let junk = |len: usize| vec![0xee; len];
    let forged = |rng: &mut Rng, epoch: u64, seq: u64| -> Vec<u8> {
        let mut tx = Sender::with_first_seq(epoch, seq);
        match rng.below(3) {
            0 => emit_packet(&mut tx, &junk(20 + rng.below(1000) as usize), 0).remove(0),
            1 => {
                let frags = emit_packet(&mut tx, &junk(1500 + rng.below(10_000) as usize), 1);
                let i = rng.below(frags.len() as u64) as usize;
                frags[i].clone()
            }
            _ => {
                let packets: Vec<Vec<u8>> = (0..2 + rng.below(30)).map(|_| junk(20)).collect();
                emit_bundle(&mut tx, &packets, 1).remove(0)
            }
        }
    };
    let near_offset = |rng: &mut Rng| near.wrapping_add(rng.below(16_384)).wrapping_sub(8192);
    match rng.below(9) {
        // Random epochs, near the stream's numbers or anywhere.
        0 => {
            let epoch = rng.next() | 0x8000_0000_0000_0000;
            let seq = if rng.percent(50) {
                near_offset(rng)
            } else {
                rng.next()
            };
            forged(rng, epoch, seq)
        }
        // Replays of the earlier epochs' frames, two restarts old or one.
        1 | 2 => {
            let epoch = &old[rng.below(old.len() as u64) as usize];
            epoch[rng.below(epoch.len() as u64) as usize].clone()
        }
        // The current epoch, near the stream (behind and ahead).
        3 => {
            let seq = near_offset(rng);
            forged(rng, GENUINE, seq)
        }
        // The current epoch, far ahead.
        4 => {
            let seq = if rng.percent(50) {
                near.wrapping_add(1 << 62)
            } else {
                rng.next()
            };
            forged(rng, GENUINE, seq)
        }
        // A genuine frame (this epoch's or an earlier one's) with random header bytes and a
        // payload of junk.
        5 | 6 => {
            let mut f = if rng.percent(70) && !genuine.is_empty() {
                genuine[rng.below(genuine.len() as u64) as usize]
                    .bytes
                    .clone()
            } else {
                old[0][rng.below(10) as usize].clone()
            };
            let header_len = usize::from(f[34]).min(f.len());
            f[header_len..].fill(0xee);
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(header_len as u64) as usize;
                f[i] = rng.next() as u8;
            }
            f
        }
        // Random bytes.
        7 => (0..rng.below(120)).map(|_| rng.next() as u8).collect(),
        // Probes of any epoch.
        _ => {
            let epoch = [GENUINE, OLD[0], rng.next()][rng.below(3) as usize];
            let tx = Sender::new(epoch);
            let probe = ProbeRepr {
                echo_time: rng.next() as u32,
                echo_delay: rng.next() as u32,
            };
            let mut buf = vec![0u8; 64];
            let n = tx
                .probe(
                    Stamp {
                        lane_seq: rng.next(),
                        ..Stamp::on(0)
                    },
                    probe,
                )
                .emit(&mut buf)
                .unwrap();
            buf.truncate(n);
            buf
        }
    }
}

/// The numbers of the genuine epoch an injected frame carries.
fn taints(bytes: &[u8]) -> Vec<u64> {
    let Ok(frame) = Frame::new_checked(bytes) else {
        return Vec::new();
    };
    match Repr::parse(&frame) {
        Ok(repr) if repr.epoch == GENUINE => match repr.kind {
            Kind::Probe(_) => Vec::new(),
            Kind::Bundle(b) => (0..u64::from(b.count))
                .map(|k| repr.seq.wrapping_add(k))
                .collect(),
            _ => vec![repr.seq],
        },
        _ => Vec::new(),
    }
}

struct Outcome {
    delivered: Vec<Vec<u8>>,
    sent: HashSet<u64>,
    survivors: HashSet<u64>,
    tainted: HashSet<u64>,
    rx: Receiver,
    epoch_changes_at_start: u64,
}

fn run(s: &Scenario) -> Outcome {
    let mut rng = Rng(s.seed);
    let (mut arrivals, sent, survivors) = genuine(s, &mut rng);
    arrivals.sort_by_key(|a| (a.at, a.order));
    // Injections start once the clean start has arrived (the genuine epoch is believed then)
    // and end with the genuine stream.
    let clean: HashSet<u64> = (0..CLEAN_START as u64)
        .map(|k| s.first_seq.wrapping_add(k))
        .collect();
    let clean_end = arrivals
        .iter()
        .filter(|a| {
            let f = Frame::new_checked(&a.bytes[..]).unwrap();
            clean.contains(&f.seq())
        })
        .map(|a| a.at)
        .max()
        .unwrap();
    let end = arrivals.last().unwrap().at;
    let old = earlier_epochs();
    let count = (s.packets as u64 * s.inject_pct / 100).max(1);
    let mut tainted = HashSet::new();
    let mut injections = Vec::new();
    for _ in 0..count {
        let at = clean_end + 1 + rng.below(end - clean_end);
        // The genuine stream's numbers about then.
        let sent_by = (at - START_NS) / SPACING_NS;
        let near = s.first_seq.wrapping_add(sent_by);
        let bytes = injected(&mut rng, near, &old, &arrivals);
        tainted.extend(taints(&bytes));
        injections.push(Arrival {
            at,
            order: rng.next(),
            bytes,
            injected: true,
        });
    }
    arrivals.extend(injections);
    arrivals.sort_by_key(|a| (a.at, a.order));

    let cfg = ReceiverConfig {
        hold_time: HOLD,
        reassembly_slots: 64,
        reassembly_timeout: HOLD,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(&cfg).unwrap();
    // The earlier epochs, each believed after the one before has been quiet for 10 ms.
    for (i, frames) in old.iter().enumerate() {
        for (k, f) in frames.iter().enumerate() {
            let at = Timestamp::from_nanos(i as u64 * 10 * MS + k as u64 * SPACING_NS);
            rx.on_frame(f, at, |_: &[u8]| {});
        }
    }
    assert_eq!(rx.peer_epoch(), Some(OLD[1]));
    let mut delivered = Vec::new();
    let mut sink = |p: &[u8]| delivered.push(p.to_vec());
    let mut epoch_changes_at_start = None;
    for a in &arrivals {
        let now = Timestamp::from_nanos(a.at);
        if rx.next_deadline().is_some_and(|d| d <= now) {
            rx.poll(now, &mut sink);
        }
        if a.injected && epoch_changes_at_start.is_none() {
            assert_eq!(
                rx.peer_epoch(),
                Some(GENUINE),
                "believed on the clean start"
            );
            epoch_changes_at_start = Some(rx.stats().epoch_changes);
        }
        rx.on_frame(&a.bytes, now, &mut sink);
    }
    rx.poll(Timestamp::from_nanos(u64::MAX), &mut sink);
    Outcome {
        delivered,
        sent,
        survivors,
        tainted,
        rx,
        epoch_changes_at_start: epoch_changes_at_start.unwrap(),
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn injected_frames_cost_at_most_the_numbers_they_take(s in scenario()) {
        let o = run(&s);
        let mut genuine_count: HashMap<u64, usize> = HashMap::new();
        let mut others = 0;
        for p in &o.delivered {
            match genuine_id(p, &o.sent) {
                Some(id) => *genuine_count.entry(id).or_default() += 1,
                None => others += 1,
            }
        }
        for (id, n) in &genuine_count {
            prop_assert_eq!(*n, 1, "genuine packet {} delivered {} times", id, n);
        }
        let missing: Vec<u64> = o
            .survivors
            .iter()
            .filter(|id| !o.tainted.contains(id) && !genuine_count.contains_key(id))
            .copied()
            .collect();
        prop_assert!(missing.is_empty(), "lost {} untainted packets: {:?}", missing.len(), missing);
        // Each number is delivered once at most: deliveries that are not genuine took tainted
        // numbers, whose genuine packets were then not delivered.
        let tainted_genuine = o.tainted.iter().filter(|id| genuine_count.contains_key(id)).count();
        prop_assert!(others + tainted_genuine <= o.tainted.len(),
            "{} other deliveries, {} tainted numbers", others, o.tainted.len());
        let stats = o.rx.stats();
        prop_assert_eq!(o.rx.peer_epoch(), Some(GENUINE));
        prop_assert_eq!(stats.epoch_changes, o.epoch_changes_at_start, "an epoch change");
        prop_assert_eq!(stats.seq_jumps, 0);
        prop_assert_eq!(stats.pending_lost, 0);
        prop_assert_eq!(o.rx.held(), 0);
    }
}

#[test]
fn the_scenarios_inject_every_kind_of_frame() {
    // The property is not vacuous: across a few scenarios, injected frames reach every doubt
    // and refusal the receiver has, and some take numbers.
    let mut totals = alagg_proto::stats::RxStats::default();
    let mut tainted = 0;
    for seed in 0..20 {
        let s = Scenario {
            packets: 300,
            links: 2,
            loss_pct: 10,
            dup_pct: 10,
            frag_pct: 5,
            bundle_pct: 20,
            inject_pct: 50,
            first_seq: seed * 1_000_003,
            seed,
        };
        let o = run(&s);
        let st = o.rx.stats();
        totals.unknown_epoch += st.unknown_epoch;
        totals.stale_epoch += st.stale_epoch;
        totals.implausible_seq += st.implausible_seq;
        totals.malformed += st.malformed + st.bad_version + st.unknown_type;
        tainted += o.tainted.len();
    }
    assert!(totals.unknown_epoch > 0);
    assert!(totals.stale_epoch > 0);
    assert!(totals.implausible_seq > 0);
    assert!(totals.malformed > 0);
    assert!(tainted > 0);
}
