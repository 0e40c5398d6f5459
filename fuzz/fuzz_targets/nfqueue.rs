//! Fuzz target: the nfnetlink_queue message parser (`alagg_packet::nfqueue`), which reads
//! every datagram the capture socket receives.
//!
//! Input: a datagram. The parser must never panic and always end; every packet's payload must
//! lie inside the datagram, and a length error must be the last message. Then a packet
//! message built from the input (id, protocol, flags, payload) with the crate's own request
//! builder must parse back to exactly what was put in.
#![no_main]

use alagg_packet::nfqueue::{Malformed, Message, Request, parse_datagram, uapi::*};
use libfuzzer_sys::fuzz_target;

fn check_parse(datagram: &[u8]) {
    let mut messages = 0usize;
    let mut after_length_error = false;
    for message in parse_datagram(datagram) {
        assert!(!after_length_error, "a message after a length error");
        messages += 1;
        // Each message takes at least a header's worth of bytes, but a trailing short one.
        assert!(
            messages <= datagram.len() / NLMSG_HDRLEN + 1,
            "the parser does not end"
        );
        match message {
            Message::Packet(meta) => {
                assert!(meta.payload.start <= meta.payload.end);
                assert!(
                    meta.payload.end <= datagram.len(),
                    "payload past the datagram"
                );
            }
            Message::Malformed(Malformed::Length) => after_length_error = true,
            _ => {}
        }
    }
}

fn check_round_trip(data: &[u8]) {
    let [a, b, c, d, e, f, flags, rest @ ..] = data else {
        return;
    };
    let id = u32::from_be_bytes([*a, *b, *c, *d]);
    let protocol = u16::from_be_bytes([*e, *f]);
    // The builder's buffer is 128 bytes; keep the payload well inside it.
    let payload = &rest[..rest.len().min(64)];
    let mut request = Request::new(NFQNL_MSG_PACKET, 0, id, 0);
    let mut header = [0u8; PACKET_HDR_LEN];
    header[..4].copy_from_slice(&id.to_be_bytes());
    header[4..6].copy_from_slice(&protocol.to_be_bytes());
    request.attr(NFQA_PACKET_HDR, &header);
    let skb_info = u32::from(flags & 3);
    request.attr(NFQA_SKB_INFO, &skb_info.to_be_bytes());
    if flags & 4 != 0 {
        request.attr(NFQA_CAP_LEN, &u32::from(*a).to_be_bytes());
    }
    request.attr(NFQA_PAYLOAD, payload);
    let datagram = request.finish();
    let parsed: Vec<Message> = parse_datagram(datagram).collect();
    let [Message::Packet(meta)] = parsed.as_slice() else {
        panic!("a built packet message parsed as {parsed:?}");
    };
    assert_eq!((meta.id, meta.hw_protocol), (id, protocol));
    assert_eq!(&datagram[meta.payload.clone()], payload);
    assert_eq!(meta.csum_not_ready, skb_info & NFQA_SKB_CSUMNOTREADY != 0);
    assert_eq!(meta.gso, skb_info & NFQA_SKB_GSO != 0);
    assert_eq!(meta.cap_len, (flags & 4 != 0).then_some(u32::from(*a)));
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    check_round_trip(data);
});
