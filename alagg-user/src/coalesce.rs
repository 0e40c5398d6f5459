//! UDP coalescing at the TUN device, the receive offload the kernel does for NICs (UDP GRO):
//! consecutive datagrams of one flow that the engine delivers together are written to the TUN
//! as one GSO packet, announced by a `virtio_net_hdr` (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux 6.2
//! and later), and the kernel splits it back into the original datagrams when it hands them
//! to the socket. One `write(2)`, one pass through the IP layer and its netfilter hooks then
//! serve up to [`MAX_SEGMENTS`] datagrams.
//!
//! Datagrams join only where the split gives them back exactly: same addresses, ports and IP
//! header fields (IPv4 without options or fragmentation, IPv6 without extension headers), the
//! same payload size as the first, except a last shorter one, and a UDP checksum that
//! verifies (the kernel computes new ones for the segments, so a corrupt datagram is never
//! folded in; it goes alone and the stack drops it as before).
//!
//! Kernel reference: include/uapi/linux/virtio_net.h (the header),
//! include/linux/virtio_net.h (`virtio_net_hdr_to_skb`), net/ipv4/udp_offload.c
//! (`__udp_gso_segment`, which recomputes lengths and checksums per segment).
#![deny(unsafe_code)]

use crate::ip::{fold, sum_words};

/// Length of `struct virtio_net_hdr`, the TUN's default vnet header size.
pub const VNET_HDR_LEN: usize = 10;
/// A vnet header that announces an ordinary packet: no offload.
pub const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// Most datagrams in one GSO packet (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is to be
/// completed over the pseudo-header sum already there.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;
const UDP: u8 = 17;
const UDP_HEADER_LEN: usize = 8;
/// Largest IP packet (IPv4 total length; for IPv6 alagg keeps to the same bound).
const MAX_PACKET: usize = 65_535;

/// What a datagram is to a [`Coalescer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Taken: it started a new GSO packet or joined the one being built.
    Taken,
    /// A UDP datagram that cannot join the packet being built: flush, then offer it again.
    Flush,
    /// Not something alagg coalesces (not UDP, options, a bad checksum...): flush, then write
    /// it alone.
    Alone,
}

/// What [`Coalescer::flush`] hands back to be written to the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed<'a> {
    /// Nothing was waiting.
    Nothing,
    /// One datagram, as it came: written with [`PLAIN_HEADER`].
    Plain(&'a [u8]),
    /// Several datagrams as one GSO packet, with its vnet header.
    Gso {
        /// The `virtio_net_hdr` to write before the packet.
        header: [u8; VNET_HDR_LEN],
        /// The GSO packet: the first datagram's headers, then every payload.
        packet: &'a [u8],
        /// How many datagrams it carries.
        segments: usize,
        /// Their total length as they came, headers included.
        bytes: usize,
    },
}

/// The fields of a datagram that decide what it may join.
#[derive(Clone, Copy, Debug)]
struct Datagram {
    /// IPv4 (20) or IPv6 (40) header length.
    ip_header: usize,
    payload: usize,
}

