//! Checks on IP packets at the delivery edge: a packet is written to the TUN device only if its
//! header is sane (RFC 791 / RFC 8200 lengths and version) and its source lies in the peer's
//! configured networks, like WireGuard's allowed IPs.
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

/// [`check`], then the source must lie in one of `allowed`.
pub fn admit<'a>(packet: &'a [u8], allowed: &[IpNet]) -> Result<&'a [u8], Reject> {
    let (source, packet) = check(packet)?;
    if allowed.iter().any(|net| net.contains(&source)) {
        Ok(packet)
    } else {
        Err(Reject::Source)
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

    fn v4(source: [u8; 4], total: u16, frame_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; frame_len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&source);
        p
    }

    fn v6(source: Ipv6Addr, payload: u16, frame_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; frame_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p[8..24].copy_from_slice(&source.octets());
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
