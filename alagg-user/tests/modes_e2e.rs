//! Privileged end-to-end tests of the scheduling modes (`[scheduler] mode`) on the testbed (two
//! hosts, links through a wire namespace): each mode carries ping, TCP with a checksum and UDP
//! exactly once; `backup` keeps its backup link idle; a link that falls silent in the middle of
//! a stream (every frame dropped, carrier kept) is found down, what it carried meanwhile is
//! sent again, and the stream goes on over the other link in every mode, losing at most 0.1 %;
//! `alagg status` shows each link's health. With FEC, stripe over two lossy links delivers
//! what they lose.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::{B_V4, Host, Testbed};
use common::{ALAGG, Alagg, big_receive_buffer, heavy, ping, status_json};
use sha2::{Digest, Sha256};

/// A testbed with alagg running on both hosts in `mode`; fields drop in order: processes, then
/// hosts, then the directory.
struct Running {
    a: Alagg,
    _b: Alagg,
    bed: Testbed,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Running {
    fn new(tag: &str, links: usize, mode: &str) -> Self {
        Self::with_scheduler(tag, links, &format!("mode = \"{mode}\""))
    }

    /// [`Running::new`] with `scheduler` as the `[scheduler]` table's lines.
    fn with_scheduler(tag: &str, links: usize, scheduler: &str) -> Self {
        assert!(alagg_testbed::is_root(), "run as root (`cargo xtask test`)");
        let bed = Testbed::new(tag, links).expect("testbed");
        let dir = std::env::temp_dir().join(bed.a.name());
        std::fs::create_dir_all(&dir).unwrap();
        let write = |host: Host| {
            let path = dir.join(format!("{}.toml", host.letter()));
            let text = format!("{}\n[scheduler]\n{scheduler}\n", bed.config(host));
            std::fs::write(&path, text).unwrap();
            path
        };
        let (config_a, config_b) = (write(Host::A), write(Host::B));
        let a = Alagg::start(&bed.a, &config_a, dir.join("a.log"));
        let b = Alagg::start(&bed.b, &config_b, dir.join("b.log"));
        Self { a, _b: b, bed, dir }
    }

    /// Waits until A's status shows every link up (feedback flowing both ways).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = status_json(&self.bed.a);
            if status.links.iter().all(|l| l.health.health == "up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "links not up within 5 s: {:?}",
                status.links.iter().map(|l| &l.health).collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends `count` numbered 64-byte datagrams from A to B, `per_ms` every millisecond, calling
/// `during` at `at` into the stream; returns how often each number arrived and the longest
/// time between two arrivals.
fn udp_stream(
    run: &Running,
    port: u16,
    (count, per_ms): (u32, u32),
    (at, during): (Duration, &(dyn Fn() + Sync)),
) -> (Vec<u32>, Duration) {
    let bind = SocketAddr::new(B_V4, port);
    let receiver = run.bed.b.enter(|| UdpSocket::bind(bind).unwrap()).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    big_receive_buffer(&receiver);
    let mut seen = vec![0u32; count as usize];
    let mut longest = Duration::ZERO;
    thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut buf = [0u8; 256];
            let mut last: Option<Instant> = None;
            while let Ok(n) = receiver.recv(&mut buf) {
                assert_eq!(n, 64, "datagram length");
                let now = Instant::now();
                if let Some(last) = last {
                    longest = longest.max(now - last);
                }
                last = Some(now);
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                seen[seq] += 1;
            }
        });
        let event = scope.spawn(|| {
            thread::sleep(at);
            during();
        });
        run.bed
            .a
            .enter(|| {
                let socket = UdpSocket::bind(SocketAddr::new(Host::A.v4(), 0)).unwrap();
                let mut datagram = [0u8; 64];
                let start = Instant::now();
                for seq in 0..count {
                    datagram[..4].copy_from_slice(&seq.to_be_bytes());
                    socket.send_to(&datagram, bind).unwrap();
                    if seq % per_ms == per_ms - 1 {
                        let due = start + Duration::from_millis(u64::from(seq / per_ms + 1));
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                }
            })
            .unwrap();
        event.join().unwrap();
        counter.join().unwrap();
    });
    (seen, longest)
}

