//! The per-packet path without root: capture -> transmit -> (links) -> receive -> deliver,
//! wired as [`super::Datapath::start`] wires them, over an in-memory NFQUEUE, in-memory links
//! that lose, duplicate and reorder frames (seeded), and an in-memory TUN whose writes are
//! checked byte for byte against what was captured.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    cell::RefCell,
    collections::{HashSet, VecDeque},
    convert::Infallible,
    io,
    os::fd::RawFd,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use alagg_proto::{
    Adaptive, AnyScheduler, Backup, LinkState, Receiver, ReceiverConfig, Redundant, Sender, Stripe,
    Timestamp,
    auth::{FrameKey, Keyring, SiteKey},
    wire::{self, ETH_HDR_LEN, EthernetRepr, FLAG_AUTH, FLAG_ENCRYPTED, FecParams, MacAddr},
};
use ipnet::IpNet;

use crate::{
    capture::Capture,
    counters::Counters,
    deliver::{
        Delivery,
        tun::{PLAIN_HEADER, TunWrite, VNET_HDR_LEN},
    },
    engine::{
        receive::{Receive, RxLink, TURN_BATCHES},
        transmit::{FecPlan, FecPolicy, Transmit, TxLink},
    },
    port::{
        BATCH, Captured, FrameRx, FrameTx, LinkControl, PacketSource, RxLosses, SourceLosses,
        TxLosses,
    },
};

/// A small seeded generator (xorshift64*), so every run sees the same impairments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An in-memory NFQUEUE queue: packets waiting, and how many batches were stolen.
#[derive(Default)]
struct MemQueue {
    waiting: VecDeque<(Vec<u8>, bool, bool)>,
    taken: usize,
    stolen: usize,
}

impl PacketSource for MemQueue {
    type Error = Infallible;

    fn fd(&self) -> RawFd {
        -1
    }

    fn recv(&mut self, mut each: impl FnMut(Captured<'_>)) -> Result<usize, Infallible> {
        let mut n = 0;
        while n < BATCH {
            let Some((mut payload, csum_partial, truncated)) = self.waiting.pop_front() else {
                break;
            };
            each(Captured {
                payload: &mut payload,
                csum_partial,
                truncated,
            });
            n += 1;
        }
        self.taken += n;
        Ok(n)
    }

    fn steal(&mut self) -> Result<(), Infallible> {
        self.stolen += 1;
        Ok(())
    }

    fn losses(&self) -> SourceLosses {
        SourceLosses::default()
    }
}

/// Frames in flight on one direction of an in-memory link.
type Wire = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// The transmit half of an in-memory link: staged frames go on the wire at flush.
struct MemTx {
    staged: Vec<Vec<u8>>,
    wire: Wire,
    /// [`Impairment::per_flush`].
    per_flush: usize,
}

impl FrameTx for MemTx {
    type Error = Infallible;

    fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let mut buf = vec![0u8; 3840];
        let len = write(&mut buf);
        if len == 0 {
            return false;
        }
        buf.truncate(len);
        self.staged.push(buf);
        true
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        let leaving = match self.per_flush {
            0 => self.staged.len(),
            n => n.min(self.staged.len()),
        };
        self.wire.borrow_mut().extend(self.staged.drain(..leaving));
        Ok(())
    }

    fn losses(&self) -> TxLosses {
        TxLosses::default()
    }

    fn behind(&self) -> bool {
        !self.staged.is_empty()
    }
}

/// The receive half of an in-memory link: frames the test put there.
struct MemRx {
    arrived: Wire,
}

impl FrameRx for MemRx {
    type Error = Infallible;

    /// Never polled: any descriptor that is not negative (negative marks a failed socket).
    fn fd(&self) -> RawFd {
        RawFd::MAX
    }

    fn recv(&mut self, mut each: impl FnMut(&[u8])) -> Result<usize, Infallible> {
        let mut n = 0;
        while n < BATCH {
            let Some(frame) = self.arrived.borrow_mut().pop_front() else {
                break;
            };
            each(&frame);
            n += 1;
        }
        Ok(n)
    }

    fn losses(&mut self) -> RxLosses {
        RxLosses::default()
    }
}

/// An in-memory TUN: every write as the kernel would see it, without its vnet header.
#[derive(Default)]
struct MemTun {
    written: RefCell<Vec<Vec<u8>>>,
}

impl TunWrite for &MemTun {
    fn write_parts(&self, header: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<()> {
        assert_eq!(header, &PLAIN_HEADER, "these tests send nothing to offload");
        self.written.borrow_mut().push(parts.concat());
        Ok(())
    }
}

/// What a link does to the frames crossing it, per turn.
#[derive(Clone, Copy, Default)]
struct Impairment {
    loss: u64,
    duplicate: u64,
    /// Chance that a frame swaps places with the one before it.
    reorder: u64,
    /// Chance that a frame is held back to the next turn, a millisecond later: within the
    /// hold time, so the receiver waits for it.
    delay: u64,
    /// A slow device: at most this many frames leave per flush, the rest wait on the ring
    /// (0: every staged frame leaves).
    per_flush: usize,
}

const HOST_A: MacAddr = MacAddr([2, 0, 0, 0, 0xa, 1]);
const HOST_B: MacAddr = MacAddr([2, 0, 0, 0, 0xb, 1]);
const ETHERTYPE: u16 = alagg_common::DEFAULT_ETHERTYPE;

fn destinations() -> Vec<IpNet> {
    vec!["192.0.2.0/24".parse().unwrap()]
}

/// An IPv4 packet from 192.0.2.1 to 198.51.100.2 of `len` bytes (at least 20) carrying experimental protocol
/// 253 and `id` in its first payload bytes, the rest seeded noise.
fn packet(id: u32, len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut p = vec![0u8; len.max(24)];
    p[0] = 0x45;
    let total = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&[192, 0, 2, 1]);
    p[16..20].copy_from_slice(&[198, 51, 100, 2]);
    p[20..24].copy_from_slice(&id.to_be_bytes());
    for byte in &mut p[24..] {
        *byte = rng.next() as u8;
    }
    p
}

