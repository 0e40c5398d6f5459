//! Criterion benchmarks of the protocol core: encapsulation, duplicate elimination and
//! reordering, fragmentation and reassembly, frame authentication. Run with
//! `cargo bench -p alagg-benches --bench engine`.
#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;

use alagg_proto::auth::{FrameKey, Keyring, SiteKey};
use alagg_proto::wire::{
    DEFAULT_ETHERTYPE, EthernetRepr, FLAG_AUTH, FLAG_ENCRYPTED, MacAddr, TAG_LEN,
};
use alagg_proto::{Lane, Receiver, ReceiverConfig, Sender, Stamp, Timestamp};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MTU: usize = 1500;
const BATCH: u64 = 1024;

fn eth() -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        ethertype: DEFAULT_ETHERTYPE,
    }
}

/// `n` data frames (after the Ethernet header) of `len`-byte packets, numbered from 0.
fn frames(n: u64, len: usize) -> Vec<Vec<u8>> {
    let mut tx = Sender::new(1);
    let pkt = vec![0x45u8; len];
    (0..n)
        .map(|_| {
            let plan = tx.plan(len, MTU).unwrap();
            let mut out = vec![0u8; MTU];
            let n = plan.emit(0, Stamp::on(0), &pkt, &mut out).unwrap();
            out.truncate(n);
            out
        })
        .collect()
}

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    for len in [64usize, 1400] {
        let pkt = vec![0x45u8; len];
        let mut out = vec![0u8; 2048];
        let mut tx = Sender::new(1);
        let eth = eth();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("plan+emit_ethernet/{len}B"), |b| {
            b.iter(|| {
                let plan = tx.plan(black_box(len), MTU).unwrap();
                black_box(
                    plan.emit_ethernet(0, Stamp::on(0), &eth, &pkt, &mut out)
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup+reorder");
    g.throughput(Throughput::Elements(BATCH));
    let in_order = frames(BATCH, 64);
    // 10 % of packets swapped with their successor: 1 in 10 arrives a step late.
    let mut reordered = frames(BATCH, 64);
    for i in (0..BATCH as usize - 1).step_by(10) {
        reordered.swap(i, i + 1);
    }
    // Two copies of every frame, one per link.
    let duplicated: Vec<Vec<u8>> = in_order
        .iter()
        .flat_map(|f| [f.clone(), f.clone()])
        .collect();
    for (name, input) in [
        ("in-order/64B", &in_order),
        ("10%-reordered/64B", &reordered),
        ("2-links-duplicated/64B", &duplicated),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || Receiver::new(&ReceiverConfig::default()).unwrap(),
                |rx| {
                    let mut bytes = 0usize;
                    for f in input {
                        rx.on_frame(f, Timestamp::ZERO, |p: &[u8]| bytes += p.len());
                    }
                    black_box(bytes)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The datapath's per-packet work end to end: plan, emit one copy, receive it in order.
fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let mut tx = Sender::new(1);
    let mut rx = Receiver::new(&ReceiverConfig::default()).unwrap();
    let pkt = vec![0x45u8; 64];
    let mut out = vec![0u8; 2048];
    g.bench_function("encapsulate+dedup+reorder/in-order/64B", |b| {
        b.iter(|| {
            let plan = tx.plan(pkt.len(), MTU).unwrap();
            let n = plan.emit(0, Stamp::on(0), &pkt, &mut out).unwrap();
            let mut delivered = 0;
            rx.on_frame(&out[..n], Timestamp::ZERO, |p: &[u8]| delivered = p.len());
            black_box(delivered)
        })
    });
    g.finish();
}

fn fragmentation(c: &mut Criterion) {
    let mut g = c.benchmark_group("fragment+reassemble");
    let len = 65_535;
    g.throughput(Throughput::Bytes(len as u64));
    let pkt = vec![0x45u8; len];
    let mut tx = Sender::new(1);
    let mut rx = Receiver::new(&ReceiverConfig::default()).unwrap();
    let mut out = vec![0u8; MTU];
    g.bench_function("64KiB/mtu1500", |b| {
        b.iter(|| {
            let plan = tx.plan(len, MTU).unwrap();
            let mut delivered = 0;
            for i in 0..plan.frame_count() {
                let n = plan.emit(i, Stamp::on(0), &pkt, &mut out).unwrap();
                rx.on_frame(&out[..n], Timestamp::ZERO, |p: &[u8]| delivered = p.len());
            }
            assert_eq!(delivered, len);
            black_box(delivered)
        })
    });
    g.finish();
}

/// What `[auth]` adds per frame: the tag alone (AES-256-GCM over header and payload) and with
/// the payload encrypted, sealed at the sender and opened at the receiver, at 64 and 1400
/// bytes; and the whole pipeline with tags, to compare with `pipeline` above.
fn authentication(c: &mut Criterion) {
    let site = SiteKey::from_bytes([7; 32]);
    let epoch = 1;
    let key = FrameKey::derive(&site, epoch);
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    for (mode, flags) in [("tag", FLAG_AUTH), ("encrypt", FLAG_AUTH | FLAG_ENCRYPTED)] {
        for len in [64usize, 1400] {
            let pkt = vec![0x45u8; len];
            let mut tx = Sender::new(epoch).with_flags(flags);
            let mut lane = Lane::new(0, 0);
            let mut out = vec![0u8; 2048];
            g.bench_function(format!("seal/{mode}/{len}B"), |b| {
                b.iter(|| {
                    let plan = tx.plan(len, MTU - TAG_LEN).unwrap();
                    let n = plan
                        .emit(0, lane.stamp(Timestamp::ZERO), &pkt, &mut out)
                        .unwrap();
                    black_box(key.seal(&mut out, n).unwrap())
                })
            });
            let plan = tx.plan(len, MTU - TAG_LEN).unwrap();
            let n = plan
                .emit(0, lane.stamp(Timestamp::ZERO), &pkt, &mut out)
                .unwrap();
            let sealed = key.seal(&mut out, n).unwrap();
            let frame = out[..sealed].to_vec();
            let mut scratch = Vec::with_capacity(2048);
            g.bench_function(format!("open/{mode}/{len}B"), |b| {
                b.iter(|| black_box(key.open(black_box(&frame), &mut scratch).unwrap().len()))
            });
        }
    }
    let mut tx = Sender::new(epoch).with_flags(FLAG_AUTH);
    let mut lane = Lane::new(0, 0);
    let mut rx = Receiver::new(&ReceiverConfig::default())
        .unwrap()
        .with_keyring(Keyring::new(site));
    let pkt = vec![0x45u8; 64];
    let mut out = vec![0u8; 2048];
    g.bench_function("encapsulate+seal+open+dedup+reorder/in-order/64B", |b| {
        b.iter(|| {
            let plan = tx.plan(pkt.len(), MTU - TAG_LEN).unwrap();
            let n = plan
                .emit(0, lane.stamp(Timestamp::ZERO), &pkt, &mut out)
                .unwrap();
            let n = key.seal(&mut out, n).unwrap();
            let mut delivered = 0;
            rx.on_frame(&out[..n], Timestamp::ZERO, |p: &[u8]| delivered = p.len());
            assert_eq!(delivered, 64);
            black_box(delivered)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    encapsulate,
    receive,
    pipeline,
    fragmentation,
    authentication
);
criterion_main!(benches);
