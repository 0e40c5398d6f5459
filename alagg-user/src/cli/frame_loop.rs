//! The bare frame loop, the wire's own ceiling that `cargo xtask bench` measures alagg against
//! (as `alagg steal` is for capture): `alagg blast` sends alagg data frames on every link of a
//! configuration as fast as one thread can, and `alagg sink` on the peer counts what arrives.
//!
//! Both open the links with the very code `alagg up` uses ([`link::open`]: the AF_XDP sockets,
//! and alagg's XDP program steering alagg frames into them; or AF_PACKET sockets for links with
//! `io = "af_packet"`), one socket per link, and nothing else: no NFQUEUE, no engine, no TUN.
//! The blaster's frames are what `up` would send, in redundant mode, for a stream of
//! `size`-byte UDP datagrams: one valid v2 data frame per datagram ([`Sender::plan`],
//! [`alagg_proto::engine::Plan::emit_ethernet`]) carrying a whole IPv4/UDP packet of
//! `size + 28` bytes, the same packet on every link, each link's frames stamped on a lane of
//! their own. `[auth]` is not applied: the frames carry no tag, and the sink checks none. Each
//! prints one JSON line on standard output when it ends (its deadline, or SIGINT/SIGTERM);
//! logs go to standard error. Dropping the links detaches XDP (bpf_link).

use std::{path::Path, time::Duration, time::Instant};

use alagg_proto::{
    Lane, Sender, Timestamp,
    wire::{self, DATA_HEADER_LEN, ETH_HDR_LEN, EthernetRepr, Frame, FrameType},
};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    config::Config,
    host::signals::TermSignals,
    link::{self, IoMode, LinkPlan, LinkRx, LinkTx, xdp::XdpSteering, xsk::XskConfig},
    port::{BATCH, FrameRx as _, FrameTx as _},
};

/// IPv4 and UDP headers around a datagram's payload.
const IPV4_UDP_HEADERS: usize = 28;
/// How often the loops look for a signal and the deadline.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// One link's sockets as the loop uses them: `up`'s single capture worker's transmit half and
/// the receive half.
struct LoopLink {
    plan: LinkPlan,
    rx: LinkRx,
    tx: LinkTx,
    eth: EthernetRepr,
    /// Bytes of alagg header and payload a frame may carry (MTU, bounded by the socket's frame).
    mtu: usize,
}

/// Opens every link of the configuration at `path` as `up` would with one capture worker.
/// The XDP program is loaded when a link uses it and lives as long as the returned steering.
fn open_links(path: &Path) -> anyhow::Result<(Option<XdpSteering>, Vec<LoopLink>, u16)> {
    super::require_root()?;
    let config = Config::load(path)?;
    let plans = super::up::link_plans(&config);
    let ethertype = config.protocol.ethertype;
    let xsk = XskConfig::default();
    let mut steering = if plans.iter().any(|p| p.io == IoMode::Xdp) {
        Some(XdpSteering::load().context("loading the XDP program")?)
    } else {
        None
    };
    let mut links = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let found = link::interface(&plan.interface)?;
        let (rx, tx) = link::open(steering.as_mut(), index, &plan, ethertype, (xsk, 1))?;
        let (Some(rx), Some(tx)) = (rx.into_iter().next(), tx.into_iter().next()) else {
            bail!("link {}: no socket was opened", plan.interface);
        };
        links.push(LoopLink {
            eth: link::ethernet(&plan, found.mac, ethertype),
            mtu: found.mtu.min(link::frame_room(plan.io, &xsk)),
            plan,
            rx,
            tx,
        });
    }
    Ok((steering, links, ethertype))
}

/// An IPv4/UDP packet carrying a `payload`-byte datagram (RFC 2544's benchmarking addresses,
/// 198.18.0.1 to 198.18.0.2, port 5300; UDP checksum 0, allowed over IPv4 by RFC 768).
fn ipv4_udp_packet(payload: usize) -> anyhow::Result<Vec<u8>> {
    let total = u16::try_from(payload + IPV4_UDP_HEADERS)
        .ok()
        .context("--size: an IPv4 packet holds at most 65507 bytes of UDP payload")?;
    let mut packet = vec![0x5a; usize::from(total)];
    packet[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]);
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = packet[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet[20..22].copy_from_slice(&5300u16.to_be_bytes());
    packet[22..24].copy_from_slice(&5300u16.to_be_bytes());
    packet[24..26].copy_from_slice(&(total - 20).to_be_bytes());
    packet[26..28].copy_from_slice(&[0, 0]);
    Ok(packet)
}

