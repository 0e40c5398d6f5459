//! Checks on IP packets at the delivery edge: a packet is written to the TUN device only if its
//! header is sane (RFC 791 / RFC 8200 lengths and version), its source lies in the peer's
//! configured networks, like WireGuard's allowed IPs, and its destination does not: a packet
//! to the peer's own networks would be routed straight back through alagg to the peer (a
//! reflection no genuine sender makes), and one to an unspecified or loopback address is no
//! packet a host accepts from outside (RFC 1122 3.2.1.3, RFC 4291 2.5.2-3). Where else a
//! destination may lie is the host's routing decision, made by the kernel on the TUN.
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a received packet is not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not IPv4 or IPv6, too short, or lengths that do not add up.
    Malformed,
    /// The source address is outside the configured destinations.
    Source,
    /// The destination lies in the configured destinations (the peer's own networks), or is
    /// unspecified or loopback.
    Destination,
}

/// The source address of a sane IPv4/IPv6 packet, and the packet trimmed to the length its
/// header states (real NICs pad short frames; the header, not the frame, says how long it is).
pub fn check(packet: &[u8]) -> Result<(IpAddr, &[u8]), Reject> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            if packet.len() < 20 {
                return Err(Reject::Malformed);
            }
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if ihl < 20 || total < ihl || total > packet.len() {
                return Err(Reject::Malformed);
            }
            let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            Ok((IpAddr::V4(source), &packet[..total]))
        }
        Some(6) => {
            if packet.len() < 40 {
                return Err(Reject::Malformed);
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let total = 40 + payload;
            if total > packet.len() {
                return Err(Reject::Malformed);
            }
            let mut source = [0u8; 16];
            source.copy_from_slice(&packet[8..24]);
            Ok((IpAddr::V6(Ipv6Addr::from(source)), &packet[..total]))
        }
        _ => Err(Reject::Malformed),
    }
}