/// One host's sending half and the other's receiving half, joined by `impairments.len()`
/// in-memory links, run turn by turn as the worker threads would run them.
struct Path<'a> {
    queue: Capture<'a, MemQueue, Transmit<'a, MemRx, MemTx>>,
    receive: Receive<'a, MemRx, MemTx, Delivery<'a, &'a MemTun>>,
    /// Per link: what the sender put on it, and what reaches the receiver.
    wires: Vec<(Wire, Wire)>,
    /// Per link: frames held back to the next turn.
    delayed: Vec<Vec<Vec<u8>>>,
    impairments: Vec<Impairment>,
    rng: Rng,
    now: Timestamp,
}

struct Fixture {
    counters: Arc<Counters>,
    control: LinkControl<MemRx, MemTx>,
    tun: MemTun,
    scheduler: AnyScheduler,
    fec: Option<FecPlan>,
}

impl Fixture {
    fn new(links: usize) -> Self {
        Self {
            counters: Arc::new(Counters::new(links, 1)),
            control: LinkControl::new(links, 1),
            tun: MemTun::default(),
            scheduler: AnyScheduler::Redundant(Redundant),
            fec: None,
        }
    }

    /// The fixture with `scheduler` in place of the default (redundant).
    fn scheduled(links: usize, scheduler: AnyScheduler) -> Self {
        Self {
            scheduler,
            ..Self::new(links)
        }
    }

    fn path(&self, impairments: &[Impairment], bundle: bool, seed: u64) -> Path<'_> {
        self.path_with(impairments, bundle, seed, None)
    }

    /// [`Fixture::path`] with `[auth]` on both hosts: the site key and whether to encrypt.
    fn path_with(
        &self,
        impairments: &[Impairment],
        bundle: bool,
        seed: u64,
        auth: Option<(SiteKey, bool)>,
    ) -> Path<'_> {
        let (mut tx_links, mut rx_links, mut states, mut wires) = (vec![], vec![], vec![], vec![]);
        for (i, impairment) in impairments.iter().enumerate() {
            let (sent, arrived) = (Wire::default(), Wire::default());
            tx_links.push(TxLink {
                io: MemTx {
                    staged: Vec::new(),
                    wire: Rc::clone(&sent),
                    per_flush: impairment.per_flush,
                },
                eth: EthernetRepr {
                    dst: HOST_B,
                    src: HOST_A,
                    ethertype: ETHERTYPE,
                },
            });
            rx_links.push(RxLink {
                link: i,
                io: MemRx {
                    arrived: Rc::clone(&arrived),
                },
                local_mac: HOST_B,
                peer_mac: HOST_A,
                ethertype: ETHERTYPE,
            });
            states.push(LinkState::new(u8::try_from(i).unwrap(), 1500));
            wires.push((sent, arrived));
        }
        const EPOCH: u64 = 7 << 16;
        let (sender, sealer, keyring) = match &auth {
            None => (Sender::new(EPOCH), None, None),
            Some((site, encrypt)) => {
                let flags = FLAG_AUTH | if *encrypt { FLAG_ENCRYPTED } else { 0 };
                (
                    Sender::new(EPOCH).with_flags(flags),
                    Some(FrameKey::derive(site, EPOCH)),
                    Some(Keyring::new(site.clone())),
                )
            }
        };
        let transmit = Transmit::new(
            (sender, sealer),
            (tx_links, states),
            (self.scheduler.clone(), bundle, self.fec),
            &self.counters.workers[0],
            (&self.control, 0),
        );
        let queue = Capture::new(
            vec![MemQueue::default()],
            transmit,
            &self.counters.workers[0],
        );
        // The hold time `protocol.hold_ms` has by default; links that reorder or hold back
        // frames are configured as such (`protocol.links_keep_order = false`).
        let keep_order = impairments.iter().all(|i| i.reorder == 0 && i.delay == 0);
        let mut receiver = Receiver::new(&ReceiverConfig {
            hold_time: Duration::from_millis(5),
            release_passed_gaps: keep_order,
            ..ReceiverConfig::default()
        })
        .unwrap()
        .with_health(impairments.len(), Timestamp::from_nanos(1_000_000));
        if let Some(keyring) = keyring {
            receiver = receiver.with_keyring(keyring);
        }
        let receiver = super::admitting(receiver, &destinations(), &self.counters);
        let delivery = Delivery::new(&self.tun, 1480, false, &self.counters.receiver.delivery)
            .without_route_lookups();
        let receive = Receive::new(rx_links, receiver, delivery, &self.counters, &self.control);
        Path {
            queue,
            receive,
            delayed: vec![Vec::new(); impairments.len()],
            wires,
            impairments: impairments.to_vec(),
            rng: Rng(seed),
            now: Timestamp::from_nanos(1_000_000),
        }
    }
}