/// Sends `mb` MiB over TCP from A to B and returns the SHA-256 of what was sent and received.
fn tcp_transfer(run: &Running, port: u16, mb: usize) -> ([u8; 32], [u8; 32]) {
    tcp_transfer_during(run, port, mb, (Duration::ZERO, &|| {}))
}

/// [`tcp_transfer`], calling `during` at `at` into the transfer.
fn tcp_transfer_during(
    run: &Running,
    port: u16,
    mb: usize,
    (at, during): (Duration, &(dyn Fn() + Sync)),
) -> ([u8; 32], [u8; 32]) {
    let bind = SocketAddr::new(B_V4, port);
    let listener = run
        .bed
        .b
        .enter(|| TcpListener::bind(bind).unwrap())
        .unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 13 + 5) as u8).collect();
    thread::scope(|scope| {
        let server = scope.spawn(|| {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 128 * 1024];
            loop {
                let n = stream.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            <[u8; 32]>::from(hasher.finalize())
        });
        let event = scope.spawn(|| {
            thread::sleep(at);
            during();
        });
        let sent = run
            .bed
            .a
            .enter(|| {
                let mut stream = TcpStream::connect_timeout(&bind, Duration::from_secs(5)).unwrap();
                let mut hasher = Sha256::new();
                for _ in 0..mb {
                    stream.write_all(&chunk).unwrap();
                    hasher.update(&chunk);
                }
                <[u8; 32]>::from(hasher.finalize())
            })
            .unwrap();
        event.join().unwrap();
        (sent, server.join().unwrap())
    })
}

#[test]
fn every_mode_carries_ping_tcp_and_udp_exactly_once() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    for (i, mode) in ["stripe", "backup", "adaptive"].into_iter().enumerate() {
        let run = Running::new(&format!("mode{i}"), 2, mode);
        run.wait_healthy();
        let out = ping(&run.bed.a, &["-c", "5", "-i", "0.05", &B_V4.to_string()]);
        assert!(out.contains(" 0% packet loss"), "{mode}: ping\n{out}");
        let (sent, received) = tcp_transfer(&run, 5100 + i as u16, 32);
        assert_eq!(sent, received, "{mode}: the TCP transfer arrived damaged");
        let nothing = || {};
        let (seen, _) = udp_stream(
            &run,
            5200 + i as u16,
            (5_000, 5),
            (Duration::ZERO, &nothing),
        );
        let once = seen.iter().filter(|&&n| n == 1).count();
        let twice = seen.iter().filter(|&&n| n > 1).count();
        assert_eq!(twice, 0, "{mode}: duplicates reached the application");
        assert_eq!(once, 5_000, "{mode}: {} of 5000 UDP datagrams", once);
        let status = status_json(&run.bed.a);
        for link in &status.links {
            assert_eq!(link.health.health, "up", "{mode}: {link:?}");
            assert!(
                link.health.rtt_ms.is_some_and(|r| r > 0.0),
                "{mode}: {link:?}"
            );
        }
        let (sent0, sent1) = (status.links[0].tx.tx_bytes, status.links[1].tx.tx_bytes);
        match mode {
            // Backup: link 1 carries feedback only (some 100 frames a second).
            "backup" => assert!(sent1 * 100 < sent0, "{mode}: link 1 sent {sent1} bytes"),
            // Stripe and adaptive on equal links: both carry a fair share.
            _ => assert!(
                sent0.min(sent1) * 4 > sent0.max(sent1),
                "{mode}: {sent0} / {sent1}"
            ),
        }
    }
}

/// How a test takes link 0 away in the middle of a stream.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// Every frame dropped on the wire, carrier kept: only link health can tell.
    Silent,
    /// Both wire ports set down: the hosts see carrier go (a netlink notification).
    Carrier,
}

