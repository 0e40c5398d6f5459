//! Privileged end-to-end test of the receiver without `[auth]` (issue 17): single spoofed
//! frames on a link, with the peer's source MAC, this host's destination MAC and the right
//! link byte, injected while a counted UDP stream runs, neither stop the stream nor get a
//! packet delivered. Three kinds, each a single frame at a time, a hold time and more apart:
//! - **epoch flips**: a well-formed data frame of a random other epoch;
//! - **sequence jumps**: a data frame of the current epoch (learned from a genuine frame
//!   captured on the link) numbered 2^62 past the stream;
//! - **random headers**: version 2, a data or bundle type, the link's byte, every other header
//!   byte and the payload random, half of them of the current epoch and numbered among the
//!   stream's next packets.
//!
//! The epoch flips and jumps carry a copy of a datagram the stream already delivered, so one
//! believed would show as a duplicate at the receiving application. The bound on loss is the
//! spec's (docs/PROTOCOL.md, *Receiver behaviour*): a forged frame may cost at most the packet
//! whose number it took, so only the random frames of the current epoch numbered in the
//! stream may cost one each (and their payloads, not IP packets from the peer, take none).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use alagg::ops::snapshot::Snapshot;
use alagg_testbed::RawSocket;
use common::*;

const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header, then the alagg header's fields (docs/PROTOCOL.md, *Frame*).
const ETH: usize = 14;
const EPOCH: usize = ETH + 4;
const SEQ: usize = ETH + 12;
const HEADER: usize = 36;
/// Frames of each kind, and the time between two injected frames (the hold time is 5 ms).
const EACH: u64 = 12;
const SPACING: Duration = Duration::from_millis(12);
const PORT: u16 = 5400;
const DATAGRAM: usize = 64;

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (byte, hex) in out.iter_mut().zip(mac.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap();
    }
    out
}