impl Path<'_> {
    /// Captures `packets` (in batches, as NFQUEUE hands them over), carries their frames over
    /// the links and runs the receiver, a millisecond per turn; then lets the hold time pass.
    fn carry(&mut self, packets: &[Vec<u8>]) {
        for chunk in packets.chunks(BATCH) {
            self.queue_mut()
                .waiting
                .extend(chunk.iter().map(|p| (p.clone(), false, false)));
            self.turn();
        }
        for _ in 0..20 {
            self.turn();
        }
    }

    fn queue_mut(&mut self) -> &mut MemQueue {
        self.queue.queues_mut().first_mut().unwrap()
    }

    fn turn(&mut self) {
        self.queue.turn(self.now);
        for (link, (sent, arrived)) in self.wires.iter().enumerate() {
            let impairment = self.impairments[link];
            // Frames held back last turn arrive first, and are not held back again.
            let mut arrived = arrived.borrow_mut();
            arrived.extend(self.delayed[link].drain(..));
            let mut frames = Vec::new();
            for frame in sent.borrow_mut().drain(..) {
                if self.rng.chance(impairment.loss) {
                    continue;
                }
                if self.rng.chance(impairment.duplicate) {
                    frames.push(frame.clone());
                }
                frames.push(frame);
            }
            for i in 1..frames.len() {
                if self.rng.chance(impairment.reorder) {
                    frames.swap(i - 1, i);
                }
            }
            for frame in frames {
                if self.rng.chance(impairment.delay) {
                    self.delayed[link].push(frame);
                } else {
                    arrived.push_back(frame);
                }
            }
        }
        self.receive.turn(self.now);
        self.now = Timestamp::from_nanos(self.now.as_nanos() + 1_000_000);
    }
}

/// `count` packets of seeded sizes between 20 and `max` bytes.
fn packets(count: u32, max: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|id| {
            let len = 20 + rng.below(max - 20);
            packet(id, len, &mut rng)
        })
        .collect()
}

/// Whether `ids` is `0..n`; else which are missing or out of place, briefly.
fn check_all(ids: &[u32], n: u32, stats: alagg_proto::stats::RxStats) {
    if ids.iter().copied().eq(0..n) {
        return;
    }
    let missing: Vec<u32> = (0..n).filter(|i| !ids.contains(i)).collect();
    panic!(
        "{} of {n} delivered; missing {:?}; first out of place at {:?}; engine {stats:?}",
        ids.len(),
        &missing[..missing.len().min(20)],
        ids.iter().zip(0..).position(|(&a, b)| a != b),
    );
}

/// Takes the frames sent on `wire` and keeps those that carry packets (not feedback or probes).
fn data_frames(wire: &Wire) -> Vec<Vec<u8>> {
    let packets = [
        wire::FrameType::Data,
        wire::FrameType::Fragment,
        wire::FrameType::Bundle,
    ];
    wire.borrow_mut()
        .drain(..)
        .filter(|f| packets.contains(&wire::FrameType::from(f[ETH_HDR_LEN + 1])))
        .collect()
}

fn written_ids(tun: &MemTun, sent: &[Vec<u8>]) -> Vec<u32> {
    tun.written
        .borrow()
        .iter()
        .map(|p| {
            let id = u32::from_be_bytes(p[20..24].try_into().unwrap());
            assert_eq!(p, &sent[id as usize], "packet {id} was delivered changed");
            id
        })
        .collect()
}

#[test]
fn clean_links_deliver_every_packet_once_in_order_and_byte_for_byte() {
    for bundle in [true, false] {
        let fixture = Fixture::new(2);
        let mut path = fixture.path(&[Impairment::default(); 2], bundle, 1);
        // Sizes up to 4000 bytes: small ones bundled, large ones cut into fragments.
        let sent = packets(600, 4000, 2);
        path.carry(&sent);
        let ids = written_ids(&fixture.tun, &sent);
        assert_eq!(ids, (0..600).collect::<Vec<_>>(), "bundle = {bundle}");
        let c = &fixture.counters;
        assert_eq!(c.capture().captured, 600);
        assert_eq!(c.delivery().delivered, 600);
        assert_eq!(path.queue_mut().taken, 600);
        assert_eq!(path.queue_mut().stolen, 600usize.div_ceil(BATCH));
    }
}

#[test]
fn on_links_that_keep_order_a_packet_lost_on_both_costs_no_hold_time() {
    // Two links losing 20 % each, neither reordering: a packet whose copies are both lost is
    // given up as soon as both links have gone past it, never after the hold time; every
    // other packet is delivered once, in order.
    let lossy = Impairment {
        loss: 20,
        ..Impairment::default()
    };
    let fixture = Fixture::new(2);
    let mut path = fixture.path(&[lossy, lossy], false, 21);
    let sent = packets(2000, 1000, 22);
    path.impairments = vec![Impairment::default(); 2];
    path.carry(&sent[..10]);
    path.impairments = vec![lossy, lossy];
    path.carry(&sent[10..]);
    let ids = written_ids(&fixture.tun, &sent);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    let stats = path.receive.stats();
    assert!(
        (1880..1960).contains(&ids.len()),
        "{} of 2000 delivered, expected about 96 %: {stats:?}",
        ids.len()
    );
    assert_eq!(stats.reorder.hold_expired, 0, "{stats:?}");
    // A gap may span several numbers.
    assert!(stats.gaps_passed > 0, "{stats:?}");
    assert!(stats.gaps_passed <= stats.reorder.lost, "{stats:?}");
    assert_eq!(stats.reorder.lost, 2000 - ids.len() as u64, "{stats:?}");
}