/// In every mode: 2 000 datagrams a second for 3 s from A to B; link 0 (backup's primary) is
/// taken away after 1 s. At most 0.1 % may be lost (what link 0 carried before it was known
/// gone is sent again on link 1), none twice, and link 0 must show down.
fn link_lost_mid_stream(loss: Loss) {
    let _heavy = heavy();
    for (i, mode) in ["redundant", "stripe", "backup", "adaptive"]
        .into_iter()
        .enumerate()
    {
        let tag = match loss {
            Loss::Silent => "silent",
            Loss::Carrier => "carrier",
        };
        let run = Running::new(&format!("{tag}{i}"), 2, mode);
        run.wait_healthy();
        let cut = || match loss {
            Loss::Silent => run.bed.cut(0).expect("cut link 0"),
            Loss::Carrier => run.bed.cut_carrier(0).expect("cut link 0's carrier"),
        };
        let port = 5300 + 10 * (loss as u16) + i as u16;
        let (seen, longest) = udp_stream(&run, port, (6_000, 2), (Duration::from_secs(1), &cut));
        let lost = seen.iter().filter(|&&n| n == 0).count();
        eprintln!(
            "{mode}: link 0 lost ({loss:?}) mid-stream: {lost} of 6000 lost, longest gap {longest:?}"
        );
        assert!(seen.iter().all(|&n| n <= 1), "{mode}: duplicates delivered");
        let status = status_json(&run.bed.a);
        let link0 = &status.links[0];
        match loss {
            Loss::Silent => assert_eq!(link0.health.health, "down", "{mode}: {link0:?}"),
            Loss::Carrier => assert_eq!(link0.status, "down", "{mode}: {link0:?}"),
        }
        assert_eq!(
            status.links[1].health.health, "up",
            "{mode}: {:?}",
            status.links[1]
        );
        let bound = if mode == "redundant" { 0 } else { 6 };
        assert!(
            lost <= bound,
            "{mode}: {lost} of 6000 lost, longest gap {longest:?}"
        );
        assert!(
            longest < Duration::from_millis(400),
            "{mode}: the stream stopped for {longest:?}"
        );
        if let Loss::Carrier = loss {
            // Back, and then the other link's carrier goes in the middle of a TCP transfer:
            // the transfer completes intact over link 0.
            run.bed.heal(0).expect("heal link 0");
            run.wait_healthy();
            let cut1 = || run.bed.cut_carrier(1).expect("cut link 1's carrier");
            let (sent, received) = tcp_transfer_during(
                &run,
                5400 + i as u16,
                16,
                (Duration::from_millis(300), &cut1),
            );
            assert_eq!(sent, received, "{mode}: TCP damaged by a carrier loss");
        }
    }
}

#[test]
fn a_link_falling_silent_mid_stream_is_found_down_and_the_stream_goes_on() {
    alagg_testbed::require_root!();
    link_lost_mid_stream(Loss::Silent);
}

#[test]
fn a_link_losing_carrier_mid_stream_is_skipped_and_the_streams_go_on() {
    alagg_testbed::require_root!();
    link_lost_mid_stream(Loss::Carrier);
}

#[test]
fn a_link_losing_a_fifth_of_its_frames_flaps_at_most_once() {
    // 20 % random loss on link 0 (both ways) for 10 s under a steady stream: the link may go
    // degraded and even down once, but hold-down and hysteresis keep it from flapping.
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let run = Running::new("flap", 2, "stripe");
    run.wait_healthy();
    let downs_before = status_json(&run.bed.a).links[0].health.downs;
    run.bed.set_loss(0, 20).expect("20 % loss on link 0");
    let nothing = || {};
    let (seen, _) = udp_stream(&run, 5500, (20_000, 2), (Duration::ZERO, &nothing));
    let status = status_json(&run.bed.a);
    let downs = status.links[0].health.downs - downs_before;
    let lost = seen.iter().filter(|&&n| n == 0).count();
    eprintln!(
        "stripe, 20 % loss on link 0 for 10 s: {downs} downs, {lost} of 20000 lost, {:?}",
        status.links[0].health
    );
    assert!(
        downs <= 1,
        "link 0 went down {downs} times in 10 s: {:?}",
        status.links[0].health
    );
    assert!(seen.iter().all(|&n| n <= 1), "duplicates delivered");
}

/// Stripe with FEC over two links that each lose `percent` % of frames both ways: a numbered
/// UDP stream of 10 000 datagrams (5 a millisecond) from A to B; returns the running pair and
/// how often each datagram arrived.
fn fec_stream(tag: &str, fec: &str, percent: u8, port: u16) -> (Running, Vec<u32>) {
    let scheduler = format!("mode = \"stripe\"\nfec = \"{fec}\"");
    let run = Running::with_scheduler(tag, 2, &scheduler);
    run.wait_healthy();
    for link in 0..2 {
        run.bed.set_loss(link, percent).expect("loss on the link");
    }
    let nothing = || {};
    let (seen, _) = udp_stream(&run, port, (10_000, 5), (Duration::ZERO, &nothing));
    (run, seen)
}