/// xorshift64: the test's randomness, repeatable from its seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// An IPv4 UDP packet from A's service address to B's on [`PORT`] carrying the stream's
/// datagram `number`: what a genuine frame of the stream carries.
fn stream_packet(number: u32) -> Vec<u8> {
    let datagram = numbered_datagram(number, DATAGRAM);
    let total = 28 + datagram.len();
    let a: std::net::Ipv4Addr = A4.parse().unwrap();
    let b: std::net::Ipv4Addr = B4.parse().unwrap();
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&a.octets());
    packet.extend_from_slice(&b.octets());
    let mut sum: u32 = packet
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    packet[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // UDP with no checksum (RFC 768 allows it over IPv4).
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&PORT.to_be_bytes());
    packet.extend_from_slice(&((8 + datagram.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&datagram);
    packet
}

/// A wire v2 data frame on link 0 from A to B carrying `payload`.
fn data_frame(epoch: u64, seq: u64, lane_seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH + HEADER + payload.len());
    frame.extend_from_slice(&mac_bytes(&mac(0xb, 0)));
    frame.extend_from_slice(&mac_bytes(&mac(0xa, 0)));
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&[2, 1, 0, 0]);
    frame.extend_from_slice(&epoch.to_be_bytes());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(&lane_seq.to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[HEADER as u8, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A frame of random bytes but for what routes it to the engine: the MACs, the ethertype,
/// version 2, a data or bundle type, link 0. With `current`, its epoch and a number ahead.
fn random_frame(state: &mut u64, current: Option<(u64, u64)>) -> Vec<u8> {
    let len = ETH + HEADER + (next(state) % 200) as usize;
    let mut frame: Vec<u8> = (0..len).map(|_| next(state) as u8).collect();
    frame[..6].copy_from_slice(&mac_bytes(&mac(0xb, 0)));
    frame[6..12].copy_from_slice(&mac_bytes(&mac(0xa, 0)));
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[ETH] = 2;
    frame[ETH + 1] = if next(state) & 1 == 0 { 1 } else { 4 };
    frame[ETH + 2] = 0;
    if let Some((epoch, seq)) = current {
        frame[EPOCH..EPOCH + 8].copy_from_slice(&epoch.to_be_bytes());
        let ahead = seq + 100 + next(state) % 1000;
        frame[SEQ..SEQ + 8].copy_from_slice(&ahead.to_be_bytes());
    }
    frame
}

/// The refusals the engine counts for a frame it does not believe or cannot use.
fn refusals(s: &Snapshot) -> u64 {
    let c = &s.engine.counts;
    c.malformed
        + c.oversized
        + c.unknown_epoch
        + c.stale_epoch
        + c.implausible_seq
        + c.inadmissible
        + c.rogue
}

/// B's snapshot once `ready` holds for it (the engine's counters are published every 100 ms).
fn status_when(pair: &Pair, what: &str, ready: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = status_json(&pair.b);
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "B's counters did not show {what} within 10 s:\n{}",
            snapshot.render_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the injector did.
#[derive(Debug, Default)]
struct Injected {
    flips: u64,
    jumps: u64,
    random: u64,
    /// Random frames of the current epoch numbered among the stream's next packets: each may
    /// take one genuine packet's number.
    may_cost: u64,
    /// The stream's number in a genuine frame seen as the last forged frame went out.
    last_seq: u64,
    /// B's counters just before the first forged frame.
    before: Snapshot,
}

#[test]
fn single_spoofed_frames_without_auth_neither_stop_the_stream_nor_deliver() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let pair = Pair::new("spoof", 2);
    // B's link 1 is an AF_PACKET link, so a packet socket of the test there sees A's genuine
    // frames (on an XDP link the program steers them past it); the forged ones go on link 0.
    let (a, b) = pair.up_edited(2, |text| {
        text.replace(
            "interface = \"link1\"\n",
            "interface = \"link1\"\nio = \"af_packet\"\n",
        )
    });
    let count: u32 = 30_000;
    let latest: Mutex<Option<(u64, u64)>> = Mutex::new(None);
    let done = AtomicBool::new(false);
    let (seen, injected) = thread::scope(|scope| {
        let tap = scope.spawn(|| {
            pair.b
                .enter(|| {
                    let socket = RawSocket::open("link1", ETHERTYPE).expect("tap on B's link1");
                    let mut buf = [0u8; 2048];
                    while !done.load(Relaxed) {
                        let Some(n) = socket.recv(&mut buf, Duration::from_millis(50)).unwrap()
                        else {
                            continue;
                        };
                        // Data frames and bundles (types 1 and 4) carry the stream's numbers.
                        if n >= ETH + HEADER && buf[ETH] == 2 && matches!(buf[ETH + 1], 1 | 4) {
                            let epoch =
                                u64::from_be_bytes(buf[EPOCH..EPOCH + 8].try_into().unwrap());
                            let seq = u64::from_be_bytes(buf[SEQ..SEQ + 8].try_into().unwrap());
                            *latest.lock().unwrap() = Some((epoch, seq));
                        }
                    }
                })
                .unwrap()
        });
        let injector = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let learned = || *latest.lock().unwrap();
            while learned().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no genuine frame seen on B's link1 within 10 s"
                );
                thread::sleep(Duration::from_millis(5));
            }
            let mut injected = Injected {
                before: status_json(&pair.b),
                ..Injected::default()
            };
            let (epoch, _) = learned().unwrap();
            let mut state = 0x2545_f491_4f6c_dd1d ^ epoch;
            pair.a
                .enter(|| {
                    let socket =
                        RawSocket::open("link0", ETHERTYPE).expect("injector on A's link0");
                    let send = |frame: Vec<u8>| {
                        let mut frame = frame;
                        frame.resize(frame.len().max(60), 0);
                        socket.send(&frame).expect("inject");
                        thread::sleep(SPACING);
                    };
                    for i in 0..EACH {
                        let (epoch, seq) = learned().unwrap();
                        // A copy of a datagram delivered already: believed, it is a duplicate.
                        let payload = stream_packet(i as u32);
                        let other = loop {
                            let e = next(&mut state);
                            if e != epoch {
                                break e;
                            }
                        };
                        send(data_frame(other, seq + 10, next(&mut state), &payload));
                        injected.flips += 1;
                        send(data_frame(epoch, seq + (1 << 62) + i * 1000, i, &payload));
                        injected.jumps += 1;
                        let current = (i & 1 == 0).then_some((epoch, seq));
                        send(random_frame(&mut state, current));
                        injected.random += 1;
                        injected.may_cost += u64::from(current.is_some());
                    }
                })
                .unwrap();
            injected.last_seq = learned().unwrap().1;
            injected
        });
        thread::sleep(Duration::from_millis(100));
        let seen = udp_numbered(&pair, PORT, count, DATAGRAM);
        let injected = injector.join().unwrap();
        done.store(true, Relaxed);
        tap.join().unwrap();
        (seen, injected)
    });
    // The stream went on after the last forged frame: they all came in the middle of it.
    let (_, final_seq) = latest.lock().unwrap().unwrap();
    assert!(
        final_seq > injected.last_seq + 1000,
        "the stream ended with the injection (numbers {} then {final_seq}): make it longer",
        injected.last_seq
    );

    let forged = injected.flips + injected.jumps + injected.random;
    let before = &injected.before;
    let after = status_when(&pair, "every forged frame refused", |s| {
        refusals(s) >= refusals(before) + forged
    });
    let log_b = b.stop();
    let log_a = a.stop();
    let context = format!("{injected:?}\nA:\n{log_a}\nB:\n{log_b}");
    let missing = seen.iter().filter(|&&n| n == 0).count() as u64;
    let twice = seen.iter().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "a forged frame's packet was delivered\n{context}");
    assert!(
        missing <= injected.may_cost,
        "{missing} of {count} datagrams lost to {forged} forged frames, at most {} allowed\n{context}",
        injected.may_cost
    );
    let (c, c0) = (&after.engine.counts, &before.engine.counts);
    // Each kind reached the check it is for, and none was believed.
    assert!(
        c.unknown_epoch - c0.unknown_epoch >= injected.flips,
        "epoch flips not counted\n{context}"
    );
    assert!(
        c.implausible_seq - c0.implausible_seq >= injected.jumps,
        "sequence jumps not counted\n{context}"
    );
    assert_eq!(c.epoch_changes, 0, "a forged epoch was adopted\n{context}");
    assert_eq!(c.seq_jumps, 0, "a forged jump was believed\n{context}");
    // They came on link 0 from the peer's MAC to B's, naming link 0: nothing refused them
    // before the engine.
    let (l, l0) = (&after.links[0].rx, &before.links[0].rx);
    assert_eq!(
        (
            l.rx_foreign - l0.rx_foreign,
            l.rx_wrong_link - l0.rx_wrong_link
        ),
        (0, 0),
        "forged frames refused before the engine\n{context}"
    );
    assert!(log_b.contains("alagg stopped"), "{log_b}");
}