#[test]
fn a_lossy_reordering_link_beside_a_clean_one_loses_nothing() {
    let lossy = Impairment {
        loss: 40,
        duplicate: 10,
        reorder: 20,
        delay: 10,
        ..Impairment::default()
    };
    let reordering = Impairment {
        reorder: 30,
        delay: 20,
        ..Impairment::default()
    };
    let fixture = Fixture::new(2);
    let mut path = fixture.path(&[lossy, reordering], true, 3);
    // Up to 1600 bytes (one in ten in two fragments): what the reorder buffer holds behind a
    // gap without giving it up (larger packets take its few large slots), and no more packets
    // under reassembly at once than its default 16 contexts (a burst of 64 packets, a third
    // of them fragmented, on a link that loses 40 % of its frames exceeds them: counted
    // `reassembly_evicted`).
    let sent = packets(2000, 1600, 4);
    // The receiver takes the first frame it sees as the stream's start: the first packets
    // cross clean links, so that frame is the first packet's.
    path.impairments = vec![Impairment::default(); 2];
    path.carry(&sent[..10]);
    path.impairments = vec![lossy, reordering];
    path.carry(&sent[10..]);
    let ids = written_ids(&fixture.tun, &sent);
    check_all(&ids, 2000, path.receive.stats());
}

#[test]
fn two_lossy_links_deliver_each_packet_at_most_once_and_in_order() {
    let lossy = Impairment {
        loss: 30,
        duplicate: 10,
        reorder: 20,
        delay: 10,
        ..Impairment::default()
    };
    let fixture = Fixture::new(2);
    let mut path = fixture.path(&[lossy, lossy], true, 5);
    // Small packets only (each in one frame, often bundled): a packet is lost only when both
    // copies of its frame are, about 9 % of them.
    let sent = packets(3000, 600, 6);
    path.impairments = vec![Impairment::default(); 2];
    path.carry(&sent[..10]);
    path.impairments = vec![lossy, lossy];
    path.carry(&sent[10..]);
    let ids = written_ids(&fixture.tun, &sent);
    let unique: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a packet was delivered twice");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    assert!(
        (2550..3000).contains(&ids.len()),
        "{} of 3000 delivered, expected about 91 %",
        ids.len()
    );
}

#[test]
fn frames_from_another_mac_or_ethertype_are_counted_and_never_delivered() {
    let fixture = Fixture::new(1);
    let mut path = fixture.path(&[Impairment::default()], true, 7);
    let sent = packets(50, 1000, 8);
    path.queue_mut()
        .waiting
        .extend(sent.iter().map(|p| (p.clone(), false, false)));
    path.queue.turn(path.now);
    // Every frame arrives five times: from a stranger's MAC, with another ethertype, to
    // another host's MAC, naming another link, and as sent.
    let frames: Vec<Vec<u8>> = path.wires[0].0.borrow_mut().drain(..).collect();
    {
        let mut arrived = path.wires[0].1.borrow_mut();
        for frame in &frames {
            let mut stranger = frame.clone();
            stranger[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
            let mut other = frame.clone();
            other[12..14].copy_from_slice(&0x88b6u16.to_be_bytes());
            let mut elsewhere = frame.clone();
            elsewhere[0..6].copy_from_slice(&[2, 8, 8, 8, 8, 8]);
            let mut relabelled = frame.clone();
            relabelled[ETH_HDR_LEN + 2] = 1;
            arrived.extend([stranger, other, elsewhere, relabelled, frame.clone()]);
        }
    }
    path.receive.turn(path.now);
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..50).collect::<Vec<_>>()
    );
    let rx = fixture.counters.link(0).1;
    assert_eq!(rx.rx_foreign, 3 * frames.len() as u64);
    assert_eq!(rx.rx_wrong_link, frames.len() as u64);
    assert_eq!(rx.first, 50, "every first copy is the genuine frame");
}

/// Sends 20 packets over one link, each genuine frame arriving after a forged copy of it
/// whose packet has `bytes` at `offset` (of the IP header); returns the ids delivered and the
/// delivery counters' rejected source and destination, and the engine's inadmissible count.
fn forged_before_genuine(offset: usize, bytes: [u8; 4], seed: u64) -> (Vec<u32>, [u64; 3]) {
    let fixture = Fixture::new(1);
    let mut path = fixture.path(&[Impairment::default()], false, seed);
    let sent = packets(20, 1000, seed + 1);
    path.queue_mut()
        .waiting
        .extend(sent.iter().map(|p| (p.clone(), false, false)));
    path.queue.turn(path.now);
    let frames = data_frames(&path.wires[0].0);
    {
        let mut arrived = path.wires[0].1.borrow_mut();
        for frame in &frames {
            let mut forged = frame.clone();
            // The packet starts after the 36-byte data header.
            let at = ETH_HDR_LEN + wire::DATA_HEADER_LEN + offset;
            forged[at..at + 4].copy_from_slice(&bytes);
            arrived.extend([forged, frame.clone()]);
        }
    }
    path.receive.turn(path.now);
    let delivery = fixture.counters.delivery();
    let counts = [
        delivery.rejected_source,
        delivery.rejected_destination,
        path.receive.stats().inadmissible,
    ];
    (written_ids(&fixture.tun, &sent), counts)
}

