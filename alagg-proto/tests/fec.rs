//! Forward error correction: the codec through [`Encoder`] and [`Decoder`] (any `m` losses
//! of a block's `k + m` frames rebuilt byte for byte, `m + 1` reported and never
//! mis-rebuilt), and the receiver with seeded loss patterns.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::HashMap;
use std::time::Duration;

use alagg_proto::fec::{Decoder, Encoder, Taken};
use alagg_proto::wire::{
    ETH_HDR_LEN, EthernetRepr, FecParams, Frame, Kind, MEMBER_LEN, MacAddr, Repr, canonicalize,
};
use alagg_proto::{Lane, Receiver, ReceiverConfig, Sender, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

const EPOCH: u64 = 0x0a1a_6600_0000_0001;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x0a1a_6613),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// splitmix64.
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
        self.next() % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// An IPv4-looking packet whose bytes say its number.
fn packet(seq: u64, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(20)];
    p[0] = 0x45;
    p[4..12].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(20) {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    p
}

fn eth() -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        ethertype: alagg_proto::wire::DEFAULT_ETHERTYPE,
    }
}

/// A frame on the wire (alagg header first).
#[derive(Clone, Debug)]
struct Sent {
    frame: Vec<u8>,
    /// A data frame's index in its block; `None` for parity.
    data: Option<u8>,
}

/// What a sender's transmit stage does with FEC, on `links` links taking turns: every packet
/// numbered and cut for `mtu`, each frame given its member extension and pushed, parity after
/// each full block (and after the last, partial one).
struct Tx {
    sender: Sender,
    encoder: Encoder,
    lanes: Vec<Lane>,
    links: usize,
    turn: usize,
    mtu: usize,
    /// Every frame sent, in order.
    sent: Vec<Sent>,
}

impl Tx {
    fn new(params: FecParams, links: usize, mtu: usize) -> Self {
        Self {
            sender: Sender::new(EPOCH).with_fec(true),
            encoder: Encoder::new(params, links),
            lanes: (0..links).map(|l| Lane::new(l as u8, 0)).collect(),
            links,
            turn: 0,
            mtu,
            sent: Vec::new(),
        }
    }

    fn packet(&mut self, payload: &[u8], now: Timestamp) {
        let plan = self
            .sender
            .plan(payload.len(), self.mtu - self.sender.overhead())
            .unwrap();
        for i in 0..plan.frame_count() {
            let link = self.turn % self.links;
            self.turn += 1;
            let member = self.encoder.member(plan.seq(), now);
            let mut buf = vec![0u8; ETH_HDR_LEN + self.mtu];
            let stamp = self.lanes[link].stamp(now);
            let len = plan
                .emit_ethernet(i, stamp, &eth(), payload, &mut buf)
                .unwrap();
            let len = member
                .insert(&mut buf[ETH_HDR_LEN..], len - ETH_HDR_LEN)
                .unwrap();
            assert!(len <= self.mtu, "frame of {len} bytes over the MTU");
            let frame = buf[ETH_HDR_LEN..ETH_HDR_LEN + len].to_vec();
            self.encoder.push(&frame);
            self.encoder.carried(link);
            self.sent.push(Sent {
                frame,
                data: Some(member.index),
            });
            if self.encoder.is_full() {
                self.close(now);
            }
        }
    }

    fn close(&mut self, now: Timestamp) {
        let epoch = self.sender.epoch();
        let Some(parity) = self.encoder.close() else {
            return;
        };
        for j in 0..parity.len() {
            let link = self.turn % self.links;
            self.turn += 1;
            let (repr, shard) = parity
                .frame(j, self.lanes[link].stamp(now), epoch, 0)
                .unwrap();
            let mut frame = vec![0u8; repr.frame_len()];
            repr.emit_with_payload(shard, &mut frame).unwrap();
            self.sent.push(Sent { frame, data: None });
        }
    }
}

fn canonical(frame: &[u8]) -> Vec<u8> {
    let mut c = frame.to_vec();
    canonicalize(&mut c);
    c
}

/// Feeds `frames` to a decoder; returns the frames it rebuilt.
fn decode(decoder: &mut Decoder, frames: &[&Sent], now: Timestamp) -> Vec<Vec<u8>> {
    let mut rebuilt = Vec::new();
    for sent in frames {
        let view = Frame::new_checked(&sent.frame[..]).unwrap();
        let repr = Repr::parse(&view).unwrap();
        let taken = match repr.kind {
            Kind::Parity(p) => decoder.on_parity(0, repr.seq, p, view.payload(), now),
            _ => {
                let member = view.member().unwrap().unwrap();
                decoder.on_member(0, member, &sent.frame, now)
            }
        };
        if let Taken::Ready(slot) = taken {
            decoder.rebuild(slot, |frame| rebuilt.push(frame.to_vec()));
        }
    }
    rebuilt
}

