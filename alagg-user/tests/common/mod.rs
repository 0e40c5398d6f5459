//! Shared helpers of the end-to-end tests: `alagg up` as a guarded child process, a pair of
//! hosts joined by veth links, and host-state snapshots.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::{Netns, veth_with_queues};

pub const ALAGG: &str = env!("CARGO_BIN_EXE_alagg");

/// Host addresses (on each namespace's loopback): the services alagg carries traffic for.
pub const A4: &str = "198.18.100.1";
pub const B4: &str = "198.18.100.2";
pub const A6: &str = "fd00:a1a9:100::1";
pub const B6: &str = "fd00:a1a9:100::2";

pub fn mac(host: u8, link: u8) -> String {
    format!("02:a1:a9:00:{host:02x}:{link:02x}")
}

/// A running `alagg up`: stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Alagg {
    child: Child,
    log: PathBuf,
}

impl Alagg {
    pub fn start(netns: &Netns, config: &Path, log: PathBuf) -> Self {
        Self::start_with_env(netns, config, log, &[])
    }

    /// [`Alagg::start`] with `env` added to its environment.
    pub fn start_with_env(
        netns: &Netns,
        config: &Path,
        log: PathBuf,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let out = fs::File::create(&log).unwrap();
        let child = netns
            .command(ALAGG)
            .args(["up", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start alagg up");
        let mut alagg = Self { child, log };
        alagg.wait_for("alagg is up", Duration::from_secs(20));
        alagg
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The names of the process's threads (`/proc/<pid>/task/*/comm`), sorted.
    pub fn threads(&self) -> Vec<String> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let mut names: Vec<String> = fs::read_dir(tasks)
            .unwrap()
            .flatten()
            .filter_map(|task| fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect();
        names.sort();
        names
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
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
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM (and SIGCONT, so a process a test stopped acts on it), up to 10 s for a clean exit,
/// then SIGKILL.
pub fn terminate(child: &mut Child) {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Alagg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Two hosts, `links` links; namespaces first so they outlive the processes in them.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub dir: PathBuf,
}

impl Pair {
    pub fn new(tag: &str, links: u8) -> Self {
        Pair::with_queues(tag, links, 1)
    }

    /// Like [`Pair::new`], with `queues` receive and transmit queues on every link's ends.
    pub fn with_queues(tag: &str, links: u8, queues: u32) -> Self {
        assert!(
            alagg_testbed::is_root(),
            "this test makes namespaces, TUN devices, iptables rules and XDP attachments: \
             run it as root (`cargo xtask test`)"
        );
        let a = Netns::new(&format!("{tag}-a")).unwrap();
        let b = Netns::new(&format!("{tag}-b")).unwrap();
        for link in 0..links {
            let name = format!("link{link}");
            let (mac_a, mac_b) = (mac(0xa, link), mac(0xb, link));
            veth_with_queues(&a, (&name, &mac_a), &b, (&name, &mac_b), queues).unwrap();
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

    pub fn config(&self, host: u8, links: u8) -> PathBuf {
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

    pub fn up(&self, links: u8) -> (Alagg, Alagg) {
        self.up_with(links, "")
    }

    /// Like [`Pair::up`], with `extra` (more TOML tables) appended to both configurations.
    pub fn up_with(&self, links: u8, extra: &str) -> (Alagg, Alagg) {
        self.up_edited(links, |text| text + extra)
    }

    /// Like [`Pair::up`], with both configurations' text passed through `edit` first.
    pub fn up_edited(&self, links: u8, edit: impl Fn(String) -> String) -> (Alagg, Alagg) {
        let config = |host| {
            let path = self.config(host, links);
            let text = edit(fs::read_to_string(&path).unwrap());
            fs::write(&path, text).unwrap();
            path
        };
        let a = Alagg::start(&self.a, &config(0xa), self.dir.join("a.log"));
        let b = Alagg::start(&self.b, &config(0xb), self.dir.join("b.log"));
        (a, b)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What `alagg up` may change, to compare before and after.
pub fn host_state(ns: &Netns) -> String {
    let mut state = String::new();
    for (program, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[][..]),
        ("ip", &["-d", "link", "show"][..]),
        ("ip", &["route", "show", "table", "all"][..]),
        ("ip", &["-6", "route", "show", "table", "all"][..]),
        ("ip", &["rule", "show"][..]),
        ("ip", &["-6", "rule", "show"][..]),
        ("ip", &["addr", "show"][..]),
        ("nft", &["list", "ruleset"][..]),
        (
            "sysctl",
            &[
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.default.rp_filter",
            ][..],
        ),
    ] {
        let out = ns.exec(program, args).unwrap_or_else(|e| e.to_string());
        // iptables-save prints the time of the dump: not a rule. Everything else counts, an
        // empty table left behind too (issue 15).
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        for line in lines {
            state.push_str(line);
            state.push('\n');
        }
    }
    state
}

/// The host state once links have carrier and addresses have settled (a fresh veth takes a
/// moment), so that it is a fair "before".
pub fn settled_state(ns: &Netns) -> String {
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

pub fn ping(ns: &Netns, args: &[&str]) -> String {
    ns.exec("ping", args)
        .unwrap_or_else(|e| panic!("ping {args:?} in {} failed: {e}", ns.name()))
}

/// The last `summary:` line alagg printed on exit.
fn summary_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"))
}

/// How many echo replies `ping` reported ("N received").
pub fn ping_received(out: &str) -> u32 {
    out.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"received\" in ping's output:\n{out}"))
}

/// The number after `name=` in alagg's exit summary.
pub fn summary_value(log: &str, name: &str) -> u64 {
    let line = summary_line(log);
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

/// The number after `name=` of `link` in the `links=` field of alagg's exit summary, e.g. the
/// `rx_frames` of `link0:tx_frames=0,...,rx_frames=20000,...,first=12251`.
pub fn summary_link_value(log: &str, link: &str, name: &str) -> u64 {
    let line = summary_line(log);
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("links="))
        .and_then(|links| {
            links
                .split(';')
                .find_map(|l| l.strip_prefix(&format!("{link}:")))
        })
        .and_then(|fields| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {link}:{name}= in {line}"))
}

impl Alagg {
    /// Sends `signal` and waits (up to 10 s, then SIGKILL) for the process to end; returns
    /// whether it exited with success and its log.
    pub fn signal(mut self, signal: i32) -> (bool, String) {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.success(), self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (false, self.log())
    }

    /// Stops the process (SIGSTOP) without ending it: a stalled alagg, bound to its queues
    /// and reading nothing. [`Alagg::resume`] lets it go on; dropping it resumes it too.
    pub fn pause(&self) {
        self.send(libc::SIGSTOP);
    }

    /// Lets a process stopped by [`Alagg::pause`] go on (SIGCONT).
    pub fn resume(&self) {
        self.send(libc::SIGCONT);
    }

    /// Sends `signal` and returns at once.
    pub fn send(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill has no memory-safety preconditions.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }

    /// SIGKILL: no teardown at all, as after a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Held by tests that push a lot of traffic, so that two of them in one test binary do not
/// compete for this machine's two cores: they test correctness, not behaviour under overload.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serialises heavy tests; a test that panicked while holding the lock does not poison the
/// others.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives a test's UDP socket room for every datagram even if its thread is descheduled for a
/// while: the test's own socket must not be where datagrams are lost.
pub fn big_receive_buffer(socket: &std::net::UdpSocket) {
    let size: libc::c_int = 64 << 20;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Sends `count` numbered datagrams of `size` bytes (at least 4) from A's service address to
/// B's on `port`, paced a little (these tests are about exactly-once, not speed), and returns
/// how many times B's application received each one. The receiver stops after 500 ms of
/// silence.
pub fn udp_numbered(pair: &Pair, port: u16, count: u32, size: usize) -> Vec<u32> {
    udp_numbered_between(pair, (A4, B4), port, count, size)
}

/// The bytes of datagram `seq`: its number, then a pattern that depends on it.
pub fn numbered_datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut datagram: Vec<u8> = (0..size).map(|i| (i as u32 ^ seq) as u8).collect();
    datagram[..4].copy_from_slice(&seq.to_be_bytes());
    datagram
}

/// [`udp_numbered`] between the given addresses of A and B (IPv4 or IPv6); every datagram's
/// content is checked too.
pub fn udp_numbered_between(
    pair: &Pair,
    (from, to): (&str, &str),
    port: u16,
    count: u32,
    size: usize,
) -> Vec<u32> {
    assert!(size >= 4, "a datagram carries its 4-byte number");
    let address = |ip: &str, port: u16| -> std::net::SocketAddr {
        (ip.parse::<std::net::IpAddr>().expect("address"), port).into()
    };
    let receiver = pair
        .b
        .enter(|| std::net::UdpSocket::bind(address(to, port)).expect("bind"))
        .expect("enter B");
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    big_receive_buffer(&receiver);
    let mut seen = vec![0u32; count as usize];
    thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            while let Ok(n) = receiver.recv(&mut buf) {
                assert_eq!(n, size, "datagram length");
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                assert!(
                    (seq as usize) < seen.len(),
                    "a datagram number never sent: {seq}"
                );
                assert!(
                    buf[..n] == numbered_datagram(seq, size),
                    "datagram {seq} arrived altered"
                );
                seen[seq as usize] += 1;
            }
        });
        pair.a
            .enter(|| {
                let socket = std::net::UdpSocket::bind(address(from, 0)).expect("bind");
                for seq in 0..count {
                    socket
                        .send_to(&numbered_datagram(seq, size), address(to, port))
                        .expect("send");
                    if seq % 32 == 31 {
                        thread::sleep(Duration::from_micros(300));
                    }
                }
            })
            .expect("enter A");
        counter.join().expect("receiver thread");
    });
    seen
}

/// `alagg status --json` in `ns`, parsed.
pub fn status_json(ns: &Netns) -> alagg::ops::snapshot::Snapshot {
    let out = ns
        .exec(ALAGG, &["status", "--tun", "alagg0", "--json"])
        .unwrap_or_else(|e| panic!("alagg status --json in {}: {e}", ns.name()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}:\n{out}"))
}