/// Builds GSO packets out of consecutive datagrams of one flow.
#[derive(Debug)]
pub struct Coalescer {
    /// The packet being built: the first datagram, then the other payloads.
    packet: Vec<u8>,
    ip_header: usize,
    /// Payload size of every segment but a shorter last one.
    segment: usize,
    segments: usize,
    /// A shorter datagram joined: it must be the last.
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self {
            packet: Vec::with_capacity(MAX_PACKET),
            ip_header: 0,
            segment: 0,
            segments: 0,
            closed: false,
        }
    }

    /// Datagrams waiting.
    pub fn pending(&self) -> usize {
        self.segments
    }

    /// Offers an IP packet (already admitted: sane header, allowed source).
    pub fn offer(&mut self, packet: &[u8]) -> Offer {
        let Some(datagram) = parse(packet) else {
            return Offer::Alone;
        };
        if self.segments == 0 {
            self.packet.clear();
            self.packet.extend_from_slice(packet);
            self.ip_header = datagram.ip_header;
            self.segment = datagram.payload;
            self.segments = 1;
            self.closed = false;
            return Offer::Taken;
        }
        let headers = self.ip_header + UDP_HEADER_LEN;
        let joins = !self.closed
            && self.segments < MAX_SEGMENTS
            && datagram.ip_header == self.ip_header
            && datagram.payload <= self.segment
            && self.packet.len() + datagram.payload <= MAX_PACKET
            && same_flow(&self.packet[..headers], &packet[..headers]);
        if !joins {
            return Offer::Flush;
        }
        self.packet.extend_from_slice(&packet[headers..]);
        self.segments += 1;
        self.closed = datagram.payload < self.segment;
        Offer::Taken
    }

    /// Hands out what was built, and starts afresh. Several datagrams come as one GSO packet
    /// whose headers give the whole length, and whose UDP checksum field holds the
    /// pseudo-header sum the kernel completes per segment.
    pub fn flush(&mut self) -> Flushed<'_> {
        let segments = std::mem::take(&mut self.segments);
        match segments {
            0 => return Flushed::Nothing,
            1 => return Flushed::Plain(&self.packet),
            _ => {}
        }
        let (ip, total) = (self.ip_header, self.packet.len());
        let udp_len = total - ip;
        let packet = &mut self.packet;
        let pseudo = if ip == 20 {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            packet[10..12].fill(0);
            let checksum = !fold(sum_words(&packet[..20]));
            packet[10..12].copy_from_slice(&checksum.to_be_bytes());
            sum_words(&packet[12..20])
        } else {
            packet[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            sum_words(&packet[8..40])
        };
        packet[ip + 4..ip + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let partial = fold(pseudo + u64::from(UDP) + udp_len as u64);
        packet[ip + 6..ip + 8].copy_from_slice(&partial.to_be_bytes());
        // struct virtio_net_hdr in the host's byte order (a legacy TUN's default).
        let mut header = [0u8; VNET_HDR_LEN];
        header[0] = F_NEEDS_CSUM;
        header[1] = GSO_UDP_L4;
        header[2..4].copy_from_slice(&((ip + UDP_HEADER_LEN) as u16).to_ne_bytes());
        header[4..6].copy_from_slice(&(self.segment as u16).to_ne_bytes());
        header[6..8].copy_from_slice(&(ip as u16).to_ne_bytes());
        header[8..10].copy_from_slice(&6u16.to_ne_bytes());
        Flushed::Gso {
            header,
            packet: &self.packet,
            segments,
            bytes: total + (segments - 1) * (ip + UDP_HEADER_LEN),
        }
    }
}

/// The datagram's shape if it may be coalesced: UDP right after a plain IP header, lengths
/// that agree, a payload, and a checksum that verifies.
fn parse(packet: &[u8]) -> Option<Datagram> {
    let (ip_header, pseudo) = match packet.first()? >> 4 {
        4 => {
            // No options, not a fragment (MF clear, offset zero), UDP.
            let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x3fff;
            if packet[0] != 0x45 || fragment != 0 || packet[9] != UDP {
                return None;
            }
            if usize::from(u16::from_be_bytes([packet[2], packet[3]])) != packet.len() {
                return None;
            }
            (20, sum_words(packet.get(12..20)?))
        }
        6 => {
            if *packet.get(6)? != UDP
                || usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40 != packet.len()
            {
                return None;
            }
            (40, sum_words(packet.get(8..40)?))
        }
        _ => return None,
    };
    let udp = packet.get(ip_header..)?;
    let udp_len = udp.len();
    if udp_len <= UDP_HEADER_LEN
        || usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp_len
        // No checksum (IPv4 may omit it): nothing to verify, so nothing to vouch for.
        || udp[6..8] == [0, 0]
    {
        return None;
    }
    let sum = pseudo + u64::from(UDP) + udp_len as u64 + sum_words(udp);
    (fold(sum) == 0xffff).then_some(Datagram {
        ip_header,
        payload: udp_len - UDP_HEADER_LEN,
    })
}