/// IP protocol numbers (IANA) of the transport headers whose checksum alagg completes.
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Completes the TCP or UDP checksum of a packet captured with a partial one.
///
/// With `NFQA_CFG_F_GSO` the kernel hands over packets as the stack built them, including
/// those whose transport checksum it left for the device to fill in (`CHECKSUM_PARTIAL`,
/// flagged `NFQA_SKB_CSUMNOTREADY`). Such a packet, carried whole to the peer and written to
/// its TUN device, would fail the peer's checksum check, so the checksum is computed here from
/// scratch: the ones' complement sum of the pseudo-header (RFC 793 / RFC 768 for IPv4,
/// RFC 8200 section 8.1 for IPv6) and the whole transport segment, whatever the field held.
/// Returns false (and leaves the packet alone) when the packet is not a sane IPv4/IPv6 packet
/// carrying TCP or UDP directly after its fixed header.
pub fn finish_transport_checksum(packet: &mut [u8]) -> bool {
    let Ok((_, trimmed)) = check(packet) else {
        return false;
    };
    let total = trimmed.len();
    let (start, protocol) = match packet[0] >> 4 {
        4 => (usize::from(packet[0] & 0x0f) * 4, packet[9]),
        _ => (40, packet[6]),
    };
    let mut sum = pseudo_header_sum(packet, protocol, total - start);
    let field = match protocol {
        TCP => start + 16,
        UDP => start + 6,
        _ => return false,
    };
    if field + 2 > total {
        return false;
    }
    packet[field] = 0;
    packet[field + 1] = 0;
    sum += sum_words(&packet[start..total]);
    let mut checksum = !fold(sum);
    if protocol == UDP && checksum == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        checksum = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

/// The sum, not yet folded, of the pseudo-header of a `length`-byte transport segment of
/// `protocol` in `packet` (RFC 793 / RFC 768 for IPv4, RFC 8200 section 8.1 for IPv6): its
/// addresses, the protocol and the length. `packet` holds at least the fixed IP header.
pub fn pseudo_header_sum(packet: &[u8], protocol: u8, length: usize) -> u64 {
    let addresses = if packet[0] >> 4 == 4 {
        &packet[12..20]
    } else {
        &packet[8..40]
    };
    sum_words(addresses) + u64::from(protocol) + length as u64
}

/// Sets the length of an IP packet (`packet` holds at least its fixed header): IPv4's total
/// length, then its header checksum anew over `header_len` bytes; IPv6's payload length.
pub fn set_length(packet: &mut [u8], header_len: usize, total: usize) {
    if packet[0] >> 4 == 4 {
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        packet[10..12].fill(0);
        let checksum = !fold(sum_words(&packet[..header_len]));
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    } else {
        packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_header_intact(header: &[u8]) -> bool {
    fold(sum_words(header)) == 0xffff
}

/// The sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero), not yet
/// folded: a u64 holds the sum of any packet without overflow.
pub fn sum_words(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for chunk in &mut chunks {
        let word = u64::from_be_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        // Four 16-bit words at once: add the two 32-bit halves, each at most 2^32 - 1.
        sum += (word >> 32) + (word & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for pair in &mut rest {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum of 16-bit words (or of 32-bit words holding them) into 16 bits, end-around carry
/// included (RFC 1071).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// [`check`], then the source must lie in one of `allowed` and the destination in none of them
/// (nor be unspecified or loopback).
pub fn admit<'a>(packet: &'a [u8], allowed: &[IpNet]) -> Result<&'a [u8], Reject> {
    let (source, packet) = check(packet)?;
    if !allowed.iter().any(|net| net.contains(&source)) {
        return Err(Reject::Source);
    }
    match destination(packet) {
        Some(to)
            if !to.is_unspecified()
                && !to.is_loopback()
                && !allowed.iter().any(|net| net.contains(&to)) =>
        {
            Ok(packet)
        }
        _ => Err(Reject::Destination),
    }
}

/// The destination address of an IPv4/IPv6 packet, if its header is long enough.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))),
        Some(6) if packet.len() >= 40 => {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&packet[24..40]);
            Some(IpAddr::V6(Ipv6Addr::from(addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// RFC 1071, the plain way: 16-bit words, folded as it goes.
    fn naive_sum(bytes: &[u8]) -> u32 {
        let mut sum = 0u32;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    /// Whether the transport checksum of `packet` verifies (the whole sum folds to 0xffff).
    fn verifies(packet: &[u8]) -> bool {
        let (start, protocol, pseudo) = if packet[0] >> 4 == 4 {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let mut pseudo = packet[12..20].to_vec();
            pseudo.extend_from_slice(&[0, packet[9]]);
            pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (ihl, packet[9], pseudo)
        } else {
            let mut pseudo = packet[8..40].to_vec();
            pseudo.extend_from_slice(&((packet.len() - 40) as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, packet[6]]);
            (40, packet[6], pseudo)
        };
        let _ = protocol;
        let sum = naive_sum(&pseudo) + naive_sum(&packet[start..]);
        let folded = (sum & 0xffff) + (sum >> 16);
        folded == 0xffff
    }

    /// A pseudo-random transport segment of `len` bytes after an IP header for `protocol`.
    fn packet(version: u8, protocol: u8, len: usize, seed: u32) -> Vec<u8> {
        let header = if version == 4 { 20 } else { 40 };
        let mut p = vec![0u8; header + len];
        let mut state = seed | 1;
        for byte in &mut p[header..] {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = state as u8;
        }
        if version == 4 {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((header + len) as u16).to_be_bytes());
            p[9] = protocol;
            p[12..20].copy_from_slice(&[198, 18, 100, 1, 198, 18, 100, 2]);
        } else {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            p[6] = protocol;
            p[8..24].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
            p[24..40].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        }
        p
    }

    #[test]
    fn finished_checksums_verify_for_any_length_and_field_content() {
        for version in [4, 6] {
            for protocol in [TCP, UDP] {
                for len in [8, 20, 21, 33, 1400, 1401, 65_000] {
                    let mut p = packet(version, protocol, len, len as u32 * 7 + 1);
                    if protocol == TCP && len < 20 {
                        continue;
                    }
                    assert!(
                        finish_transport_checksum(&mut p),
                        "v{version} {protocol} {len}"
                    );
                    assert!(verifies(&p), "v{version} proto {protocol} len {len}");
                }
            }
        }
    }

    #[test]
    fn checksum_is_left_alone_where_it_cannot_be_finished() {
        // Not TCP or UDP (ICMP), truncated transport header, not IP at all.
        let mut icmp = packet(4, 1, 64, 3);
        let before = icmp.clone();
        assert!(!finish_transport_checksum(&mut icmp));
        assert_eq!(icmp, before);
        let mut short = packet(4, TCP, 10, 3);
        assert!(!finish_transport_checksum(&mut short));
        assert!(!finish_transport_checksum(&mut [0u8; 3]));
        assert!(!finish_transport_checksum(&mut []));
    }

    /// An IPv4 packet from `source` to 192.0.2.1 (TEST-NET-1).
    fn v4(source: [u8; 4], total: u16, frame_len: usize) -> Vec<u8> {
        v4_to(source, [192, 0, 2, 1], total, frame_len)
    }

    fn v4_to(source: [u8; 4], destination: [u8; 4], total: u16, frame_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; frame_len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&source);
        p[16..20].copy_from_slice(&destination);
        p
    }

    /// An IPv6 packet from `source` to 2001:db8::1 (documentation prefix).
    fn v6(source: Ipv6Addr, payload: u16, frame_len: usize) -> Vec<u8> {
        v6_to(source, "2001:db8::1".parse().unwrap(), payload, frame_len)
    }

    fn v6_to(source: Ipv6Addr, destination: Ipv6Addr, payload: u16, frame_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; frame_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p[8..24].copy_from_slice(&source.octets());
        p[24..40].copy_from_slice(&destination.octets());
        p
    }

    #[test]
    fn table_of_packets() {
        let allowed: Vec<IpNet> = vec![
            "198.18.0.0/24".parse().unwrap(),
            "fd00:a1a9::/64".parse().unwrap(),
        ];
        let inside6: Ipv6Addr = "fd00:a1a9::2".parse().unwrap();
        let outside6: Ipv6Addr = "fd00:dead::2".parse().unwrap();
        let cases: Vec<(&str, Vec<u8>, Result<usize, Reject>)> = vec![
            ("v4 inside", v4([198, 18, 0, 2], 28, 28), Ok(28)),
            (
                "v4 padded frame trimmed",
                v4([198, 18, 0, 2], 28, 60),
                Ok(28),
            ),
            ("v4 outside", v4([10, 0, 0, 1], 28, 28), Err(Reject::Source)),
            (
                "v4 total beyond frame",
                v4([198, 18, 0, 2], 100, 28),
                Err(Reject::Malformed),
            ),
            ("v4 too short", vec![0x45; 10], Err(Reject::Malformed)),
            ("v6 inside", v6(inside6, 8, 48), Ok(48)),
            ("v6 padded", v6(inside6, 8, 64), Ok(48)),
            ("v6 outside", v6(outside6, 8, 48), Err(Reject::Source)),
            (
                "v6 payload beyond frame",
                v6(inside6, 100, 48),
                Err(Reject::Malformed),
            ),
            ("not IP", vec![0x20; 40], Err(Reject::Malformed)),
            ("empty", vec![], Err(Reject::Malformed)),
            (
                "v4 to the peer's own network",
                v4_to([198, 18, 0, 2], [198, 18, 0, 9], 28, 28),
                Err(Reject::Destination),
            ),
            (
                "v4 to loopback",
                v4_to([198, 18, 0, 2], [127, 0, 0, 1], 28, 28),
                Err(Reject::Destination),
            ),
            (
                "v4 to 0.0.0.0",
                v4_to([198, 18, 0, 2], [0, 0, 0, 0], 28, 28),
                Err(Reject::Destination),
            ),
            (
                "v4 to this host's network",
                v4_to([198, 18, 0, 2], [10, 1, 2, 3], 28, 28),
                Ok(28),
            ),
            (
                "v6 to the peer's own network",
                v6_to(inside6, "fd00:a1a9::9".parse().unwrap(), 8, 48),
                Err(Reject::Destination),
            ),
            (
                "v6 to ::1",
                v6_to(inside6, Ipv6Addr::LOCALHOST, 8, 48),
                Err(Reject::Destination),
            ),
            (
                "v6 to ::",
                v6_to(inside6, Ipv6Addr::UNSPECIFIED, 8, 48),
                Err(Reject::Destination),
            ),
        ];
        for (name, packet, want) in cases {
            let got = admit(&packet, &allowed).map(<[u8]>::len);
            assert_eq!(got, want, "{name}");
        }
        let mut bad_ihl = v4([198, 18, 0, 2], 28, 28);
        bad_ihl[0] = 0x44;
        assert_eq!(check(&bad_ihl).err(), Some(Reject::Malformed));
    }

    #[test]
    fn destinations_are_read_from_the_header() {
        let mut p = v4([1, 2, 3, 4], 20, 20);
        p[16..20].copy_from_slice(&[198, 18, 0, 9]);
        assert_eq!(destination(&p), Some(IpAddr::from([198, 18, 0, 9])));
        assert_eq!(destination(&[0x45]), None);
    }
}