proptest! {
    #![proptest_config(config(256))]

    /// Any `m` (or fewer) of a block's `count + m` frames lost, in any order of arrival: the
    /// lost data frames are rebuilt exactly (in canonical form), nothing else is.
    #[test]
    fn any_m_losses_are_rebuilt_byte_for_byte(
        k in 1u8..=12, m in 1u8..=4, fill in 1u8..=12, seed in any::<u64>(), lens in prop::collection::vec(20usize..1400, 12),
    ) {
        let params = FecParams::new(k, m).unwrap();
        let count = fill.min(k);
        let mut tx = Tx::new(params, 2, 1500);
        for (i, len) in lens.iter().take(usize::from(count)).enumerate() {
            tx.packet(&packet(i as u64, *len), Timestamp::ZERO);
        }
        tx.close(Timestamp::ZERO);
        prop_assert_eq!(tx.sent.len(), usize::from(count + m));
        let mut rng = Rng(seed);
        let mut order: Vec<&Sent> = tx.sent.iter().collect();
        rng.shuffle(&mut order);
        let lost = rng.below(u64::from(m) + 1) as usize;

        let (gone, kept) = order.split_at(lost);
        let mut decoder = Decoder::new();
        let rebuilt = decode(&mut decoder, kept, Timestamp::ZERO);
        // Every lost data frame is rebuilt; so may be one not lost but not in yet when `count`
        // of the block's frames were: each rebuilt frame is a data frame of the block, once.
        let data: Vec<Vec<u8>> = tx.sent.iter().filter(|s| s.data.is_some()).map(|s| canonical(&s.frame)).collect();
        for lost in gone.iter().filter(|s| s.data.is_some()) {
            prop_assert!(rebuilt.contains(&canonical(&lost.frame)), "a lost frame not rebuilt");
        }
        for (i, frame) in rebuilt.iter().enumerate() {
            prop_assert!(data.contains(frame), "a rebuilt frame that is not the block's");
            prop_assert!(!rebuilt[..i].contains(frame), "a frame rebuilt twice");
        }
        prop_assert_eq!(decoder.stats().recovered, rebuilt.len() as u64);
        prop_assert_eq!(decoder.stats().rejected, 0);
        // A block whose parity is all lost waits for its deadline (its length is unknown).
        if kept.iter().any(|s| s.data.is_none()) {
            prop_assert_eq!(decoder.open_blocks(), 0, "a settled block is finished");
        }
    }

    /// `m + 1` frames lost: nothing is rebuilt, and the block is reported unrecoverable once
    /// given up (as soon as every parity frame is in, or at the hold deadline).
    #[test]
    fn m_plus_one_losses_are_reported_never_mis_rebuilt(
        k in 1u8..=12, m in 1u8..=4, seed in any::<u64>(),
    ) {
        let params = FecParams::new(k, m).unwrap();
        let mut tx = Tx::new(params, 2, 1500);
        for i in 0..u64::from(k) {
            tx.packet(&packet(i, 100 + 37 * i as usize), Timestamp::ZERO);
        }
        let mut rng = Rng(seed);
        let mut order: Vec<&Sent> = tx.sent.iter().collect();
        rng.shuffle(&mut order);
        // At least one data frame among the lost, or there is nothing to rebuild.
        let first_data = order.iter().position(|s| s.data.is_some()).unwrap();
        order.swap(0, first_data);
        let (gone, kept) = order.split_at(usize::from(m) + 1);
        prop_assume!(gone.iter().any(|s| s.data.is_some()));
        let mut decoder = Decoder::new();
        let rebuilt = decode(&mut decoder, kept, Timestamp::ZERO);
        prop_assert!(rebuilt.is_empty());
        decoder.expire(Timestamp::from_nanos(1_000_000_000), Duration::from_millis(100));
        let parity_in = kept.iter().any(|s| s.data.is_none());
        if parity_in {
            prop_assert_eq!(decoder.stats().unrecoverable, 1);
        }
        prop_assert_eq!(decoder.stats().recovered, 0);
        prop_assert_eq!(decoder.open_blocks(), 0);
    }

    /// Parity whose bytes were changed on the way (no authentication; with it the tag covers
    /// parity like any frame) never yields what is not a well-formed frame of the lost one's
    /// place in its block: what is rebuilt parses, with the block's member extension, or is
    /// rejected. (Its payload is as trustworthy as an unauthenticated data frame's.)
    #[test]
    fn corrupt_parity_never_yields_a_wrong_frame(
        seed in any::<u64>(), flips in prop::collection::vec((any::<u16>(), 1u8..=255), 1..8),
    ) {
        let params = FecParams::new(4, 1).unwrap();
        let mut tx = Tx::new(params, 2, 1500);
        for i in 0..4u64 {
            tx.packet(&packet(i, 200 + 100 * i as usize), Timestamp::ZERO);
        }
        let mut rng = Rng(seed);
        let lost = rng.below(4) as usize;
        let mut frames: Vec<Sent> = tx.sent.clone();
        let parity = frames.last_mut().unwrap();
        let header = usize::from(parity.frame[34]);
        let shard_len = parity.frame.len() - header;
        for (at, bits) in &flips {
            let at = header + usize::from(*at) % shard_len;
            parity.frame[at] ^= bits;
        }
        let kept: Vec<&Sent> = frames.iter().enumerate().filter(|(i, _)| *i != lost).map(|(_, s)| s).collect();
        let mut decoder = Decoder::new();
        let rebuilt = decode(&mut decoder, &kept, Timestamp::ZERO);
        let expect = Frame::new_checked(&tx.sent[lost].frame[..]).unwrap().member().unwrap();
        for frame in &rebuilt {
            let view = Frame::new_checked(&frame[..]).unwrap();
            prop_assert!(Repr::parse(&view).is_ok());
            prop_assert_eq!(view.member().unwrap(), expect);
        }
        prop_assert_eq!(decoder.stats().recovered + decoder.stats().rejected, 1);
    }
}