#[test]
fn a_forged_packet_the_host_refuses_costs_no_genuine_packet() {
    // Without a key a forged frame looks genuine; one numbered like a genuine packet but
    // carrying a packet from outside the destinations (source 203.0.113.9) is refused before
    // it takes the number, so the genuine frame of that number, arriving after it, is
    // delivered.
    let (ids, counts) = forged_before_genuine(12, [203, 0, 113, 9], 11);
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert_eq!(counts, [20, 0, 20]);
}

#[test]
fn a_packet_to_the_peers_own_networks_is_refused_and_costs_no_genuine_packet() {
    // The same with a packet that comes from the peer's networks but goes to them too
    // (destination 192.0.2.9: it would be routed straight back through alagg).
    let (ids, counts) = forged_before_genuine(16, [192, 0, 2, 9], 13);
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert_eq!(counts, [0, 20, 20]);
}

#[test]
fn a_flooded_link_does_not_keep_the_other_waiting() {
    // Link 0 holds 5 000 frames (copies of one genuine frame), link 1 one genuine frame: the
    // first turn takes a bounded share of link 0 and link 1's frame too; later turns take
    // the rest.
    let fixture = Fixture::new(2);
    let mut path = fixture.path(&[Impairment::default(); 2], false, 31);
    let sent = packets(1, 200, 32);
    path.queue_mut()
        .waiting
        .extend(sent.iter().map(|p| (p.clone(), false, false)));
    path.queue.turn(path.now);
    let on0 = data_frames(&path.wires[0].0);
    let on1 = data_frames(&path.wires[1].0);
    path.wires[0]
        .1
        .borrow_mut()
        .extend((0..5_000).map(|_| on0[0].clone()));
    path.wires[1].1.borrow_mut().extend(on1);
    let got = path.receive.turn(path.now);
    let (rx0, rx1) = (fixture.counters.link(0).1, fixture.counters.link(1).1);
    assert_eq!(rx1.rx_frames, 1, "link 1 waited behind link 0");
    assert!(rx0.rx_frames <= (TURN_BATCHES * BATCH) as u64, "{rx0:?}");
    assert_eq!(got as u64, rx0.rx_frames + 1);
    while path.receive.turn(path.now) > 0 {}
    assert_eq!(fixture.counters.link(0).1.rx_frames, 5_000);
}

#[test]
fn what_a_slow_link_left_on_its_ring_goes_without_new_packets() {
    // Redundant: a flush does not wait for a slow device. Link 1 takes 2 frames per flush; what
    // one batch left on its ring is kicked again soon (`due`) and at every turn, though no
    // packet comes after it. Link 0 loses everything, so only link 1 can deliver.
    let fixture = Fixture::new(2);
    let dead = Impairment {
        loss: 100,
        ..Impairment::default()
    };
    let slow = Impairment {
        per_flush: 2,
        ..Impairment::default()
    };
    let mut path = fixture.path(&[dead, slow], false, 41);
    let sent = packets(30, 1000, 42);
    path.queue_mut()
        .waiting
        .extend(sent.iter().map(|p| (p.clone(), false, false)));
    path.turn();
    let due = path.queue.due(path.now);
    assert!(
        due.is_some_and(|d| d <= Duration::from_micros(100)),
        "a link behind is not kicked again soon: due {due:?}"
    );
    for _ in 0..20 {
        path.turn();
    }
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..30).collect::<Vec<_>>()
    );
}

#[test]
fn capture_drops_truncated_and_empty_packets_and_delivers_the_rest() {
    let fixture = Fixture::new(1);
    let mut path = fixture.path(&[Impairment::default()], false, 9);
    let sent = packets(3, 500, 10);
    let queue = path.queue_mut();
    queue.waiting.push_back((sent[0].clone(), false, false));
    queue.waiting.push_back((sent[1].clone(), false, true));
    queue.waiting.push_back((Vec::new(), false, false));
    queue.waiting.push_back((sent[2].clone(), false, false));
    path.turn();
    assert_eq!(written_ids(&fixture.tun, &sent), vec![0, 2]);
    let c = &fixture.counters;
    assert_eq!(c.capture().captured, 4);
    assert_eq!(c.capture().dropped, 2);
}