/// Sends, on every link of the configuration at `path`, the data frames of `size`-byte UDP
/// datagrams as fast as one thread can for `seconds` (or until SIGINT/SIGTERM), in batches of
/// [`BATCH`]; prints `{"sent":..,"bytes":..,"refused":..,"seconds":..,"cpu_seconds":..,
/// "per_link":[..]}`.
pub fn blast(path: &Path, size: usize, seconds: f64) -> anyhow::Result<()> {
    let run_for = duration(seconds)?;
    let signals = TermSignals::block().context("blocking the termination signals")?;
    let (_steering, mut links, _) = open_links(path)?;
    let packet = ipv4_udp_packet(size)?;
    for link in &links {
        if packet.len() + DATA_HEADER_LEN > link.mtu {
            bail!(
                "link {}: a {size}-byte datagram makes a {}-byte IP packet, which needs a \
                 {}-byte frame, more than the {} the link carries (alagg would fragment it): \
                 use --size {} or less",
                link.plan.interface,
                packet.len(),
                packet.len() + DATA_HEADER_LEN,
                link.mtu,
                link.mtu.saturating_sub(DATA_HEADER_LEN + IPV4_UDP_HEADERS)
            );
        }
    }
    let epoch = wire::epoch(unix_ms(), 0xb1a5);
    let mut sender = Sender::new(epoch);
    let mut lanes: Vec<Lane> = (0u8..).zip(&links).map(|(i, _)| Lane::new(i, 0)).collect();
    let mut sent = vec![0u64; links.len()];
    let mut unstaged = vec![0u64; links.len()];
    let mut flush_errors = 0u64;
    let mtu = links.iter().map(|l| l.mtu).min().unwrap_or(0);
    let cpu_before = crate::sys::process_cpu_time();
    let started = Instant::now();
    let deadline = started + run_for;
    let mut next_check = started;
    loop {
        let now = Instant::now();
        if now >= next_check {
            if now >= deadline || signals.wait(Duration::ZERO).is_some() {
                break;
            }
            next_check = now + CHECK_EVERY;
        }
        let stamp_time = Timestamp::from_nanos(
            u64::try_from(now.duration_since(started).as_nanos()).unwrap_or(u64::MAX),
        );
        for _ in 0..BATCH {
            let plan = sender.plan(packet.len(), mtu)?;
            for ((link, lane), (sent, unstaged)) in links
                .iter_mut()
                .zip(&mut lanes)
                .zip(sent.iter_mut().zip(&mut unstaged))
            {
                let stamp = lane.stamp(stamp_time);
                let staged = link.tx.stage(|out| {
                    plan.emit_ethernet(0, stamp, &link.eth, &packet, out)
                        .unwrap_or(0)
                });
                if staged {
                    *sent += 1;
                } else {
                    *unstaged += 1;
                }
            }
        }
        for link in &mut links {
            if link.tx.flush().is_err() {
                flush_errors += 1;
            }
        }
    }
    for link in &mut links {
        let _ = link.tx.flush();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = crate::sys::process_cpu_time().saturating_sub(cpu_before);
    let frame_len = ETH_HDR_LEN + DATA_HEADER_LEN + packet.len();
    let per_link: Vec<_> = links
        .iter()
        .zip(sent.iter().zip(&unstaged))
        .map(|(link, (&sent, &unstaged))| {
            let losses = link.tx.losses();
            json!({
                "interface": link.plan.interface,
                "sent": sent,
                "unstaged": unstaged,
                "refused": losses.refused + losses.stalled,
            })
        })
        .collect();
    let total: u64 = sent.iter().sum();
    let refused: u64 = links
        .iter()
        .map(|l| {
            let losses = l.tx.losses();
            losses.refused + losses.stalled
        })
        .sum();
    println!(
        "{}",
        json!({
            "sent": total,
            "bytes": total * frame_len as u64,
            "frame_len": frame_len,
            "refused": refused,
            "flush_errors": flush_errors,
            "seconds": elapsed,
            "cpu_seconds": cpu.as_secs_f64(),
            "per_link": per_link,
        })
    );
    Ok(())
}

/// Per link, what [`sink`] counted.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    frames: u64,
    bytes: u64,
    /// Frames the XDP program steered here that are not alagg v2 data frames.
    invalid: u64,
}

