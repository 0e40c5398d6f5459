//! Measures the impairment relay on this machine: frames per second it carries at 64 and
//! 1500 bytes (against the plain bridge), and how close to the set delay frames leave.
//!
//! `sudo target/release/examples/relay_bench` after
//! `cargo build --release -p alagg-testbed --example relay_bench`. Makes its own test namespaces
//! (removed at the end) and sends only inside them: raw frames of a local experimental
//! ethertype from host A's link0 to host B's, which B's stack counts and drops.
#![expect(
    clippy::unwrap_used,
    reason = "a measuring tool that stops at the first failure"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alagg_testbed::{Direction, Host, Path, RawSocket, Testbed};

/// IEEE 802 local experimental ethertype 1.
const ETHERTYPE: u16 = 0x88b5;

fn frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[..6].copy_from_slice(&Testbed::mac(Host::B, 0));
    frame[6..12].copy_from_slice(&Testbed::mac(Host::A, 0));
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame
}

/// B's link0 received packets and bytes.
fn rx_counters(bed: &Testbed) -> (u64, u64) {
    let json = bed
        .b
        .ip(&["-s", "-j", "link", "show", "dev", "link0"])
        .unwrap();
    let rx = &json[json.find("\"rx\"").unwrap()..];
    let number = |key: &str| -> u64 {
        let at = rx.find(key).unwrap() + key.len();
        rx[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (number("\"packets\":"), number("\"bytes\":"))
}

/// Sends `len`-byte frames from A as fast as one thread can for `seconds`; returns (offered
/// frames/s, frames/s B received, Gbit/s B received).
fn blast(bed: &Testbed, len: usize, seconds: f64) -> (f64, f64, f64) {
    let socket = bed
        .a
        .enter(|| RawSocket::open("link0", ETHERTYPE))
        .unwrap()
        .unwrap();
    let frame = frame(len);
    let (p0, b0) = rx_counters(bed);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..256 {
            if socket.send(&frame).is_ok() {
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let what is in flight arrive (delays are at most tens of ms here).
    std::thread::sleep(Duration::from_millis(200));
    let (p1, b1) = rx_counters(bed);
    (
        sent as f64 / elapsed,
        (p1 - p0) as f64 / elapsed,
        (b1 - b0) as f64 * 8.0 / elapsed / 1e9,
    )
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One-way delays in us of `count` timestamped probes sent from A to B every `gap`, sorted.
fn probe(bed: &Testbed, count: usize, gap: Duration) -> Vec<f64> {
    let tx = bed
        .a
        .enter(|| RawSocket::open("link0", ETHERTYPE))
        .unwrap()
        .unwrap();
    let rx = bed
        .b
        .enter(|| RawSocket::open("link0", ETHERTYPE))
        .unwrap()
        .unwrap();
    let mut delays = Vec::with_capacity(count);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut frame = frame(64);
            for _ in 0..count {
                frame[14..22].copy_from_slice(&now_ns().to_ne_bytes());
                frame[22] = 0x5a;
                tx.send(&frame).unwrap();
                std::thread::sleep(gap);
            }
        });
        let mut buf = [0u8; 2048];
        while let Ok(Some(n)) = rx.recv(&mut buf, Duration::from_millis(500)) {
            let now = now_ns();
            if n >= 23 && buf[22] == 0x5a {
                let sent = u64::from_ne_bytes(buf[14..22].try_into().unwrap());
                delays.push((now - sent) as f64 / 1000.0);
                if delays.len() == count {
                    break;
                }
            }
        }
    });
    delays.sort_by(f64::total_cmp);
    delays
}

fn summary(label: &str, delays: &[f64], set_us: f64) {
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize] - set_us;
    println!(
        "{label:<44} n={:4}  error vs set delay (us): min {:7.1}  p50 {:7.1}  p90 {:7.1}  p99 {:7.1}  max {:7.1}",
        delays.len(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// Keeps a stream of 1500-byte frames going from A to B until `stop`.
fn background(bed: &Testbed, stop: &AtomicBool, sent: &AtomicU64) {
    let socket = bed
        .a
        .enter(|| RawSocket::open("link0", ETHERTYPE))
        .unwrap()
        .unwrap();
    let frame = frame(1500);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            if socket.send(&frame).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        // About 1 Gbit/s offered at most.
        std::thread::sleep(Duration::from_micros(700));
    }
}

fn main() {
    assert!(alagg_testbed::is_root(), "run as root: it makes namespaces");
    let bed = Testbed::new("rbench", 1).unwrap();
    println!(
        "kernel {}, {} cores",
        alagg_testbed::run("uname", &["-r"]).unwrap().trim(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("\nthroughput, one sender thread on A:link0 (raw frames), counted on B:link0:");
    for (wire, path) in [
        ("bridge", None),
        ("relay, no delay", Some(Path::default())),
        ("relay, 10 ms", Some(Path::delay(Duration::from_millis(10)))),
    ] {
        match &path {
            Some(path) => bed.set_path(0, Direction::Both, path.clone()).unwrap(),
            None => bed.clear_path(0).unwrap(),
        }
        for len in [64, 1500] {
            let (offered, pps, gbit) = blast(&bed, len, 2.0);
            let stats = bed.path_stats(0, Direction::AtoB);
            println!(
                "  {wire:<16} {len:4} B: offered {:7.0} kpps, delivered {:7.0} kpps = {gbit:5.2} Gbit/s{}",
                offered / 1e3,
                pps / 1e3,
                stats.map_or(String::new(), |s| format!(
                    "  (relay so far: {} relayed, {} queue drops, {} refused, {} rx drops)",
                    s.relayed, s.queue_dropped, s.send_failed, s.rx_dropped
                ))
            );
        }
    }

    println!("\none-way delay of 64-byte probes every 1 ms, A to B (raw sockets both ends):");
    bed.clear_path(0).unwrap();
    summary(
        "bridge (the measurement's own overhead)",
        &probe(&bed, 500, Duration::from_millis(1)),
        0.0,
    );
    for ms in [1u64, 10, 50] {
        bed.set_path(0, Direction::AtoB, Path::delay(Duration::from_millis(ms)))
            .unwrap();
        summary(
            &format!("relay, delay {ms} ms, idle"),
            &probe(&bed, 500, Duration::from_millis(1)),
            ms as f64 * 1000.0,
        );
    }
    bed.set_path(0, Direction::AtoB, Path::delay(Duration::from_millis(10)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| background(&bed, &stop, &sent));
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let delays = probe(&bed, 500, Duration::from_millis(1));
        let rate = sent.load(Ordering::Relaxed) as f64 * 1500.0 * 8.0
            / (start.elapsed().as_secs_f64() + 0.2)
            / 1e9;
        summary(
            &format!("relay, delay 10 ms, ~{rate:.1} Gbit/s beside"),
            &delays,
            10_000.0,
        );
        stop.store(true, Ordering::Relaxed);
    });
}
