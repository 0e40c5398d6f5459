//! Privileged end-to-end tests of `alagg up` (issue 4): two hosts in network namespaces joined by
//! two veth links, `alagg up` on both, real clients (ping, ping -6) through the aggregate in both
//! directions, and a host left exactly as it was after shutdown.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use common::*;

#[test]
fn ping_v4_and_v6_both_ways_over_two_links_and_nothing_left_behind() {
    alagg_testbed::require_root!();
    let pair = Pair::new("up", 2);
    let before_a = settled_state(&pair.a);
    let before_b = settled_state(&pair.b);

    let (a, b) = pair.up(2);
    // xdp_mode = "auto" on veth, a virtual interface, attaches in generic mode.
    for ns in [&pair.a, &pair.b] {
        let shown = ns.ip(&["-d", "link", "show", "link0"]).unwrap();
        assert!(shown.contains("xdpgeneric"), "not generic XDP:\n{shown}");
    }
    for (ns, target) in [(&pair.a, B4), (&pair.b, A4), (&pair.a, B6), (&pair.b, A6)] {
        let out = ping(ns, &["-c", "5", "-i", "0.05", "-W", "2", target]);
        assert!(
            out.contains(" 0% packet loss"),
            "loss pinging {target}:\n{out}"
        );
    }
    // Every echo went out as a copy on both links; the receiver kept one of each.
    let log_a = a.stop();
    let log_b = b.stop();
    for log in [&log_a, &log_b] {
        assert!(log.contains("alagg stopped"), "no clean stop:\n{log}");
        let duplicates = summary_value(log, "discarded");
        let delivered = summary_value(log, "delivered");
        assert!(delivered >= 10, "delivered {delivered}:\n{log}");
        assert_eq!(
            duplicates, delivered,
            "one duplicate per delivered packet:\n{log}"
        );
    }

    assert_eq!(
        host_state(&pair.a),
        before_a,
        "alagg up left changes on host A"
    );
    assert_eq!(
        host_state(&pair.b),
        before_b,
        "alagg up left changes on host B"
    );
}

#[test]
fn sigquit_and_sigusr1_stop_alagg_like_sigterm_and_sighup_does_not() {
    alagg_testbed::require_root!();
    let pair = Pair::new("sighup", 1);
    let before = settled_state(&pair.a);
    let config = pair.config(0xa, 1);
    for (name, signal) in [("SIGQUIT", libc::SIGQUIT), ("SIGUSR1", libc::SIGUSR1)] {
        let mut a = Alagg::start(&pair.a, &config, pair.dir.join(format!("{name}.log")));
        if signal == libc::SIGQUIT {
            // SIGHUP reloads the configuration (here unchanged) and alagg goes on.
            a.send(libc::SIGHUP);
            a.wait_for("reload: nothing changed", Duration::from_secs(5));
        }
        assert_ne!(
            host_state(&pair.a),
            before,
            "{name}: alagg up changed nothing"
        );
        let (ok, log) = a.signal(signal);
        assert!(ok, "{name}: alagg did not exit cleanly:\n{log}");
        assert!(log.contains("alagg stopped"), "{name}: no teardown:\n{log}");
        assert_eq!(
            host_state(&pair.a),
            before,
            "{name}: alagg up left changes on the host:\n{log}"
        );
    }
}

