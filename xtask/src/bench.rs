//! `cargo xtask bench`: whole-system benchmarks on the testbed, alagg side by side with its
//! baselines, measured in one run on this machine.
//!
//! Configurations, on one 3-link testbed ([`alagg_testbed::Testbed`]):
//! - `direct`: host A reaches host B's service address over link 0 with a plain route, no
//!   aggregator (the path alagg must stay close to);
//! - `nfqueue steal`: the same route, with an iptables rule queueing the traffic to `alagg
//!   steal`, which takes it with alagg's own capture loop and discards it (the capture ceiling;
//!   UDP only);
//! - `frame loop N link(s)`: `alagg blast` on A and `alagg sink` on B over the first N links:
//!   alagg's data frames for 64- and 1400-byte datagrams, the same frame on every link as the
//!   redundant mode sends it, sent as fast as one thread can and received through alagg's own
//!   XDP program and AF_XDP sockets, with no capture, engine or TUN (the wire's ceiling on this
//!   machine, as `nfqueue steal` is capture's; UDP sizes only);
//! - `mptcp N links`: kernel MPTCP (`mptcpize`, iperf3) with a subflow per link, the tool many
//!   users would pick instead (TCP only; it stripes instead of duplicating);
//! - `alagg N link(s)`: `alagg up` on both hosts over the first N links, redundant mode;
//! - `alagg 2 links, auth` and `auth + encrypt`: the same with `[auth]` on both hosts, a tag
//!   on every frame and with the payload encrypted too (what authentication costs);
//! - `alagg 2 links, stripe` and `adaptive`: the other scheduling modes (each packet on one
//!   link; and a second copy where a link is lossy), also on the impaired links;
//! - `veth: ...`: direct, the steal loop, the frame loop and alagg on two links again, on a
//!   second bed whose links are plain veth pairs with no bridge between
//!   ([`Testbed::new_direct`]): the cheapest wire, so closer to what alagg itself costs.
//!
//! Workloads: UDP datagrams of 64, 512 and 1400 bytes sent as fast as one sender thread can
//! (`sendmmsg`), counted by a receiver thread (`recvmmsg`) on host B, as packets per second
//! delivered; one TCP flow and four (iperf3), as Gbit/s received; ping, 5 ms apart, RTT p50 and
//! p99. Then, with every link limited to 200 Mbit/s, with link 0 at 200 and the others at 100
//! Mbit/s (the direct path takes link 0), with link 0 at 200 Mbit/s and 5 ms one-way delay and
//! the others at 100 and 25 ms (the testbed's user-space relay), and with 5 % random loss on
//! every link, one TCP flow over `direct`, MPTCP and alagg on two links (redundant, stripe,
//! adaptive; median of three runs), and ping beside one such flow through alagg: where
//! aggregation shows, and the latency it keeps under load. Last, per mode (redundant, stripe,
//! backup, adaptive), numbered UDP streams of 2 000 datagrams/s: link 0 falling silent after
//! 1 s (loss, longest gap between arrivals) and link 0 losing 3 % (loss, and alagg's bytes on
//! the links per byte delivered).
//!
//! Everything runs on this machine (both hosts, the generator and the wire), so absolute
//! figures are those of a shared 2-core box; the ratios between configurations measured in the
//! same run are the point. Results: `target/bench/results.json`, `target/bench/results.md` (the
//! table, also on standard output) and PNG charts `target/bench/{tcp,impaired,udp,latency}.png`.

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::{A_V4, B_V4, Host, Netns, Testbed};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{budget, build, root};

/// Links in the bench's testbed.
const LINKS: usize = 3;
/// NFQUEUE number of the steal baseline (alagg's own default is 0).
const STEAL_QUEUE: &str = "7";
/// Addresses of link 0 for the direct path (RFC 2544 benchmarking range).
const DIRECT_A: &str = "198.18.200.1";
const DIRECT_B: &str = "198.18.200.2";
/// [`AlaggPair::start`]: the testbed's configuration as it is.
const DEFAULTS: (&str, &str) = ("", "");
/// [`AlaggPair::start`]: one frame per packet, as before bundles.
const UNBUNDLED: (&str, &str) = ("-unbundled", "\n[scheduler]\nbundle = false\n");
/// [`AlaggPair::start`]: every received packet written to the TUN on its own.
const UNCOALESCED: (&str, &str) = ("-uncoalesced", "\n[tun]\ncoalesce = false\n");
/// [`AlaggPair::start`]: workers poll 10 ms after their last packet, longer than the pings' 5 ms
/// spacing, so a ping never waits for a thread to wake.
const BUSY_POLL: (&str, &str) = ("-busy", "\n[cpu]\nbusy_poll_us = 10000\n");

/// UDP port of the pps workload.
const UDP_PORT: u16 = 5300;
/// UDP payload sizes.
const UDP_SIZES: [usize; 3] = [64, 512, 1400];
/// Rate limit per link in the rate-limited scenario.
const RATE_MBIT: u32 = 200;
/// Link MTU of the jumbo-frame configuration. alagg's frames stop at what one AF_XDP frame
/// holds, about 3.8 KB, so any MTU from there up measures the same.
const JUMBO_MTU: u32 = 9000;
const JUMBO_NAME: &str = "alagg 2 links, 9000 MTU";
/// `[auth]` on both hosts: a tag on every frame, and with the payload encrypted.
const AUTH_NAME: &str = "alagg 2 links, auth";
const AUTH_ENCRYPT_NAME: &str = "alagg 2 links, auth + encrypt";
/// `[scheduler] mode = "stripe"`: each packet on one link, the links' capacity adding up.
const STRIPE: (&str, &str) = ("-stripe", "\n[scheduler]\nmode = \"stripe\"\n");
const STRIPE_NAME: &str = "alagg 2 links, stripe";
/// `[scheduler] mode = "adaptive"`: striped, a second copy where a link is lossy.
const ADAPTIVE: (&str, &str) = ("-adaptive", "\n[scheduler]\nmode = \"adaptive\"\n");
const ADAPTIVE_NAME: &str = "alagg 2 links, adaptive";
/// `[scheduler] mode = "backup"`: everything on link 0 while it is healthy.
const BACKUP: (&str, &str) = ("-backup", "\n[scheduler]\nmode = \"backup\"\n");
const BACKUP_NAME: &str = "alagg 2 links, backup";
/// `fec = "8+1"` and `"8+2"` with stripe: parity over blocks of 8 frames.
const FEC_XOR: (&str, &str) = (
    "-fec81",
    "\n[scheduler]\nmode = \"stripe\"\nfec = \"8+1\"\n",
);
const FEC_XOR_NAME: &str = "alagg 2 links, stripe + XOR 8+1";
const FEC_RS: (&str, &str) = (
    "-fec82",
    "\n[scheduler]\nmode = \"stripe\"\nfec = \"8+2\"\n",
);
const FEC_RS_NAME: &str = "alagg 2 links, stripe + RS 8+2";
/// The configurations compared on two links both losing [`LOSS_PERCENT`] % ([`fec_lossy`]).
const FEC_LOSSY: [&str; 5] = [
    "alagg 2 links",
    STRIPE_NAME,
    FEC_XOR_NAME,
    FEC_RS_NAME,
    ADAPTIVE_NAME,
];
/// The configurations of the numbered UDP streams ([`streams`]).
const STREAMED: [&str; 4] = ["alagg 2 links", STRIPE_NAME, BACKUP_NAME, ADAPTIVE_NAME];
/// The numbered UDP streams: datagrams a millisecond, payload bytes.
const STREAM_PER_MS: u32 = 2;
const STREAM_PAYLOAD: usize = 1000;
/// Loss on link 0 in the lossy-link stream.
const STREAM_LOSS_PERCENT: u8 = 3;
/// Where a ping's round trip spends its time, hop by hop ([`latency_budget`]): with the
/// defaults, with workers busy-polling ([`BUSY_POLL`]) and with a receive thread ([`SPLIT`]).
const BUDGET_NAME: &str = "alagg 2 links, latency budget";
const BUDGET_BUSY_NAME: &str = "alagg 2 links, busy poll, latency budget";
const BUDGET_SPLIT_NAME: &str = "alagg 2 links, receive thread, latency budget";
/// `[cpu] run_to_completion = false`: receive on a thread of its own, as before issue 14 (the
/// default runs to completion where the CPUs are few, as on a 2-core bench machine).
const SPLIT: (&str, &str) = ("-split", "\n[cpu]\nrun_to_completion = false\n");
const SPLIT_NAME: &str = "alagg 2 links, receive thread";
/// The bare frame loop ([`frame_loop`]) on one link and on two.
const FRAME_LOOP_1: &str = "frame loop 1 link";
const FRAME_LOOP_2: &str = "frame loop 2 links";
const VETH_FRAME_LOOP: &str = "veth: frame loop 2 links";
/// The frame loop's datagram sizes: the smallest and the largest of [`UDP_SIZES`] (a
/// 1400-byte datagram's frame is 1478 bytes with its Ethernet header, nearly a full-sized one
/// on a 1500-byte MTU).
const LOOP_SIZES: [usize; 2] = [64, 1400];
/// The loop size whose rate, in bytes of packet per second, stands on the `tcp 1 flow` row as
/// the ceiling of what TCP could get through alagg on the same links.
const CEILING_SIZE: usize = 1400;
/// Every configuration a full run measures, for `--only`.
const CONFIGS: [&str; 28] = [
    "direct",
    "nfqueue steal",
    FRAME_LOOP_1,
    FRAME_LOOP_2,
    "mptcp 2 links",
    "mptcp 3 links",
    "alagg 1 link",
    "alagg 2 links",
    "alagg 3 links",
    "alagg 2 links, unbundled",
    "alagg 2 links, uncoalesced",
    "alagg 2 links, busy poll",
    SPLIT_NAME,
    BUDGET_NAME,
    BUDGET_BUSY_NAME,
    BUDGET_SPLIT_NAME,
    JUMBO_NAME,
    AUTH_NAME,
    AUTH_ENCRYPT_NAME,
    STRIPE_NAME,
    ADAPTIVE_NAME,
    BACKUP_NAME,
    FEC_XOR_NAME,
    FEC_RS_NAME,
    "veth: direct",
    "veth: nfqueue steal",
    VETH_FRAME_LOOP,
    "veth: alagg 2 links",
];
/// The configurations measured on impaired links.
const IMPAIRED: [&str; 6] = [
    "direct",
    "mptcp 2 links",
    "alagg 2 links",
    SPLIT_NAME,
    STRIPE_NAME,
    ADAPTIVE_NAME,
];
/// Loss per link in the lossy scenario.
const LOSS_PERCENT: u8 = 5;

