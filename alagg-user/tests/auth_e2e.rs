//! Privileged end-to-end tests of `[auth]` (issue 17): two hosts sharing a key carry traffic,
//! and frames an on-link attacker makes from genuine ones (payload changed, sequence number
//! changed, tag changed, replayed later) are never delivered; a peer without the key, or with
//! another one, gets nothing through and both logs say why.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::RawSocket;
use common::*;

/// Ethernet header, then where the alagg header keeps its sequence number (`docs/PROTOCOL.md`).
const ETH: usize = 14;
const SEQ_LOW_BYTE: usize = ETH + 19;
/// The first payload byte of a data frame (36-byte header) or a bundle (40).
const PAYLOAD: usize = ETH + 40;

/// A new key from `alagg genkey`, in a file of mode 0600 under `dir`.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(ALAGG).arg("genkey").output().expect("genkey");
    assert!(out.status.success(), "alagg genkey: {out:?}");
    let path = dir.join(name);
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&out.stdout))
        .expect("write the key file");
    path
}

fn auth_table(key: &Path, encrypt: bool) -> String {
    format!(
        "\n[auth]\nkey_file = \"{}\"\nencrypt = {encrypt}\n",
        key.display()
    )
}

/// Starts A and B on two links, each with its own `[auth]` table (or none); B's link 1 is an
/// AF_PACKET link, so a packet socket of the test there sees the frames A sends.
fn start(pair: &Pair, auth_a: &str, auth_b: &str) -> (Alagg, Alagg) {
    let config = |host: u8, auth: &str| {
        let path = pair.config(host, 2);
        let mut text = fs::read_to_string(&path).unwrap() + auth;
        if host == 0xb {
            text = text.replace(
                "interface = \"link1\"\n",
                "interface = \"link1\"\nio = \"af_packet\"\n",
            );
        }
        fs::write(&path, text).unwrap();
        path
    };
    let a = Alagg::start(&pair.a, &config(0xa, auth_a), pair.dir.join("a.log"));
    let b = Alagg::start(&pair.b, &config(0xb, auth_b), pair.dir.join("b.log"));
    (a, b)
}

/// Datagrams that reach B's application on `port` within `wait`.
fn arrivals(pair: &Pair, port: u16, wait: Duration, during: impl FnOnce() + Send) -> usize {
    let socket = pair
        .b
        .enter(|| std::net::UdpSocket::bind((B4, port)).expect("bind"))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 2048];
            let mut got = 0;
            while Instant::now() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        });
        during();
        counter.join().unwrap()
    })
}

