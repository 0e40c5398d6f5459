//! Privileged end-to-end tests of what an operator sees (issue 6): `alagg status` (text and
//! JSON over the control socket) and the Prometheus endpoint against a running pair, with
//! counters that move as traffic flows and match what was sent; a clear message when no
//! instance runs.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use alagg::ops::snapshot::Snapshot;
use alagg_testbed::Netns;
use common::*;

/// Waits until `check` holds for a fresh snapshot (counters are published every 100 ms).
fn wait_status(ns: &Netns, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = status_json(ns);
        if check(&snapshot) {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 10 s; last status:\n{}",
            snapshot.render_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` from the metrics endpoint at 127.0.0.1:`port` inside `ns`: (status line, body).
fn http_get(ns: &Netns, port: u16, path: &str) -> (String, String) {
    let (head, body) = http_get_accepting(ns, port, path, "*/*");
    (head.lines().next().unwrap_or("").to_owned(), body)
}

/// `GET path` with `Accept: accept` from the metrics endpoint at 127.0.0.1:`port` inside `ns`:
/// (the whole head, body).
fn http_get_accepting(ns: &Netns, port: u16, path: &str, accept: &str) -> (String, String) {
    ns.enter(|| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {response:?}"));
        (head.to_owned(), body.to_owned())
    })
    .unwrap()
}

/// The value of the sample `name` (with its labels, exactly) in a Prometheus exposition.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

#[test]
fn status_and_metrics_follow_the_traffic_of_a_running_pair() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let pair = Pair::new("status", 2);
    // Host B also serves Prometheus metrics on its own loopback.
    let port = 9187;
    let config_b = pair.config(0xb, 2);
    let mut text = fs::read_to_string(&config_b).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    fs::write(&config_b, text).unwrap();
    // One frame per datagram on every link, so frame and packet counters can be compared.
    let config_a = pair.config(0xa, 2);
    let unbundled = "\n[scheduler]\nbundle = false\n";
    for path in [&config_a, &config_b] {
        let text = fs::read_to_string(path).unwrap() + unbundled;
        fs::write(path, text).unwrap();
    }
    let a = Alagg::start(&pair.a, &config_a, pair.dir.join("a.log"));
    let b = Alagg::start(&pair.b, &config_b, pair.dir.join("b.log"));

    // Idle: both links up, nothing captured yet.
    let idle = wait_status(&pair.a, "both links up", |s| {
        s.links.len() == 2 && s.links.iter().all(|l| l.status == "up")
    });
    assert_eq!(idle.tun, "alagg0");
    assert_eq!(idle.capture.captured, 0, "{}", idle.render_text());
    assert!(idle.pid > 0);

    let count: u32 = 3_000;
    let seen = udp_numbered(&pair, 5003, count, 64);
    assert!(
        seen.iter().all(|&n| n == 1),
        "every datagram exactly once at the application"
    );

    let n = u64::from(count);
    let sent = wait_status(&pair.a, "every datagram captured and sent", |s| {
        s.capture.captured >= n && s.links.iter().all(|l| l.tx.tx_frames >= n)
    });
    // Only traffic to the destinations is captured: the datagrams, and little else.
    assert!(
        sent.capture.captured < n + 100,
        "captured more than was sent:\n{}",
        sent.render_text()
    );
    assert!(sent.capture.batches >= 1 && sent.capture.batches <= sent.capture.captured);
    assert_eq!(sent.capture.overruns, 0, "{}", sent.render_text());

    let got = wait_status(&pair.b, "every datagram delivered", |s| {
        s.delivery.delivered >= n && s.engine.counts.passed >= n
    });
    // Every link carried a copy: one passed, the other discarded as a duplicate.
    assert!(got.engine.counts.discarded >= n, "{}", got.render_text());
    assert!(
        got.links.iter().all(|l| l.rx.rx_frames >= n),
        "{}",
        got.render_text()
    );
    let first: u64 = got.links.iter().map(|l| l.rx.first).sum();
    assert_eq!(
        first,
        got.engine.counts.passed,
        "each accepted packet's first copy is counted on exactly one link:\n{}",
        got.render_text()
    );
    assert_eq!(got.delivery.rejected_source, 0);
    // Datagrams of the bursts that arrived together went to the TUN a few to a write.
    assert!(
        got.delivery.coalesced > 0 && got.delivery.coalesced <= got.delivery.delivered,
        "{}",
        got.render_text()
    );
    // The XDP program's counters (refreshed twice a second): every copy was steered.
    wait_status(
        &pair.b,
        "both copies of every datagram steered by XDP",
        |s| {
            s.xdp
                .iter()
                .any(|x| x.action == "redirected" && x.packets >= 2 * n)
        },
    );

    // The text form shows every link and the engine's counters by their 802.1CB names.
    let shown = pair
        .b
        .exec(ALAGG, &["status", "--config", config_b.to_str().unwrap()])
        .expect("alagg status");
    for needle in [
        "interface: alagg0",
        "link: link0",
        "link: link1",
        "discarded duplicates",
        "first copies",
        "capture (NFQUEUE)",
        "coalesced into GSO writes",
    ] {
        assert!(shown.contains(needle), "no {needle:?} in:\n{shown}");
    }

    // Prometheus: the same counters, and a link that goes down is seen as down.
    let (status, body) = http_get(&pair.b, port, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    assert!(sample(&body, "alagg_delivered_packets_total") >= n as f64);
    assert!(sample(&body, "alagg_coalesced_packets_total") >= got.delivery.coalesced as f64);
    assert!(sample(&body, "alagg_engine_discarded_total") >= n as f64);
    assert_eq!(sample(&body, "alagg_link_up{link=\"link0\"}"), 1.0);
    assert!(sample(&body, "alagg_reorder_hold_seconds_count") >= 0.0);
    assert!(body.contains("# TYPE alagg_reorder_hold_seconds histogram"));
    // OpenMetrics, as Prometheus asks for it: the same samples, and the end marker.
    let (head, open) = http_get_accepting(
        &pair.b,
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    );
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(open.ends_with("\n# EOF\n"), "{open}");
    assert!(
        open.contains("\n# TYPE alagg_delivered_packets counter\n"),
        "{open}"
    );
    assert!(sample(&open, "alagg_delivered_packets_total") >= n as f64);
    assert_eq!(sample(&open, "alagg_link_up{link=\"link0\"}"), 1.0);
    let (status, _) = http_get(&pair.b, port, "/nothing");
    assert!(status.contains("404"), "{status}");

    pair.b.ip(&["link", "set", "link0", "down"]).unwrap();
    wait_status(&pair.b, "link0 reported down", |s| {
        s.links.first().is_some_and(|l| l.status == "down")
    });
    let (_, body) = http_get(&pair.b, port, "/metrics");
    assert_eq!(sample(&body, "alagg_link_up{link=\"link0\"}"), 0.0);

    let log_b = b.stop();
    a.stop();
    // Stopped: the control socket is gone and status says nothing runs.
    let error = pair
        .b
        .exec(ALAGG, &["status", "--tun", "alagg0"])
        .expect_err("status with no instance must fail");
    assert!(
        error.to_string().contains("no alagg is running"),
        "{error}\n{log_b}"
    );
}

#[test]
fn status_without_an_instance_says_so() {
    alagg_testbed::require_root!();
    let ns = Netns::new("nostatus").unwrap();
    let error = ns
        .exec(ALAGG, &["status", "--tun", "alaggnone"])
        .expect_err("no instance runs");
    let message = error.to_string();
    assert!(
        message.contains("no alagg is running with TUN alaggnone"),
        "{message}"
    );
    assert!(message.contains("alagg up --config"), "{message}");
    // A name no interface can have is refused before any path is built from it.
    let error = ns
        .exec(ALAGG, &["status", "--tun", "../etc"])
        .expect_err("a bad name");
    assert!(error.to_string().contains("--tun"), "{error}");
    assert!(error.to_string().contains("'/'"), "{error}");
}