/// How long each measurement runs.
#[derive(Clone, Copy, Debug)]
struct Durations {
    udp: Duration,
    tcp_secs: u32,
    pings: u32,
    /// Runs of each impaired-link measurement, of which the median is kept: random loss makes
    /// one TCP run vary a lot.
    impaired_runs: u32,
}

/// One measured figure.
#[derive(Clone, Debug)]
struct Figure {
    config: String,
    workload: String,
    value: f64,
    unit: &'static str,
}

/// The figures so far, printed as they come.
#[derive(Debug, Default)]
struct Results {
    figures: Vec<Figure>,
}

impl Results {
    fn add(&mut self, config: &str, workload: &str, value: f64, unit: &'static str) {
        println!("  {config:<16} {workload:<28} {value:>12.3} {unit}");
        self.figures.push(Figure {
            config: config.to_owned(),
            workload: workload.to_owned(),
            value,
            unit,
        });
    }

    fn get(&self, config: &str, workload: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.config == config && f.workload == workload)
            .map(|f| f.value)
    }
}

/// Draws the charts again from `target/bench/results.json`, without measuring.
pub fn replot() -> anyhow::Result<()> {
    let dir = root().join("target").join("bench");
    let path = dir.join("results.json");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `cargo xtask bench` first)", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut results = Results::default();
    for figure in json
        .get("figures")
        .and_then(serde_json::Value::as_array)
        .with_context(|| format!("no figures in {}", path.display()))?
    {
        let field = |name: &str| figure.get(name).and_then(serde_json::Value::as_str);
        let (Some(config), Some(workload), Some(unit), Some(value)) = (
            field("config"),
            field("workload"),
            field("unit"),
            figure.get("value").and_then(serde_json::Value::as_f64),
        ) else {
            bail!("a figure in {} lacks a field: {figure}", path.display());
        };
        let unit = match unit {
            "pps" => "pps",
            "Gbit/s" => "Gbit/s",
            _ => "us",
        };
        results.figures.push(Figure {
            config: config.to_owned(),
            workload: workload.to_owned(),
            value,
            unit,
        });
    }
    let written = plots(&results, &dir)?;
    println!("plots: {}", written.join(", "));
    Ok(())
}

/// Which configurations a run measures: `--only` keeps those whose name contains its text.
#[derive(Clone, Copy, Debug)]
struct Selection<'a>(Option<&'a str>);

impl Selection<'_> {
    /// Whether `config` is selected: by any of the `|`-separated parts of the text, each
    /// matching the names that contain it, or with a leading `=` the one name it spells.
    fn wants(self, config: &str) -> bool {
        self.0.is_none_or(|text| {
            text.split('|').any(|part| match part.strip_prefix('=') {
                Some(exact) => config == exact,
                None => config.contains(part),
            })
        })
    }

    fn wants_any(self, configs: &[&str]) -> bool {
        configs.iter().any(|c| self.wants(c))
    }
}