#[test]
fn stripe_with_fec_8_2_delivers_what_two_links_losing_2_percent_lose() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let (run, seen) = fec_stream("fec82", "8+2", 2, 5600);
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let b = status_json(&run.bed.b);
    let a = status_json(&run.bed.a);
    eprintln!(
        "stripe + 8+2, 2 % loss on both links: {lost} of 10000 lost; B recovered {} frames, \
         {} blocks unrecoverable; A sent {} blocks, {} parity frames",
        b.engine.counts.fec_recovered,
        b.engine.counts.fec_unrecoverable,
        a.capture.fec_blocks,
        a.capture.fec_parity_sent
    );
    assert!(seen.iter().all(|&n| n <= 1), "duplicates delivered");
    // Two links losing 2 %: stripe alone loses about 200 of them (183 in one run).
    assert!(lost <= 10, "{lost} of 10000 lost (>= 99.9 % must arrive)");
    assert!(b.engine.counts.fec_recovered > 0, "nothing recovered");
    assert_eq!(b.engine.counts.fec_rejected, 0);
    assert!(a.capture.fec_parity_sent >= 2 * a.capture.fec_blocks);
    // And TCP, checked end to end, through the same lossy links.
    let (sent, received) = tcp_transfer(&run, 5601, 16);
    assert_eq!(sent, received, "TCP damaged through FEC");
}

#[test]
fn xor_8_1_at_1_percent_loss_leaves_a_residual_near_k_p_squared() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let (run, seen) = fec_stream("fec81", "8+1", 1, 5610);
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let b = status_json(&run.bed.b);
    eprintln!(
        "stripe + 8+1, 1 % loss on both links: {lost} of 10000 lost; B recovered {} frames, \
         {} blocks unrecoverable",
        b.engine.counts.fec_recovered, b.engine.counts.fec_unrecoverable
    );
    assert!(seen.iter().all(|&n| n <= 1), "duplicates delivered");
    // A block of 9 frames loses data for good with 2 of them lost: about 36 p^2 of the blocks,
    // so about K p^2 (0.08 %) of the packets; stripe alone loses p (88 of 10000 in one run).
    // Allow for chance: at most 0.4 %.
    assert!(lost <= 40, "{lost} of 10000 lost");
    assert!(b.engine.counts.fec_recovered > 0, "nothing recovered");
}

#[test]
fn auto_fec_turns_on_for_lossy_links_and_stays_off_on_clean_ones() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let run = Running::with_scheduler("fecauto", 2, "mode = \"adaptive\"\nfec = \"auto\"");
    run.wait_healthy();
    let nothing = || {};
    let (seen, _) = udp_stream(&run, 5620, (2_000, 5), (Duration::ZERO, &nothing));
    assert!(
        seen.iter().all(|&n| n == 1),
        "clean links: every datagram once"
    );
    let clean = status_json(&run.bed.a);
    assert_eq!(clean.capture.fec_blocks, 0, "parity on clean links");
    for link in 0..2 {
        run.bed.set_loss(link, 3).expect("loss on the link");
    }
    // Feedback measures the loss (windows of 100 ms); auto looks every 100 ms.
    thread::sleep(Duration::from_millis(1500));
    let before: u64 = status_json(&run.bed.a)
        .links
        .iter()
        .map(|l| l.tx.tx_bytes)
        .sum();
    let (seen, _) = udp_stream(&run, 5621, (10_000, 5), (Duration::ZERO, &nothing));
    let a = status_json(&run.bed.a);
    let sent: u64 = a.links.iter().map(|l| l.tx.tx_bytes).sum::<u64>() - before;
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let delivered = (10_000 - lost) as u64 * (64 + 28);
    let b = status_json(&run.bed.b);
    eprintln!(
        "adaptive, auto FEC, 3 % loss on both links: {lost} of 10000 lost, {} blocks ({} partial), \
         {} parity, {:.2} bytes on the links per byte delivered; B: {} recovered, {} \
         unrecoverable, {} rejected, {} lost, {} late",
        a.capture.fec_blocks,
        a.capture.fec_partial,
        a.capture.fec_parity_sent,
        sent as f64 / delivered as f64,
        b.engine.counts.fec_recovered,
        b.engine.counts.fec_unrecoverable,
        b.engine.counts.fec_rejected,
        b.engine.counts.lost,
        b.engine.counts.late,
    );
    assert!(a.capture.fec_blocks > 0, "no parity on lossy links");
    assert!(seen.iter().all(|&n| n <= 1), "duplicates delivered");
    assert!(lost <= 30, "{lost} of 10000 lost");
}

