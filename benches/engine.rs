//! Criterion benchmarks of the protocol core: encapsulation, duplicate elimination and
//! reordering, fragmentation and reassembly, frame authentication, FEC. Run with
//! `cargo bench -p alagg-benches --bench engine`.
#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;

use alagg_proto::auth::{FrameKey, Keyring, SiteKey};
use alagg_proto::fec::{Decoder, Encoder, Taken};
use alagg_proto::wire::{
    DEFAULT_ETHERTYPE, EthernetRepr, FLAG_AUTH, FLAG_ENCRYPTED, FecParams, Frame, Kind, MacAddr,
    ParityRepr, TAG_LEN,
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

/// A block's data frames (alagg header first) and its parity (fields, `seq`, shard).
type Block = (Vec<Vec<u8>>, Vec<(ParityRepr, u64, Vec<u8>)>);

/// The next block of `encoder`: `k` data frames of 1280-byte packets and their parity.
fn block(encoder: &mut Encoder, k: u8) -> Block {
    let data = members(encoder, k);
    let parity = encoder.close().unwrap();
    let parity = (0..parity.len())
        .map(|j| {
            let (repr, shard) = parity.frame(j, Stamp::on(1), 1, 0).unwrap();
            let Kind::Parity(p) = repr.kind else {
                unreachable!()
            };
            (p, repr.seq, shard.to_vec())
        })
        .collect();
    (data, parity)
}

/// `k` data frames of 1280-byte packets, members of `encoder`'s open block.
fn members(encoder: &mut Encoder, k: u8) -> Vec<Vec<u8>> {
    let mut tx = Sender::new(1).with_fec(true);
    let pkt = vec![0x45u8; 1280];
    (0..k)
        .map(|_| {
            let plan = tx.plan(pkt.len(), MTU - tx.overhead()).unwrap();
            let member = encoder.member(plan.seq(), Timestamp::ZERO);
            let mut out = vec![0u8; MTU];
            let n = plan.emit(0, Stamp::on(0), &pkt, &mut out).unwrap();
            let n = member.insert(&mut out, n).unwrap();
            out.truncate(n);
            encoder.push(&out);
            out
        })
        .collect()
}

/// FEC per block of 1280-byte packets: the sender's cost (shards taken and parity computed)
/// and the receiver's (shards kept and `m` lost data frames rebuilt), XOR for `m = 1`,
/// Reed-Solomon (`reed-solomon-erasure`, SIMD) above.
fn fec(c: &mut Criterion) {
    let mut g = c.benchmark_group("fec");
    for (k, m) in [(8u8, 1u8), (8, 2), (8, 4)] {
        let params = FecParams::new(k, m).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode/{k}+{m}/1280B"), |b| {
            let mut encoder = Encoder::new(params, 2);
            let pkt = vec![0x45u8; 1280];
            let mut tx = Sender::new(1).with_fec(true);
            let mut out = vec![0u8; MTU];
            b.iter(|| {
                for _ in 0..k {
                    let plan = tx.plan(pkt.len(), MTU - tx.overhead()).unwrap();
                    let member = encoder.member(plan.seq(), Timestamp::ZERO);
                    let n = plan.emit(0, Stamp::on(0), &pkt, &mut out).unwrap();
                    let n = member.insert(&mut out, n).unwrap();
                    encoder.push(&out[..n]);
                }
                black_box(encoder.close().map(|p| p.len()))
            })
        });
        // 256 blocks, decoded in turn by one decoder (in steady state: codes and buffers warm).
        let mut encoder = Encoder::new(params, 2);
        let blocks: Vec<Block> = (0..256).map(|_| block(&mut encoder, k)).collect();
        let mut decoder = Decoder::new();
        let mut next = 0;
        g.bench_function(format!("decode/{k}+{m}/1280B/{m}-lost"), |b| {
            b.iter(|| {
                let (data, parity) = &blocks[next % blocks.len()];
                next += 1;
                let mut rebuilt = 0;
                for frame in &data[usize::from(m)..] {
                    let view = Frame::new_checked(&frame[..]).unwrap();
                    let member = view.member().unwrap().unwrap();
                    decoder.on_member(0, member, frame, Timestamp::ZERO);
                }
                for (p, seq, shard) in parity {
                    if let Taken::Ready(slot) =
                        decoder.on_parity(0, *seq, *p, shard, Timestamp::ZERO)
                    {
                        decoder.rebuild(slot, |f| rebuilt += f.len());
                    }
                }
                assert!(rebuilt > 0, "nothing rebuilt");
                black_box(rebuilt)
            })
        });
    }
    g.finish();
}

/// The two Reed-Solomon crates on their own, 8+2 over 1280-byte shards, each reusing its
/// working space: encode, and decode with two data shards lost. `reed-solomon-erasure` is what
/// alagg uses (`alagg_proto::fec`); `reed-solomon-simd` is the alternative, measured here to
/// choose between them.
fn rs_codecs(c: &mut Criterion) {
    const K: usize = 8;
    const M: usize = 2;
    const LEN: usize = 1280;
    let data: Vec<Vec<u8>> = (0..K)
        .map(|i| (0..LEN).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let mut g = c.benchmark_group("rs 8+2, 1280 B shards");
    g.throughput(Throughput::Elements(1));

    let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(K, M).unwrap();
    let mut parity = vec![vec![0u8; LEN]; M];
    g.bench_function("reed-solomon-erasure/encode", |b| {
        b.iter(|| rs.encode_sep(black_box(&data), &mut parity).unwrap())
    });
    let mut shards: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
    g.bench_function("reed-solomon-erasure/decode 2 lost", |b| {
        b.iter(|| {
            let mut views: Vec<(&mut [u8], bool)> = shards
                .iter_mut()
                .enumerate()
                .map(|(i, s)| (&mut s[..], i >= 2))
                .collect();
            rs.reconstruct_data(&mut views).unwrap();
        })
    });

    let mut encoder = reed_solomon_simd::ReedSolomonEncoder::new(K, M, LEN).unwrap();
    g.bench_function("reed-solomon-simd/encode", |b| {
        b.iter(|| {
            for shard in &data {
                encoder.add_original_shard(shard).unwrap();
            }
            black_box(encoder.encode().unwrap().recovery(0).map(<[u8]>::len))
        })
    });
    let recovery: Vec<Vec<u8>> = {
        for shard in &data {
            encoder.add_original_shard(shard).unwrap();
        }
        let result = encoder.encode().unwrap();
        result.recovery_iter().map(<[u8]>::to_vec).collect()
    };
    let mut decoder = reed_solomon_simd::ReedSolomonDecoder::new(K, M, LEN).unwrap();
    g.bench_function("reed-solomon-simd/decode 2 lost", |b| {
        b.iter(|| {
            for (i, shard) in data.iter().enumerate().skip(2) {
                decoder.add_original_shard(i, shard).unwrap();
            }
            for (i, shard) in recovery.iter().enumerate() {
                decoder.add_recovery_shard(i, shard).unwrap();
            }
            black_box(
                decoder
                    .decode()
                    .unwrap()
                    .restored_original(0)
                    .map(<[u8]>::len),
            )
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
    authentication,
    fec,
    rs_codecs
);
criterion_main!(benches);