#[test]
fn a_peer_killed_and_restarted_is_recognised_and_traffic_resumes() {
    alagg_testbed::require_root!();
    let pair = Pair::new("restart", 2);
    let (a, b) = pair.up(2);
    let out = ping(&pair.a, &["-c", "3", "-i", "0.05", "-W", "2", B4]);
    assert!(out.contains(" 0% packet loss"), "{out}");

    // B dies without cleaning up and comes back with a new epoch and sequence numbers from 0.
    b.kill();
    let b = Alagg::start(&pair.b, &pair.config(0xb, 2), pair.dir.join("b2.log"));
    let started = Instant::now();
    let out = ping(&pair.a, &["-c", "5", "-i", "0.05", "-W", "1", B4]);
    assert!(
        out.contains(" 0% packet loss"),
        "traffic did not resume:\n{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let log_a = a.stop();
    assert!(
        summary_value(&log_a, "epoch_changes") >= 1,
        "A did not see B's new epoch:\n{log_a}"
    );
    let log_b = b.stop();
    assert!(summary_value(&log_b, "delivered") >= 5, "{log_b}");
}

#[test]
fn bad_configurations_fail_clearly_and_leave_nothing() {
    alagg_testbed::require_root!();
    let pair = Pair::new("badcfg", 1);
    let before = settled_state(&pair.a);
    let cases = [
        (
            "missing interface",
            "[capture]\ndestinations = [\"198.18.100.2/32\"]\n[[link]]\ninterface = \"nosuch9\"\npeer_mac = \"02:a1:a9:00:0b:00\"\n",
            "nosuch9",
        ),
        (
            "bad MAC",
            "[capture]\ndestinations = [\"198.18.100.2/32\"]\n[[link]]\ninterface = \"link0\"\npeer_mac = \"02:zz:a9:00:0b:00\"\n",
            "peer_mac",
        ),
        (
            "unknown key",
            "[capture]\ndestinations = [\"198.18.100.2/32\"]\nspeed = 3\n[[link]]\ninterface = \"link0\"\npeer_mac = \"02:a1:a9:00:0b:00\"\n",
            "speed",
        ),
        (
            "overlapping destinations",
            "[capture]\ndestinations = [\"198.18.100.0/24\", \"198.18.100.2/32\"]\n[[link]]\ninterface = \"link0\"\npeer_mac = \"02:a1:a9:00:0b:00\"\n",
            "overlap",
        ),
        (
            "more capture workers than the XDP link has queues",
            "[capture]\ndestinations = [\"198.18.100.2/32\"]\nqueues = 2\n[[link]]\ninterface = \"link0\"\npeer_mac = \"02:a1:a9:00:0b:00\"\n",
            "the interface has 1 queue(s)",
        ),
    ];
    for (name, text, needle) in cases {
        let path = pair.dir.join("bad.toml");
        fs::write(&path, text).unwrap();
        let output = pair
            .a
            .command(ALAGG)
            .args(["up", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: alagg up succeeded");
        assert!(
            stderr.contains(needle),
            "{name}: error does not name {needle:?}:\n{stderr}"
        );
        assert!(
            stderr.contains("bad.toml"),
            "{name}: error does not name the file:\n{stderr}"
        );
        assert_eq!(host_state(&pair.a), before, "{name}: host changed");
    }

    // Not root: a clear refusal, nothing touched.
    let good = pair.config(0xa, 1);
    let output = pair
        .a
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ALAGG,
            "up",
            "--config",
        ])
        .arg(&good)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("root"), "no privilege message:\n{stderr}");
    assert_eq!(host_state(&pair.a), before, "not root: host changed");
}

#[test]
fn a_link_that_goes_down_or_disappears_is_skipped_and_picked_up_again() {
    alagg_testbed::require_root!();
    let pair = Pair::new("linkstate", 2);
    let (a, b) = pair.up(2);
    let ping_ok = |what: &str| {
        let out = ping(&pair.a, &["-c", "5", "-i", "0.05", "-W", "2", B4]);
        assert!(out.contains(" 0% packet loss"), "{what}:\n{out}");
    };
    ping_ok("both links");

    // Down on A's side: A skips it, traffic stays whole over link1.
    pair.a.ip(&["link", "set", "link0", "down"]).unwrap();
    ping_ok("link0 down");
    wait_for_log(&a, "link down");
    pair.a.ip(&["link", "set", "link0", "up"]).unwrap();
    wait_for_log(&a, "link up");

    // link0 disappears on both sides (a NIC unplugged) and comes back with the same names and
    // MACs; link1 then goes down, so the traffic must be on the re-opened link0.
    pair.a.ip(&["link", "del", "link0"]).unwrap();
    wait_for_log(&a, "link gone");
    ping_ok("link0 gone");
    alagg_testbed::veth(
        &pair.a,
        "link0",
        &mac(0xa, 0),
        &pair.b,
        "link0",
        &mac(0xb, 0),
    )
    .unwrap();
    wait_for_log(&a, "link is back");
    wait_for_log(&b, "link is back");
    pair.a.ip(&["link", "set", "link1", "down"]).unwrap();
    thread::sleep(Duration::from_millis(1200));
    ping_ok("only the re-opened link0");
    let log_a = a.stop();
    assert!(log_a.contains("alagg stopped"), "{log_a}");
    b.stop();
}