#[test]
fn a_link_made_unusable_carries_nothing_until_it_is_usable_again() {
    let fixture = Fixture::new(2);
    let mut path = fixture.path(&[Impairment::default(); 2], true, 11);
    fixture.control.set_usable(1, false);
    let sent = packets(100, 1000, 12);
    path.carry(&sent[..50]);
    let link1 = |f: &Fixture| f.counters.link(1).0.tx_frames;
    assert_eq!(link1(&fixture), 0, "an unusable link was sent on");
    fixture.control.set_usable(1, true);
    path.carry(&sent[50..]);
    assert!(link1(&fixture) > 0, "the link did not come back");
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn with_auth_every_packet_arrives_and_no_forged_or_changed_frame_is_delivered() {
    for encrypt in [false, true] {
        let fixture = Fixture::new(2);
        let site = SiteKey::from_bytes([0x5a; 32]);
        let lossy = Impairment {
            loss: 20,
            duplicate: 10,
            reorder: 20,
            delay: 10,
            ..Impairment::default()
        };
        let impaired = [lossy, Impairment::default()];
        let mut path = fixture.path_with(&impaired, true, 13, Some((site, encrypt)));
        let sent = packets(1000, 1600, 14);
        path.impairments = vec![Impairment::default(); 2];
        path.carry(&sent[..10]);
        path.impairments = vec![lossy, Impairment::default()];
        // Every frame on link 0 also arrives changed in one byte (header, payload or tag), and
        // as it would from a peer with another key: none of those may reach the stack.
        let mut rng = Rng(15);
        let other = FrameKey::derive(&SiteKey::from_bytes([0x5b; 32]), 7 << 16);
        for chunk in sent[10..].chunks(BATCH) {
            path.queue_mut()
                .waiting
                .extend(chunk.iter().map(|p| (p.clone(), false, false)));
            path.queue.turn(path.now);
            let frames: Vec<Vec<u8>> = path.wires[0].0.borrow().iter().cloned().collect();
            let mut sent_wire = path.wires[0].0.borrow_mut();
            for frame in frames {
                let mut changed = frame.clone();
                let at = 14 + rng.below(changed.len() - 14);
                changed[at] ^= 1 << rng.below(8);
                let mut resealed = frame.clone();
                let len = resealed.len() - 16 - 14;
                let _ = other.seal(&mut resealed[14..], len);
                sent_wire.extend([changed, resealed]);
                if encrypt {
                    // The packets do not travel in the clear.
                    // 16 of each packet's random bytes: in no encrypted frame.
                    let readable = chunk
                        .iter()
                        .filter(|p| p.len() >= 40)
                        .any(|p| frame.windows(16).any(|w| w == &p[24..40]));
                    assert!(!readable, "a packet is readable in an encrypted frame");
                }
            }
            drop(sent_wire);
            path.turn();
        }
        for _ in 0..20 {
            path.turn();
        }
        let ids = written_ids(&fixture.tun, &sent);
        check_all(&ids, 1000, path.receive.stats());
        let stats = path.receive.stats();
        assert!(stats.auth_failed > 500, "{stats:?}");
    }
}

/// Every scheduler, by name.
fn schedulers() -> [(&'static str, AnyScheduler); 4] {
    [
        ("redundant", AnyScheduler::Redundant(Redundant)),
        ("stripe", AnyScheduler::Stripe(Stripe::default())),
        ("backup", AnyScheduler::Backup(Backup)),
        ("adaptive", AnyScheduler::Adaptive(Adaptive::default())),
    ]
}

#[test]
fn every_scheduler_delivers_every_packet_once_in_order_on_clean_links() {
    for (name, scheduler) in schedulers() {
        let fixture = Fixture::scheduled(2, scheduler);
        let mut path = fixture.path(&[Impairment::default(); 2], true, 31);
        // Up to 2000 bytes: some cut in two fragments, none over a reorder slot (a striped
        // batch is half held while the second link's frames are taken).
        let sent = packets(600, 2000, 32);
        path.carry(&sent);
        let ids = written_ids(&fixture.tun, &sent);
        check_all(&ids, 600, path.receive.stats());
        let stats = path.receive.stats();
        assert_eq!(stats.reorder.lost, 0, "{name}: {stats:?}");
        // Feedback (worker 0, every 10 ms) went out on both links and was read.
        assert!(stats.feedback > 0, "{name}: {stats:?}");
    }
}

#[test]
fn stripe_sends_each_packet_once_and_spreads_them_over_the_links() {
    let frames_on = |f: &Fixture, link| f.counters.link(link).0.tx_frames;
    let fixture = Fixture::scheduled(2, AnyScheduler::Stripe(Stripe::default()));
    let mut path = fixture.path(&[Impairment::default(); 2], false, 33);
    let sent = packets(2000, 1400, 34);
    path.carry(&sent);
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..2000).collect::<Vec<_>>()
    );
    let (a, b) = (frames_on(&fixture, 0), frames_on(&fixture, 1));
    // One frame per packet in all, plus a few feedback frames and probes.
    assert!((2000..2100).contains(&(a + b)), "{a} + {b} frames");
    assert!(a.min(b) * 3 > a.max(b), "uneven: {a} and {b}");
    let stats = path.receive.stats();
    assert_eq!(stats.dedup.discarded, 0, "{stats:?}");
}

#[test]
fn backup_keeps_the_backup_link_idle_and_takes_over_when_the_primary_goes() {
    let fixture = Fixture::scheduled(2, AnyScheduler::Backup(Backup));
    let mut path = fixture.path(&[Impairment::default(); 2], false, 35);
    let sent = packets(200, 1400, 36);
    path.carry(&sent[..100]);
    let first_on = |f: &Fixture, link| f.counters.link(link).1.first;
    // The receiver counts, per link, the packets whose first copy it brought.
    assert_eq!(first_on(&fixture, 1), 0, "the backup link carried packets");
    assert_eq!(first_on(&fixture, 0), 100);
    // The primary's carrier goes: the backup takes over at once.
    fixture.control.set_usable(0, false);
    path.carry(&sent[100..]);
    assert_eq!(first_on(&fixture, 1), 100);
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..200).collect::<Vec<_>>()
    );
}

