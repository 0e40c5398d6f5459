//! What the fuzz targets of `alagg-packet` share: turning fuzzer bytes into packets that pass
//! the header and checksum checks (so the code behind them is reached, not only the first
//! refusal), and oracles written apart from the code under test (RFC 1071 checksums, RFC 791 /
//! RFC 8200 lengths), so a target does not check a function against itself.

/// IP protocol numbers (IANA).
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A big-endian u16 at `at`.
pub fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

/// The RFC 1071 ones' complement sum of `bytes` (an odd last byte padded with zero), folded.
pub fn ones_sum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The length of an IP packet by its own header, RFC 791 / RFC 8200, if it is a sane one that
/// `bytes` holds whole (padding after it allowed): IPv4 with IHL ≥ 5 and IHL ≤ total length,
/// IPv6 with its fixed header.
pub fn header_length(bytes: &[u8]) -> Option<usize> {
    match bytes.first()? >> 4 {
        4 if bytes.len() >= 20 => {
            let ihl = usize::from(bytes[0] & 0x0f) * 4;
            let total = be16(bytes, 2);
            (ihl >= 20 && ihl <= total && total <= bytes.len()).then_some(total)
        }
        6 if bytes.len() >= 40 => Some(40 + be16(bytes, 4)).filter(|&t| t <= bytes.len()),
        _ => None,
    }
}

/// Where the transport header of a sane packet starts, and its protocol.
pub fn transport(packet: &[u8]) -> (usize, u8) {
    if packet[0] >> 4 == 4 {
        (usize::from(packet[0] & 0x0f) * 4, packet[9])
    } else {
        (40, packet[6])
    }
}

/// Whether the transport checksum of a sane packet verifies (pseudo-header included).
pub fn transport_checksum_ok(packet: &[u8]) -> bool {
    let (start, protocol) = transport(packet);
    let segment = &packet[start..];
    let addresses = if packet[0] >> 4 == 4 {
        &packet[12..20]
    } else {
        &packet[8..40]
    };
    let Ok(length) = u16::try_from(segment.len()) else {
        return false;
    };
    let pseudo = ones_sum(addresses, u32::from(protocol) + u32::from(length));
    ones_sum(segment, u32::from(pseudo)) == 0xffff
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_header_ok(packet: &[u8]) -> bool {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    ones_sum(&packet[..ihl], 0) == 0xffff
}

/// Rewrites `packet` into a well-formed IPv4/IPv6 packet of its whole length where its first
/// bytes allow: the IP length fields, the IPv4 header checksum, the UDP length, the TCP or UDP
/// checksum. Returns whether the packet is now sane ([`header_length`] is its length).
pub fn make_sane(packet: &mut [u8]) -> bool {
    let len = packet.len();
    if len > 65_535 {
        return false;
    }
    let (start, protocol) = match packet.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || ihl > len {
                return false;
            }
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            (ihl, packet[9])
        }
        Some(6) if len >= 40 => {
            packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            (40, packet[6])
        }
        _ => return false,
    };
    let field = match protocol {
        TCP => start + 16,
        UDP => start + 6,
        _ => 0,
    };
    if protocol == UDP && start + 8 <= len {
        packet[start + 4..start + 6].copy_from_slice(&((len - start) as u16).to_be_bytes());
    }
    if field != 0 && field + 2 <= len {
        packet[field..field + 2].fill(0);
        let (start, protocol) = transport(packet);
        let addresses = if packet[0] >> 4 == 4 {
            &packet[12..20]
        } else {
            &packet[8..40]
        };
        let pseudo = ones_sum(addresses, u32::from(protocol) + (len - start) as u32);
        let mut checksum = !ones_sum(&packet[start..], u32::from(pseudo));
        if protocol == UDP && checksum == 0 {
            checksum = 0xffff;
        }
        packet[field..field + 2].copy_from_slice(&checksum.to_be_bytes());
    }
    if packet[0] >> 4 == 4 {
        packet[10..12].fill(0);
        let checksum = !ones_sum(&packet[..start], 0);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    }
    header_length(packet) == Some(len)
}
