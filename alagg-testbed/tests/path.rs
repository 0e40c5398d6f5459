//! Privileged tests of the impairment relay (`Testbed::set_path`): delay each way, jitter
//! without reordering (and with it when asked), seeded loss, a rate cap, the bridge's own
//! impairments while a relay runs, and the bridge back after `clear_path`. Timing bounds are
//! wide: the machine is a shared 2-core VM.
#![expect(clippy::unwrap_used, reason = "test code panics with a message")]

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use alagg_testbed::{Direction, Host, Path, Testbed};

fn bed(tag: &str, links: usize) -> Testbed {
    assert!(
        alagg_testbed::is_root(),
        "this test makes network namespaces and AF_PACKET sockets: run it as root"
    );
    let bed = Testbed::new(tag, links).unwrap();
    for link in 0..links {
        for (host, n) in [(Host::A, 1), (Host::B, 2)] {
            bed.host(host)
                .ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", v4(link, n)),
                    "dev",
                    &bed.interface(link),
                ])
                .unwrap();
        }
        // Resolve neighbours on the plain bridge, so that no measurement waits for ARP.
        rtts(&bed, link, 1);
    }
    bed
}

fn v4(link: usize, n: u8) -> String {
    format!("198.18.{}.{n}", 200 + link)
}

/// Round-trip times in ms of `count` pings from A to B over link `link`, every 10 ms, sorted.
fn rtts(bed: &Testbed, link: usize, count: u32) -> Vec<f64> {
    let output = bed
        .a
        .command("ping")
        .args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            &v4(link, 2),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut rtts: Vec<f64> = stdout
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    assert!(!rtts.is_empty(), "no replies over link {link}:\n{stdout}");
    rtts
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// A UDP socket of host `host` bound to its address on link `link`, port 9000.
fn udp(bed: &Testbed, host: Host, link: usize) -> UdpSocket {
    let n = if host == Host::A { 1 } else { 2 };
    let address: SocketAddr = format!("{}:9000", v4(link, n)).parse().unwrap();
    bed.host(host)
        .enter(|| UdpSocket::bind(address).unwrap())
        .unwrap()
}

/// Sends `count` numbered datagrams of `size` bytes from A to B over link `link`, one every
/// `gap` (none: back to back), and returns the numbers B received, in arrival order.
fn udp_burst(bed: &Testbed, link: usize, count: u32, size: usize, gap: Duration) -> Vec<u32> {
    let sender = udp(bed, Host::A, link);
    let receiver = udp(bed, Host::B, link);
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let mut payload = vec![0u8; size.max(4)];
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..count {
                payload[..4].copy_from_slice(&i.to_be_bytes());
                // A full socket buffer is a lost datagram, which the tests allow for.
                let _ = sender.send(&payload);
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
            }
        });
        while let Ok(n) = receiver.recv(&mut buf) {
            if n >= 4 {
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
        }
    });
    got
}

fn reorderings(numbers: &[u32]) -> usize {
    numbers.windows(2).filter(|w| w[1] < w[0]).count()
}

#[test]
fn delay_each_way_adds_to_the_rtt_and_clear_path_gives_the_bridge_back() {
    alagg_testbed::require_root!();
    let bed = bed("pdelay", 2);
    bed.set_path(0, Direction::Both, Path::delay(Duration::from_millis(10)))
        .unwrap();
    assert!(bed.has_path(0) && !bed.has_path(1));
    let shown = bed.wire.ip(&["-o", "link", "show", "dev", "a0"]).unwrap();
    assert!(!shown.contains("master"), "a0 still in the bridge: {shown}");

    let delayed = rtts(&bed, 0, 20);
    assert!(
        delayed[0] >= 20.0 && median(&delayed) < 25.0,
        "10 ms each way gave RTTs {delayed:?}"
    );
    let other = rtts(&bed, 1, 5);
    assert!(median(&other) < 5.0, "link 1 got slower: {other:?}");
    for way in [Direction::AtoB, Direction::BtoA] {
        let stats = bed.path_stats(0, way).unwrap();
        assert!(stats.relayed >= 20, "{way:?}: {stats:?}");
        assert_eq!(stats.lost + stats.cut + stats.queue_dropped, 0, "{stats:?}");
    }
    assert!(bed.path_stats(1, Direction::Both).is_none());

    // One way only: the other direction becomes a plain wire.
    bed.set_path(0, Direction::BtoA, Path::default()).unwrap();
    let one_way = rtts(&bed, 0, 10);
    assert!(
        one_way[0] >= 10.0 && median(&one_way) < 15.0,
        "10 ms A to B only gave RTTs {one_way:?}"
    );

    bed.clear_path(0).unwrap();
    bed.clear_path(0).unwrap();
    assert!(!bed.has_path(0) && bed.path_stats(0, Direction::Both).is_none());
    let shown = bed.wire.ip(&["-o", "link", "show", "dev", "a0"]).unwrap();
    assert!(shown.contains("master br0"), "a0 not back in br0: {shown}");
    let plain = rtts(&bed, 0, 10);
    assert!(median(&plain) < 1.0, "the bridge back gave RTTs {plain:?}");
}

