//! Fuzz target: TCP segmentation at the TUN (`alagg_packet::offload::tcp_segmentation`, and
//! `split_gso`, which cuts as the kernel does).
//!
//! Input: an MTU, a shape byte (IPv4 or IPv6, TCP flags, options, whether to fix lengths and
//! checksums), the wanted length, then bytes that fill the packet. For every admitted TCP
//! packet longer than the MTU that the oracle finds cuttable (intact checksums, not a
//! fragment, no SYN/RST/URG, room for the smallest segment), a plan must be made; a plan must
//! describe segments that fit the MTU, and its cut must give sane segments, each under the
//! MTU, with verifying checksums, the original headers (sequence numbers counted on, FIN and
//! PSH on the last alone), whose payloads joined are the original payload.
#![no_main]

use alagg_fuzz::{TCP, be16, ipv4_header_ok, make_sane, ones_sum, transport_checksum_ok};
use alagg_packet::{
    ip,
    offload::{split_gso, tcp_segmentation},
};
use libfuzzer_sys::fuzz_target;

const KEEP_WHOLE: u8 = 0x20 | 0x04 | 0x02;
const FIN_PSH: u8 = 0x01 | 0x08;
const MIN_MSS: usize = 88;

fn build(shape: u8, len: usize, fill: &[u8]) -> Vec<u8> {
    let v6 = shape & 1 == 1;
    let mut p: Vec<u8> = fill.iter().copied().cycle().take(len.max(60)).collect();
    if v6 {
        p[0] = 0x60 | (p[0] & 0x0f);
        p[6] = TCP;
    } else {
        // IHL 5, or 6 with four bytes of options; not a fragment unless the shape says so.
        p[0] = if shape & 2 == 2 { 0x46 } else { 0x45 };
        p[9] = TCP;
        if shape & 4 == 0 {
            p[6] &= 0x40;
            p[7] = 0;
        }
    }
    let ip = if v6 { 40 } else { usize::from(p[0] & 0x0f) * 4 };
    // Data offset 5 to 8 (options up to 12 bytes); the flags mostly without SYN/RST/URG.
    p[ip + 12] = (5 + ((shape >> 3) & 3)) << 4;
    if shape & 0x20 == 0 {
        p[ip + 13] &= !KEEP_WHOLE;
    }
    p
}

fn check(packet: &[u8], mtu: usize) {
    let plan = tcp_segmentation(packet, mtu);
    let v4 = packet[0] >> 4 == 4;
    let ip = if v4 {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        40
    };
    let is_tcp = if v4 {
        packet[9] == TCP
    } else {
        packet[6] == TCP
    };
    let Some(plan) = plan else {
        if packet.len() <= mtu || !is_tcp || packet.len() < ip + 20 {
            return;
        }
        let tcp_header = usize::from(packet[ip + 12] >> 4) * 4;
        let fragment = v4 && be16(packet, 6) & 0x3fff != 0;
        let cuttable = tcp_header >= 20
            && packet.len() > ip + tcp_header
            && ip + tcp_header + MIN_MSS <= mtu
            && packet[ip + 13] & KEEP_WHOLE == 0
            && !fragment
            && (!v4 || ipv4_header_ok(packet))
            && transport_checksum_ok(packet);
        assert!(
            !cuttable,
            "a cuttable packet of {} bytes at MTU {mtu} left whole",
            packet.len()
        );
        return;
    };
    assert!(packet.len() > mtu, "a plan for a packet that fits");
    assert!(is_tcp);
    let header = plan.header;
    let field = |at: usize| usize::from(u16::from_ne_bytes([header[at], header[at + 1]]));
    let (headers, mss, csum_start, csum_offset) = (field(2), field(4), field(6), field(8));
    let tcp_header = usize::from(packet[ip + 12] >> 4) * 4;
    assert_eq!(header[1], if v4 { 1 } else { 4 }, "GSO type");
    assert_eq!(
        (headers, csum_start, csum_offset),
        (ip + tcp_header, ip, 16)
    );
    assert!(
        mss >= MIN_MSS && headers + mss <= mtu,
        "segments of {mss} do not fit {mtu}"
    );
    assert_eq!(plan.check_at, ip + 16);
    let addresses = if v4 { &packet[12..20] } else { &packet[8..40] };
    let pseudo = ones_sum(addresses, u32::from(TCP) + (packet.len() - ip) as u32);
    assert_eq!(
        plan.check,
        pseudo.to_be_bytes(),
        "not the pseudo-header sum"
    );
    assert_eq!(plan.cwr, packet[ip + 13] & 0x80 != 0);

    let mut segments = Vec::new();
    split_gso(packet, &header, &mut Vec::new(), |s| {
        segments.push(s.to_vec());
        Ok::<(), ()>(())
    })
    .expect("the callback never fails");
    let payload = &packet[headers..];
    assert_eq!(segments.len(), payload.len().div_ceil(mss));
    let seq = u32::from_be_bytes([
        packet[ip + 4],
        packet[ip + 5],
        packet[ip + 6],
        packet[ip + 7],
    ]);
    let mut joined = Vec::with_capacity(payload.len());
    for (i, s) in segments.iter().enumerate() {
        assert!(
            s.len() <= mtu,
            "a segment of {} bytes over MTU {mtu}",
            s.len()
        );
        assert_eq!(
            ip::check(s).map(|(_, p)| p.len()),
            Ok(s.len()),
            "an insane segment"
        );
        assert!(!v4 || ipv4_header_ok(s), "IPv4 header checksum");
        assert!(transport_checksum_ok(s), "TCP checksum");
        let s_seq = u32::from_be_bytes([s[ip + 4], s[ip + 5], s[ip + 6], s[ip + 7]]);
        assert_eq!(
            s_seq,
            seq.wrapping_add(joined.len() as u32),
            "sequence number"
        );
        let last = i + 1 == segments.len();
        let flags = packet[ip + 13] & if last { 0xff } else { !FIN_PSH };
        assert_eq!(s[ip + 13], flags, "TCP flags of segment {i}");
        for at in 0..headers {
            let changes = (2..4).contains(&at) && v4
                || (4..6).contains(&at)
                || (10..12).contains(&at) && v4
                || (ip + 4..ip + 8).contains(&at)
                || at == ip + 13
                || (ip + 16..ip + 18).contains(&at);
            assert!(
                changes || s[at] == packet[at],
                "header byte {at} of segment {i}"
            );
        }
        joined.extend_from_slice(&s[headers..]);
    }
    assert_eq!(joined, payload, "the segments do not join to the payload");
}

fuzz_target!(|data: &[u8]| {
    let [m0, m1, shape, l0, l1, fill @ ..] = data else {
        return;
    };
    if fill.is_empty() {
        return;
    }
    let mtu = usize::from(u16::from_be_bytes([*m0, *m1]));
    let len = usize::from(u16::from_be_bytes([*l0, *l1]));
    let mut packet = build(*shape, len, fill);
    if shape & 0x40 == 0 {
        make_sane(&mut packet);
    }
    // What the delivery stage hands on: admitted packets, trimmed to their header's length.
    let Ok((_, packet)) = ip::check(&packet) else {
        return;
    };
    if packet.len() >= 40 {
        check(packet, mtu);
    }
});
