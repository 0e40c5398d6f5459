//! Offloads at the TUN device, announced by a `virtio_net_hdr` before each packet written.
//!
//! **TCP segmentation.** TCP is captured whole (`capture.gso`): the peer reassembles packets
//! of up to 64 KiB, larger than the TUN's MTU. Written as plain IP packets, the local stack
//! takes them, but a host that forwards them (a gateway for the networks behind it) must not:
//! with DF set they exceed the next link's MTU and are dropped. [`tcp_segmentation`] announces
//! such a packet as GSO TCP with segments that fit a given MTU (the caller gives the smaller of
//! the TUN's and the route's to the destination, alagg's `deliver::pmtu`), and the kernel splits it
//! where it has to. NFQUEUE does not say what segment size the sender used, so the segments
//! are cut anew. A packet whose CWR flag is set is cut here instead ([`split_gso`]): the
//! kernel's split would clear that flag on all but the first segment, which Accurate ECN
//! (RFC 9768) reads as part of a counter; kept on every segment, classic ECN (RFC 3168) sees
//! a repeated CWR, which changes nothing.
//!
//! **UDP coalescing**, like the receive offload the kernel can do for NICs (UDP GRO), but for
//! every flow, not only sockets that ask for it: consecutive datagrams of one flow that the
//! engine delivers together are written to the TUN as one GSO packet, announced by a
//! `virtio_net_hdr` (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux 6.2 and later), and the kernel splits
//! it back into the original datagrams when it hands them to a socket or sends them on. One `write(2)`, one pass through the IP layer and its netfilter hooks then
//! serve up to [`MAX_SEGMENTS`] datagrams.
//!
//! Datagrams join only where the split gives them back as they came, under the rules of the
//! kernel's own GRO: same addresses, ports and IP header fields (IPv4 without options or
//! fragmentation, IPv6 without extension headers); the same payload size as the first, except
//! a last shorter one; without DF, IPv4 identifications that count up by one (the split numbers
//! the segments on from the first; with DF the identification means nothing, RFC 6864, and
//! comes back renumbered); and checksums (IPv4 header, UDP) that verify. The kernel computes
//! new checksums for the segments, so a corrupt datagram is never folded in: it goes alone and
//! the stack drops it as before.
//!
//! What sees the GSO packet rather than the datagrams: netfilter on the way in (per-packet
//! matches such as `-m length` or rate limits), tc and `tcpdump` on the TUN device. Sockets,
//! and the links a forwarded packet leaves on, get the datagrams. Datagrams to a local VXLAN or
//! Geneve endpoint reach it unsplit on kernels before 6.9, which is why coalescing waits for
//! 6.9 (alagg's `deliver::tun::gso_udp_supported`).
//!
//! Kernel reference: include/uapi/linux/virtio_net.h (the header),
//! include/linux/virtio_net.h (`virtio_net_hdr_to_skb`), net/ipv4/udp_offload.c
//! (`__udp_gso_segment`, which recomputes lengths and checksums per segment).
#![deny(unsafe_code)]

use crate::ip::{fold, ipv4_header_intact, pseudo_header_sum, set_length, sum_words};

/// Bytes of a `virtio_net_hdr` (include/uapi/linux/virtio_net.h), before every packet written
/// to a TUN device opened with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
/// The header of a packet written as it is: no GSO, no checksum to complete.
pub const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Most datagrams in one GSO packet (the kernel's `UDP_MAX_SEGMENTS`, 64 before Linux 6.11
/// and 128 since; the kernel refuses a GSO write with more).
pub const MAX_SEGMENTS: usize = 64;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is to be
/// completed over the pseudo-header sum already there.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_TCPV4` and `VIRTIO_NET_HDR_GSO_TCPV6`.
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP: u8 = 6;
/// TCP flags (byte 13 of the header) that keep a packet whole: URG, RST and SYN (which the split
/// would copy to every segment; the stack never sends such packets larger than the MTU).
const TCP_KEEP_WHOLE: u8 = 0x20 | 0x04 | 0x02;
/// CWR, FIN and PSH, in the same byte.
const TCP_CWR: u8 = 0x80;
const TCP_FIN_PSH: u8 = 0x01 | 0x08;
/// The smallest segment payload alagg cuts (the kernel's `TCP_MIN_MSS`): below, the packet goes
/// whole rather than as thousands of segments.
const TCP_MIN_MSS: usize = 88;
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
    /// IPv4 without DF: the identification, which must count up from the first datagram's.
    id: Option<u16>,
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
    /// IPv4 without DF: the first datagram's identification.
    first_id: Option<u16>,
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
            first_id: None,
        }
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
            self.first_id = datagram.id;
            return Offer::Taken;
        }
        let next_id = self
            .first_id
            .map(|id| id.wrapping_add(self.segments as u16));
        let headers = self.ip_header + UDP_HEADER_LEN;
        let joins = !self.closed
            && self.segments < MAX_SEGMENTS
            && datagram.ip_header == self.ip_header
            && datagram.payload <= self.segment
            && self.packet.len() + datagram.payload <= MAX_PACKET
            && datagram.id == next_id
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
        set_length(packet, ip, total);
        packet[ip + 4..ip + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let partial = fold(pseudo_header_sum(packet, UDP, udp_len));
        packet[ip + 6..ip + 8].copy_from_slice(&partial.to_be_bytes());
        let header = vnet_header(GSO_UDP_L4, (ip, UDP_HEADER_LEN), self.segment, 6);
        Flushed::Gso {
            header,
            packet: &self.packet,
            segments,
            bytes: total + (segments - 1) * (ip + UDP_HEADER_LEN),
        }
    }
}