#[test]
fn striped_over_lossy_links_each_packet_arrives_at_most_once_and_in_order() {
    let lossy = Impairment {
        loss: 5,
        ..Impairment::default()
    };
    for (name, scheduler) in schedulers() {
        let fixture = Fixture::scheduled(2, scheduler);
        let mut path = fixture.path(&[lossy, lossy], false, 37);
        let sent = packets(2000, 1000, 38);
        path.impairments = vec![Impairment::default(); 2];
        path.carry(&sent[..10]);
        path.impairments = vec![lossy, lossy];
        path.carry(&sent[10..]);
        let ids = written_ids(&fixture.tun, &sent);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: out of order");
        let stats = path.receive.stats();
        // Every packet missing was given up, but the last if it was lost (nothing after it
        // shows the gap).
        let missing = 2000 - ids.len() as u64;
        assert!(missing - stats.reorder.lost <= 1, "{name}: {stats:?}");
        // One copy loses 5 %; two, 0.25 %.
        let least = if name == "redundant" { 1980 } else { 1850 };
        assert!(ids.len() >= least, "{name}: {} of 2000", ids.len());
    }
}

#[test]
fn stripe_bundles_small_packets_captured_together() {
    // One link per packet would end a bundle at every packet: a bundle keeps the links it
    // began on.
    let fixture = Fixture::scheduled(2, AnyScheduler::Stripe(Stripe::default()));
    let mut path = fixture.path(&[Impairment::default(); 2], true, 39);
    let sent = packets(640, 200, 40);
    path.carry(&sent);
    assert_eq!(
        written_ids(&fixture.tun, &sent),
        (0..640).collect::<Vec<_>>()
    );
    let frames = fixture.counters.link(0).0.tx_frames + fixture.counters.link(1).0.tx_frames;
    assert!(frames < 200, "{frames} frames for 640 small packets");
    assert!(path.receive.stats().bundles > 0);
}

#[test]
fn what_a_failed_link_carried_last_is_sent_again_on_another() {
    // Stripe: link 0 falls silent (every frame lost) for a batch, then is found down: what it
    // carried in the last RESEND_WINDOW goes out on link 1, and every packet arrives (those
    // whose gaps were given up meanwhile late, out of order).
    let fixture = Fixture::scheduled(2, AnyScheduler::Stripe(Stripe::default()));
    let mut path = fixture.path(&[Impairment::default(); 2], false, 41);
    let sent = packets(200, 1000, 42);
    path.carry(&sent[..100]);
    path.impairments[0] = Impairment {
        loss: 100,
        ..Impairment::default()
    };
    path.carry(&sent[100..]);
    let before: HashSet<u32> = written_ids(&fixture.tun, &sent).into_iter().collect();
    assert!(
        before.len() < 190,
        "link 0 carried little: {}",
        before.len()
    );
    fixture.control.set_usable(0, false);
    path.carry(&[]);
    let ids = written_ids(&fixture.tun, &sent);
    let unique: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a packet was delivered twice");
    assert_eq!(unique.len(), 200, "{:?}", path.receive.stats());
    assert!(fixture.counters.link(1).0.tx_resent > 0);
}

/// A valid IPv4 TCP packet from 192.0.2.1 to 198.51.100.2 with `payload` (checksums right), sequence `seq`.
fn tcp_packet(payload: &[u8], seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x45;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[192, 0, 2, 1]);
    p[16..20].copy_from_slice(&[198, 51, 100, 2]);
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10;
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    p[40..].copy_from_slice(payload);
    let total = p.len();
    crate::ip::set_length(&mut p, 20, total);
    assert!(crate::ip::finish_transport_checksum(&mut p));
    p
}

#[test]
fn tcp_sent_alone_on_a_lossy_link_goes_as_segments_of_one_frame() {
    // Stripe, link health says both links lose 5 %: a 30 000-byte TCP packet is cut into
    // segments that each fit a frame, spread over both links, and they make the same byte
    // stream again.
    let fixture = Fixture::scheduled(2, AnyScheduler::Stripe(Stripe::default()));
    let lossy = alagg_proto::health::HealthView {
        condition: alagg_proto::health::Condition::Up,
        loss: 0.05,
        ..Default::default()
    };
    for link in 0..2 {
        fixture.control.health(link).unwrap().set_view(&lossy);
    }
    fixture.control.health_published();
    let mut path = fixture.path(&[Impairment::default(); 2], false, 43);
    let payload: Vec<u8> = (0..30_000u32).map(|i| (i * 7) as u8).collect();
    let sent = [tcp_packet(&payload, 1000)];
    path.queue_mut()
        .waiting
        .extend(sent.iter().map(|p| (p.clone(), false, false)));
    path.turn();
    for _ in 0..5 {
        path.turn();
    }
    let written = fixture.tun.written.borrow();
    assert!(written.len() > 20, "{} packets written", written.len());
    let mut stream = Vec::new();
    let mut next = 1000u32;
    for segment in written.iter() {
        assert!(
            segment.len() <= 1500 - wire::DATA_HEADER_LEN,
            "{}",
            segment.len()
        );
        assert!(crate::ip::check(segment).is_ok());
        let seq = u32::from_be_bytes(segment[24..28].try_into().unwrap());
        assert_eq!(seq, next, "segments in order");
        stream.extend_from_slice(&segment[40..]);
        next = next.wrapping_add((segment.len() - 40) as u32);
    }
    assert_eq!(stream, payload);
    assert_eq!(fixture.counters.capture().tcp_segmented, 1);
    let (a, b) = (fixture.counters.link(0).0, fixture.counters.link(1).0);
    assert!(a.tx_frames > 5 && b.tx_frames > 5, "{a:?} {b:?}");
}

