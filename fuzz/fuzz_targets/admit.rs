//! Fuzz target: admission of a received packet (`alagg_packet::ip`), what every packet the
//! peer's frames carry passes before it may take a number and reach the TUN device.
//!
//! Input: a byte that picks a prefix length, then the packet. `check` must agree with an
//! oracle written from RFC 791 / RFC 8200 (accepted exactly when the header is sane, trimmed
//! to the header's length, never longer than the buffer, the source read from the header);
//! `admit` must accept exactly the packets `check` accepts whose source is in the networks and
//! whose destination is not (nor unspecified or loopback), and hand back the same bytes; a completed transport checksum must verify and change nothing
//! but the checksum field.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use alagg_fuzz::{TCP, UDP, be16, header_length, make_sane, transport, transport_checksum_ok};
use alagg_packet::ip::{self, Reject};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fn source(packet: &[u8]) -> IpAddr {
    if packet[0] >> 4 == 4 {
        IpAddr::V4(Ipv4Addr::new(
            packet[12], packet[13], packet[14], packet[15],
        ))
    } else {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&packet[8..24]);
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// `address`'s network of `prefix` bits, and the same network with its first bit flipped
/// (which does not hold `address`; `None` at prefix 0, where every address is in it).
fn networks(address: IpAddr, prefix: u8) -> (IpNet, Option<IpNet>) {
    let width = if address.is_ipv4() { 32 } else { 128 };
    let prefix = prefix % (width + 1);
    let own = IpNet::new(address, prefix)
        .expect("prefix within the width")
        .trunc();
    let flipped = (prefix > 0).then(|| {
        let other = match address {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(a.to_bits() ^ (1 << 31))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(a.to_bits() ^ (1 << 127))),
        };
        IpNet::new(other, prefix)
            .expect("prefix within the width")
            .trunc()
    });
    (own, flipped)
}

fn check_admission(packet: &[u8], prefix: u8) {
    let expected = header_length(packet);
    match ip::check(packet) {
        Ok((from, trimmed)) => {
            let len = expected.expect("check accepted a packet the oracle finds malformed");
            assert_eq!(
                trimmed.len(),
                len,
                "trimmed to another length than the header's"
            );
            assert!(trimmed.len() <= packet.len());
            assert_eq!(trimmed, &packet[..len]);
            if packet[0] >> 4 == 4 {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                assert!(
                    ihl >= 20 && ihl <= trimmed.len(),
                    "header longer than the packet"
                );
                assert_eq!(trimmed.len(), be16(packet, 2));
            } else {
                assert_eq!(trimmed.len(), 40 + be16(packet, 4));
            }
            assert_eq!(from, source(packet));
            assert!(ip::destination(trimmed).is_some());
            let (own, other) = networks(from, prefix);
            let to = ip::destination(trimmed).expect("a sane packet has a destination");
            // Admitted from the source's network unless the destination is in the networks
            // too, or unspecified or loopback.
            let expected = |nets: &[IpNet]| {
                if to.is_unspecified() || to.is_loopback() || nets.iter().any(|n| n.contains(&to))
                {
                    Err(Reject::Destination)
                } else {
                    Ok(trimmed)
                }
            };
            assert_eq!(ip::admit(packet, &[own]), expected(&[own]));
            if let Some(other) = other {
                assert_eq!(ip::admit(packet, &[other]), Err(Reject::Source));
                assert_eq!(ip::admit(packet, &[other, own]), expected(&[other, own]));
            }
            assert_eq!(ip::admit(packet, &[]), Err(Reject::Source));
        }
        Err(reject) => {
            assert_eq!(reject, Reject::Malformed);
            assert_eq!(expected, None, "check refused a sane packet");
            let any: IpNet = "0.0.0.0/0".parse().expect("a network");
            let any6: IpNet = "::/0".parse().expect("a network");
            assert_eq!(ip::admit(packet, &[any, any6]), Err(Reject::Malformed));
        }
    }
}

fn check_checksum(packet: &[u8]) {
    let mut copy = packet.to_vec();
    if !ip::finish_transport_checksum(&mut copy) {
        assert_eq!(copy, packet, "a refused completion changed the packet");
        return;
    }
    let len = header_length(packet).expect("a checksum completed on a malformed packet");
    let (start, protocol) = transport(packet);
    assert!(protocol == TCP || protocol == UDP);
    assert!(
        transport_checksum_ok(&copy[..len]),
        "the completed checksum does not verify"
    );
    let field = start + if protocol == TCP { 16 } else { 6 };
    for (i, (a, b)) in packet.iter().zip(&copy).enumerate() {
        assert!(a == b || i == field || i == field + 1, "byte {i} changed");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, packet)) = data.split_first() else {
        return;
    };
    check_admission(packet, first >> 1);
    check_checksum(packet);
    if first & 1 == 1 {
        // The same bytes made sane, so the accepting paths are reached as often as the others.
        let mut sane = packet.to_vec();
        if make_sane(&mut sane) {
            assert!(ip::check(&sane).is_ok_and(|(_, p)| p.len() == sane.len()));
            check_admission(&sane, first >> 1);
            check_checksum(&sane);
        }
    }
});