/// Whether an IP packet (sane header, [`crate::ip::check`]) carries TCP right after its fixed
/// header.
pub fn is_tcp(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&TCP),
        Some(6) => packet.get(6) == Some(&TCP),
        _ => false,
    }
}

/// A `struct virtio_net_hdr`, in the host's byte order (a legacy TUN's default), for a GSO
/// packet of `gso_type` whose transport header starts after `ip` bytes and is `transport` bytes
/// long, cut into `gso_size`-byte payloads, with its checksum field `csum_offset` bytes into
/// the transport header to be completed (it holds the pseudo-header sum).
fn vnet_header(
    gso_type: u8,
    (ip, transport): (usize, usize),
    gso_size: usize,
    csum_offset: u16,
) -> [u8; VNET_HDR_LEN] {
    let mut header = [0u8; VNET_HDR_LEN];
    header[0] = F_NEEDS_CSUM;
    header[1] = gso_type;
    header[2..4].copy_from_slice(&((ip + transport) as u16).to_ne_bytes());
    header[4..6].copy_from_slice(&(gso_size as u16).to_ne_bytes());
    header[6..8].copy_from_slice(&(ip as u16).to_ne_bytes());
    header[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
    header
}

/// How to write a TCP packet larger than the TUN's MTU as GSO: the vnet header, and the value
/// its checksum field (at `check_at` in the packet) must hold instead, the pseudo-header sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpGso {
    /// The `virtio_net_hdr` to write before the packet.
    pub header: [u8; VNET_HDR_LEN],
    /// Offset of the TCP checksum field in the packet.
    pub check_at: usize,
    /// What the field must hold.
    pub check: [u8; 2],
    /// CWR is set: cut the packet with [`split_gso`] rather than let the kernel do it.
    pub cwr: bool,
}

/// For a TCP packet longer than `mtu` (a whole GSO packet the peer captured), how to announce
/// it as GSO TCP whose segments fit `mtu`; `None` for anything else, or a packet whose
/// checksum does not verify (written as it is, the stack drops it as before).
pub fn tcp_segmentation(packet: &[u8], mtu: usize) -> Option<TcpGso> {
    if packet.len() <= mtu {
        return None;
    }
    let (ip, gso_type) = match packet.first()? >> 4 {
        4 => {
            let ip = usize::from(packet[0] & 0x0f) * 4;
            let header = packet.get(..ip.max(20))?;
            let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff;
            if ip < 20 || fragment != 0 || header[9] != TCP || !ipv4_header_intact(header) {
                return None;
            }
            (ip, GSO_TCPV4)
        }
        6 => {
            if packet.len() < 40 || packet[6] != TCP {
                return None;
            }
            (40, GSO_TCPV6)
        }
        _ => return None,
    };
    let tcp = packet.get(ip..)?;
    let header = usize::from(tcp.get(12)? >> 4) * 4;
    if header < 20
        || tcp.len() <= header
        || ip + header + TCP_MIN_MSS > mtu
        || tcp[13] & TCP_KEEP_WHOLE != 0
    {
        return None;
    }
    let pseudo = pseudo_header_sum(packet, TCP, tcp.len());
    if fold(pseudo + sum_words(tcp)) != 0xffff {
        return None;
    }
    Some(TcpGso {
        header: vnet_header(gso_type, (ip, header), mtu - ip - header, 16),
        check_at: ip + 16,
        check: fold(pseudo).to_be_bytes(),
        cwr: tcp[13] & TCP_CWR != 0,
    })
}

