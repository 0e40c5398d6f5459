//! The delivery stage: packets the engine delivered, each admitted before it took its number
//! ([`admitted`]: sane IP header, source in the configured destinations, asked by the engine
//! through [`alagg_proto::Admission`]), are written to the TUN device ([`tun`]) with the
//! offloads a NIC would give ([`offload`]): consecutive UDP datagrams of a flow joined into
//! one GSO write, large TCP announced as GSO with segments that fit the route on ([`pmtu`]).
//!
//! Invariant: packets enter the stack in the order the engine delivered them; what the
//! coalescer holds is written before any packet that does not join it.

/// The TUN's offloads: pure code, in `alagg-packet` so that it fuzzes alone.
pub(crate) use alagg_packet::offload;
pub(crate) mod pmtu;
pub(crate) mod tun;

use std::{io, sync::atomic::Ordering::Relaxed};

use ipnet::IpNet;

use crate::{counters::DeliveryCounters, ip, port::Inbound};
use offload::{Coalescer, Flushed, Offer, is_tcp, split_gso, tcp_segmentation};
use pmtu::PathMtu;
use tun::TunWrite;

/// IPv4's minimum MTU (RFC 791): no route is smaller, so no smaller TCP packet needs cutting.
const MIN_MTU: usize = 576;

/// [`ip::admit`]: the packet trimmed to its header's length if it may be delivered, else
/// `None` with the reason counted. The engine asks it before a packet takes its number
/// ([`alagg_proto::Receiver::with_admission`], wired by the runtime), and delivers the packet
/// trimmed; the stage takes what it delivers as admitted.
pub(crate) fn admitted<'p>(
    packet: &'p [u8],
    destinations: &[IpNet],
    counters: &DeliveryCounters,
) -> Option<&'p [u8]> {
    let reject = match ip::admit(packet, destinations) {
        Ok(packet) => return Some(packet),
        Err(reject) => reject,
    };
    let counter = match reject {
        ip::Reject::Source => &counters.rejected_source,
        ip::Reject::Destination => &counters.rejected_destination,
        ip::Reject::Malformed => &counters.rejected_malformed,
    };
    counter.fetch_add(1, Relaxed);
    None
}

/// The delivery stage; see the module documentation.
#[derive(Debug)]
pub(crate) struct Delivery<'a, W> {
    tun: W,
    /// Larger TCP packets are announced as GSO with segments that fit it.
    tun_mtu: usize,
    /// Route MTUs of destinations (forwarded TCP is cut to fit the route on).
    path_mtu: PathMtu,
    /// Large TCP goes as GSO (until the kernel refuses it).
    tcp_gso: bool,
    /// Where [`split_gso`] builds segments.
    scratch: Vec<u8>,
    /// `None`: every packet is written on its own.
    coalescer: Option<Coalescer>,
    counters: &'a DeliveryCounters,
}

impl<'a, W: TunWrite> Delivery<'a, W> {
    /// A stage writing to `tun`, whose MTU is `tun_mtu`, the packets the engine admitted; UDP
    /// is coalesced when `coalesce`.
    pub(crate) fn new(
        tun: W,
        tun_mtu: usize,
        coalesce: bool,
        counters: &'a DeliveryCounters,
    ) -> Self {
        Self {
            tun,
            tun_mtu,
            path_mtu: PathMtu::new(),
            tcp_gso: true,
            scratch: Vec::new(),
            coalescer: coalesce.then(Coalescer::new),
            counters,
        }
    }

    /// The same, but knowing no route on: the TUN's MTU is the limit for every destination
    /// (tests that must not depend on the host's routes).
    #[cfg(test)]
    pub(crate) fn without_route_lookups(mut self) -> Self {
        self.path_mtu = PathMtu::unknown();
        self
    }

    /// Writes one packet; TCP that does not fit the route on (the TUN's MTU, or a smaller one
    /// to a forwarded destination) goes as GSO with segments that do.
    fn write_alone(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.tcp_gso && packet.len() > MIN_MTU && is_tcp(packet) {
            let route = ip::destination(packet).and_then(|d| self.path_mtu.get(d));
            let mtu = route.map_or(self.tun_mtu, |m| m.min(self.tun_mtu));
            if let Some(gso) = tcp_segmentation(packet, mtu) {
                if gso.cwr {
                    let tun = &self.tun;
                    return split_gso(packet, &gso.header, &mut self.scratch, |segment| {
                        tun.write(segment)
                    });
                }
                let (before, after) = packet.split_at(gso.check_at);
                let result = self
                    .tun
                    .write_parts(&gso.header, &[before, &gso.check, &after[2..]]);
                match result {
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        // A kernel that refuses GSO TCP from a TUN after all: whole from now on.
                        tracing::warn!(%error, "the kernel refused a GSO TCP packet; sending TCP whole");
                        self.tcp_gso = false;
                    }
                    result => return result,
                }
            }
        }
        self.tun.write(packet)
    }

    fn count(&self, result: io::Result<()>, packets: usize, bytes: usize) {
        if result.is_ok() {
            self.counters.delivered.fetch_add(packets as u64, Relaxed);
            self.counters
                .delivered_bytes
                .fetch_add(bytes as u64, Relaxed);
        } else {
            self.counters.tun_errors.fetch_add(packets as u64, Relaxed);
        }
    }
}

impl<W: TunWrite> Inbound for Delivery<'_, W> {
    /// Takes a packet the engine delivered, admitted ([`admitted`]): written to the TUN device
    /// (now, or coalesced with the next ones by [`Inbound::flush`]); counts what became of it.
    fn packet(&mut self, packet: &[u8]) {
        let offer = self
            .coalescer
            .as_mut()
            .map_or(Offer::Alone, |c| c.offer(packet));
        if offer == Offer::Taken {
            return;
        }
        // What is waiting goes first: packets enter the stack in the order they came. Then an
        // empty coalescer takes a datagram it could not join to the others; anything else (or
        // all, if the kernel refused coalescing just now) goes alone.
        self.flush();
        let taken = offer == Offer::Flush
            && self
                .coalescer
                .as_mut()
                .is_some_and(|c| c.offer(packet) == Offer::Taken);
        if !taken {
            let result = self.write_alone(packet);
            self.count(result, 1, packet.len());
        }
    }

    /// Writes what the coalescer holds.
    fn flush(&mut self) {
        let Some(coalescer) = self.coalescer.as_mut() else {
            return;
        };
        let mut refused = false;
        let (result, packets, bytes) = match coalescer.flush() {
            Flushed::Nothing => return,
            Flushed::Plain(packet) => (self.tun.write(packet), 1, packet.len()),
            Flushed::Gso {
                header,
                packet,
                segments,
                bytes,
            } => {
                let mut result = self.tun.write_parts(&header, &[packet]);
                match &result {
                    Ok(()) => {
                        self.counters.coalesced.fetch_add(segments as u64, Relaxed);
                    }
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        // A kernel that does not take GSO UDP from a TUN device after all: these
                        // datagrams are cut here and sent alone, and so is everything after.
                        tracing::warn!(%error, "the kernel refused a coalesced UDP packet; coalescing off");
                        refused = true;
                        let tun = &self.tun;
                        result = split_gso(packet, &header, &mut self.scratch, |datagram| {
                            tun.write(datagram)
                        });
                    }
                    Err(_) => {}
                }
                (result, segments, bytes)
            }
        };
        if refused {
            self.coalescer = None;
        }
        self.count(result, packets, bytes);
    }
}
