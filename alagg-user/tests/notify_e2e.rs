//! Privileged end-to-end test of alagg under a service manager (`Type=notify`,
//! `sd_notify(3)`): this test plays systemd's part, a datagram socket named by
//! `$NOTIFY_SOCKET`, and checks that `alagg up` says `READY=1` only once it carries traffic,
//! feeds the watchdog (`$WATCHDOG_USEC`) while its workers turn, and says `STOPPING=1` when
//! told to stop.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use alagg_testbed::{B_V4, Testbed};
use common::{Alagg, ping, ping_received};

/// The test's directory, removed when dropped (after the processes, declared before it).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The datagrams the manager's socket holds now or within `wait`, one string each.
fn drain(manager: &UnixDatagram, wait: Duration) -> Vec<(Instant, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        manager
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match manager.recv(&mut buf) {
            Ok(n) => got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn under_a_service_manager_alagg_is_ready_once_it_carries_traffic_and_feeds_the_watchdog() {
    alagg_testbed::require_root!();
    let bed = Testbed::new("notify", 2).expect("testbed");
    let dir = Dir(std::env::temp_dir().join(bed.a.name()));
    let (config_a, config_b) = bed.write_configs(&dir.0).expect("configs");
    let manager_path = dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&manager_path).expect("the manager's socket");
    let _b = Alagg::start(&bed.b, &config_b, dir.0.join("b.log"));
    let a = Alagg::start_with_env(
        &bed.a,
        &config_a,
        dir.0.join("a.log"),
        &[
            ("NOTIFY_SOCKET", manager_path.as_os_str()),
            ("WATCHDOG_USEC", "2000000".as_ref()),
        ],
    );
    // `start` returned on "alagg is up": READY=1 is in the socket by now.
    let first = drain(&manager, Duration::from_millis(200));
    let ready: Vec<&String> = first
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .collect();
    assert_eq!(ready.len(), 1, "one READY=1: {first:?}");
    assert!(
        ready[0].lines().any(|l| l.starts_with("STATUS=")),
        "READY=1 comes with a STATUS=: {:?}",
        ready[0]
    );
    // Ready means carrying traffic: a ping goes through at once.
    let out = ping(
        &bed.a,
        &["-c", "3", "-i", "0.2", "-W", "2", &B_V4.to_string()],
    );
    assert!(
        ping_received(&out) >= 1,
        "no ping through a ready alagg:\n{out}"
    );
    // The watchdog: fed every 500 ms while the workers turn, so 3 or more in 2.2 s.
    let fed = drain(&manager, Duration::from_millis(2200));
    let watchdog: Vec<Instant> = fed
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        watchdog.len() >= 3,
        "watchdog fed {} times in 2.2 s: {fed:?}",
        watchdog.len()
    );
    let longest = watchdog
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_secs(1),
        "the watchdog went {longest:?} unfed (WATCHDOG_USEC 2 s)"
    );
    let log = a.stop();
    let last = drain(&manager, Duration::from_millis(200));
    assert!(
        last.iter()
            .any(|(_, m)| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 on SIGTERM: {last:?}\n{log}"
    );
}