/// A receiver fed `frames` (lost where `lose` says) at 10 us apart on 2 links; returns the
/// packets delivered, in order, and the receiver.
fn receive(
    frames: &[Sent],
    mut lose: impl FnMut(usize, &Sent) -> bool,
) -> (Vec<Vec<u8>>, Receiver) {
    let config = ReceiverConfig {
        hold_time: Duration::from_millis(50),
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(&config)
        .unwrap()
        .with_health(2, Timestamp::ZERO);
    let mut delivered = Vec::new();
    let mut now = Timestamp::ZERO;
    for (i, sent) in frames.iter().enumerate() {
        now = Timestamp::from_nanos(i as u64 * 10_000);
        if lose(i, sent) {
            continue;
        }
        rx.on_frame(&sent.frame, now, |p| delivered.push(p.to_vec()));
        rx.poll(now, |p| delivered.push(p.to_vec()));
    }
    let end = now.saturating_add(Duration::from_secs(1));
    rx.poll(end, |p| delivered.push(p.to_vec()));
    (delivered, rx)
}

/// A stream of mixed sizes: small packets, full-size ones, and ones cut into fragments that
/// straddle block boundaries.
fn stream(tx: &mut Tx, packets: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(7);
    let mut all = Vec::new();
    for seq in 0..packets {
        let len = match rng.below(10) {
            0 => 3000 + rng.below(3000) as usize,
            1..=4 => 1400,
            _ => 40 + rng.below(600) as usize,
        };
        let p = packet(seq, len);
        tx.packet(&p, Timestamp::ZERO);
        all.push(p);
    }
    tx.close(Timestamp::ZERO);
    all
}

#[test]
fn one_lost_frame_per_block_costs_nothing() {
    for (k, m) in [(8, 1), (8, 2), (4, 2)] {
        let mut tx = Tx::new(FecParams::new(k, m).unwrap(), 2, 1500);
        let packets = stream(&mut tx, 600);
        // One data frame of every block lost, a different position each time (but not the
        // first packet of all: the receiver's stream starts at the first packet it sees).
        let mut index_in_block = HashMap::new();
        let lose = |_, s: &Sent| {
            let Some(index) = s.data else {
                return false;
            };
            let view = Frame::new_checked(&s.frame[..]).unwrap();
            let member = view.member().unwrap().unwrap();
            let target = *index_in_block
                .entry(member.block)
                .or_insert((member.block as u8 + 1) % k);
            index == target
        };
        let (delivered, rx) = receive(&tx.sent, lose);
        let stats = rx.stats();
        let first_wrong = delivered.iter().zip(&packets).position(|(a, b)| a != b);
        assert!(
            delivered == packets,
            "{k}+{m}: every packet, in order, once: {} of {}, first out of place at {first_wrong:?}, {:?} {:?}",
            delivered.len(),
            packets.len(),
            stats.reorder,
            stats.fec
        );
        assert_eq!(stats.reorder.lost, 0, "{k}+{m}");
        assert_eq!(stats.reorder.late, 0, "{k}+{m}: rebuilt in time, not late");
        assert!(stats.fec.recovered > 0, "{k}+{m}");
        assert_eq!(stats.fec.rejected, 0, "{k}+{m}");
    }
}

#[test]
fn seeded_random_loss_delivers_each_packet_at_most_once_and_rebuilds_most() {
    let mut tx = Tx::new(FecParams::new(8, 2).unwrap(), 2, 1500);
    let packets = stream(&mut tx, 3000);
    for seed in 1..=8u64 {
        let rng = std::cell::RefCell::new(Rng(seed));
        // 3 % of frames lost, data and parity alike.
        let (delivered, rx) = receive(&tx.sent, |_, _| rng.borrow_mut().below(100) < 3);
        let stats = rx.stats();
        let mut seen = std::collections::HashSet::new();
        for p in &delivered {
            assert!(packets.contains(p), "seed {seed}: a packet nobody sent");
            assert!(seen.insert(p.clone()), "seed {seed}: a packet twice");
        }
        // Without FEC 3 % frame loss loses about 4 % of packets (fragments); with 8+2 a block
        // is lost only with 3 of its 10 frames: about 0.4 % of blocks.
        let lost = packets.len() - delivered.len();
        assert!(
            lost * 200 < packets.len(),
            "seed {seed}: {lost} of {} lost, {:?}",
            packets.len(),
            stats.fec
        );
        assert!(stats.fec.recovered > 0);
    }
}

#[test]
fn members_carry_their_extension_within_the_mtu() {
    let mut tx = Tx::new(FecParams::new(8, 2).unwrap(), 2, 1500);
    let packets = stream(&mut tx, 200);
    assert!(!packets.is_empty());
    for sent in &tx.sent {
        let view = Frame::new_checked(&sent.frame[..]).unwrap();
        assert!(sent.frame.len() <= 1500);
        match sent.data {
            Some(index) => {
                let member = view.member().unwrap().unwrap();
                assert_eq!(member.index, index);
                assert_eq!(
                    usize::from(view.header_len()),
                    view.frame_type().min_header_len() + MEMBER_LEN
                );
            }
            None => assert!(matches!(Repr::parse(&view).unwrap().kind, Kind::Parity(_))),
        }
    }
    // And a receiver without the decoder's help (no loss) reads them as plain frames.
    let (delivered, _) = receive(&tx.sent, |_, s| s.data.is_none());
    assert!(
        delivered == packets,
        "{} of {}",
        delivered.len(),
        packets.len()
    );
}

/// The fuzz seed `fuzz/seeds/receive/fec.bin`: a stream of 24 small packets in 4+2 blocks, one data
/// frame of each block lost, as records of the `receive` target (`[time step][length][frame]`).
fn fuzz_seed() -> Vec<u8> {
    let mut tx = Tx::new(FecParams::new(4, 2).unwrap(), 2, 1500);
    for seq in 0..24 {
        tx.packet(&packet(seq, 40 + 9 * (seq as usize % 8)), Timestamp::ZERO);
    }
    tx.close(Timestamp::ZERO);
    let mut seed = Vec::new();
    for (i, sent) in tx.sent.iter().enumerate() {
        if sent.data == Some((i % 4) as u8) && i % 3 == 0 {
            continue;
        }
        seed.push(1);
        seed.extend_from_slice(&(sent.frame.len() as u16).to_be_bytes());
        seed.extend_from_slice(&sent.frame);
    }
    seed
}

#[test]
fn the_fuzz_seed_of_a_protected_stream_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/receive/fec.bin");
    let seed = fuzz_seed();
    if std::env::var_os("ALAGG_BLESS").is_some() {
        std::fs::write(&path, &seed).unwrap();
    }
    let on_disk =
        std::fs::read(&path).expect("fuzz/seeds/receive/fec.bin (ALAGG_BLESS=1 writes it)");
    assert!(
        on_disk == seed,
        "the seed is stale: rerun with ALAGG_BLESS=1"
    );
    // And it exercises recovery.
    let config = ReceiverConfig::default();
    let mut rx = Receiver::new(&config).unwrap();
    let mut rest = &seed[..];
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rx.on_frame(&rest[3..3 + len], Timestamp::ZERO, |_| {});
        rest = &rest[3 + len..];
    }
    assert!(rx.stats().fec.recovered > 0);
}

#[test]
fn a_member_whose_block_starts_far_from_its_number_is_refused() {
    let mut tx = Tx::new(FecParams::new(4, 1).unwrap(), 2, 1500);
    for seq in 0..8 {
        tx.packet(&packet(seq, 100), Timestamp::ZERO);
    }
    // Frame 5 (block 1, index 1) made to claim its block began 10 000 numbers earlier.
    let mut forged = tx.sent[6].clone();
    assert_eq!(forged.data, Some(1));
    let at = forged.frame[34] as usize - 8;
    let first = u64::from_be_bytes(forged.frame[at..at + 8].try_into().unwrap());
    forged.frame[at..at + 8].copy_from_slice(&first.wrapping_sub(10_000).to_be_bytes());
    let mut frames = tx.sent.clone();
    frames[6] = forged;
    let (delivered, rx) = receive(&frames, |_, _| false);
    // Its packet is still delivered (the extension only adds protection), the extension
    // refused.
    assert_eq!(delivered.len(), 8);
    assert_eq!(rx.stats().malformed, 1);
}