/// The fixture with `scheduler` and FEC blocks of `k + m` (closed after 1 ms).
fn with_fec(links: usize, scheduler: AnyScheduler, k: u8, m: u8) -> Fixture {
    Fixture {
        fec: Some(FecPlan {
            policy: FecPolicy::Fixed(FecParams::new(k, m).unwrap()),
            timeout: Duration::from_millis(1),
        }),
        ..Fixture::scheduled(links, scheduler)
    }
}

/// Carries `sent` over two links losing `percent` % of frames each way; returns what was
/// delivered (checked byte for byte, and in order with FEC) and the receiver's counters.
fn striped_over_loss(
    fixture: &Fixture,
    percent: u64,
    sent: &[Vec<u8>],
    seed: u64,
) -> (Vec<u32>, alagg_proto::stats::RxStats) {
    let lossy = Impairment {
        loss: percent,
        ..Impairment::default()
    };
    let mut path = fixture.path(&[lossy, lossy], true, seed);
    path.impairments = vec![Impairment::default(); 2];
    path.carry(&sent[..10]);
    path.impairments = vec![lossy, lossy];
    path.carry(&sent[10..]);
    let ids = written_ids(&fixture.tun, sent);
    let stats = path.receive.stats();
    let wrong = ids.windows(2).position(|w| w[0] >= w[1]);
    assert!(
        wrong.is_none() || stats.fec.parity == 0,
        "out of order, or twice, at {wrong:?} of {}: {:?} {stats:?}",
        ids.len(),
        wrong.map(|i| &ids[i.saturating_sub(3)..i + 3])
    );
    (ids, stats)
}

#[test]
fn stripe_with_fec_8_2_recovers_what_two_lossy_links_lose() {
    let sent = packets(5000, 1400, 51);
    let stripe = || AnyScheduler::Stripe(Stripe::default());
    let (plain, _) = striped_over_loss(&Fixture::scheduled(2, stripe()), 2, &sent, 52);
    let fixture = with_fec(2, stripe(), 8, 2);
    let (ids, stats) = striped_over_loss(&fixture, 2, &sent, 52);
    // Without FEC one copy of each packet loses 2 %; with 8+2 a block loses data only when 3 of
    // its 10 frames go.
    assert!(plain.len() < 4950, "stripe alone: {} of 5000", plain.len());
    assert!(
        ids.len() >= 4995,
        "with 8+2: {} of 5000, {:?}",
        ids.len(),
        stats.fec
    );
    assert!(stats.fec.recovered >= 50, "{:?}", stats.fec);
    assert_eq!(stats.fec.rejected, 0);
    let capture = &fixture.counters.workers[0].capture;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let blocks = load(&capture.fec_blocks);
    // Bundles pack several packets a frame: fewer blocks than packets / 8, each with its parity.
    assert!(blocks >= 300, "{blocks} blocks");
    assert_eq!(load(&capture.fec_parity_sent), 2 * blocks);
}

#[test]
fn every_mode_with_fec_carries_every_packet_on_clean_links_and_xor_covers_light_loss() {
    for (name, scheduler) in schedulers().into_iter().filter(|(n, _)| *n != "redundant") {
        let fixture = with_fec(2, scheduler.clone(), 8, 1);
        let mut path = fixture.path(&[Impairment::default(); 2], true, 53);
        let sent = packets(1000, 3000, 54);
        path.carry(&sent);
        check_all(
            &written_ids(&fixture.tun, &sent),
            1000,
            path.receive.stats(),
        );
        // XOR 8+1 on links losing 1 %: about 8 p^2 of the blocks lose a frame for good.
        let fixture = with_fec(2, scheduler, 8, 1);
        let sent = packets(4000, 1000, 55);
        let (ids, stats) = striped_over_loss(&fixture, 1, &sent, 56);
        assert!(
            ids.len() >= 3990,
            "{name}: {} of 4000, {:?}",
            ids.len(),
            stats.fec
        );
        assert!(stats.fec.recovered > 0, "{name}");
    }
}

#[test]
fn with_auth_and_fec_parity_is_sealed_and_rebuilds_on_a_lossy_link() {
    let fixture = with_fec(2, AnyScheduler::Stripe(Stripe::default()), 4, 2);
    let site = SiteKey::from_bytes([7; 32]);
    let lossy = Impairment {
        loss: 3,
        ..Impairment::default()
    };
    let mut path = fixture.path_with(&[lossy, lossy], true, 57, Some((site, true)));
    let sent = packets(3000, 1400, 58);
    path.impairments = vec![Impairment::default(); 2];
    path.carry(&sent[..10]);
    path.impairments = vec![lossy, lossy];
    path.carry(&sent[10..]);
    let ids = written_ids(&fixture.tun, &sent);
    let stats = path.receive.stats();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(ids.len() >= 2990, "{} of 3000, {:?}", ids.len(), stats.fec);
    assert!(stats.fec.recovered > 0 && stats.fec.parity > 0);
    assert_eq!((stats.auth_failed, stats.unauthenticated), (0, 0));
}