fn authenticated_pair_carries_traffic_and_refuses_changed_and_replayed_frames(encrypt: bool) {
    let pair = Pair::new(if encrypt { "authenc" } else { "authtag" }, 2);
    let key = key_file(&pair.dir, "site.key");
    let auth = auth_table(&key, encrypt);
    let (a, b) = start(&pair, &auth, &auth);
    for log in [a.log(), b.log()] {
        assert!(!log.contains("not authenticated"), "{log}");
    }

    // Genuine frames, as an attacker on link 1 sees them, while a numbered stream runs.
    let port = 5300;
    // Links are never silent (feedback every 10 ms): the tap stops when the stream has ended.
    let stream_done = AtomicBool::new(false);
    let (seen, captured) = thread::scope(|scope| {
        let tap = scope.spawn(|| {
            pair.b
                .enter(|| {
                    let socket = RawSocket::open("link1", 0x88b5).expect("tap");
                    let mut frames = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !stream_done.load(Ordering::Relaxed) {
                        let Some(n) = socket.recv(&mut buf, Duration::from_millis(100)).unwrap()
                        else {
                            continue;
                        };
                        // Data frames and bundles only (types 1 and 4), not probes or feedback.
                        let carries_packets = matches!(buf[ETH + 1], 1 | 4);
                        if frames.len() < 300 && carries_packets && n > PAYLOAD + 16 {
                            frames.push(buf[..n].to_vec());
                        }
                    }
                    frames
                })
                .unwrap()
        });
        thread::sleep(Duration::from_millis(100));
        let seen = udp_numbered(&pair, port, 2_000, 64);
        stream_done.store(true, Ordering::Relaxed);
        (seen, tap.join().unwrap())
    });
    assert!(
        seen.iter().all(|&n| n == 1),
        "each datagram exactly once with [auth]: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, n)| **n != 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(captured.len() >= 100, "tapped {} frames", captured.len());
    // Every datagram's IPv4 source and destination, side by side in its header: readable in
    // every frame, unless the payload is encrypted.
    let addresses = [198, 18, 100, 1, 198, 18, 100, 2];
    let readable = captured
        .iter()
        .filter(|f| f.windows(8).any(|w| w == addresses))
        .count();
    if encrypt {
        assert_eq!(readable, 0, "packets readable on an encrypted link");
    } else {
        assert_eq!(
            readable,
            captured.len(),
            "tag-only frames carry packets in clear"
        );
    }

    // Changed copies of genuine frames, then the genuine frames again, sent from A's side of
    // link 1 as if A had sent them.
    let mut forged = Vec::new();
    for frame in &captured {
        for at in [PAYLOAD, SEQ_LOW_BYTE, frame.len() - 1] {
            let mut changed = frame.clone();
            changed[at] ^= 0x40;
            forged.push(changed);
        }
    }
    let got = arrivals(&pair, port, Duration::from_millis(1500), || {
        pair.a
            .enter(|| {
                let socket = RawSocket::open("link1", 0x88b5).expect("inject");
                for frame in forged.iter().chain(&captured) {
                    socket.send(frame).expect("inject");
                    thread::sleep(Duration::from_micros(50));
                }
            })
            .unwrap();
    });
    assert_eq!(got, 0, "a changed or replayed frame was delivered");
    // Still carrying genuine traffic.
    let out = ping(&pair.a, &["-c", "5", "-i", "0.05", "-W", "2", B4]);
    assert!(out.contains(" 0% packet loss"), "{out}");
    let log_b = b.stop();
    a.stop();
    let failed = summary_value(&log_b, "auth_failed");
    assert!(
        failed >= forged.len() as u64 * 9 / 10,
        "{failed} of {} changed frames failed authentication\n{log_b}",
        forged.len()
    );
    assert!(
        log_b.contains("does not verify"),
        "the first forged frame is logged\n{log_b}"
    );
}

#[test]
fn with_auth_traffic_flows_and_no_changed_or_replayed_frame_is_delivered() {
    alagg_testbed::require_root!();
    authenticated_pair_carries_traffic_and_refuses_changed_and_replayed_frames(false);
}

#[test]
fn with_auth_and_encryption_traffic_flows_unreadable_and_no_forgery_is_delivered() {
    alagg_testbed::require_root!();
    authenticated_pair_carries_traffic_and_refuses_changed_and_replayed_frames(true);
}

#[test]
fn a_peer_without_the_key_or_with_another_gets_nothing_through_and_both_logs_say_so() {
    alagg_testbed::require_root!();
    let pair = Pair::new("authmis", 2);
    let key_a = key_file(&pair.dir, "a.key");
    let key_b = key_file(&pair.dir, "b.key");
    for (auth_b, a_says, b_says) in [
        ("", "the peer has no [auth]", "this host has not"),
        (
            &*auth_table(&key_b, false),
            "another [auth] key",
            "another [auth] key",
        ),
    ] {
        let (mut a, mut b) = start(&pair, &auth_table(&key_a, false), auth_b);
        for (ns, target) in [(&pair.a, B4), (&pair.b, A4)] {
            let out = ns
                .command("ping")
                .args(["-c", "5", "-i", "0.05", "-W", "1", target])
                .output()
                .expect("ping");
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(shown.contains("100% packet loss"), "{shown}");
        }
        a.wait_for(a_says, Duration::from_secs(5));
        b.wait_for(b_says, Duration::from_secs(5));
        let (log_b, log_a) = (b.stop(), a.stop());
        assert_eq!(summary_value(&log_b, "delivered"), 0, "{log_b}");
        assert_eq!(summary_value(&log_a, "delivered"), 0, "{log_a}");
        for log in [&log_a, &log_b] {
            let notices = log.lines().filter(|l| l.contains("are dropped")).count();
            assert_eq!(notices, 1, "said once, not per frame:\n{log}");
        }
        if auth_b.is_empty() {
            assert!(log_b.contains("frames are not authenticated"), "{log_b}");
        }
    }
}