/// Runs the benchmarks: every configuration, or with `only` those whose name contains it.
pub fn run(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    let only = Selection(only);
    if !only.wants_any(&CONFIGS) {
        bail!(
            "--only {:?} matches no configuration; they are: {}",
            only.0.unwrap_or_default(),
            CONFIGS.map(|c| format!("{c:?}")).join(", ")
        );
    }
    if !alagg_testbed::is_root() {
        bail!(
            "the benchmarks make network namespaces, iptables rules, TUN devices and XDP \
             attachments: run them as root, e.g. `sudo -E cargo xtask bench`"
        );
    }
    let alagg = build(true)?;
    let durations = if quick {
        Durations {
            udp: Duration::from_secs(1),
            tcp_secs: 2,
            pings: 100,
            impaired_runs: 1,
        }
    } else {
        Durations {
            udp: Duration::from_secs(4),
            tcp_secs: 5,
            pings: 400,
            impaired_runs: 3,
        }
    };
    let started = Instant::now();
    let environment = environment();
    println!("== alagg bench{} ==", if quick { " (quick)" } else { "" });
    for (key, value) in &environment {
        println!("  {key}: {value}");
    }
    let bed = Testbed::new("bench", LINKS).context("building the testbed")?;
    let dir = root().join("target").join("bench");
    fs::create_dir_all(&dir)?;
    let mut results = Results::default();

    if only.wants_any(&["direct", "nfqueue steal"]) {
        let _direct = DirectPath::new(&bed)?;
        if only.wants("direct") {
            println!("\n-- direct: one link, plain routes, no aggregator");
            measure_all(&bed, "direct", &durations, &mut results, None)?;
        }
        if only.wants("nfqueue steal") {
            println!(
                "\n-- nfqueue steal: the capture ceiling (alagg's capture loop, nothing sent)"
            );
            steal_pps(&alagg, &bed, "nfqueue steal", &durations, &mut results)?;
        }
    }

    for (name, links) in [(FRAME_LOOP_1, 1), (FRAME_LOOP_2, 2)] {
        if !only.wants(name) {
            continue;
        }
        println!(
            "\n-- {name}: alagg's frames sent and received through its XDP program and AF_XDP \
             sockets, nothing else (the wire's ceiling)"
        );
        frame_loop(
            &alagg,
            &bed,
            &dir,
            (name, links, ""),
            &durations,
            &mut results,
        )?;
    }

    for links in 2..=LINKS {
        let name = format!("mptcp {links} links");
        if !only.wants(&name) {
            continue;
        }
        println!("\n-- {name}: kernel MPTCP, a subflow per link (TCP only)");
        let mptcp = Mptcp::new(&bed, links)?;
        results.add(
            &name,
            "tcp 1 flow",
            mptcp.iperf(1, durations.tcp_secs)?,
            "Gbit/s",
        );
        results.add(
            &name,
            "tcp 4 flows",
            mptcp.iperf(4, durations.tcp_secs)?,
            "Gbit/s",
        );
    }

    for links in 1..=LINKS {
        let name = format!("alagg {links} link{}", if links == 1 { "" } else { "s" });
        if !only.wants(&name) {
            continue;
        }
        println!("\n-- {name}: alagg up on both hosts, redundant");
        let pair = AlaggPair::start(&alagg, &bed, links, &dir, DEFAULTS)?;
        measure_all(&bed, &name, &durations, &mut results, Some(&pair))?;
        pair.stop();
    }
    if only.wants("alagg 2 links, unbundled") {
        println!("\n-- alagg 2 links without bundles: the baseline bundling is measured against");
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, UNBUNDLED)?;
        measure_all(
            &bed,
            "alagg 2 links, unbundled",
            &durations,
            &mut results,
            Some(&pair),
        )?;
        pair.stop();
    }
    if only.wants("alagg 2 links, uncoalesced") {
        println!(
            "\n-- alagg 2 links without UDP coalescing: the baseline coalescing is measured against"
        );
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, UNCOALESCED)?;
        measure_udp(
            &bed,
            "alagg 2 links, uncoalesced",
            &durations,
            &mut results,
            Some(&pair),
        )?;
        pair.check_alive()?;
        pair.stop();
    }
    if only.wants("alagg 2 links, busy poll") {
        println!(
            "\n-- alagg 2 links, workers busy-polling for 10 ms after traffic: sparse traffic's \
             latency"
        );
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, BUSY_POLL)?;
        let (p50, p99) = ping(&bed, durations.pings)?;
        pair.check_alive()?;
        results.add("alagg 2 links, busy poll", "ping p50", p50, "us");
        results.add("alagg 2 links, busy poll", "ping p99", p99, "us");
        pair.stop();
    }

    if only.wants(SPLIT_NAME) {
        println!(
            "\n-- {SPLIT_NAME}: receive on a thread of its own beside the capture worker's \
             (before issue 14's run to completion)"
        );
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, SPLIT)?;
        measure_all(&bed, SPLIT_NAME, &durations, &mut results, Some(&pair))?;
        pair.stop();
    }
    for (name, edit) in [
        (BUDGET_NAME, DEFAULTS),
        (BUDGET_BUSY_NAME, BUSY_POLL),
        (BUDGET_SPLIT_NAME, SPLIT),
    ] {
        if only.wants(name) {
            println!(
                "\n-- {name}: pings through alagg on two links, every packet stamped at each \
                 hop on both hosts"
            );
            latency_budget(&alagg, &bed, &dir, (name, edit), &durations, &mut results)?;
        }
    }

    if only.wants(JUMBO_NAME) {
        println!(
            "\n-- alagg 2 links with a {JUMBO_MTU}-byte MTU on the links: fewer, larger frames"
        );
        for link in 0..2 {
            bed.set_mtu(link, JUMBO_MTU)?;
        }
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, DEFAULTS)?;
        measure_all(&bed, JUMBO_NAME, &durations, &mut results, Some(&pair))?;
        pair.stop();
        for link in 0..2 {
            bed.set_mtu(link, 1500)?;
        }
    }

    for (name, edit, what) in [
        (
            STRIPE_NAME,
            STRIPE,
            "each packet on the link where it arrives first",
        ),
        (
            ADAPTIVE_NAME,
            ADAPTIVE,
            "striped, a second copy where a link is lossy",
        ),
    ] {
        if !only.wants(name) {
            continue;
        }
        println!("\n-- {name}: {what}");
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, edit)?;
        measure_all(&bed, name, &durations, &mut results, Some(&pair))?;
        pair.stop();
    }

    for (name, tag, encrypt) in [
        (AUTH_NAME, "-auth", false),
        (AUTH_ENCRYPT_NAME, "-auth-encrypt", true),
    ] {
        if !only.wants(name) {
            continue;
        }
        let what = if encrypt {
            "an AES-256-GCM tag on every frame, the payload encrypted"
        } else {
            "an AES-256-GCM tag on every frame"
        };
        println!("\n-- {name}: {what}");
        let key = site_key(&alagg, &dir)?;
        let extra = format!(
            "\n[auth]\nkey_file = \"{}\"\nencrypt = {encrypt}\n",
            key.display()
        );
        let pair = AlaggPair::start(&alagg, &bed, 2, &dir, (tag, &extra))?;
        measure_all(&bed, name, &durations, &mut results, Some(&pair))?;
        pair.stop();
    }

    for impairment in [
        Impairment::Rate,
        Impairment::Unequal,
        Impairment::Delayed,
        Impairment::Loss,
    ] {
        if !only.wants_any(&IMPAIRED) {
            continue;
        }
        println!("\n-- links {}", impairment.describe());
        for link in 0..LINKS {
            impairment.apply(&bed, link, true)?;
        }
        impaired(
            &alagg,
            &bed,
            &dir,
            (&durations, only),
            &mut results,
            impairment,
        )?;
        for link in 0..LINKS {
            impairment.apply(&bed, link, false)?;
        }
    }
    if only.wants_any(&FEC_LOSSY) {
        println!(
            "\n-- two links both dropping {LOSS_PERCENT} % of their frames: stripe, stripe + XOR \
             8+1, stripe + Reed-Solomon 8+2, adaptive and redundant side by side"
        );
        fec_lossy(&alagg, &bed, &dir, (&durations, only), &mut results)?;
    }
    if only.wants_any(&STREAMED) {
        println!(
            "\n-- numbered UDP streams, {} datagrams/s of {STREAM_PAYLOAD} B: link 0 falls silent \
             after 1 s; link 0 loses {STREAM_LOSS_PERCENT} % of its frames",
            STREAM_PER_MS * 1000
        );
        streams(&alagg, &bed, &dir, only, &mut results)?;
    }
    drop(bed);

    if only.wants_any(&[
        "veth: direct",
        "veth: nfqueue steal",
        VETH_FRAME_LOOP,
        "veth: alagg 2 links",
    ]) {
        println!(
            "\n-- plain veth pairs, no bridge: the cheapest wire, closer to what alagg itself costs"
        );
        let vbed = Testbed::new_direct("benchv", 2).context("building the plain-veth bed")?;
        if only.wants_any(&["veth: direct", "veth: nfqueue steal"]) {
            let _direct = DirectPath::new(&vbed)?;
            if only.wants("veth: direct") {
                measure_all(&vbed, "veth: direct", &durations, &mut results, None)?;
            }
            if only.wants("veth: nfqueue steal") {
                steal_pps(
                    &alagg,
                    &vbed,
                    "veth: nfqueue steal",
                    &durations,
                    &mut results,
                )?;
            }
        }
        if only.wants(VETH_FRAME_LOOP) {
            frame_loop(
                &alagg,
                &vbed,
                &dir,
                (VETH_FRAME_LOOP, 2, "-veth"),
                &durations,
                &mut results,
            )?;
        }
        if only.wants("veth: alagg 2 links") {
            let pair = AlaggPair::start(&alagg, &vbed, 2, &dir, DEFAULTS)?;
            measure_all(
                &vbed,
                "veth: alagg 2 links",
                &durations,
                &mut results,
                Some(&pair),
            )?;
            pair.stop();
        }
    }

    let table = markdown(&results, &environment, quick, started.elapsed());
    println!("\n{table}");
    let json = json!({
        "quick": quick,
        "seconds": started.elapsed().as_secs_f64(),
        "environment": environment.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "figures": results.figures.iter().map(|f| json!({
            "config": f.config, "workload": f.workload, "value": f.value, "unit": f.unit,
        })).collect::<Vec<_>>(),
    });
    fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    fs::write(dir.join("results.md"), &table)?;
    println!(
        "written: {} and {}",
        dir.join("results.json").display(),
        dir.join("results.md").display()
    );
    match plots(&results, &dir) {
        Ok(written) => println!("plots: {}", written.join(", ")),
        Err(error) => println!("no plots: {error:#}"),
    }
    Ok(())
}