/// Sets link0 down and up on A, then link1 down: traffic must then flow over link0 alone, both
/// ways, with the links' sockets of the given `io` kind.
fn a_link_set_down_and_up_carries_traffic_again(tag: &str, io: &str) {
    let pair = Pair::new(tag, 2);
    let (a, b) = pair.up_edited(2, |text| {
        text.replace("[[link]]\n", &format!("[[link]]\nio = \"{io}\"\n"))
    });
    let ping_ok = |what: &str| {
        let out = ping(&pair.a, &["-c", "5", "-i", "0.05", "-W", "2", B4]);
        assert!(out.contains(" 0% packet loss"), "{io}, {what}:\n{out}");
    };
    ping_ok("both links");
    // Down and up on A's side (a packet socket on the link reports ENETDOWN in between); the
    // link's sockets must be read again afterwards.
    pair.a.ip(&["link", "set", "link0", "down"]).unwrap();
    wait_for_log(&a, "link down");
    ping_ok("link0 down");
    pair.a.ip(&["link", "set", "link0", "up"]).unwrap();
    wait_for_log(&a, "link up");
    // Now only link0 carries traffic. The monitor looks once a second.
    pair.a.ip(&["link", "set", "link1", "down"]).unwrap();
    thread::sleep(Duration::from_millis(1200));
    ping_ok("only link0, after its down and up");
    a.stop();
    b.stop();
}

#[test]
fn an_af_packet_link_set_down_and_up_receives_again() {
    alagg_testbed::require_root!();
    a_link_set_down_and_up_carries_traffic_again("pktdown", "af_packet");
}

#[test]
fn an_xdp_link_set_down_and_up_receives_again() {
    alagg_testbed::require_root!();
    a_link_set_down_and_up_carries_traffic_again("xdpdown", "xdp");
}

fn wait_for_log(alagg: &Alagg, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alagg.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            alagg.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn down_cleans_up_after_a_killed_instance_and_is_safe_to_repeat() {
    alagg_testbed::require_root!();
    let pair = Pair::new("down", 2);
    let before = settled_state(&pair.a);
    let config = pair.config(0xa, 2);
    let down = || {
        let output = pair
            .a
            .command(ALAGG)
            .args(["down", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, out) = down();
    assert!(
        ok && out.contains("nothing to clean up"),
        "down on a clean host:\n{out}"
    );

    let a = Alagg::start(&pair.a, &config, pair.dir.join("a.log"));
    let (ok, out) = down();
    assert!(
        !ok && out.contains("is running"),
        "down over a live instance:\n{out}"
    );
    a.kill();
    assert_ne!(
        host_state(&pair.a),
        before,
        "a killed alagg leaves its capture rules"
    );

    let (ok, out) = down();
    assert!(
        ok && out.contains("cleaned up"),
        "down after kill -9:\n{out}"
    );
    assert_eq!(host_state(&pair.a), before, "down did not restore the host");
    let (ok, out) = down();
    assert!(
        ok && out.contains("nothing to clean up"),
        "second down:\n{out}"
    );
    assert_eq!(host_state(&pair.a), before);
}

/// Gives both hosts of `pair` their own route to the other's service addresses over link0 (a
/// /30 and a /64 of its own there), the route alagg's fail-open falls back on. Loose reverse
/// path filtering on link0, as the README asks of the host route's interface.
fn host_routes(pair: &Pair) {
    for (ns, here4, there4, here6, there6, peer4, peer6) in [
        (
            &pair.a,
            "198.19.0.1",
            "198.19.0.2",
            "fd00:a1a9:f0::1",
            "fd00:a1a9:f0::2",
            B4,
            B6,
        ),
        (
            &pair.b,
            "198.19.0.2",
            "198.19.0.1",
            "fd00:a1a9:f0::2",
            "fd00:a1a9:f0::1",
            A4,
            A6,
        ),
    ] {
        ns.ip(&["addr", "add", &format!("{here4}/30"), "dev", "link0"])
            .unwrap();
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{here6}/64"),
            "dev",
            "link0",
            "nodad",
        ])
        .unwrap();
        ns.ip(&["route", "add", &format!("{peer4}/32"), "via", there4])
            .unwrap();
        ns.ip(&["-6", "route", "add", &format!("{peer6}/128"), "via", there6])
            .unwrap();
        ns.exec("sysctl", &["-qw", "net.ipv4.conf.link0.rp_filter=2"])
            .unwrap();
    }
}

#[test]
fn fail_open_traffic_takes_the_host_route_while_alagg_is_stopped_or_killed() {
    alagg_testbed::require_root!();
    let pair = Pair::new("failopen", 2);
    host_routes(&pair);
    // Five pings to each of B's addresses from A, none lost.
    let every_echo = |context: &str| {
        for target in [B4, B6] {
            let out = ping(&pair.a, &["-c", "5", "-i", "0.05", "-W", "2", target]);
            assert!(
                out.contains(" 0% packet loss"),
                "{context}: {target}:\n{out}"
            );
        }
    };
    every_echo("the host routes without alagg");
    let before_a = settled_state(&pair.a);
    let before_b = settled_state(&pair.b);

    // A short queue: a stopped alagg holds only the first few packets.
    let (a, b) = pair.up_edited(2, |text| {
        text.replace("[capture]\n", "[capture]\nqueue_max_len = 2\n")
    });
    let through_alagg = |context: &str| {
        every_echo(context);
        status_json(&pair.a).delivery.delivered
    };
    let delivered = through_alagg("alagg up");
    assert!(
        delivered >= 10,
        "alagg delivered {delivered} of the replies"
    );

    // Both stopped: bound to their queues and reading nothing. Once a queue is full the
    // kernel lets packets pass; they take the host routes.
    a.pause();
    b.pause();
    for target in [B4, B6] {
        let out = ping(&pair.a, &["-c", "20", "-i", "0.05", "-W", "1", target]);
        let received = ping_received(&out);
        assert!(
            received >= 14,
            "{received} of 20 echoes to {target} came back while alagg was stopped:\n{out}"
        );
    }
    a.resume();
    b.resume();
    let after = through_alagg("alagg resumed");
    assert!(
        after >= delivered + 10,
        "alagg carried nothing after resuming: {delivered} -> {after}"
    );

    // Both killed: no listener, so nothing waits; the rules stay until `alagg down`.
    a.kill();
    b.kill();
    every_echo("alagg killed");
    for (ns, host, before) in [(&pair.a, 0xa, &before_a), (&pair.b, 0xb, &before_b)] {
        let output = ns
            .command(ALAGG)
            .args(["down", "--config"])
            .arg(pair.config(host, 2))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            &host_state(ns),
            before,
            "alagg down left changes on host {host:x}"
        );
    }
}

