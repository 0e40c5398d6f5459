//! Privileged end-to-end tests of `alagg up` (issue 4): two hosts in network namespaces joined by
//! two veth links, `alagg up` on both, real clients (ping, ping -6) through the aggregate in both
//! directions, and a host left exactly as it was after shutdown.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::{Netns, veth};

const ALAGG: &str = env!("CARGO_BIN_EXE_alagg");

/// Host addresses (on each namespace's loopback): the services alagg carries traffic for.
const A4: &str = "198.18.100.1";
const B4: &str = "198.18.100.2";
const A6: &str = "fd00:a1a9:100::1";
const B6: &str = "fd00:a1a9:100::2";

fn mac(host: u8, link: u8) -> String {
    format!("02:a1:a9:00:{host:02x}:{link:02x}")
}

/// A running `alagg up`: stopped with SIGTERM (then SIGKILL) when dropped.
struct Alagg {
    child: Child,
    log: PathBuf,
}

impl Alagg {
    fn start(netns: &Netns, config: &Path, log: PathBuf) -> Self {
        let out = fs::File::create(&log).unwrap();
        let child = netns
            .command(ALAGG)
            .args(["up", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start alagg up");
        let mut alagg = Self { child, log };
        alagg.wait_for("alagg is up", Duration::from_secs(20));
        alagg
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("alagg exited ({status}) before {needle:?}:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {needle:?} from alagg within {timeout:?}:\n{}",
            self.log()
        );
    }

    /// SIGTERM, wait for a clean exit, return the log.
    fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Alagg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Two hosts, `links` links; namespaces first so they outlive the processes in them.
struct Pair {
    a: Netns,
    b: Netns,
    dir: PathBuf,
}

impl Pair {
    fn new(tag: &str, links: u8) -> Self {
        assert!(
            alagg_testbed::is_root(),
            "this test makes namespaces, TUN devices, iptables rules and XDP attachments: \
             run it as root (`cargo xtask test`)"
        );
        let a = Netns::new(&format!("{tag}-a")).unwrap();
        let b = Netns::new(&format!("{tag}-b")).unwrap();
        for link in 0..links {
            let name = format!("link{link}");
            veth(&a, &name, &mac(0xa, link), &b, &name, &mac(0xb, link)).unwrap();
        }
        for (ns, v4, v6) in [(&a, A4, A6), (&b, B4, B6)] {
            ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"])
                .unwrap();
            ns.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo"])
                .unwrap();
        }
        let dir = std::env::temp_dir().join(a.name());
        fs::create_dir_all(&dir).unwrap();
        Self { a, b, dir }
    }

    fn config(&self, host: u8, links: u8) -> PathBuf {
        let (peer, peer4, peer6) = if host == 0xa {
            (0xb, B4, B6)
        } else {
            (0xa, A4, A6)
        };
        let mut text = format!(
            "[capture]\ndestinations = [\"{peer4}/32\", \"{peer6}/128\"]\n\n[tun]\nname = \"alagg0\"\n"
        );
        for link in 0..links {
            text.push_str(&format!(
                "\n[[link]]\ninterface = \"link{link}\"\npeer_mac = \"{}\"\n",
                mac(peer, link)
            ));
        }
        let path = self.dir.join(format!("{host:x}.toml"));
        fs::write(&path, text).unwrap();
        path
    }

    fn up(&self, links: u8) -> (Alagg, Alagg) {
        let a = Alagg::start(&self.a, &self.config(0xa, links), self.dir.join("a.log"));
        let b = Alagg::start(&self.b, &self.config(0xb, links), self.dir.join("b.log"));
        (a, b)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What `alagg up` may change, to compare before and after.
fn host_state(ns: &Netns) -> String {
    let mut state = String::new();
    for (program, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[][..]),
        ("ip", &["-d", "link", "show"][..]),
        ("ip", &["route", "show", "table", "all"][..]),
        ("ip", &["-6", "route", "show", "table", "all"][..]),
        ("ip", &["addr", "show"][..]),
    ] {
        let out = ns.exec(program, args).unwrap_or_else(|e| e.to_string());
        // iptables-save prints the time of the dump, and (nf_tables backend) a table left with
        // only its empty built-in chains at their default policy: neither is a rule.
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let empty_table = lines
            .iter()
            .all(|l| l.starts_with('*') || l.ends_with("ACCEPT [0:0]") || *l == "COMMIT");
        if program.ends_with("tables-save") && empty_table {
            continue;
        }
        for line in lines {
            state.push_str(line);
            state.push('\n');
        }
    }
    state
}

/// The host state once links have carrier and addresses have settled (a fresh veth takes a
/// moment), so that it is a fair "before".
fn settled_state(ns: &Netns) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = host_state(ns);
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = host_state(ns);
        let settled = now == last && !now.contains("NO-CARRIER") && !now.contains("tentative");
        if settled || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn ping(ns: &Netns, args: &[&str]) -> String {
    ns.exec("ping", args)
        .unwrap_or_else(|e| panic!("ping {args:?} in {} failed: {e}", ns.name()))
}

#[test]
fn ping_v4_and_v6_both_ways_over_two_links_and_nothing_left_behind() {
    let pair = Pair::new("up", 2);
    let before_a = settled_state(&pair.a);
    let before_b = settled_state(&pair.b);

    let (a, b) = pair.up(2);
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
        let duplicates = summary_value(log, "duplicates");
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

/// The number after `name=` in alagg's exit summary.
fn summary_value(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

impl Alagg {
    /// SIGKILL: no teardown at all, as after a crash.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_peer_killed_and_restarted_is_recognised_and_traffic_resumes() {
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
