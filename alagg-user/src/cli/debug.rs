//! The debugging verbs: `alagg steal`, the bare capture loop the benchmarks compare with, and
//! `alagg attach`, the XDP program on its own.

use std::{os::fd::AsRawFd as _, sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::Context as _;

use crate::{
    capture::nfqueue::{Batch, NfQueue, QueueOptions, Verdict},
    host::signals::TermSignals,
    link::xdp::{XdpMode, XdpSteering},
};

/// The bare capture loop the benchmarks compare `alagg up` with: the same NFQUEUE socket,
/// batches and batch verdicts, no encapsulation and no transmission.
pub fn steal(queue: u16) -> anyhow::Result<()> {
    super::require_root()?;
    let signals = TermSignals::block().context("blocking the termination signals")?;
    let mut nfqueue = NfQueue::open(queue, &QueueOptions::default())?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (stolen, batches) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut batch = Batch::new(crate::port::BATCH);
            let (mut stolen, mut batches) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                match nfqueue.recv_batch(&mut batch) {
                    Ok(0) | Err(_) => {
                        crate::sys::wait_readable(
                            nfqueue.fd().as_raw_fd(),
                            Duration::from_millis(100),
                        );
                    }
                    Ok(n) => {
                        if let Some(last) = batch.last_id() {
                            let _ = nfqueue.verdict_batch(last, Verdict::Drop);
                        }
                        stolen += n as u64;
                        batches += 1;
                    }
                }
            }
            (stolen, batches)
        });
        while signals.wait(Duration::from_millis(200)).is_none() && !worker.is_finished() {}
        stop.store(true, Relaxed);
        worker.join().unwrap_or_default()
    });
    println!("stolen={stolen} batches={batches}");
    Ok(())
}

/// Attaches the XDP program to `interfaces` and prints its counters every second until
/// Ctrl-C or `seconds`.
pub fn attach(
    interfaces: &[String],
    ethertype: &str,
    mode: XdpMode,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    super::require_root()?;
    let ethertype = super::parse_ethertype(ethertype).map_err(anyhow::Error::msg)?;
    let signals = TermSignals::block().context("blocking the termination signals")?;
    let mut steering = XdpSteering::load().context("loading the XDP program")?;
    for (link, interface) in (0u32..).zip(interfaces) {
        let got = steering.attach(interface, link, ethertype, mode)?;
        tracing::info!(interface, mode = ?got, ethertype = format!("{ethertype:#06x}"), "XDP attached");
    }
    println!("attached to {}; Ctrl-C to detach", interfaces.join(", "));
    let deadline = seconds.map(|s| std::time::Instant::now() + Duration::from_secs(s));
    loop {
        let signal = signals.wait(Duration::from_secs(1));
        let line = steering
            .counters()?
            .iter()
            .map(|(action, counter)| format!("{}={}", action.name(), counter.packets))
            .collect::<Vec<_>>()
            .join(" ");
        println!("{line}");
        if signal.is_some() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
    }
    for interface in interfaces {
        steering.detach(interface)?;
    }
    println!("detached");
    Ok(())
}
