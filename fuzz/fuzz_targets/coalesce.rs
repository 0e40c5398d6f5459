//! Fuzz target: the UDP coalescer of the TUN's offloads (`alagg_packet::offload::Coalescer`),
//! driven as the delivery stage drives it, with `split_gso` standing in for the kernel's split.
//!
//! Input: a flow choice (IPv4 or IPv6, DF), then records `[kind][payload length][payload]`:
//! the next datagram of the flow, one with another identification or port, a corrupted one,
//! or raw bytes. Every admitted datagram must come out exactly once and in order: written
//! alone, or as one segment of a GSO packet whose split gives back the datagrams byte for byte
//! (but the checksums, which the kernel computes anew, and with DF the identification, which
//! it renumbers), each sane with checksums that verify, within the kernel's limits.
#![no_main]

use alagg_fuzz::{UDP, ipv4_header_ok, make_sane, transport_checksum_ok};
use alagg_packet::{
    ip,
    offload::{Coalescer, Flushed, MAX_SEGMENTS, Offer, VNET_HDR_LEN, split_gso},
};
use libfuzzer_sys::fuzz_target;

/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;

/// A datagram of the flow: `v6` or IPv4 (with `df`), identification `id`, source port `port`.
fn datagram(v6: bool, df: bool, id: u16, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = if v6 {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, UDP, 64];
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h
    } else {
        let flags = if df { 0x40 } else { 0 };
        let [a, b] = id.to_be_bytes();
        vec![
            0x45, 0, 0, 0, a, b, flags, 0, 64, UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]
    };
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&[0x13, 0x88, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    make_sane(&mut p);
    p
}

/// Whether `segment` is `original` as the kernel's split gives it back: equal but for the
/// checksums and, with DF (IPv4), the identification; and itself sane and verifying.
fn same_datagram(segment: &[u8], original: &[u8]) -> bool {
    if segment.len() != original.len()
        || ip::check(segment).map(|(_, p)| p.len()) != Ok(segment.len())
    {
        return false;
    }
    let v4 = segment[0] >> 4 == 4;
    let df = v4 && original[6] & 0x40 != 0;
    let start = if v4 { 20 } else { 40 };
    let skip = |i: usize| {
        (v4 && (10..12).contains(&i))
            || (df && (4..6).contains(&i))
            || (start + 6..start + 8).contains(&i)
    };
    let equal = segment
        .iter()
        .zip(original)
        .enumerate()
        .all(|(i, (a, b))| a == b || skip(i));
    equal && (!v4 || ipv4_header_ok(segment)) && transport_checksum_ok(segment)
}

/// Writes out what the coalescer holds; `taken` are the datagrams it took since the last flush.
fn flush(coalescer: &mut Coalescer, taken: &mut Vec<Vec<u8>>, out: &mut Vec<Vec<u8>>) {
    match coalescer.flush() {
        Flushed::Nothing => assert!(taken.is_empty(), "datagrams taken and lost"),
        Flushed::Plain(p) => {
            assert_eq!(taken.len(), 1);
            assert_eq!(p, &taken[0][..], "a lone datagram changed");
            out.push(p.to_vec());
        }
        Flushed::Gso {
            header,
            packet,
            segments,
            bytes,
        } => {
            assert_eq!(segments, taken.len());
            assert!((2..=MAX_SEGMENTS).contains(&segments));
            assert_eq!(bytes, taken.iter().map(Vec::len).sum::<usize>());
            assert!(packet.len() <= 65_535, "a GSO packet over 64 KiB");
            assert_eq!(header[1], GSO_UDP_L4);
            let ip_len = if packet[0] >> 4 == 4 { 20 } else { 40 };
            let gso_size = usize::from(u16::from_ne_bytes([header[4], header[5]]));
            assert_eq!(gso_size, taken[0].len() - ip_len - 8);
            let mut scratch = Vec::new();
            let mut split = Vec::new();
            let header: [u8; VNET_HDR_LEN] = header;
            split_gso(packet, &header, &mut scratch, |s| {
                split.push(s.to_vec());
                Ok::<(), ()>(())
            })
            .expect("the callback never fails");
            assert_eq!(split.len(), taken.len(), "the split gives another count");
            for (segment, original) in split.iter().zip(taken.iter()) {
                assert!(
                    same_datagram(segment, original),
                    "{segment:02x?} is not {original:02x?}"
                );
            }
            out.extend(split);
        }
    }
    taken.clear();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flow, mut rest)) = data.split_first() else {
        return;
    };
    let (v6, df) = (flow & 1 == 1, flow & 2 == 2);
    let mut packets = Vec::new();
    let mut id = u16::from(flow) << 8;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let mut p = match kind & 3 {
            0 => datagram(v6, df, id, 1000, payload),
            1 => datagram(v6, df, u16::from(*kind) << 4, 1000, payload),
            2 => datagram(v6, df, id, u16::from(*kind), payload),
            _ => payload.to_vec(),
        };
        id = id.wrapping_add(1);
        if kind & 4 != 0 && !p.is_empty() {
            // One byte changed after the checksums: such a datagram must never be folded in.
            let at = usize::from(*kind >> 3) % p.len();
            p[at] ^= 0x5a;
        }
        packets.push(p);
    }
    let mut coalescer = Coalescer::new();
    let (mut taken, mut out, mut admitted) = (Vec::new(), Vec::new(), Vec::new());
    for p in &packets {
        // What the delivery stage offers: admitted packets, trimmed to their header's length.
        let Ok((_, p)) = ip::check(p) else {
            continue;
        };
        admitted.push(p.to_vec());
        match coalescer.offer(p) {
            Offer::Taken => taken.push(p.to_vec()),
            Offer::Flush => {
                flush(&mut coalescer, &mut taken, &mut out);
                assert_eq!(
                    coalescer.offer(p),
                    Offer::Taken,
                    "refused by an empty coalescer"
                );
                taken.push(p.to_vec());
            }
            Offer::Alone => {
                flush(&mut coalescer, &mut taken, &mut out);
                out.push(p.to_vec());
            }
        }
        if taken.len() > 1 {
            // Only verified UDP joins another datagram.
            let last = taken.last().expect("not empty");
            assert!(
                transport_checksum_ok(last),
                "a datagram that does not verify joined"
            );
            assert!(last[0] >> 4 == 6 || ipv4_header_ok(last));
        }
    }
    flush(&mut coalescer, &mut taken, &mut out);
    assert_eq!(out.len(), admitted.len(), "a datagram lost or doubled");
    for (o, a) in out.iter().zip(&admitted) {
        assert!(o == a || same_datagram(o, a), "out of order or changed");
    }
});
