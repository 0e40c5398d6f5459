//! The fuzz seed corpus (`fuzz/seeds/<target>/`) is made of real frames from the emit code.
//!
//! This test checks that the committed seeds are exactly what the current emit code produces,
//! so they never rot. After a deliberate wire change, regenerate them with
//! `ALAGG_WRITE_SEEDS=1 cargo test -p alagg-proto --test fuzz_seeds`.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::path::PathBuf;

use alagg_proto::wire::{DEFAULT_ETHERTYPE, EthernetRepr, MacAddr, ProbeRepr};
use alagg_proto::{Bundler, Sender, Stamp};

const MTU: usize = 1500;

fn eth() -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

fn packet(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 1) as u8).collect()
}

/// Ethernet frames of one packet on one link.
fn frames(tx: &mut Sender, len: usize, link: u8, mtu: usize) -> Vec<Vec<u8>> {
    let pkt = packet(len);
    let plan = tx.plan(len, mtu).unwrap();
    (0..plan.frame_count())
        .map(|i| {
            let mut out = vec![0u8; 14 + mtu];
            let n = plan
                .emit_ethernet(i, Stamp::on(link), &eth(), &pkt, &mut out)
                .unwrap();
            out.truncate(n);
            out
        })
        .collect()
}

fn record(out: &mut Vec<u8>, step: u8, eth_frame: &[u8]) {
    let frame = &eth_frame[14..];
    out.push(step);
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    out.extend_from_slice(frame);
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut tx = Sender::new(0x0a1a_6601);
    let data = frames(&mut tx, 60, 0, MTU).remove(0);
    let frag = frames(&mut tx, 3000, 1, MTU);
    let mut probe = vec![0u8; 14 + 44];
    eth().emit(&mut probe).unwrap();
    let p = ProbeRepr {
        echo_time: 900,
        echo_delay: 5,
    };
    tx.probe(
        Stamp {
            lane_seq: 7,
            ..Stamp::on(0)
        },
        p,
    )
    .emit(&mut probe[14..])
    .unwrap();

    let mut bundler = Bundler::new();
    for len in [40, 60, 28] {
        assert!(bundler.push(&packet(len), MTU));
    }
    let mut bundle = vec![0u8; 14 + MTU];
    let n = bundler
        .seal(&mut tx)
        .unwrap()
        .emit_ethernet(Stamp::on(1), &eth(), &mut bundle)
        .unwrap();
    bundle.truncate(n);

    // Receive: two links, duplicates, a reordered pair, a fragmented packet with a copy, a
    // gap that expires, and a restart with a new epoch.
    let mut tx = Sender::new(1);
    let mut rx_in = Vec::new();
    let p0 = frames(&mut tx, 100, 0, 256);
    let p1 = frames(&mut tx, 700, 0, 256);
    let p2 = frames(&mut tx, 40, 0, 256);
    let _lost = frames(&mut tx, 40, 0, 256);
    let p4 = frames(&mut tx, 40, 1, 256);
    for f in &p0 {
        record(&mut rx_in, 0, f);
        record(&mut rx_in, 1, f);
    }
    record(&mut rx_in, 1, &p2[0]);
    for f in p1.iter().rev() {
        record(&mut rx_in, 1, f);
    }
    record(&mut rx_in, 0, &p1[0]);
    record(&mut rx_in, 1, &p4[0]);
    record(&mut rx_in, 100, &probe);
    // A bundle on both links, after a data frame its first packet was reordered behind.
    let bundled = {
        let mut b = Bundler::new();
        for len in [30, 50] {
            assert!(b.push(&packet(len), 256));
        }
        let mut out = vec![0u8; 14 + 256];
        let n = b
            .seal(&mut tx)
            .unwrap()
            .emit_ethernet(Stamp::on(0), &eth(), &mut out)
            .unwrap();
        out.truncate(n);
        out
    };
    let after = frames(&mut tx, 40, 1, 256);
    record(&mut rx_in, 1, &after[0]);
    record(&mut rx_in, 0, &bundled);
    record(&mut rx_in, 1, &bundled);
    // The peer restarts after a pause longer than the fuzz target's hold time: the new epoch
    // is believed on its fourth packet, the first three kept until then.
    let mut restarted = Sender::new(2);
    for (i, len) in [80, 90, 100, 110, 120].into_iter().enumerate() {
        for f in frames(&mut restarted, len, 1, 256) {
            record(&mut rx_in, if i == 0 { 100 } else { 1 }, &f);
        }
    }

    vec![
        ("parse", "data.bin", data),
        ("parse", "fragment-first.bin", frag[0].clone()),
        ("parse", "fragment-last.bin", frag[frag.len() - 1].clone()),
        ("parse", "probe.bin", probe),
        ("parse", "bundle.bin", bundle),
        ("receive", "stream.bin", rx_in),
    ]
}

#[test]
fn committed_seeds_match_the_emit_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = std::env::var_os("ALAGG_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = root.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale: regenerate (see module docs)",
            path.display()
        );
    }
}

#[test]
fn the_receive_seed_reaches_a_restart() {
    // Replays `stream.bin` as the receive fuzz target does (its configuration, its records):
    // the seed must take the receiver through a believed restart, so the corpus starts there.
    let config = alagg_proto::ReceiverConfig {
        dedup_window: 64,
        reorder_capacity: 16,
        hold_time: std::time::Duration::from_micros(300),
        slot_size: 64,
        large_slots: 2,
        max_packet_len: 8192,
        reassembly_slots: 2,
        reassembly_timeout: std::time::Duration::from_micros(500),
        deliver_late: true,
        release_passed_gaps: true,
    };
    let mut rx = alagg_proto::Receiver::new(&config).unwrap();
    let seed = seeds()
        .into_iter()
        .find(|(_, name, _)| *name == "stream.bin")
        .unwrap()
        .2;
    let (mut rest, mut now, mut delivered) = (&seed[..], 0u64, 0);
    let mut deliver = |_: &[u8]| delivered += 1;
    while rest.len() >= 3 {
        now += u64::from(rest[0]) * 10_000;
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let end = (3 + len).min(rest.len());
        let t = alagg_proto::Timestamp::from_nanos(now);
        if rx.next_deadline().is_some_and(|d| d <= t) {
            rx.poll(t, &mut deliver);
        }
        rx.on_frame(&rest[3..end], t, &mut deliver);
        rest = &rest[end..];
    }
    assert_eq!(rx.peer_epoch(), Some(2));
    assert_eq!(rx.stats().epoch_changes, 1);
    assert_eq!(rx.stats().pending_lost, 0);
}
