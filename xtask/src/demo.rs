//! `cargo xtask demo`: the main job on a built-in default, for a newcomer to watch.
//!
//! Two hosts in network namespaces joined by three links through a wire namespace (the
//! testbed), `alagg up` on both, then: ping over IPv4 and IPv6 through the aggregate, a bulk TCP
//! transfer, a per-link view while a stream runs, a link cut while a UDP stream runs, and a
//! lossy link, each with nothing lost; a summary with the figures last. Everything is torn down
//! at the end, after a failure, and on Ctrl-C.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::{A_V4, A_V6, B_V4, B_V6, Host, Netns, Testbed};
use anyhow::{Context as _, bail};

use crate::{build, root};

const LINKS: usize = 3;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C was pressed, so that the guards tear everything down on the way out.
fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: tearing down");
    }
    Ok(())
}

/// Sleeps, waking early on Ctrl-C.
fn pause(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        interrupted()?;
        thread::sleep(Duration::from_millis(50));
    }
    interrupted()
}

/// `alagg up` in a host, stopped with SIGTERM when dropped.
struct Alagg {
    child: Child,
    log: PathBuf,
}

impl Alagg {
    fn start(binary: &Path, host: &Netns, config: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let out = fs::File::create(&log)?;
        let child = host
            .command(binary.to_str().context("binary path is not UTF-8")?)
            .arg("up")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting alagg up")?;
        let mut alagg = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !alagg.log().contains("alagg is up") {
            interrupted()?;
            if let Some(status) = alagg.child.try_wait()? {
                bail!("alagg up exited ({status}):\n{}", alagg.log());
            }
            if Instant::now() > deadline {
                bail!("alagg up did not come up:\n{}", alagg.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(alagg)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit summary line.
    fn stop(&mut self) -> String {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
            .lines()
            .rev()
            .find(|l| l.starts_with("summary:"))
            .unwrap_or("")
            .to_owned()
    }
}

impl Drop for Alagg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    if !alagg_testbed::is_root() {
        bail!("the demo makes network namespaces, TUN devices and XDP attachments: run it as root");
    }
    let alagg = build(true)?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }

    println!("\n== alagg demo ==");
    let bed = Testbed::new("demo", LINKS).context("building the testbed")?;
    let dir = root().join("target").join("demo");
    fs::create_dir_all(&dir)?;
    let (config_a, config_b) = bed.write_configs(&dir)?;
    println!(
        "Two hosts joined by {LINKS} Ethernet links through a wire namespace (one bridge each):\n  \
         host A {A_V4} {A_V6}  <==>  host B {B_V4} {B_V6}\n  \
         configurations: {} and {}",
        config_a.display(),
        config_b.display()
    );
    let mut a = Alagg::start(&alagg, &bed.a, &config_a, dir.join("a.log"))?;
    let mut b = Alagg::start(&alagg, &bed.b, &config_b, dir.join("b.log"))?;
    println!(
        "  alagg up runs on both hosts: every packet between them goes over all {LINKS} links.\n"
    );

    step(1, "ping through the aggregate");
    for (label, target) in [("IPv4", B_V4), ("IPv6", B_V6)] {
        let out = bed
            .a
            .exec(
                "ping",
                &["-c", "5", "-i", "0.1", "-W", "2", &target.to_string()],
            )
            .map_err(|e| anyhow::anyhow!("ping {target} failed: {e}"))?;
        println!("  {label} A -> B: {}", ping_summary(&out));
    }
    interrupted()?;

    step(2, "a bulk TCP transfer (iperf3, 3 seconds, A -> B)");
    let throughput = iperf(&bed)?;
    println!("  {throughput}");
    interrupted()?;

    step(3, "per-link view of host B while a stream runs");
    let stream = udp_stream(&bed, 30_000, Duration::from_millis(1500), || {
        pause(Duration::from_millis(700))?;
        show_status(&alagg, &bed.b, &config_b)
    })?;
    println!("  stream: {stream}");

    step(
        4,
        "link 0 is cut in the middle of a stream, and healed after",
    );
    let cut = udp_stream(&bed, 30_000, Duration::from_millis(1500), || {
        pause(Duration::from_millis(400))?;
        bed.cut(0)?;
        println!("  link 0 cut (frames on it vanish)");
        pause(Duration::from_millis(700))?;
        bed.heal(0)?;
        println!("  link 0 healed");
        Ok(())
    })?;
    println!("  stream: {cut}");

    step(
        5,
        "link 1 drops 30 % of its frames at random, link 2 drops 10 %",
    );
    bed.set_loss(1, 30)?;
    bed.set_loss(2, 10)?;
    let lossy = udp_stream(&bed, 30_000, Duration::from_millis(1500), || Ok(()))?;
    println!("  stream: {lossy}");
    bed.set_loss(1, 0)?;
    bed.set_loss(2, 0)?;

    println!("\n== summary ==");
    let summary_a = a.stop();
    let summary_b = b.stop();
    println!("  host A: {}", summary_a.trim_start_matches("summary: "));
    println!("  host B: {}", summary_b.trim_start_matches("summary: "));
    println!("  ping: every echo answered | TCP: {throughput}\n  cut: {cut}\n  loss: {lossy}");
    println!("  logs: {}", dir.display());
    println!(
        "== done: alagg stopped on both hosts; namespaces, TUN devices, rules and XDP are gone =="
    );
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("[{n}/5] {what}");
}

fn ping_summary(out: &str) -> String {
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let rtt = out
        .lines()
        .find(|l| l.starts_with("rtt"))
        .unwrap_or("")
        .trim();
    format!("{loss}; {rtt}")
}

fn iperf(bed: &Testbed) -> anyhow::Result<String> {
    let mut server = bed
        .b
        .command("iperf3")
        .args(["-s", "-1", "-B", &B_V4.to_string(), "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (installed by `cargo xtask bootstrap`)")?;
    thread::sleep(Duration::from_millis(300));
    let out = bed.a.exec(
        "iperf3",
        &[
            "-c",
            &B_V4.to_string(),
            "-B",
            &A_V4.to_string(),
            "-p",
            "5201",
            "-t",
            "3",
            "-f",
            "g",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    let out = out.map_err(|e| anyhow::anyhow!("iperf3 failed: {e}"))?;
    let line = out
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or("")
        .to_owned();
    let rate = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1].ends_with("bits/sec"))
        .map(|w| format!("{} {}", w[0], w[1]))
        .unwrap_or_else(|| line.clone());
    Ok(format!("{rate} over {LINKS} redundant links"))
}

fn show_status(alagg: &Path, host: &Netns, config: &Path) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", host.name()])
        .arg(alagg)
        .args(["status", "--config"])
        .arg(config)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("  | {line}");
    }
    Ok(())
}

/// Sends `count` numbered 64-byte datagrams from A to B over `duration`, runs `during` on the
/// side, and reports how many arrived, how many twice, how many never.
fn udp_stream(
    bed: &Testbed,
    count: u32,
    duration: Duration,
    during: impl FnOnce() -> anyhow::Result<()> + Send,
) -> anyhow::Result<String> {
    let target = SocketAddr::new(Host::B.v4(), 5005);
    let receiver = bed.b.enter(|| UdpSocket::bind(target))??;
    receiver.set_read_timeout(Some(Duration::from_millis(500)))?;
    let size: libc::c_int = 64 << 20;
    // SAFETY: a valid socket and a c_int option of the size passed.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&receiver),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut seen = vec![0u8; count as usize];
    let result = thread::scope(|scope| -> anyhow::Result<()> {
        let counter = scope.spawn(|| {
            let mut buf = [0u8; 256];
            while let Ok(n) = receiver.recv(&mut buf) {
                if n >= 4 {
                    let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if let Some(slot) = seen.get_mut(seq) {
                        *slot = slot.saturating_add(1);
                    }
                }
            }
        });
        let side = scope.spawn(during);
        bed.a.enter(|| -> anyhow::Result<()> {
            let socket = UdpSocket::bind(SocketAddr::new(Host::A.v4(), 0))?;
            let mut datagram = [0u8; 64];
            let start = Instant::now();
            let per = duration / count;
            for seq in 0..count {
                datagram[..4].copy_from_slice(&seq.to_be_bytes());
                socket.send_to(&datagram, target)?;
                if seq % 64 == 63 {
                    let due = start + per * (seq + 1);
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            Ok(())
        })??;
        let side = side
            .join()
            .map_err(|_| anyhow::anyhow!("side task panicked"))?;
        let _ = counter.join();
        side
    });
    result?;
    let delivered = seen.iter().filter(|&&n| n > 0).count();
    let twice = seen.iter().filter(|&&n| n > 1).count();
    let lost = seen.len() - delivered;
    Ok(format!(
        "{delivered} of {count} datagrams delivered, {twice} duplicates, {lost} lost"
    ))
}