/// Cuts a GSO packet this module built (TCP from [`tcp_segmentation`], UDP from a
/// [`Coalescer`]) into the segments its vnet `header` describes, here rather than in the
/// kernel, with the kernel's rules: lengths, IPv4 identifications (counting up from the
/// first), checksums and TCP sequence numbers per segment; TCP flags all kept (CWR included,
/// see the module documentation) but FIN and PSH, which only the last keeps. Each segment is
/// built in `scratch` and handed to `each`; the first error stops the cut.
pub fn split_gso<E>(
    packet: &[u8],
    header: &[u8; VNET_HDR_LEN],
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let field = |at: usize| usize::from(u16::from_ne_bytes([header[at], header[at + 1]]));
    let (headers, mss, ip) = (field(2), field(4), field(6));
    let udp = header[1] == GSO_UDP_L4;
    let Some(payload) = packet.get(headers..) else {
        return Ok(());
    };
    let count = payload.len().div_ceil(mss.max(1));
    for (i, chunk) in payload.chunks(mss.max(1)).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(chunk);
        let len = scratch.len();
        if packet[0] >> 4 == 4 {
            let id = u16::from_be_bytes([scratch[4], scratch[5]]).wrapping_add(i as u16);
            scratch[4..6].copy_from_slice(&id.to_be_bytes());
        }
        set_length(scratch, ip, len);
        if udp {
            scratch[ip + 4..ip + 6].copy_from_slice(&((len - ip) as u16).to_be_bytes());
        } else {
            let seq = u32::from_be_bytes([
                scratch[ip + 4],
                scratch[ip + 5],
                scratch[ip + 6],
                scratch[ip + 7],
            ])
            .wrapping_add((i * mss) as u32);
            scratch[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < count {
                scratch[ip + 13] &= !TCP_FIN_PSH;
            }
        }
        crate::ip::finish_transport_checksum(scratch);
        each(scratch)?;
    }
    Ok(())
}