/// `ALAGG_STAMPS` (issue 14's latency budget): every echo request and reply is stamped at each
/// of the six points on the host it passes, with one clock, in path order, and the files are
/// written when alagg stops.
#[test]
fn latency_stamps_follow_every_ping_hop_by_hop() {
    alagg_testbed::require_root!();
    let pair = Pair::new("stamps", 2);
    let stamps = |host: &str| pair.dir.join(format!("{host}.stamps"));
    let start = |ns, host: u8, name: &str| {
        let file = stamps(name);
        Alagg::start_with_env(
            ns,
            &pair.config(host, 2),
            pair.dir.join(format!("{name}.log")),
            &[("ALAGG_STAMPS", file.as_os_str())],
        )
    };
    let (a, b) = (start(&pair.a, 0xa, "a"), start(&pair.b, 0xb, "b"));
    let out = ping(&pair.a, &["-c", "20", "-i", "0.02", "-W", "2", B4]);
    assert!(out.contains(" 0% packet loss"), "{out}");
    let (log_a, log_b) = (a.stop(), b.stop());
    assert!(log_a.contains("latency stamps written"), "{log_a}");
    assert!(log_b.contains("latency stamps written"), "{log_b}");
    // Per host: key -> the time of each point.
    let read = |name: &str| {
        let mut keys: std::collections::HashMap<String, Vec<(String, u64)>> = Default::default();
        for line in fs::read_to_string(stamps(name)).unwrap().lines() {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 3, "{line:?}");
            let at = words[2].parse().unwrap();
            keys.entry(words[1].into())
                .or_default()
                .push((words[0].into(), at));
        }
        keys
    };
    let (at_a, at_b) = (read("a"), read("b"));
    let order = |points: &[(String, u64)], names: [&str; 3]| -> Option<[u64; 3]> {
        let time = |n| points.iter().find(|(p, _)| p == n).map(|&(_, t)| t);
        Some([time(names[0])?, time(names[1])?, time(names[2])?])
    };
    // Requests: captured, sending, sent at A; received, writing, written at B. Replies the
    // other way. Each in order, sending before the peer took it.
    let mut trips = [0, 0];
    for (dir, (from, to)) in [(&at_a, &at_b), (&at_b, &at_a)].into_iter().enumerate() {
        for (key, points) in from {
            let Some(sent) = order(points, ["captured", "sending", "sent"]) else {
                continue;
            };
            let Some(got) = to
                .get(key)
                .and_then(|p| order(p, ["received", "writing", "written"]))
            else {
                continue;
            };
            assert!(sent[0] <= sent[1] && sent[1] <= sent[2], "{key}: {sent:?}");
            assert!(got[0] <= got[1] && got[1] <= got[2], "{key}: {got:?}");
            assert!(sent[1] <= got[0], "{key}: taken before it was sent");
            assert!(
                got[0] - sent[1] < 1_000_000_000,
                "{key}: a second on the wire"
            );
            trips[dir] += 1;
        }
    }
    // Every one of the 20 echoes, each way.
    assert!(trips[0] >= 20 && trips[1] >= 20, "{trips:?}");
}