#[test]
fn jitter_spreads_delays_but_keeps_order_unless_reordering_is_asked_for() {
    alagg_testbed::require_root!();
    let bed = bed("pjitter", 1);
    let jittery = Path {
        delay: Duration::from_millis(8),
        jitter: Duration::from_millis(4),
        seed: Some(1),
        ..Path::default()
    };
    bed.set_path(0, Direction::Both, jittery.clone()).unwrap();
    let spread = rtts(&bed, 0, 30);
    let (low, high) = (spread[0], spread[spread.len() - 1]);
    assert!(
        high - low > 2.0 && low >= 8.0 && high < 30.0,
        "8 ± 4 ms each way gave RTTs {spread:?}"
    );

    // 400 datagrams back to back: far closer together than the jitter. On a loaded machine
    // the relay may drop some (counted as rx overflow); what arrives must be in order.
    let numbers = udp_burst(&bed, 0, 400, 64, Duration::ZERO);
    assert!(numbers.len() > 100, "only {} of 400 arrived", numbers.len());
    assert_eq!(reorderings(&numbers), 0, "reordered: {numbers:?}");

    bed.set_path(
        0,
        Direction::AtoB,
        Path {
            reorder: true,
            ..jittery
        },
    )
    .unwrap();
    let numbers = udp_burst(&bed, 0, 400, 64, Duration::ZERO);
    assert!(numbers.len() > 300, "only {} of 400 arrived", numbers.len());
    assert!(
        reorderings(&numbers) > 10,
        "reordering allowed, but the burst came in order"
    );
}

#[test]
fn seeded_loss_drops_its_share_one_way() {
    alagg_testbed::require_root!();
    let bed = bed("ploss", 1);
    bed.set_path(
        0,
        Direction::AtoB,
        Path {
            loss_percent: 20.0,
            seed: Some(2024),
            ..Path::default()
        },
    )
    .unwrap();
    let before = bed.path_stats(0, Direction::AtoB).unwrap();
    let numbers = udp_burst(&bed, 0, 2000, 64, Duration::from_micros(200));
    let lost = 2000 - numbers.len();
    // 20 % of 2000 is 400, with a standard deviation of 18: the bounds are 5 of them.
    assert!((310..=490).contains(&lost), "20 % loss lost {lost} of 2000");
    let stats = bed.path_stats(0, Direction::AtoB).unwrap();
    let counted = stats.lost - before.lost;
    assert!(
        counted.abs_diff(lost as u64) <= 5,
        "lost {lost}, counted {counted}"
    );
    assert_eq!(bed.path_stats(0, Direction::BtoA).unwrap().lost, 0);
}

#[test]
fn the_bridges_loss_cut_and_carrier_cut_still_bite_while_a_relay_runs() {
    alagg_testbed::require_root!();
    let bed = bed("pcut", 1);
    bed.set_loss(0, 100).unwrap();
    // A relay started on a link that loses everything honours the bridge's rule.
    bed.set_path(0, Direction::Both, Path::delay(Duration::from_millis(1)))
        .unwrap();
    let dead = |what: &str| {
        let out = bed
            .a
            .command("ping")
            .args(["-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", &v4(0, 2)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "link 0 {what}: ping went through");
    };
    dead("at 100 % loss");
    assert!(bed.path_stats(0, Direction::AtoB).unwrap().lost >= 3);
    bed.set_loss(0, 0).unwrap();
    rtts(&bed, 0, 3);

    bed.cut(0).unwrap();
    dead("cut");
    assert!(bed.path_stats(0, Direction::AtoB).unwrap().cut >= 3);
    bed.heal(0).unwrap();
    rtts(&bed, 0, 3);

    bed.cut_carrier(0).unwrap();
    dead("without carrier");
    bed.heal(0).unwrap();
    rtts(&bed, 0, 3);

    // The bridge takes the cut over again once the relay is gone.
    bed.cut(0).unwrap();
    bed.clear_path(0).unwrap();
    dead("cut, back on the bridge");
    bed.heal(0).unwrap();
    rtts(&bed, 0, 3);
}

#[test]
fn a_rate_caps_a_tcp_transfer() {
    alagg_testbed::require_root!();
    let bed = bed("prate", 1);
    bed.set_path(
        0,
        Direction::AtoB,
        Path {
            rate_mbit: Some(50),
            delay: Duration::from_millis(2),
            ..Path::default()
        },
    )
    .unwrap();
    let mut server = bed
        .b
        .command("iperf3")
        .args(["-s", "-1", "-B", &v4(0, 2), "-p", "5301"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let output = loop {
        let output = bed
            .a
            .command("iperf3")
            .args(["-c", &v4(0, 2), "-p", "5301", "-t", "3", "-f", "m"])
            .output()
            .unwrap();
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mbit: f64 = stdout
        .lines()
        .find(|line| line.trim_end().ends_with("receiver"))
        .and_then(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "Mbits/sec")?;
            words.get(at - 1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no receiver rate from iperf3:\n{stdout}"));
    assert!(
        (30.0..=55.0).contains(&mbit),
        "TCP over a 50 Mbit/s path ran at {mbit} Mbit/s:\n{stdout}"
    );
    let stats = bed.path_stats(0, Direction::AtoB).unwrap();
    assert!(stats.relayed_bytes > 10_000_000, "{stats:?}");
}