/// The datagram's shape if it may be coalesced: UDP right after a plain IP header, lengths
/// that agree, a payload, and a checksum that verifies.
fn parse(packet: &[u8]) -> Option<Datagram> {
    let (ip_header, id) = match packet.first()? >> 4 {
        4 => {
            let header = packet.get(..20)?;
            // No options, not a fragment (MF clear, offset zero), UDP, an intact header.
            let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff;
            if header[0] != 0x45
                || fragment != 0
                || header[9] != UDP
                || usize::from(u16::from_be_bytes([header[2], header[3]])) != packet.len()
                || !ipv4_header_intact(header)
            {
                return None;
            }
            let df = header[6] & 0x40 != 0;
            let id = (!df).then(|| u16::from_be_bytes([header[4], header[5]]));
            (20, id)
        }
        6 => {
            let header = packet.get(..40)?;
            if header[6] != UDP
                || usize::from(u16::from_be_bytes([header[4], header[5]])) + 40 != packet.len()
            {
                return None;
            }
            (40, None)
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
    let sum = pseudo_header_sum(packet, UDP, udp_len) + sum_words(udp);
    (fold(sum) == 0xffff).then_some(Datagram {
        ip_header,
        payload: udp_len - UDP_HEADER_LEN,
        id,
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
#[expect(clippy::unwrap_used, reason = "tests")]
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
        with_udp(p, payload)
    }

    /// `p` (an IP header) followed by a UDP header from port 1000 to 2000 and `payload`,
    /// checksummed.
    fn with_udp(mut p: Vec<u8>, payload: &[u8]) -> Vec<u8> {
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
        with_udp(p, payload)
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
            assert_eq!(flushed_gso(&mut c), payloads);
            assert_eq!(c.flush(), Flushed::Nothing);
        }
    }

    #[test]
    fn a_coalesced_packet_cut_here_gives_back_the_datagrams() {
        for ipv6 in [false, true] {
            let datagrams: Vec<Vec<u8>> = (0..4u16)
                .map(|i| {
                    let payload = vec![i as u8; if i == 3 { 30 } else { 100 }];
                    if ipv6 {
                        v6(&payload)
                    } else {
                        v4(&payload, 7 + i)
                    }
                })
                .collect();
            let mut c = Coalescer::new();
            for d in &datagrams {
                assert_eq!(c.offer(d), Offer::Taken);
            }
            let Flushed::Gso { header, packet, .. } = c.flush() else {
                panic!("no GSO packet");
            };
            let mut cut = Vec::new();
            split_gso(packet, &header, &mut Vec::new(), |s: &[u8]| {
                cut.push(s.to_vec());
                Ok::<(), ()>(())
            })
            .unwrap();
            // DF is set on these IPv4 datagrams: their ids come back numbered from the first,
            // as the kernel's split numbers them; everything else is as sent.
            assert_eq!(cut, datagrams, "IPv6: {ipv6}");
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

    /// [`v4`] without DF.
    fn v4_fragmentable(payload: &[u8], id: u16) -> Vec<u8> {
        let mut p = v4(payload, id);
        p[6] = 0;
        p[10..12].fill(0);
        let checksum = !fold(sum_words(&p[..20]));
        p[10..12].copy_from_slice(&checksum.to_be_bytes());
        p
    }

    #[test]
    fn without_df_identifications_must_count_up_as_the_split_numbers_them() {
        let mut c = Coalescer::new();
        for id in [0xfffe, 0xffff, 0, 1] {
            assert_eq!(
                c.offer(&v4_fragmentable(&[1; 50], id)),
                Offer::Taken,
                "{id}"
            );
        }
        assert_eq!(c.offer(&v4_fragmentable(&[1; 50], 7)), Offer::Flush);
        assert_eq!(flushed_gso(&mut c).len(), 4);
        // With DF (RFC 6864: the identification of an atomic datagram means nothing), any.
        for id in [5, 5, 900] {
            assert_eq!(c.offer(&v4(&[1; 50], id)), Offer::Taken);
        }
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
        let mut bad_header = v4(&[1; 64], 3);
        bad_header[10] ^= 1;
        for (name, packet) in [
            ("corrupt", corrupt),
            ("no checksum", unchecked),
            ("fragment", fragment),
            ("tcp", tcp),
            ("options", options),
            ("bad IPv4 header checksum", bad_header),
            ("empty", v4(&[], 3)),
            ("truncated", first[..30].to_vec()),
        ] {
            assert_eq!(c.offer(&packet), Offer::Alone, "{name}");
        }
        assert_eq!(c.flush(), Flushed::Plain(&first));
    }

    /// An IPv4 or IPv6 TCP packet with `payload`, 12 bytes of options and the ACK (and `flags`)
    /// set, checksummed.
    fn tcp(v6: bool, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = if v6 {
            let mut p = vec![0x60, 0, 0, 0, 0, 0, TCP, 64];
            p.extend_from_slice(&[0xfd; 16]);
            p.extend_from_slice(&[0xfe; 16]);
            p
        } else {
            let mut p = vec![
                0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, TCP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            ];
            let total = 20 + 32 + payload.len();
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let checksum = !fold(sum_words(&p));
            p[10..12].copy_from_slice(&checksum.to_be_bytes());
            p
        };
        if v6 {
            p[4..6].copy_from_slice(&((32 + payload.len()) as u16).to_be_bytes());
        }
        let mut th = vec![0u8; 32];
        th[..4].copy_from_slice(&[0x13, 0x88, 0xc3, 0x50]);
        th[12] = 8 << 4;
        th[13] = 0x10 | flags;
        p.extend_from_slice(&th);
        p.extend_from_slice(payload);
        assert!(finish_transport_checksum(&mut p));
        p
    }

    #[test]
    fn tcp_larger_than_the_mtu_is_announced_as_gso_that_fits_it() {
        for (v6, ip, gso_type) in [(false, 20, GSO_TCPV4), (true, 40, GSO_TCPV6)] {
            let packet = tcp(v6, &[9; 10_000], 0);
            let gso = tcp_segmentation(&packet, 1480).unwrap();
            let h = gso.header;
            assert_eq!(h[..2], [F_NEEDS_CSUM, gso_type]);
            assert_eq!(u16::from_ne_bytes([h[2], h[3]]), ip + 32);
            // Every segment, headers included, fits the MTU.
            assert_eq!(
                usize::from(u16::from_ne_bytes([h[4], h[5]])),
                1480 - ip as usize - 32
            );
            assert_eq!(u16::from_ne_bytes([h[6], h[7]]), ip);
            assert_eq!(u16::from_ne_bytes([h[8], h[9]]), 16);
            assert_eq!(gso.check_at, usize::from(ip) + 16);
            // The field holds the pseudo-header sum: with the field zeroed, the packet's
            // transport sum completes it to the full checksum the packet had.
            let mut zeroed = packet.clone();
            zeroed[gso.check_at..gso.check_at + 2].fill(0);
            let data = fold(sum_words(&zeroed[usize::from(ip)..]));
            let full = !fold(u64::from(u16::from_be_bytes(gso.check)) + u64::from(data));
            assert_eq!(full.to_be_bytes(), packet[gso.check_at..gso.check_at + 2]);
            // SYN, RST and URG keep a packet whole; CWR asks for the cut done here.
            for flag in [0x20, 0x04, 0x02] {
                assert_eq!(tcp_segmentation(&tcp(v6, &[9; 10_000], flag), 1480), None);
            }
            assert!(!gso.cwr);
            let cwr = tcp(v6, &[9; 10_000], TCP_CWR);
            assert!(tcp_segmentation(&cwr, 1480).unwrap().cwr);
        }
    }

    #[test]
    fn a_cwr_packet_is_cut_here_keeping_cwr_on_every_segment() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let packet = tcp(v6, &payload, TCP_CWR | TCP_FIN_PSH);
            let gso = tcp_segmentation(&packet, 1480).unwrap();
            let ip = if v6 { 40 } else { 20 };
            let mut segments = Vec::new();
            split_gso(&packet, &gso.header, &mut Vec::new(), |s: &[u8]| {
                segments.push(s.to_vec());
                Ok::<(), ()>(())
            })
            .unwrap();
            let mss = 1480 - ip - 32;
            assert_eq!(segments.len(), 5000usize.div_ceil(mss));
            let mut joined = Vec::new();
            for (i, s) in segments.iter().enumerate() {
                assert!(s.len() <= 1480);
                // A sane header of the right length, and checksums that verify.
                assert_eq!(crate::ip::check(s).map(|(_, p)| p.len()), Ok(s.len()));
                let mut again = s.clone();
                assert!(finish_transport_checksum(&mut again));
                assert_eq!(again, *s, "segment {i}'s TCP checksum");
                if !v6 {
                    assert_eq!(fold(sum_words(&s[..20])), 0xffff, "IPv4 header checksum");
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 1 + i as u16, "IPv4 id");
                }
                let seq = u32::from_be_bytes([s[ip + 4], s[ip + 5], s[ip + 6], s[ip + 7]]);
                assert_eq!(seq, (i * mss) as u32);
                let last = i + 1 == segments.len();
                assert_eq!(s[ip + 13] & TCP_CWR, TCP_CWR, "CWR on segment {i}");
                assert_eq!(
                    s[ip + 13] & TCP_FIN_PSH != 0,
                    last,
                    "FIN/PSH on segment {i}"
                );
                joined.extend_from_slice(&s[ip + 32..]);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn only_whole_intact_tcp_over_the_mtu_is_segmented() {
        let packet = tcp(false, &[9; 3000], 0);
        assert_eq!(
            tcp_segmentation(&packet, packet.len()),
            None,
            "fits the MTU"
        );
        assert!(tcp_segmentation(&packet, packet.len() - 1).is_some());
        let mut corrupt = packet.clone();
        corrupt[100] ^= 1;
        assert_eq!(tcp_segmentation(&corrupt, 1480), None, "bad checksum");
        let mut bad_header = packet.clone();
        bad_header[8] ^= 1;
        assert_eq!(
            tcp_segmentation(&bad_header, 1480),
            None,
            "bad IPv4 header checksum"
        );
        assert_eq!(tcp_segmentation(&v4(&[1; 3000], 1), 1480), None, "UDP");
        assert_eq!(
            tcp_segmentation(&packet, 52 + 87),
            None,
            "segments below TCP_MIN_MSS"
        );
        assert!(tcp_segmentation(&packet, 52 + 88).is_some());
        for len in 0..60 {
            assert_eq!(tcp_segmentation(&packet[..len], 10), None, "{len} bytes");
        }
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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::ip::finish_transport_checksum;

    /// One packet of a generated stream: its flow (0 and 1 IPv4, 2 IPv6, 3 IPv4 TCP), payload
    /// length, DF, and whether its IPv4 identification follows the previous one of its flow.
    #[derive(Clone, Debug)]
    struct Spec {
        flow: u8,
        len: usize,
        df: bool,
        next_id: bool,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0..4u8,
            prop_oneof![Just(64usize), Just(100), Just(1400), 1..1473usize],
            any::<bool>(),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(flow, len, df, next_id)| Spec {
                flow,
                len,
                df,
                next_id,
            })
    }

    /// The packets of a stream, checksummed.
    fn build(specs: &[Spec]) -> Vec<Vec<u8>> {
        let mut ids = [0u16; 4];
        specs
            .iter()
            .enumerate()
            .map(|(n, s)| {
                let id = &mut ids[usize::from(s.flow)];
                *id = if s.next_id {
                    id.wrapping_add(1)
                } else {
                    id.wrapping_add(7)
                };
                let payload: Vec<u8> = (0..s.len).map(|i| (i + n) as u8).collect();
                let protocol = if s.flow == 3 { TCP } else { UDP };
                let mut p = if s.flow == 2 {
                    let mut p = vec![0x60, 0, 0, 0, 0, 0, UDP, 64];
                    p[4..6].copy_from_slice(&((8 + s.len) as u16).to_be_bytes());
                    p.extend_from_slice(&[0xfd; 16]);
                    p.extend_from_slice(&[0xfe; 16]);
                    p
                } else {
                    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
                    p.extend_from_slice(&[10, 0, 0, 1, 10, 0, s.flow, 2]);
                    let header = if protocol == TCP { 20 } else { 8 };
                    p[2..4].copy_from_slice(&((20 + header + s.len) as u16).to_be_bytes());
                    p[4..6].copy_from_slice(&id.to_be_bytes());
                    p[6] = if s.df { 0x40 } else { 0 };
                    let checksum = !fold(sum_words(&p));
                    p[10..12].copy_from_slice(&checksum.to_be_bytes());
                    p
                };
                if protocol == TCP {
                    let mut th = [0u8; 20];
                    th[12] = 5 << 4;
                    th[13] = 0x10;
                    p.extend_from_slice(&th);
                } else {
                    p.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0]);
                    p.extend_from_slice(&((8 + s.len) as u16).to_be_bytes());
                    p.extend_from_slice(&[0, 0]);
                }
                p.extend_from_slice(&payload);
                assert!(finish_transport_checksum(&mut p));
                p
            })
            .collect()
    }

    /// What the stack receives, delivering `packets` as the receive stage does (coalesce, flush
    /// before a packet that goes alone) and splitting GSO packets as the kernel would.
    fn through(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        fn emit(flushed: Flushed<'_>, out: &mut Vec<Vec<u8>>) {
            match flushed {
                Flushed::Nothing => {}
                Flushed::Plain(packet) => out.push(packet.to_vec()),
                Flushed::Gso { header, packet, .. } => {
                    let result = split_gso(packet, &header, &mut Vec::new(), |s: &[u8]| {
                        out.push(s.to_vec());
                        Ok::<(), ()>(())
                    });
                    assert_eq!(result, Ok(()));
                }
            }
        }
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        for packet in packets {
            match c.offer(packet) {
                Offer::Taken => {}
                Offer::Flush => {
                    emit(c.flush(), &mut out);
                    assert_eq!(c.offer(packet), Offer::Taken);
                }
                Offer::Alone => {
                    emit(c.flush(), &mut out);
                    out.push(packet.clone());
                }
            }
        }
        emit(c.flush(), &mut out);
        out
    }

    /// A packet as it must come back: an IPv4 datagram with DF may be renumbered (RFC 6864),
    /// so its identification and header checksum are left out of the comparison.
    fn comparable(packet: &[u8]) -> Vec<u8> {
        let mut packet = packet.to_vec();
        if packet[0] >> 4 == 4 && packet[6] & 0x40 != 0 {
            packet[4..6].fill(0);
            packet[10..12].fill(0);
        }
        packet
    }

    proptest! {
        #[test]
        fn every_packet_comes_back_as_sent_and_in_order(
            specs in prop::collection::vec(spec(), 1..200),
        ) {
            let packets = build(&specs);
            let back = through(&packets);
            prop_assert_eq!(back.len(), packets.len());
            for (i, (got, sent)) in back.iter().zip(&packets).enumerate() {
                prop_assert_eq!(comparable(got), comparable(sent), "packet {}", i);
                // Checksums that verify, as the kernel's split leaves them.
                let mut again = got.clone();
                prop_assert!(finish_transport_checksum(&mut again));
                prop_assert_eq!(&again, got, "packet {}'s transport checksum", i);
                if got[0] >> 4 == 4 {
                    prop_assert_eq!(fold(sum_words(&got[..20])), 0xffff, "packet {}", i);
                }
            }
        }
    }
}