/// Throughput, packet-rate and latency charts under `dir`; returns their paths.
fn plots(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    crate::plot::load_font()?;
    let bars: Vec<crate::plot::Bar<'_>> = results
        .figures
        .iter()
        .map(|f| (f.config.as_str(), f.workload.as_str(), f.value))
        .collect();
    let rate = Impairment::Rate.workload();
    let unequal = Impairment::Unequal.workload();
    let loss = Impairment::Loss.workload();
    let delayed = Impairment::Delayed.workload();
    let charts: [(&str, &str, &str, Vec<&str>); 4] = [
        (
            "tcp.png",
            "TCP throughput (iperf3)",
            "Gbit/s",
            vec!["tcp 1 flow", "tcp 4 flows"],
        ),
        (
            "impaired.png",
            "One TCP flow on impaired links",
            "Gbit/s",
            vec![
                rate.as_str(),
                unequal.as_str(),
                delayed.as_str(),
                loss.as_str(),
            ],
        ),
        (
            "udp.png",
            "UDP packets per second delivered",
            "packets/s",
            vec!["udp 64 B", "udp 512 B", "udp 1400 B"],
        ),
        (
            "latency.png",
            "Ping round-trip time",
            "microseconds",
            vec!["ping p50", "ping p99"],
        ),
    ];
    let mut written = Vec::new();
    for (file, title, unit, workloads) in charts {
        let path = dir.join(file);
        crate::plot::grouped_bars(&path, title, unit, &workloads, &bars)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// UDP packets per second the bare capture loop (`alagg steal` on A) takes, for each size. The
/// direct path's route must be in place.
fn steal_pps(
    alagg: &Path,
    bed: &Testbed,
    config: &str,
    durations: &Durations,
    results: &mut Results,
) -> anyhow::Result<()> {
    let steal = Steal::start(alagg, &bed.a)?;
    for size in UDP_SIZES {
        udp_send(bed, size, durations.udp)?;
        let stolen = steal.count_since_last()?;
        results.add(
            config,
            &format!("udp {size} B"),
            stolen as f64 / durations.udp.as_secs_f64(),
            "pps",
        );
    }
    Ok(())
}

/// The bare frame loop on the first `links` links of `bed` (`tag` names its files), per size of [`LOOP_SIZES`]: `alagg sink`
/// on B, then `alagg blast` on A for the UDP duration. Recorded as `udp N B`, the packets per
/// second that crossed every link (frames received per link, averaged over the links: each
/// packet goes on all of them, as alagg's redundant mode sends it, so this is the ceiling of
/// alagg's delivered rate on the same links), and `udp N B: frames, all links`; on the `tcp 1
/// flow` row, the [`CEILING_SIZE`] rate in Gbit/s of packet bytes (no TCP runs in the loop).
fn frame_loop(
    alagg: &Path,
    bed: &Testbed,
    dir: &Path,
    (config, links, tag): (&str, usize, &str),
    durations: &Durations,
    results: &mut Results,
) -> anyhow::Result<()> {
    let [a, b] = [Host::A, Host::B]
        .map(|host| dir.join(format!("{}-{links}-loop{tag}.toml", host.letter())));
    fs::write(&a, bed.config_with_links(Host::A, links))?;
    fs::write(&b, bed.config_with_links(Host::B, links))?;
    let seconds = durations.udp.as_secs_f64().to_string();
    for size in LOOP_SIZES {
        let sink = FrameSink::start(alagg, &bed.b, &b, dir)?;
        let out = bed
            .a
            .command(alagg.to_str().context("binary path is not UTF-8")?)
            .args(["blast", "--config"])
            .arg(&a)
            .args(["--size", &size.to_string(), "--seconds", &seconds])
            .env("RUST_LOG", "warn")
            .output()
            .context("running alagg blast")?;
        if !out.status.success() {
            bail!(
                "alagg blast --size {size} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let blast: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "alagg blast printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        // The last frames in flight arrive.
        thread::sleep(Duration::from_millis(200));
        let sunk = sink.stop()?;
        let number = |json: &serde_json::Value, key: &str| {
            json.get(key)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        let secs = number(&blast, "seconds").max(1e-9);
        let frames = number(&sunk, "frames");
        let per_link: Vec<String> = sunk
            .get("per_link")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|l| format!("{:.0} k", number(l, "frames") / secs / 1e3))
            .collect();
        results.add(
            config,
            &format!("udp {size} B"),
            frames / links as f64 / secs,
            "pps",
        );
        results.add(
            config,
            &format!("udp {size} B: frames, all links"),
            frames / secs,
            "pps",
        );
        if size == CEILING_SIZE {
            // Issue 14's TCP ceiling: the bytes of IP packet a redundant sender could get across
            // every link per second at this frame size, on the row alagg's TCP figure is on.
            results.add(
                config,
                "tcp 1 flow",
                frames / links as f64 / secs * size as f64 * 8.0 / 1e9,
                "Gbit/s",
            );
        }
        println!(
            "  ({size} B: {:.0} frames sent, {frames:.0} received ({} per link/s), {:.2} Gbit/s \
             of frames received; CPU: blast {:.0} %, sink {:.0} % of one core)",
            number(&blast, "sent"),
            per_link.join(", "),
            number(&sunk, "bytes") * 8.0 / secs / 1e9,
            100.0 * number(&blast, "cpu_seconds") / secs,
            100.0 * number(&sunk, "cpu_seconds") / secs,
        );
    }
    Ok(())
}

/// `alagg sink` on a host, counting alagg frames until stopped.
struct FrameSink {
    child: Option<Child>,
    out: PathBuf,
    log: PathBuf,
}

impl FrameSink {
    /// Starts `alagg sink` in `ns` with the configuration at `config`, once its sockets are open.
    fn start(alagg: &Path, ns: &Netns, config: &Path, dir: &Path) -> anyhow::Result<Self> {
        let out = dir.join("sink.json");
        let log = dir.join("sink.log");
        let child = ns
            .command(alagg.to_str().context("binary path is not UTF-8")?)
            .args(["sink", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(fs::File::create(&out)?))
            .stderr(Stdio::from(fs::File::create(&log)?))
            .spawn()
            .context("starting alagg sink")?;
        let mut sink = Self {
            child: Some(child),
            out,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&sink.log).unwrap_or_default();
            if text.contains("frame sink ready") {
                return Ok(sink);
            }
            if let Some(status) = sink
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("alagg sink exited ({status}):\n{text}");
            }
            if Instant::now() > deadline {
                bail!("alagg sink was not ready within 10 s:\n{text}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and what the sink counted.
    fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "alagg sink printed no JSON ({text:?}):\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }
}

impl Drop for FrameSink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// The workloads every unimpaired configuration runs.
fn measure_all(
    bed: &Testbed,
    config: &str,
    durations: &Durations,
    results: &mut Results,
    pair: Option<&AlaggPair>,
) -> anyhow::Result<()> {
    measure_udp(bed, config, durations, results, pair)?;
    let cpu = pair.map(AlaggPair::cpu_time);
    let gbits = iperf(bed, 1, durations.tcp_secs)?;
    results.add(config, "tcp 1 flow", gbits, "Gbit/s");
    if let (Some(pair), Some(before)) = (pair, cpu) {
        let megabytes = gbits * f64::from(durations.tcp_secs) * 1e9 / 8.0 / 1e6;
        let used = (pair.cpu_time() - before).as_secs_f64();
        results.add(
            config,
            "tcp 1 flow: CPU per MB",
            used * 1e6 / megabytes.max(1e-9),
            "us",
        );
    }
    results.add(
        config,
        "tcp 4 flows",
        iperf(bed, 4, durations.tcp_secs)?,
        "Gbit/s",
    );
    let (p50, p99) = ping(bed, durations.pings)?;
    results.add(config, "ping p50", p50, "us");
    results.add(config, "ping p99", p99, "us");
    if let Some(pair) = pair {
        pair.check_alive()?;
    }
    Ok(())
}

/// What the impaired-link measurements do to every link.
#[derive(Clone, Copy, Debug)]
enum Impairment {
    /// A [`RATE_MBIT`] rate limit.
    Rate,
    /// Unequal links: [`RATE_MBIT`] on link 0 (the direct path's), half that on the others.
    Unequal,
    /// [`LOSS_PERCENT`] random loss.
    Loss,
    /// Unequal and distant links, through the testbed's relay: [`RATE_MBIT`] and
    /// [`NEAR_DELAY`] one-way on link 0, half the rate and [`FAR_DELAY`] on the others.
    Delayed,
}

/// One-way delays of the [`Impairment::Delayed`] links.
const NEAR_DELAY: Duration = Duration::from_millis(5);
const FAR_DELAY: Duration = Duration::from_millis(25);

impl Impairment {
    fn describe(self) -> String {
        match self {
            Impairment::Rate => format!("limited to {RATE_MBIT} Mbit/s"),
            Impairment::Unequal => format!(
                "limited to {RATE_MBIT} Mbit/s on link 0 and {} on the others",
                RATE_MBIT / 2
            ),
            Impairment::Loss => format!("dropping {LOSS_PERCENT} % of their frames at random"),
            Impairment::Delayed => format!(
                "limited to {RATE_MBIT} Mbit/s with {NEAR_DELAY:?} one-way delay on link 0, {} \
                 Mbit/s with {FAR_DELAY:?} on the others (user-space relay)",
                RATE_MBIT / 2
            ),
        }
    }

    /// The workload's name in the results.
    fn workload(self) -> String {
        match self {
            Impairment::Rate => format!("tcp 1 flow, {RATE_MBIT} Mbit/s links"),
            Impairment::Unequal => {
                format!("tcp 1 flow, {RATE_MBIT}+{} Mbit/s links", RATE_MBIT / 2)
            }
            Impairment::Loss => format!("tcp 1 flow, {LOSS_PERCENT} % loss"),
            Impairment::Delayed => format!(
                "tcp 1 flow, {RATE_MBIT}+{} Mbit/s, {}/{} ms",
                RATE_MBIT / 2,
                NEAR_DELAY.as_millis(),
                FAR_DELAY.as_millis()
            ),
        }
    }

    /// Puts the impairment on `link`, or takes it off.
    fn apply(self, bed: &Testbed, link: usize, on: bool) -> anyhow::Result<()> {
        match self {
            Impairment::Rate => bed.set_rate(link, if on { RATE_MBIT } else { 0 })?,
            Impairment::Unequal => {
                let rate = if link == 0 { RATE_MBIT } else { RATE_MBIT / 2 };
                bed.set_rate(link, if on { rate } else { 0 })?;
            }
            Impairment::Loss => bed.set_loss(link, if on { LOSS_PERCENT } else { 0 })?,
            Impairment::Delayed if on => {
                let (rate, delay) = if link == 0 {
                    (RATE_MBIT, NEAR_DELAY)
                } else {
                    (RATE_MBIT / 2, FAR_DELAY)
                };
                let path = alagg_testbed::Path {
                    delay,
                    rate_mbit: Some(rate),
                    ..alagg_testbed::Path::default()
                };
                bed.set_path(link, alagg_testbed::Direction::Both, path)?;
            }
            Impairment::Delayed => bed.clear_path(link)?,
        }
        Ok(())
    }
}

/// One TCP flow over `direct` and over alagg on two links, on impaired links.
fn impaired(
    alagg: &Path,
    bed: &Testbed,
    dir: &Path,
    (durations, only): (&Durations, Selection<'_>),
    results: &mut Results,
    impairment: Impairment,
) -> anyhow::Result<()> {
    let label = impairment.workload();
    let runs = durations.impaired_runs;
    let secs = durations.tcp_secs;
    let [direct, mptcp, alagg_2, split, stripe, adaptive] = IMPAIRED;
    if only.wants(direct) {
        let _direct = DirectPath::new(bed)?;
        let value = median(runs, || iperf(bed, 1, secs))?;
        results.add(direct, &label, value, "Gbit/s");
    }
    if only.wants(mptcp) {
        let bed_mptcp = Mptcp::new(bed, 2)?;
        let value = median(runs, || bed_mptcp.iperf(1, secs))?;
        results.add(mptcp, &label, value, "Gbit/s");
    }
    for (name, edit) in [
        (alagg_2, DEFAULTS),
        (split, SPLIT),
        (stripe, STRIPE),
        (adaptive, ADAPTIVE),
    ] {
        if !only.wants(name) {
            continue;
        }
        let pair = AlaggPair::start(alagg, bed, 2, dir, edit)?;
        let value = median(runs, || iperf(bed, 1, secs))?;
        results.add(name, &label, value, "Gbit/s");
        // Latency under that load: ping beside the TCP flow, after its first second.
        let (p50, p99) = thread::scope(|scope| -> anyhow::Result<(f64, f64)> {
            let flow = scope.spawn(|| iperf(bed, 1, secs.max(2)));
            thread::sleep(Duration::from_secs(1));
            let pings = ping(bed, (secs.max(2) - 1) * 150);
            flow.join()
                .map_err(|_| anyhow::anyhow!("the TCP flow's thread panicked"))??;
            pings
        })?;
        results.add(
            name,
            &format!("ping p50 under load, {label}"),
            p50 / 1e3,
            "ms",
        );
        results.add(
            name,
            &format!("ping p99 under load, {label}"),
            p99 / 1e3,
            "ms",
        );
        pair.check_alive()?;
        pair.stop();
    }
    Ok(())
}

/// Per mode, two numbered UDP streams from A to B over two links: in the first link 0 falls
/// silent (every frame dropped, carrier kept) after 1 s, which costs what failure detection
/// and the failover resend do not save (loss, and the longest time between two arrivals); in
/// the second link 0 loses [`STREAM_LOSS_PERCENT`] % of its frames, which costs loss or extra
/// bytes (alagg's frames sent on the links per byte of IP packet delivered).
fn streams(
    alagg: &Path,
    bed: &Testbed,
    dir: &Path,
    only: Selection<'_>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let modes = [
        ("alagg 2 links", DEFAULTS),
        (STRIPE_NAME, STRIPE),
        (BACKUP_NAME, BACKUP),
        (ADAPTIVE_NAME, ADAPTIVE),
    ];
    for (name, edit) in modes {
        if !only.wants(name) {
            continue;
        }
        let pair = AlaggPair::start(alagg, bed, 2, dir, edit)?;
        // Feedback has made both links known up.
        thread::sleep(Duration::from_secs(2));
        let cut = || bed.cut(0);
        let stream = numbered_stream(bed, 6_000, Some((Duration::from_secs(1), &cut)))?;
        bed.heal(0)?;
        results.add(name, "failover: loss", stream.loss_percent(), "%");
        results.add(
            name,
            "failover: longest gap",
            stream.longest_gap.as_secs_f64() * 1e3,
            "ms",
        );
        // Link 0 healthy again (hold-down) before the next stream.
        thread::sleep(Duration::from_secs(2));
        bed.set_loss(0, STREAM_LOSS_PERCENT)?;
        let before = wire_bytes(alagg, bed)?;
        let stream = numbered_stream(bed, 10_000, None)?;
        let sent = wire_bytes(alagg, bed)? - before;
        bed.set_loss(0, 0)?;
        let workload = format!("{STREAM_LOSS_PERCENT} % loss on link 0");
        results.add(
            name,
            &format!("{workload}: loss"),
            stream.loss_percent(),
            "%",
        );
        let delivered = stream.unique.max(1) * (STREAM_PAYLOAD as u64 + 28);
        results.add(
            name,
            &format!("{workload}: wire bytes per byte"),
            sent as f64 / delivered as f64,
            "x",
        );
        if stream.duplicates > 0 {
            println!("  ({} datagrams delivered twice)", stream.duplicates);
        }
        pair.check_alive()?;
        pair.stop();
    }
    Ok(())
}

/// On links 0 and 1 both losing [`LOSS_PERCENT`] % of their frames (both ways), per
/// configuration of [`FEC_LOSSY`] that `--only` selects: one TCP flow (goodput, and alagg's
/// bytes on the links per byte delivered), a numbered UDP stream (loss, bytes per byte) and
/// ping (p50, p99 of the echoes that came back): what FEC recovers, what it costs on the wire
/// and in latency.
fn fec_lossy(
    alagg: &Path,
    bed: &Testbed,
    dir: &Path,
    (durations, only): (&Durations, Selection<'_>),
    results: &mut Results,
) -> anyhow::Result<()> {
    let configs = [
        ("alagg 2 links", DEFAULTS),
        (STRIPE_NAME, STRIPE),
        (FEC_XOR_NAME, FEC_XOR),
        (FEC_RS_NAME, FEC_RS),
        (ADAPTIVE_NAME, ADAPTIVE),
    ];
    let workload = format!("{LOSS_PERCENT} % loss on both links");
    for link in 0..2 {
        bed.set_loss(link, LOSS_PERCENT)?;
    }
    for (name, edit) in configs {
        if !only.wants(name) {
            continue;
        }
        let pair = AlaggPair::start(alagg, bed, 2, dir, edit)?;
        // Feedback has measured the links' loss (adaptive acts on it).
        thread::sleep(Duration::from_secs(2));
        let before = wire_bytes(alagg, bed)?;
        let gbit = iperf(bed, 1, durations.tcp_secs)?;
        let sent = wire_bytes(alagg, bed)? - before;
        results.add(name, &format!("{workload}: tcp 1 flow"), gbit, "Gbit/s");
        let delivered = gbit * 1e9 / 8.0 * f64::from(durations.tcp_secs);
        results.add(
            name,
            &format!("{workload}: tcp wire bytes per byte"),
            sent as f64 / delivered.max(1.0),
            "x",
        );
        let before = wire_bytes(alagg, bed)?;
        let stream = numbered_stream(bed, 10_000, None)?;
        let sent = wire_bytes(alagg, bed)? - before;
        results.add(
            name,
            &format!("{workload}: udp loss"),
            stream.loss_percent(),
            "%",
        );
        let delivered = stream.unique.max(1) * (STREAM_PAYLOAD as u64 + 28);
        results.add(
            name,
            &format!("{workload}: udp wire bytes per byte"),
            sent as f64 / delivered as f64,
            "x",
        );
        let (p50, p99) = ping(bed, durations.pings)?;
        results.add(name, &format!("{workload}: ping p50"), p50, "us");
        results.add(name, &format!("{workload}: ping p99"), p99, "us");
        pair.check_alive()?;
        pair.stop();
    }
    for link in 0..2 {
        bed.set_loss(link, 0)?;
    }
    Ok(())
}

/// What a [`numbered_stream`] delivered.
struct Stream {
    sent: u64,
    unique: u64,
    duplicates: u64,
    longest_gap: Duration,
}

impl Stream {
    fn loss_percent(&self) -> f64 {
        100.0 * (self.sent - self.unique.min(self.sent)) as f64 / self.sent.max(1) as f64
    }
}

/// Sends `count` numbered datagrams from A to B, [`STREAM_PER_MS`] a millisecond, calling
/// `event` at its time into the stream; counts at B what arrived, once or more, and the
/// longest time between two arrivals.
fn numbered_stream(
    bed: &Testbed,
    count: u32,
    event: Option<(Duration, &(dyn Fn() -> alagg_testbed::Result<()> + Sync))>,
) -> anyhow::Result<Stream> {
    let target = SocketAddr::new(B_V4, UDP_PORT + 1);
    let receiver = bed.b.enter(|| -> std::io::Result<UdpSocket> {
        let socket = UdpSocket::bind(target)?;
        socket.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok(socket)
    })??;
    thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut seen = vec![0u8; count as usize];
            let mut buf = [0u8; 2048];
            let (mut last, mut longest) = (None::<Instant>, Duration::ZERO);
            while let Ok(n) = receiver.recv(&mut buf) {
                let now = Instant::now();
                if let Some(last) = last {
                    longest = longest.max(now - last);
                }
                last = Some(now);
                let Some(number) = buf[..n.min(4)].try_into().ok().map(u32::from_be_bytes) else {
                    continue;
                };
                if let Some(slot) = seen.get_mut(number as usize) {
                    *slot = slot.saturating_add(1);
                }
            }
            let unique = seen.iter().filter(|&&n| n > 0).count() as u64;
            let duplicates = seen.iter().map(|&n| u64::from(n.saturating_sub(1))).sum();
            (unique, duplicates, longest)
        });
        let event = scope.spawn(move || -> anyhow::Result<()> {
            if let Some((at, event)) = event {
                thread::sleep(at);
                event()?;
            }
            Ok(())
        });
        let sent = bed.a.enter(|| -> std::io::Result<u64> {
            let socket = UdpSocket::bind(SocketAddr::new(A_V4, 0))?;
            let mut datagram = vec![0u8; STREAM_PAYLOAD];
            let start = Instant::now();
            for number in 0..count {
                datagram[..4].copy_from_slice(&number.to_be_bytes());
                socket.send_to(&datagram, target)?;
                if number % STREAM_PER_MS == STREAM_PER_MS - 1 {
                    let due = start + Duration::from_millis(u64::from(number / STREAM_PER_MS + 1));
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            Ok(u64::from(count))
        })??;
        event
            .join()
            .map_err(|_| anyhow::anyhow!("the stream's event panicked"))??;
        let (unique, duplicates, longest_gap) = counter
            .join()
            .map_err(|_| anyhow::anyhow!("the stream's receiver panicked"))?;
        Ok(Stream {
            sent,
            unique,
            duplicates,
            longest_gap,
        })
    })
}

/// Bytes host A's alagg has sent on its links so far (`alagg status --json`).
fn wire_bytes(alagg: &Path, bed: &Testbed) -> anyhow::Result<u64> {
    let text = bed.a.exec(
        &alagg.display().to_string(),
        &["status", "--tun", "alagg0", "--json"],
    )?;
    let json: serde_json::Value = serde_json::from_str(&text).context("alagg status --json")?;
    Ok(json
        .get("links")
        .and_then(serde_json::Value::as_array)
        .context("no links in alagg status --json")?
        .iter()
        .filter_map(|link| link.get("tx_bytes").and_then(serde_json::Value::as_u64))
        .sum())
}

/// UDP packets per second delivered, for every size in [`UDP_SIZES`].
/// With `pair`, also the CPU time both alagg processes spent per delivered packet.
fn measure_udp(
    bed: &Testbed,
    config: &str,
    durations: &Durations,
    results: &mut Results,
    pair: Option<&AlaggPair>,
) -> anyhow::Result<()> {
    for size in UDP_SIZES {
        let cpu = pair.map(AlaggPair::cpu_time);
        let (sent, received) = udp_pps(bed, size, durations.udp)?;
        results.add(
            config,
            &format!("udp {size} B"),
            received as f64 / durations.udp.as_secs_f64(),
            "pps",
        );
        if let (Some(pair), Some(before)) = (pair, cpu) {
            let used = (pair.cpu_time() - before).as_secs_f64();
            results.add(
                config,
                &format!("udp {size} B: CPU per packet"),
                used * 1e9 / received.max(1) as f64,
                "ns",
            );
        }
        if sent > 0 && received * 2 < sent {
            println!(
                "  (offered {:.0} pps, delivered {:.1} %)",
                sent as f64 / durations.udp.as_secs_f64(),
                100.0 * received as f64 / sent as f64
            );
        }
    }
    Ok(())
}

/// The median of `runs` measurements (at least one).
fn median(runs: u32, mut measure: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut values = (0..runs.max(1))
        .map(|_| measure())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    values.sort_by(f64::total_cmp);
    Ok(values[values.len() / 2])
}

/// CPU, cores, kernel and the alagg revision, for the record.
fn environment() -> Vec<(&'static str, String)> {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let revision = Command::new("git")
        .current_dir(root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    vec![
        ("cpu", cpu),
        ("cores", cores.to_string()),
        ("kernel", kernel),
        ("alagg", revision),
        (
            "links",
            format!("{LINKS} veth pairs through a bridge each (copy-mode AF_XDP)"),
        ),
    ]
}

/// Link 0 addressed and routed between the hosts' service addresses; undone on drop.
struct DirectPath<'a> {
    bed: &'a Testbed,
}

impl<'a> DirectPath<'a> {
    fn new(bed: &'a Testbed) -> anyhow::Result<Self> {
        let link = bed.interface(0);
        let this = Self { bed };
        for (ns, here, there, peer_service) in [
            (&bed.a, DIRECT_A, DIRECT_B, B_V4),
            (&bed.b, DIRECT_B, DIRECT_A, A_V4),
        ] {
            ns.ip(&["addr", "add", &format!("{here}/30"), "dev", &link])?;
            ns.ip(&[
                "route",
                "add",
                &format!("{peer_service}/32"),
                "via",
                there,
                "dev",
                &link,
            ])?;
        }
        // The first packets must not wait for ARP.
        resolve(&bed.a, DIRECT_B)?;
        Ok(this)
    }
}

impl Drop for DirectPath<'_> {
    fn drop(&mut self) {
        let link = self.bed.interface(0);
        for (ns, here, peer_service) in
            [(&self.bed.a, DIRECT_A, B_V4), (&self.bed.b, DIRECT_B, A_V4)]
        {
            let _ = ns.ip(&["route", "del", &format!("{peer_service}/32")]);
            let _ = ns.ip(&["addr", "del", &format!("{here}/30"), "dev", &link]);
        }
    }
}

/// Pings `address` from `ns` until one echo comes back (at most 10 tries), so that neighbour
/// resolution is done before a measurement; a lossy link may drop a few.
fn resolve(ns: &Netns, address: &str) -> anyhow::Result<()> {
    ns.exec(
        "ping",
        &["-c", "10", "-i", "0.1", "-W", "1", "-w", "5", "-A", address],
    )
    .map(|_| ())
    .with_context(|| format!("no echo from {address} in 10 tries"))
}

/// `alagg steal` on host A with an iptables rule queueing UDP to B's service address to it.
struct Steal<'a> {
    ns: &'a Netns,
    child: Option<Child>,
    log: PathBuf,
    counted: std::cell::Cell<u64>,
}

impl<'a> Steal<'a> {
    fn start(alagg: &Path, ns: &'a Netns) -> anyhow::Result<Self> {
        let log = root().join("target").join("bench").join("steal.log");
        let out = fs::File::create(&log)?;
        let child = ns
            .command(alagg.to_str().context("binary path is not UTF-8")?)
            .args(["steal", "--queue", STEAL_QUEUE])
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting alagg steal")?;
        let this = Self {
            ns,
            child: Some(child),
            log,
            counted: std::cell::Cell::new(0),
        };
        thread::sleep(Duration::from_millis(300));
        ns.exec("iptables", &Self::rule("-I"))?;
        Ok(this)
    }

    fn rule(action: &str) -> Vec<&str> {
        vec![
            "-t",
            "mangle",
            action,
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "5300",
            "-j",
            "NFQUEUE",
            "--queue-num",
            STEAL_QUEUE,
        ]
    }

    /// Packets stolen since the last call, from the NFQUEUE statistics of the kernel
    /// (`/proc/net/netfilter/nfnetlink_queue`: queue, port id, waiting, copy mode, copy range,
    /// dropped, user dropped, id sequence).
    fn count_since_last(&self) -> anyhow::Result<u64> {
        thread::sleep(Duration::from_millis(200));
        let table = self
            .ns
            .exec("cat", &["/proc/net/netfilter/nfnetlink_queue"])?;
        let queue: u64 = STEAL_QUEUE.parse()?;
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next().and_then(|q| q.parse().ok()) == Some(queue))
            .with_context(|| format!("queue {queue} not bound:\n{table}\n{}", self.log()))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // An id is given only to a packet the queue had room for (net/netfilter/
        // nfnetlink_queue.c); of those, `user dropped` never reached the socket.
        let (user_dropped, id) = match fields.as_slice() {
            [_, _, _, _, _, _, user_dropped, id, ..] => (*user_dropped, *id),
            _ => bail!("unexpected nfnetlink_queue line {line:?}"),
        };
        let stolen = id.saturating_sub(user_dropped);
        let since = stolen.saturating_sub(self.counted.get());
        self.counted.set(stolen);
        Ok(since)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Steal<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec("iptables", &Self::rule("-D"));
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(child: &mut Child) {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
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

/// A new key from `alagg genkey` in `dir/site.key`, mode 0600, for both hosts' `[auth]`.
fn site_key(alagg: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    use std::{
        io::Write as _, os::unix::fs::OpenOptionsExt as _, os::unix::fs::PermissionsExt as _,
    };
    let out = Command::new(alagg)
        .arg("genkey")
        .output()
        .context("running alagg genkey")?;
    if !out.status.success() {
        bail!(
            "alagg genkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("site.key");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // A file left by an earlier run keeps its mode: make sure it is 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(&out.stdout)?;
    Ok(path)
}

/// `alagg up` on both hosts over the first `links` links.
struct AlaggPair {
    children: Vec<(Child, PathBuf)>,
}

impl AlaggPair {
    /// alagg on both hosts over the first `links` links, with `extra` appended to the testbed's
    /// configuration (more TOML tables; `tag` names the files written for it).
    fn start(
        alagg: &Path,
        bed: &Testbed,
        links: usize,
        dir: &Path,
        edit: (&str, &str),
    ) -> anyhow::Result<Self> {
        Self::start_stamped(alagg, bed, links, dir, edit, false)
    }

    /// [`AlaggPair::start`], with `stamped` each host's alagg stamping every packet
    /// (`ALAGG_STAMPS`) into [`AlaggPair::stamps_file`], written when it stops.
    fn start_stamped(
        alagg: &Path,
        bed: &Testbed,
        links: usize,
        dir: &Path,
        (tag, extra): (&str, &str),
        stamped: bool,
    ) -> anyhow::Result<Self> {
        let mut pair = Self {
            children: Vec::new(),
        };
        for host in [Host::A, Host::B] {
            let config = dir.join(format!("{}-{links}{tag}.toml", host.letter()));
            fs::write(&config, bed.config_with_links(host, links) + extra)?;
            let log = dir.join(format!("{}-{links}{tag}.log", host.letter()));
            let out = fs::File::create(&log)?;
            let mut command = bed
                .host(host)
                .command(alagg.to_str().context("binary path is not UTF-8")?);
            if stamped {
                let file = Self::stamps_file(dir, host);
                let _ = fs::remove_file(&file);
                command.env("ALAGG_STAMPS", file);
            }
            let child = command
                .args(["up", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn,alagg=info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out))
                .spawn()
                .context("starting alagg up")?;
            pair.children.push((child, log));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (child, log) in &mut pair.children {
            loop {
                let text = fs::read_to_string(&*log).unwrap_or_default();
                if text.contains("alagg is up") {
                    break;
                }
                if let Some(status) = child.try_wait()? {
                    bail!("alagg up exited ({status}):\n{text}");
                }
                if Instant::now() > deadline {
                    bail!("alagg up did not come up within 20 s:\n{text}");
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        // Both ends must see each other before measuring: ping until an echo comes back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while bed
            .a
            .exec("ping", &["-c", "1", "-W", "1", &B_V4.to_string()])
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("no ping through alagg within 10 s");
            }
        }
        Ok(pair)
    }

    /// Where [`AlaggPair::start_stamped`] has `host`'s alagg write its stamps.
    fn stamps_file(dir: &Path, host: Host) -> PathBuf {
        dir.join(format!("{}-stamps.txt", host.letter()))
    }

    /// CPU time both hosts' alagg processes have used so far: every thread's time on a CPU
    /// (the first field of `/proc/<pid>/task/<tid>/schedstat`, in nanoseconds), the processes'
    /// own accounting, whatever else the machine runs.
    fn cpu_time(&self) -> Duration {
        let mut total = 0u64;
        for (child, _) in &self.children {
            let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
            for task in fs::read_dir(&tasks).into_iter().flatten().flatten() {
                let stat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Duration::from_nanos(total)
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        for (child, log) in &self.children {
            let pid = i32::try_from(child.id()).unwrap_or(0);
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                bail!(
                    "alagg exited during the benchmark:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    fn stop(mut self) {
        for (child, _) in &mut self.children {
            terminate(child);
        }
        self.children.clear();
    }
}

impl Drop for AlaggPair {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            terminate(child);
        }
    }
}

/// Datagrams per `sendmmsg`/`recvmmsg`.
const MMSG: usize = 64;

/// Sends `size`-byte datagrams from A to B's service address as fast as one thread can for
/// `duration`; returns how many the kernel took.
fn udp_send(bed: &Testbed, size: usize, duration: Duration) -> anyhow::Result<u64> {
    let socket = bed.a.enter(|| -> std::io::Result<UdpSocket> {
        let socket = UdpSocket::bind(SocketAddr::new(A_V4, 0))?;
        socket.connect(SocketAddr::new(B_V4, UDP_PORT))?;
        Ok(socket)
    })??;
    let payload = vec![0x5au8; size];
    let mut iovecs: Vec<libc::iovec> = (0..MMSG)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: size,
        })
        .collect();
    let mut headers = mmsg_headers(&mut iovecs);
    let end = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < end {
        // SAFETY: `headers` holds MMSG valid headers whose iovecs point into `payload`, which
        // outlives the call; the socket is connected, so no address is needed.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                MMSG as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += n as u64;
        } else {
            // ENOBUFS and the like under overload: yield and go on.
            thread::yield_now();
        }
    }
    Ok(sent)
}

/// One `sendmmsg`/`recvmmsg` header per iovec, each naming its iovec alone (no address, no
/// control data). The headers point into `iovecs`, which must outlive their use.
fn mmsg_headers(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect()
}

/// [`udp_send`] with a receiver on B: (sent, received).
fn udp_pps(bed: &Testbed, size: usize, duration: Duration) -> anyhow::Result<(u64, u64)> {
    let receiver = bed.b.enter(|| -> std::io::Result<UdpSocket> {
        let socket = UdpSocket::bind(SocketAddr::new(B_V4, UDP_PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(socket)
    })??;
    let size_opt: libc::c_int = 64 << 20;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    unsafe {
        libc::setsockopt(
            receiver.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size_opt).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut buffers = vec![[0u8; 2048]; MMSG];
            let mut iovecs: Vec<libc::iovec> = buffers
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut headers = mmsg_headers(&mut iovecs);
            let mut received = 0u64;
            loop {
                // SAFETY: `headers` holds MMSG valid headers whose iovecs point into
                // `buffers`, which outlive the call.
                let n = unsafe {
                    libc::recvmmsg(
                        receiver.as_raw_fd(),
                        headers.as_mut_ptr(),
                        MMSG as libc::c_uint,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    received += n as u64;
                } else if done.load(std::sync::atomic::Ordering::Relaxed) {
                    // The read timed out after the sender finished: the tail has arrived.
                    return received;
                }
            }
        });
        let sent = udp_send(bed, size, duration);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let received = counter.join().unwrap_or(0);
        Ok((sent?, received))
    })
}

/// iperf3 from A to B's service address with `flows` parallel flows for `secs` seconds:
/// Gbit/s received.
fn iperf(bed: &Testbed, flows: u32, secs: u32) -> anyhow::Result<f64> {
    iperf_between(
        bed,
        &B_V4.to_string(),
        Some(&A_V4.to_string()),
        false,
        flows,
        secs,
    )
}

/// iperf3 from A to `server` (an address of B), bound to `bind` on A if given, under
/// `mptcpize` (kernel MPTCP sockets) if `mptcp`: Gbit/s received.
fn iperf_between(
    bed: &Testbed,
    server: &str,
    bind: Option<&str>,
    mptcp: bool,
    flows: u32,
    secs: u32,
) -> anyhow::Result<f64> {
    let wrap = |ns: &Netns, args: &[&str]| {
        let mut command = ns.command(if mptcp { "mptcpize" } else { "iperf3" });
        if mptcp {
            command.args(["run", "iperf3"]);
        }
        command.args(args);
        command
    };
    // An MPTCP server listens on every address: subflows join it at B's other addresses, and
    // a listener bound to one address would refuse them.
    let server_args: &[&str] = if mptcp {
        &["-s", "-1", "-p", "5201"]
    } else {
        &["-s", "-1", "-B", server, "-p", "5201"]
    };
    let mut server_process = wrap(&bed.b, server_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (installed by `cargo xtask bootstrap`)")?;
    thread::sleep(Duration::from_millis(300));
    let (secs, flows) = (secs.to_string(), flows.to_string());
    let mut args = vec!["-c", server, "-p", "5201", "-t", &secs, "-P", &flows, "-J"];
    if let Some(bind) = bind {
        args.extend(["-B", bind]);
    }
    let out = wrap(&bed.a, &args).output();
    let _ = server_process.kill();
    let _ = server_process.wait();
    let out = out.context("running iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 -J printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let bits = report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("no end.sum_received in iperf3's report:\n{text}"))?;
    Ok(bits / 1e9)
}

/// Kernel MPTCP (RFC 8684) over the first `links` links, the tool many users would pick
/// instead: an address per host on each link, B announcing its extra addresses (ADD_ADDR) and
/// A opening a subflow to each. Undone on drop.
struct Mptcp<'a> {
    bed: &'a Testbed,
    links: usize,
}

impl<'a> Mptcp<'a> {
    fn address(host: Host, link: usize) -> String {
        let last = if host == Host::A { 1 } else { 2 };
        format!("198.18.{}.{last}", 210 + link)
    }

    fn new(bed: &'a Testbed, links: usize) -> anyhow::Result<Self> {
        let this = Self { bed, links };
        for host in [Host::A, Host::B] {
            let ns = bed.host(host);
            ns.exec("sysctl", &["-qw", "net.mptcp.enabled=1"])?;
            ns.ip(&[
                "mptcp",
                "limits",
                "set",
                "subflow",
                "8",
                "add_addr_accepted",
                "8",
            ])?;
            for link in 0..links {
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", Self::address(host, link)),
                    "dev",
                    &bed.interface(link),
                ])?;
            }
        }
        for link in 1..links {
            bed.b.ip(&[
                "mptcp",
                "endpoint",
                "add",
                &Self::address(Host::B, link),
                "dev",
                &bed.interface(link),
                "signal",
            ])?;
        }
        for link in 0..links {
            resolve(&bed.a, &Self::address(Host::B, link))?;
        }
        Ok(this)
    }

    fn iperf(&self, flows: u32, secs: u32) -> anyhow::Result<f64> {
        iperf_between(
            self.bed,
            &Self::address(Host::B, 0),
            None,
            true,
            flows,
            secs,
        )
    }
}

impl Drop for Mptcp<'_> {
    fn drop(&mut self) {
        let _ = self.bed.b.ip(&["mptcp", "endpoint", "flush"]);
        for host in [Host::A, Host::B] {
            for link in 0..self.links {
                let _ = self.bed.host(host).ip(&[
                    "addr",
                    "del",
                    &format!("{}/24", Self::address(host, link)),
                    "dev",
                    &self.bed.interface(link),
                ]);
            }
        }
    }
}

/// Pings through alagg (redundant, two links, `edit` added to the configuration) with every
/// packet stamped on both hosts (`ALAGG_STAMPS`), then per hop of the round trip its p50 and
/// p99 ([`budget::HOPS`]), alagg's whole part (from A's capture of a request to A's TUN write
/// of its reply), the pings' own RTT and what remains of it outside alagg's stamps at A (the
/// kernel from ping's socket to NFQUEUE and from the TUN back to the socket), in µs.
fn latency_budget(
    alagg: &Path,
    bed: &Testbed,
    dir: &Path,
    (name, edit): (&str, (&str, &str)),
    durations: &Durations,
    results: &mut Results,
) -> anyhow::Result<()> {
    let pair = AlaggPair::start_stamped(alagg, bed, 2, dir, edit, true)?;
    let pinged = ping(bed, durations.pings * 4);
    pair.check_alive()?;
    pair.stop();
    let (p50, p99) = pinged?;
    let read = |host| -> anyhow::Result<budget::Stamps> {
        let file = AlaggPair::stamps_file(dir, host);
        let text = fs::read_to_string(&file)
            .with_context(|| format!("reading {} (written when alagg stops)", file.display()))?;
        budget::Stamps::parse(&text).with_context(|| format!("parsing {}", file.display()))
    };
    let trips = budget::round_trips(&read(Host::A)?, &read(Host::B)?);
    if trips.len() < 10 {
        bail!("only {} round trips stamped on both hosts", trips.len());
    }
    println!("  {} round trips stamped", trips.len());
    let us = |ns: u64| ns as f64 / 1000.0;
    let spans = budget::HOPS
        .iter()
        .enumerate()
        .map(|(i, label)| (format!("budget {}. {label}", i + 1), i, true))
        .chain(
            budget::CALLS
                .iter()
                .enumerate()
                .map(|(i, label)| (format!("budget, within: {label}"), i, false)),
        );
    for (label, i, hop) in spans {
        let mut values: Vec<u64> = trips
            .iter()
            .map(|t| if hop { t.hops[i] } else { t.calls[i] })
            .collect();
        for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
            let value = budget::quantile(&mut values, q).unwrap_or(0);
            results.add(name, &format!("{label} {tag}"), us(value), "us");
        }
    }
    let mut whole: Vec<u64> = trips.iter().map(|t| t.hops.iter().sum()).collect();
    let whole_p50 = us(budget::quantile(&mut whole, 0.5).unwrap_or(0));
    let whole_p99 = us(budget::quantile(&mut whole, 0.99).unwrap_or(0));
    results.add(name, "budget: alagg's part p50", whole_p50, "us");
    results.add(name, "budget: alagg's part p99", whole_p99, "us");
    results.add(name, "ping p50", p50, "us");
    results.add(name, "ping p99", p99, "us");
    results.add(
        name,
        "budget: rest at A (kernel) p50",
        p50 - whole_p50,
        "us",
    );
    Ok(())
}

/// `count` pings 5 ms apart from A to B: (p50, p99) of the RTT in microseconds.
fn ping(bed: &Testbed, count: u32) -> anyhow::Result<(f64, f64)> {
    let out = bed
        .a
        .exec(
            "ping",
            &[
                "-c",
                &count.to_string(),
                "-i",
                "0.005",
                "-W",
                "1",
                &B_V4.to_string(),
            ],
        )
        .map_err(|e| anyhow::anyhow!("ping failed: {e}"))?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        bail!("no echo replies:\n{out}");
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// The results as a Markdown table (one row per workload, one column per configuration), with
/// alagg on two links as a ratio of the baselines measured on the same wire.
fn markdown(
    results: &Results,
    environment: &[(&str, String)],
    quick: bool,
    took: Duration,
) -> String {
    let mut configs: Vec<&str> = Vec::new();
    let mut workloads: Vec<(&str, &str)> = Vec::new();
    for f in &results.figures {
        if !configs.contains(&f.config.as_str()) {
            configs.push(&f.config);
        }
        if !workloads.iter().any(|(w, _)| *w == f.workload) {
            workloads.push((&f.workload, f.unit));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "alagg bench{} ({:.0} s): {}",
        if quick { " --quick" } else { "" },
        took.as_secs_f64(),
        environment
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(out);
    let _ = write!(out, "| workload | unit |");
    for config in &configs {
        let _ = write!(out, " {config} |");
    }
    let ratios = [
        ("alagg 2 links", "direct"),
        ("alagg 2 links", "alagg 2 links, unbundled"),
        ("alagg 2 links", "alagg 2 links, uncoalesced"),
        (JUMBO_NAME, "alagg 2 links"),
        (AUTH_NAME, "alagg 2 links"),
        (AUTH_ENCRYPT_NAME, "alagg 2 links"),
        (STRIPE_NAME, "alagg 2 links"),
        (STRIPE_NAME, "mptcp 2 links"),
        (ADAPTIVE_NAME, "alagg 2 links"),
        (FEC_XOR_NAME, STRIPE_NAME),
        (FEC_RS_NAME, STRIPE_NAME),
        ("alagg 2 links", "nfqueue steal"),
        ("alagg 1 link", FRAME_LOOP_1),
        ("alagg 2 links", FRAME_LOOP_2),
        ("alagg 2 links, unbundled", FRAME_LOOP_2),
        ("alagg 2 links", "mptcp 2 links"),
        ("veth: alagg 2 links", "veth: direct"),
        ("veth: alagg 2 links", "veth: nfqueue steal"),
        ("veth: alagg 2 links", VETH_FRAME_LOOP),
    ];
    // Only the ratios this run has both sides of (all of them but with --only).
    let ratios: Vec<(&str, &str)> = ratios
        .into_iter()
        .filter(|(top, bottom)| configs.contains(top) && configs.contains(bottom))
        .collect();
    for (top, bottom) in &ratios {
        let _ = write!(out, " {top} / {bottom} |");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "|---|---|{}{}",
        "---:|".repeat(configs.len()),
        "---:|".repeat(ratios.len())
    );
    for (workload, unit) in &workloads {
        let _ = write!(out, "| {workload} | {unit} |");
        for config in &configs {
            match results.get(config, workload) {
                Some(v) => {
                    let _ = write!(out, " {} |", human(v, unit));
                }
                None => out.push_str(" |"),
            }
        }
        for &(top, bottom) in &ratios {
            match (results.get(top, workload), results.get(bottom, workload)) {
                (Some(a), Some(b)) if b > 0.0 => {
                    let _ = write!(out, " {:.2} |", a / b);
                }
                _ => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    out
}

fn human(value: f64, unit: &str) -> String {
    match unit {
        "pps" => format!("{:.0} k", value / 1e3),
        "Gbit/s" | "x" | "%" => format!("{value:.2}"),
        "ms" => format!("{value:.1}"),
        _ => format!("{value:.0}"),
    }
}