/// Receives on every link of the configuration at `path` for `seconds` (or until
/// SIGINT/SIGTERM), counting alagg data frames and their bytes per link; prints
/// `{"frames":..,"bytes":..,"invalid":..,"seconds":..,"cpu_seconds":..,"per_link":[..]}`
/// (`cpu_seconds` from when the sockets were open). Logs `frame sink ready` once every socket
/// is open.
pub fn sink(path: &Path, seconds: Option<f64>) -> anyhow::Result<()> {
    let run_for = seconds.map(duration).transpose()?;
    let signals = TermSignals::block().context("blocking the termination signals")?;
    let (_steering, mut links, _) = open_links(path)?;
    let mut counted = vec![Counted::default(); links.len()];
    let mut fds: Vec<libc::pollfd> = links
        .iter()
        .map(|l| libc::pollfd {
            fd: l.rx.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let before: Vec<_> = links.iter_mut().map(|l| l.rx.losses()).collect();
    let cpu_before = crate::sys::process_cpu_time();
    let started = Instant::now();
    let deadline = run_for.map(|d| started + d);
    tracing::info!(links = links.len(), "frame sink ready");
    let (mut first, mut last) = (None::<Instant>, started);
    let mut next_check = started;
    loop {
        let mut got = 0;
        for (link, counted) in links.iter_mut().zip(&mut counted) {
            let n = link
                .rx
                .recv(|frame| {
                    let data = frame.get(ETH_HDR_LEN..).and_then(|alagg| {
                        let frame = Frame::new_checked(alagg).ok()?;
                        (frame.frame_type() == FrameType::Data).then_some(())
                    });
                    if data.is_some() {
                        counted.frames += 1;
                        counted.bytes += frame.len() as u64;
                    } else {
                        counted.invalid += 1;
                    }
                })
                .with_context(|| format!("receiving on link {}", link.plan.interface))?;
            got += n;
        }
        let now = Instant::now();
        if got > 0 {
            first.get_or_insert(now);
            last = now;
        } else {
            crate::sys::ppoll(&mut fds, CHECK_EVERY).context("ppoll on the links' sockets")?;
        }
        if now >= next_check || got == 0 {
            if deadline.is_some_and(|d| now >= d) || signals.wait(Duration::ZERO).is_some() {
                break;
            }
            next_check = now + CHECK_EVERY;
        }
    }
    let per_link: Vec<_> = links
        .iter_mut()
        .zip(&counted)
        .zip(&before)
        .map(|((link, counted), before)| {
            let lost = link.rx.losses().since(before);
            json!({
                "interface": link.plan.interface,
                "frames": counted.frames,
                "bytes": counted.bytes,
                "invalid": counted.invalid,
                "xsk_rx_dropped": lost.xsk_rx_dropped,
                "xsk_rx_ring_full": lost.xsk_rx_ring_full,
                "buffer_full": lost.buffer_full,
            })
        })
        .collect();
    let sum = |f: fn(&Counted) -> u64| counted.iter().map(f).sum::<u64>();
    println!(
        "{}",
        json!({
            "frames": sum(|c| c.frames),
            "bytes": sum(|c| c.bytes),
            "invalid": sum(|c| c.invalid),
            "seconds": started.elapsed().as_secs_f64(),
            "cpu_seconds": crate::sys::process_cpu_time()
                .saturating_sub(cpu_before)
                .as_secs_f64(),
            "active_seconds": first.map_or(0.0, |first| (last - first).as_secs_f64()),
            "per_link": per_link,
        })
    );
    Ok(())
}

/// `--seconds` as a duration.
fn duration(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .with_context(|| format!("--seconds {seconds}: give a number of seconds, 0 or more"))
}

/// Milliseconds since the Unix epoch, for the frames' epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_a_valid_ipv4_udp_packet_of_the_datagram_size() {
        for payload in [0, 64, 1400] {
            let packet = ipv4_udp_packet(payload).unwrap();
            assert_eq!(packet.len(), payload + IPV4_UDP_HEADERS);
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[2], packet[3]])),
                packet.len()
            );
            // A correct header checksum makes the header sum to 0xffff.
            let sum = packet[..20]
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>();
            assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "payload {payload}");
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[24], packet[25]])),
                payload + 8
            );
        }
        assert!(ipv4_udp_packet(70_000).is_err());
    }

    #[test]
    fn seconds_must_be_a_finite_duration() {
        assert_eq!(duration(0.5).unwrap(), Duration::from_millis(500));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e30] {
            let error = duration(bad).unwrap_err().to_string();
            assert!(error.contains("--seconds"), "{error}");
        }
    }

    #[test]
    fn a_blasted_frame_is_the_data_frame_alagg_sends_for_the_datagram() {
        let packet = ipv4_udp_packet(64).unwrap();
        let mut sender = Sender::new(wire::epoch(1, 2));
        let plan = sender.plan(packet.len(), 1500).unwrap();
        assert!(!plan.is_fragmented());
        let eth = EthernetRepr {
            dst: wire::MacAddr([2, 0, 0, 0, 0, 2]),
            src: wire::MacAddr([2, 0, 0, 0, 0, 1]),
            ethertype: alagg_common::DEFAULT_ETHERTYPE,
        };
        let mut out = [0u8; 2048];
        let len = plan
            .emit_ethernet(
                0,
                Lane::new(1, 0).stamp(Timestamp::from_nanos(0)),
                &eth,
                &packet,
                &mut out,
            )
            .unwrap();
        assert_eq!(len, ETH_HDR_LEN + DATA_HEADER_LEN + packet.len());
        let frame = Frame::new_checked(&out[ETH_HDR_LEN..len]).unwrap();
        assert_eq!(frame.frame_type(), FrameType::Data);
        assert_eq!(frame.link_id(), 1);
        assert_eq!(frame.payload(), &packet[..]);
    }
}