#[test]
fn one_frame_lost_per_block_costs_nothing_with_fec() {
    // Link 0 drops every 9th frame (both directions counted): no block of 8 + 1 (XOR) loses
    // more than one frame, so parity rebuilds every loss.
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let run = Running::with_scheduler("fecone", 2, "mode = \"stripe\"\nfec = \"8+1\"");
    run.wait_healthy();
    run.bed
        .drop_every(0, 9)
        .expect("drop every 9th frame on link 0");
    let nothing = || {};
    let (seen, _) = udp_stream(&run, 5630, (10_000, 5), (Duration::ZERO, &nothing));
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let b = status_json(&run.bed.b);
    eprintln!(
        "stripe + 8+1, every 9th frame of link 0 dropped: {lost} of 10000 lost, {} frames \
         recovered",
        b.engine.counts.fec_recovered
    );
    assert!(seen.iter().all(|&n| n <= 1), "duplicates delivered");
    assert!(b.engine.counts.fec_recovered > 50, "{:?}", b.engine.counts);
    assert_eq!(
        lost, 0,
        "{lost} of 10000 lost with one frame lost per block"
    );
}

#[test]
fn a_reload_changes_the_scheduler_live_without_a_gap_and_refuses_what_it_cannot_change() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let run = Running::new("reload", 2, "redundant");
    run.wait_healthy();
    let config_a = run.dir.join("a.toml");
    let original = std::fs::read_to_string(&config_a).unwrap();
    let reload = |text: &str| {
        std::fs::write(&config_a, text).unwrap();
        let path = config_a.display().to_string();
        run.bed
            .a
            .exec(ALAGG, &["reload", "--config", &path])
            .unwrap_or_else(|e| panic!("alagg reload: {e}"))
    };
    // In the middle of a stream, redundant becomes stripe with XOR 8+1.
    let striped = original.replace("mode = \"redundant\"", "mode = \"stripe\"\nfec = \"8+1\"");
    assert_ne!(striped, original);
    let to_stripe = || {
        let out = reload(&striped);
        assert!(out.contains("asked alagg"), "{out}");
    };
    let (seen, _) = udp_stream(
        &run,
        5640,
        (10_000, 5),
        (Duration::from_secs(1), &to_stripe),
    );
    let lost = seen.iter().filter(|&&n| n == 0).count();
    assert!(seen.iter().all(|&n| n <= 1), "duplicates across the reload");
    assert_eq!(lost, 0, "{lost} of 10000 lost across the reload");
    let a = status_json(&run.bed.a);
    assert!(a.capture.fec_blocks > 0, "the reload did not turn FEC on");
    assert!(
        run.a.log().contains("reloaded: [scheduler] applied"),
        "{}",
        run.a.log()
    );
    // A change alagg cannot make while it runs is refused, and it goes on.
    let moved = format!("{striped}\n[cpu]\nbusy_poll_us = 123\n");
    reload(&moved);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run.a.log().contains("reload refused: [cpu] changed") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            run.a.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let out = ping(&run.bed.a, &["-c", "3", "-i", "0.1", &B_V4.to_string()]);
    assert!(
        out.contains(" 0% packet loss"),
        "after a refused reload:\n{out}"
    );
    // A file that does not load is refused by `alagg reload` itself, before any signal.
    std::fs::write(&config_a, "[scheduler]\nmode = \"roundrobin\"\n").unwrap();
    let path = config_a.display().to_string();
    assert!(
        run.bed
            .a
            .exec(ALAGG, &["reload", "--config", &path])
            .is_err()
    );
}
