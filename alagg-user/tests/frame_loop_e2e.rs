//! Privileged end-to-end test of the bare frame loop the benchmarks compare alagg with (issue
//! 14): `alagg blast` on host A and `alagg sink` on host B over two veth links, through alagg's
//! own XDP program and AF_XDP sockets. Frames arrive on every link, never more than were sent,
//! every one an alagg data frame; a datagram too long for one frame is refused; and both hosts
//! are left as they were (XDP detached).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::Netns;
use common::*;
use serde_json::Value;

/// A running `alagg sink`: SIGTERM (then SIGKILL) when dropped, also while a test unwinds.
struct Sink {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Sink {
    fn start(ns: &Netns, config: &Path, dir: &Path, tag: &str) -> Self {
        let out = dir.join(format!("sink-{tag}.json"));
        let log = dir.join(format!("sink-{tag}.log"));
        let child = ns
            .command(ALAGG)
            .args(["sink", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start alagg sink");
        let mut sink = Self { child, out, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sink.log().contains("frame sink ready") {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!("alagg sink exited ({status}):\n{}", sink.log());
            }
            assert!(
                Instant::now() < deadline,
                "alagg sink not ready in 10 s:\n{}",
                sink.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the JSON line the sink printed on its way out.
    fn stop(mut self) -> Value {
        self.terminate();
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("sink JSON {text:?}: {e}:\n{}", self.log()))
    }

    fn terminate(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn number(json: &Value, key: &str) -> u64 {
    json.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

fn per_link(json: &Value) -> &Vec<Value> {
    json.get("per_link")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no per_link in {json}"))
}

#[test]
fn blast_and_sink_carry_frames_on_every_link_and_leave_nothing() {
    alagg_testbed::require_root!();
    let _heavy = heavy();
    let pair = Pair::new("floop", 2);
    let before_a = settled_state(&pair.a);
    let before_b = settled_state(&pair.b);
    let (config_a, config_b) = (pair.config(0xa, 2), pair.config(0xb, 2));

    for size in [64usize, 1400] {
        let sink = Sink::start(&pair.b, &config_b, &pair.dir, &size.to_string());
        let out = pair
            .a
            .command(ALAGG)
            .args(["blast", "--config"])
            .arg(&config_a)
            .args(["--size", &size.to_string(), "--seconds", "0.5"])
            .output()
            .expect("run alagg blast");
        assert!(
            out.status.success(),
            "alagg blast --size {size} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let blast: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("blast JSON: {e}: {}", String::from_utf8_lossy(&out.stdout))
        });
        thread::sleep(Duration::from_millis(200));
        let sunk = sink.stop();

        assert_eq!(number(&sunk, "invalid"), 0, "{size} B: {sunk}");
        let (sent, received) = (per_link(&blast), per_link(&sunk));
        assert_eq!((sent.len(), received.len()), (2, 2), "{blast} {sunk}");
        for (link, (sent, received)) in sent.iter().zip(received).enumerate() {
            let (sent, frames) = (number(sent, "sent"), number(received, "frames"));
            assert!(
                frames > 0,
                "{size} B: nothing arrived on link {link}: {sunk}"
            );
            assert!(
                frames <= sent,
                "{size} B: link {link} received {frames} of {sent} sent: {sunk}"
            );
            // Every frame that arrived is one alagg frame of the datagram's size.
            let frame_len = number(&blast, "frame_len");
            assert_eq!(frame_len, 14 + 36 + size as u64 + 28);
            assert_eq!(number(received, "bytes"), frames * frame_len, "{sunk}");
        }
        assert!(number(&sunk, "frames") <= number(&blast, "sent"));
    }

    // A datagram whose frame the links cannot carry whole is refused, naming the link.
    let out = pair
        .a
        .command(ALAGG)
        .args(["blast", "--config"])
        .arg(&config_a)
        .args(["--size", "1500", "--seconds", "0.1"])
        .output()
        .expect("run alagg blast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("link link0") && stderr.contains("--size 1436"),
        "blast --size 1500 on a 1500-byte MTU: {}\n{stderr}",
        out.status
    );

    assert_eq!(
        host_state(&pair.a),
        before_a,
        "alagg blast left changes on host A"
    );
    assert_eq!(
        host_state(&pair.b),
        before_b,
        "alagg sink left changes on host B"
    );
}
