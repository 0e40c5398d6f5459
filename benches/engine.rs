//! Criterion benchmarks of the protocol core: encapsulation, duplicate elimination and
//! reordering, fragmentation and reassembly. Run with
//! `cargo bench -p alagg-benches --bench engine`.
#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;

use alagg_proto::wire::{DEFAULT_ETHERTYPE, EthernetRepr, MacAddr};
use alagg_proto::{Receiver, ReceiverConfig, Sender, Timestamp};
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
            let n = plan.emit(0, 0, &pkt, &mut out).unwrap();
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
                black_box(plan.emit_ethernet(0, 0, &eth, &pkt, &mut out).unwrap())
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
            let n = plan.emit(0, 0, &pkt, &mut out).unwrap();
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
                let n = plan.emit(i, 0, &pkt, &mut out).unwrap();
                rx.on_frame(&out[..n], Timestamp::ZERO, |p: &[u8]| delivered = p.len());
            }
            assert_eq!(delivered, len);
            black_box(delivered)
        })
    });
    g.finish();
}

criterion_group!(benches, encapsulate, receive, pipeline, fragmentation);
criterion_main!(benches);