/// Whether two datagrams' headers (`headers` bytes each: IP and UDP) belong to one flow that
/// the kernel's split restores exactly: everything equal but the lengths, the checksums and
/// (IPv4) the identification, which the segments number on from the first.
fn same_flow(first: &[u8], next: &[u8]) -> bool {
    if first.len() == 20 + UDP_HEADER_LEN {
        // Version/IHL and TOS; flags (DF); TTL and protocol; addresses and ports.
        first[..2] == next[..2]
            && first[6] & 0xe0 == next[6] & 0xe0
            && first[8..10] == next[8..10]
            && first[12..24] == next[12..24]
    } else {
        // Version, traffic class, flow label; next header and hop limit; addresses and ports.
        first[..4] == next[..4] && first[6..44] == next[6..44]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::finish_transport_checksum;

    /// An IPv4 UDP datagram from 10.0.0.1:1000 to 10.0.0.2:2000 with `payload`, checksummed.
    fn v4(payload: &[u8], id: u16) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let checksum = !fold(sum_words(&p));
        p[10..12].copy_from_slice(&checksum.to_be_bytes());
        p.extend_from_slice(&1000u16.to_be_bytes());
        p.extend_from_slice(&2000u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        assert!(finish_transport_checksum(&mut p));
        p
    }

    /// An IPv6 UDP datagram from fd00::1:1000 to fd00::2:2000 with `payload`, checksummed.
    fn v6(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, UDP, 64];
        p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        let mut source = [0u8; 16];
        source[0] = 0xfd;
        source[15] = 1;
        let mut destination = source;
        destination[15] = 2;
        p.extend_from_slice(&source);
        p.extend_from_slice(&destination);
        p.extend_from_slice(&1000u16.to_be_bytes());
        p.extend_from_slice(&2000u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        assert!(finish_transport_checksum(&mut p));
        p
    }

    /// What the kernel's split gives back from a GSO packet: each segment's payload, with the
    /// lengths and checksum checked against the header the coalescer wrote.
    fn split(header: &[u8; VNET_HDR_LEN], packet: &[u8]) -> Vec<Vec<u8>> {
        let ip = usize::from(u16::from_ne_bytes([header[6], header[7]]));
        let gso = usize::from(u16::from_ne_bytes([header[4], header[5]]));
        assert_eq!(header[..2], [F_NEEDS_CSUM, GSO_UDP_L4]);
        assert_eq!(
            usize::from(u16::from_ne_bytes([header[2], header[3]])),
            ip + 8
        );
        assert_eq!(u16::from_ne_bytes([header[8], header[9]]), 6);
        let udp_len = packet.len() - ip;
        assert_eq!(
            usize::from(u16::from_be_bytes([packet[ip + 4], packet[ip + 5]])),
            udp_len
        );
        let pseudo = if ip == 20 {
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[2], packet[3]])),
                packet.len()
            );
            assert_eq!(
                fold(sum_words(&packet[..20])),
                0xffff,
                "IPv4 header checksum"
            );
            sum_words(&packet[12..20])
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[4], packet[5]])),
                udp_len
            );
            sum_words(&packet[8..40])
        };
        let partial = fold(pseudo + u64::from(UDP) + udp_len as u64);
        assert_eq!(packet[ip + 6..ip + 8], partial.to_be_bytes());
        packet[ip + 8..].chunks(gso).map(<[u8]>::to_vec).collect()
    }

    fn flushed_gso(c: &mut Coalescer) -> Vec<Vec<u8>> {
        match c.flush() {
            Flushed::Gso {
                header,
                packet,
                segments,
                bytes,
            } => {
                let payloads = split(&header, packet);
                assert_eq!(payloads.len(), segments);
                let ip = usize::from(u16::from_ne_bytes([header[6], header[7]]));
                let each: usize = payloads.iter().map(|p| ip + 8 + p.len()).sum();
                assert_eq!(bytes, each);
                payloads
            }
            other => panic!("no GSO packet: {other:?}"),
        }
    }

    #[test]
    fn equal_datagrams_of_one_flow_become_one_gso_packet_that_splits_back() {
        for make in [|p: &[u8], i| v4(p, i), |p: &[u8], _| v6(p)] {
            let mut c = Coalescer::new();
            let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100]).collect();
            for (i, p) in payloads.iter().enumerate() {
                assert_eq!(c.offer(&make(p, i as u16)), Offer::Taken);
            }
            assert_eq!(c.pending(), 5);
            assert_eq!(flushed_gso(&mut c), payloads);
            assert_eq!(c.flush(), Flushed::Nothing);
        }
    }

    #[test]
    fn a_shorter_datagram_ends_the_packet() {
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&v4(&[1; 100], 1)), Offer::Taken);
        assert_eq!(c.offer(&v4(&[2; 40], 2)), Offer::Taken);
        assert_eq!(c.offer(&v4(&[3; 40], 3)), Offer::Flush);
        assert_eq!(flushed_gso(&mut c), [vec![1; 100], vec![2; 40]]);
        // A longer one cannot join either: the kernel splits at the first one's size.
        assert_eq!(c.offer(&v4(&[1; 100], 1)), Offer::Taken);
        assert_eq!(c.offer(&v4(&[2; 101], 2)), Offer::Flush);
    }

    #[test]
    fn one_datagram_goes_as_it_came() {
        let mut c = Coalescer::new();
        let datagram = v6(b"hello");
        assert_eq!(c.offer(&datagram), Offer::Taken);
        assert_eq!(c.flush(), Flushed::Plain(&datagram));
    }

    #[test]
    fn other_flows_and_unfit_packets_are_not_joined() {
        let mut c = Coalescer::new();
        let first = v4(&[1; 64], 1);
        assert_eq!(c.offer(&first), Offer::Taken);
        // Another port, another address, another TTL: flush and start again.
        for (at, value) in [(22, 0x99), (19, 3), (8, 1)] {
            let mut other = v4(&[1; 64], 2);
            other[at] = value;
            if at != 22 {
                other[10..12].fill(0);
                let checksum = !fold(sum_words(&other[..20]));
                other[10..12].copy_from_slice(&checksum.to_be_bytes());
            }
            assert!(finish_transport_checksum(&mut other));
            assert_eq!(c.offer(&other), Offer::Flush, "byte {at}");
        }
        assert_eq!(c.offer(&v6(&[1; 64])), Offer::Flush, "another IP version");
        // Never coalesced: a bad checksum, no checksum, a fragment, options, not UDP, empty.
        let mut corrupt = v4(&[1; 64], 3);
        corrupt[40] ^= 1;
        let mut unchecked = v4(&[1; 64], 3);
        unchecked[26..28].fill(0);
        let mut fragment = v4(&[1; 64], 3);
        fragment[6] |= 0x20;
        let mut tcp = v4(&[1; 64], 3);
        tcp[9] = 6;
        let mut options = v4(&[1; 64], 3);
        options[0] = 0x46;
        for (name, packet) in [
            ("corrupt", corrupt),
            ("no checksum", unchecked),
            ("fragment", fragment),
            ("tcp", tcp),
            ("options", options),
            ("empty", v4(&[], 3)),
            ("truncated", first[..30].to_vec()),
        ] {
            assert_eq!(c.offer(&packet), Offer::Alone, "{name}");
        }
        assert_eq!(c.flush(), Flushed::Plain(&first));
    }

    #[test]
    fn packets_stop_at_the_segment_and_size_limits() {
        let mut c = Coalescer::new();
        for i in 0..MAX_SEGMENTS {
            assert_eq!(c.offer(&v4(&[7; 10], i as u16)), Offer::Taken);
        }
        assert_eq!(c.offer(&v4(&[7; 10], 0)), Offer::Flush);
        assert_eq!(flushed_gso(&mut c).len(), MAX_SEGMENTS);
        // 1400-byte payloads: 46 fit in 64 KiB.
        let mut taken = 0;
        while c.offer(&v4(&[5; 1400], taken)) == Offer::Taken {
            taken += 1;
        }
        assert_eq!(taken, 46);
        assert!(matches!(c.flush(), Flushed::Gso { packet, .. } if packet.len() <= MAX_PACKET));
    }
}
