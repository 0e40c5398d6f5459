//! The nfnetlink_queue message codec, pure and allocation-free: requests built on the stack
//! ([`Request`]) and received datagrams parsed into [`Message`]s ([`parse_datagram`]). Nothing
//! here touches a socket, so every case is a unit test (and a fuzz target); nothing read is
//! trusted: every length is bounds-checked and the parser never panics.

use std::ops::Range;

pub mod uapi;

use uapi::*;

/// A netlink request being built on the stack: header, `nfgenmsg`, attributes.
#[derive(Debug)]
pub struct Request {
    buf: [u8; 128],
    len: usize,
}

impl Request {
    pub fn new(kind: u16, flags: u16, seq: u32, queue: u16) -> Self {
        let mut buf = [0u8; 128];
        buf[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in the sender's port id.
        buf[16] = libc::AF_UNSPEC as u8;
        buf[17] = NFNETLINK_V0;
        buf[18..20].copy_from_slice(&queue.to_be_bytes());
        Self {
            buf,
            len: NLMSG_HDRLEN + NFGENMSG_LEN,
        }
    }

    /// Appends attribute `kind` with `value`, padded to 4 bytes. The requests built here are
    /// fixed and far below the buffer size; an attribute that would not fit is left out.
    pub fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        let end = self.len + align4(len);
        let Some(dst) = self.buf.get_mut(self.len..end) else {
            return;
        };
        dst[..2].copy_from_slice(&(len as u16).to_ne_bytes());
        dst[2..4].copy_from_slice(&kind.to_ne_bytes());
        dst[4..len].copy_from_slice(value);
        dst[len..].fill(0);
        self.len = end;
    }

    pub fn finish(&mut self) -> &[u8] {
        let len = self.len as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf[..self.len]
    }
}

pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What one netlink message of a received datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An `NFQNL_MSG_PACKET`.
    Packet(PacketMeta),
    /// An `NLMSG_ERROR` with error 0: request `seq` succeeded.
    Ack { seq: u32 },
    /// An `NLMSG_ERROR` reporting `errno` (positive) for request `seq`.
    Error { seq: u32, errno: i32 },
    /// A well-formed message of no interest (`NLMSG_NOOP`, `NLMSG_DONE`, other types).
    Other { kind: u16 },
    /// A message that does not parse; see [`Malformed`].
    Malformed(Malformed),
}

/// Why a message was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// `nlmsg_len` is shorter than the header or runs past the datagram; the rest of the
    /// datagram is skipped, as there is no telling where the next message starts.
    Length,
    /// The message is too short for its fixed part (`nfgenmsg`, `nlmsgerr`).
    ShortBody,
    /// An attribute's length is shorter than its header or runs past the message.
    Attribute,
    /// An attribute is shorter than the structure its type carries.
    AttributeValue,
    /// A packet message without `NFQA_PACKET_HDR`.
    NoPacketHeader,
}

/// The parts of an `NFQNL_MSG_PACKET` the capture path uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMeta {
    pub id: u32,
    pub hw_protocol: u16,
    /// Where `NFQA_PAYLOAD`'s bytes are in the datagram (empty if there was none).
    pub payload: Range<usize>,
    pub gso: bool,
    pub csum_not_ready: bool,
    /// `NFQA_CAP_LEN`: the packet's real length, sent when the payload was cut short.
    pub cap_len: Option<u32>,
}

/// The messages of one received netlink datagram, in order. Pure and allocation-free; never
/// panics, whatever the bytes.
pub fn parse_datagram(datagram: &[u8]) -> Messages<'_> {
    Messages {
        datagram,
        offset: 0,
    }
}

/// Iterator returned by [`parse_datagram`].
#[derive(Debug)]
pub struct Messages<'a> {
    datagram: &'a [u8],
    offset: usize,
}

impl Iterator for Messages<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let rest = self.datagram.get(self.offset..)?;
        if rest.len() < NLMSG_HDRLEN {
            // Nothing left, or trailing bytes too short for a header.
            self.offset = self.datagram.len();
            return (!rest.is_empty()).then_some(Message::Malformed(Malformed::Length));
        }
        let len = read_u32_ne(rest, 0)? as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            self.offset = self.datagram.len();
            return Some(Message::Malformed(Malformed::Length));
        }
        let base = self.offset;
        self.offset = self.offset.saturating_add(align4(len));
        let kind = read_u16_ne(rest, 4)?;
        let seq = read_u32_ne(rest, 8)?;
        let message = &rest[..len];
        Some(match kind {
            NLMSG_ERROR => match read_u32_ne(message, NLMSG_HDRLEN) {
                Some(0) => Message::Ack { seq },
                Some(error) => Message::Error {
                    seq,
                    errno: (error as i32).wrapping_neg(),
                },
                None => Message::Malformed(Malformed::ShortBody),
            },
            k if k == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET => {
                parse_packet(message, base).map_or_else(Message::Malformed, Message::Packet)
            }
            NLMSG_NOOP | NLMSG_DONE => Message::Other { kind },
            _ => Message::Other { kind },
        })
    }
}

/// Parses the attributes of one packet message, which starts at `base` in its datagram.
fn parse_packet(message: &[u8], base: usize) -> Result<PacketMeta, Malformed> {
    let attrs_start = NLMSG_HDRLEN + NFGENMSG_LEN;
    if message.len() < attrs_start {
        return Err(Malformed::ShortBody);
    }
    let mut header = None;
    let mut payload = 0..0;
    let mut skb_info = 0;
    let mut cap_len = None;
    let mut at = attrs_start;
    // Like the kernel's nla_for_each_attr: fewer than NLA_HDRLEN trailing bytes are ignored.
    while message.len() - at >= NLA_HDRLEN {
        let nla_len = read_u16_ne(message, at).ok_or(Malformed::Attribute)? as usize;
        let kind = read_u16_ne(message, at + 2).ok_or(Malformed::Attribute)? & NLA_TYPE_MASK;
        if nla_len < NLA_HDRLEN || nla_len > message.len() - at {
            return Err(Malformed::Attribute);
        }
        let value = at + NLA_HDRLEN..at + nla_len;
        match kind {
            NFQA_PACKET_HDR => {
                if value.len() < PACKET_HDR_LEN {
                    return Err(Malformed::AttributeValue);
                }
                let id = read_u32_be(message, value.start).ok_or(Malformed::AttributeValue)?;
                let proto =
                    read_u16_be(message, value.start + 4).ok_or(Malformed::AttributeValue)?;
                header = Some((id, proto));
            }
            NFQA_PAYLOAD => payload = base + value.start..base + value.end,
            NFQA_SKB_INFO => {
                skb_info = read_u32_be(message, value.start).ok_or(Malformed::AttributeValue)?;
            }
            NFQA_CAP_LEN => {
                cap_len = Some(read_u32_be(message, value.start).ok_or(Malformed::AttributeValue)?);
            }
            _ => {}
        }
        at = (at + align4(nla_len)).min(message.len());
    }
    let (id, hw_protocol) = header.ok_or(Malformed::NoPacketHeader)?;
    Ok(PacketMeta {
        id,
        hw_protocol,
        payload,
        gso: skb_info & NFQA_SKB_GSO != 0,
        csum_not_ready: skb_info & NFQA_SKB_CSUMNOTREADY != 0,
        cap_len,
    })
}

pub fn read_u16_ne(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub fn read_u32_ne(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

pub fn read_u16_be(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub fn read_u32_be(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: u16 = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

    /// Builds one netlink message: header, then `body` as is.
    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn packet_hdr(id: u32, proto: u16) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&proto.to_be_bytes());
        v.push(3); // NF_INET_LOCAL_OUT
        attr(NFQA_PACKET_HDR, &v)
    }

    fn nfgenmsg(queue: u16) -> Vec<u8> {
        let mut v = vec![libc::AF_INET as u8, NFNETLINK_V0];
        v.extend_from_slice(&queue.to_be_bytes());
        v
    }

    /// A packet message as the kernel builds it: header, mark, payload, optional skb info.
    fn packet(id: u32, payload: &[u8], skb_info: Option<u32>) -> Vec<u8> {
        let mut body = nfgenmsg(7);
        body.extend(packet_hdr(id, 0x0800));
        body.extend(attr(3, &0u32.to_be_bytes())); // NFQA_MARK
        body.extend(attr(NFQA_PAYLOAD, payload));
        if let Some(info) = skb_info {
            body.extend(attr(NFQA_SKB_INFO, &info.to_be_bytes()));
        }
        message(PACKET, 0, &body)
    }

    fn error(seq: u32, error: i32) -> Vec<u8> {
        let mut body = error.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; NLMSG_HDRLEN]); // the request's header (NETLINK_CAP_ACK)
        message(NLMSG_ERROR, seq, &body)
    }

    fn meta(id: u32, payload: Range<usize>) -> Message {
        Message::Packet(PacketMeta {
            id,
            hw_protocol: 0x0800,
            payload,
            gso: false,
            csum_not_ready: false,
            cap_len: None,
        })
    }

    /// Offset of the payload in [`packet`]'s output: headers, packet hdr (12), mark (8), nla.
    const PAYLOAD_AT: usize = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + 8 + NLA_HDRLEN;

    #[test]
    fn parses_table() {
        let five = packet(1, b"hello", None);
        let mut two = packet(1, b"abcd", None);
        let second_at = two.len();
        two.extend(packet(2, b"efgh", None));

        let mut truncated_attr = nfgenmsg(7);
        truncated_attr.extend(packet_hdr(9, 0x0800));
        truncated_attr.extend_from_slice(&40u16.to_ne_bytes()); // claims 40, has 8
        truncated_attr.extend_from_slice(&NFQA_PAYLOAD.to_ne_bytes());
        truncated_attr.extend_from_slice(&[1, 2, 3, 4]);
        let truncated_attr = message(PACKET, 0, &truncated_attr);

        let mut too_long = packet(3, b"abcd", None);
        too_long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        let mut too_short = packet(3, b"abcd", None);
        too_short[..4].copy_from_slice(&8u32.to_ne_bytes());

        let mut unknown = nfgenmsg(7);
        unknown.extend(attr(0x3ff0, b"zzz"));
        unknown.extend(packet_hdr(5, 0x86dd));
        unknown.extend(attr(NFQA_PAYLOAD | 0x4000, b"v6")); // NLA_F_NET_BYTEORDER ignored
        unknown.extend(attr(99, &[]));
        let unknown = message(PACKET, 0, &unknown);
        let unknown_payload = unknown.len() - 4 - 4;

        let mut no_hdr = nfgenmsg(7);
        no_hdr.extend(attr(NFQA_PAYLOAD, b"x"));
        let no_hdr = message(PACKET, 0, &no_hdr);

        let mut short_hdr = nfgenmsg(7);
        short_hdr.extend(attr(NFQA_PACKET_HDR, &[0, 0, 0, 1]));
        let short_hdr = message(PACKET, 0, &short_hdr);

        let mut capped = nfgenmsg(7);
        capped.extend(packet_hdr(8, 0x0800));
        capped.extend(attr(NFQA_CAP_LEN, &70000u32.to_be_bytes()));
        capped.extend(attr(NFQA_PAYLOAD, b"abcd"));
        let capped = message(PACKET, 0, &capped);
        let capped_payload = capped.len() - 4..capped.len();

        let mut ack_then_packet = error(42, 0);
        let packet_at = ack_then_packet.len();
        ack_then_packet.extend(packet(4, b"wxyz", None));

        let cases: Vec<(&str, Vec<u8>, Vec<Message>)> = vec![
            ("empty datagram", vec![], vec![]),
            (
                "normal packet, payload padded",
                five.clone(),
                vec![meta(1, PAYLOAD_AT..PAYLOAD_AT + 5)],
            ),
            (
                "two messages in one datagram",
                two,
                vec![
                    meta(1, PAYLOAD_AT..PAYLOAD_AT + 4),
                    meta(2, second_at + PAYLOAD_AT..second_at + PAYLOAD_AT + 4),
                ],
            ),
            (
                "truncated attribute",
                truncated_attr,
                vec![Message::Malformed(Malformed::Attribute)],
            ),
            (
                "nlmsg_len too big",
                too_long,
                vec![Message::Malformed(Malformed::Length)],
            ),
            (
                "nlmsg_len below the header",
                too_short,
                vec![Message::Malformed(Malformed::Length)],
            ),
            (
                "datagram cut inside a header",
                five[..10].to_vec(),
                vec![Message::Malformed(Malformed::Length)],
            ),
            (
                "message cut inside its payload",
                five[..five.len() - 4].to_vec(),
                vec![Message::Malformed(Malformed::Length)],
            ),
            ("ack", error(42, 0), vec![Message::Ack { seq: 42 }]),
            (
                "NLMSG_ERROR with EBUSY",
                error(43, -libc::EBUSY),
                vec![Message::Error {
                    seq: 43,
                    errno: libc::EBUSY,
                }],
            ),
            (
                "NLMSG_ERROR without its error field",
                message(NLMSG_ERROR, 44, &[]),
                vec![Message::Malformed(Malformed::ShortBody)],
            ),
            (
                "ack then packet",
                ack_then_packet,
                vec![
                    Message::Ack { seq: 42 },
                    meta(4, packet_at + PAYLOAD_AT..packet_at + PAYLOAD_AT + 4),
                ],
            ),
            (
                "unknown attribute types skipped, type flags masked",
                unknown,
                vec![Message::Packet(PacketMeta {
                    id: 5,
                    hw_protocol: 0x86dd,
                    payload: unknown_payload..unknown_payload + 2,
                    gso: false,
                    csum_not_ready: false,
                    cap_len: None,
                })],
            ),
            (
                "packet without NFQA_PACKET_HDR",
                no_hdr,
                vec![Message::Malformed(Malformed::NoPacketHeader)],
            ),
            (
                "NFQA_PACKET_HDR too short",
                short_hdr,
                vec![Message::Malformed(Malformed::AttributeValue)],
            ),
            (
                "packet message without nfgenmsg",
                message(PACKET, 0, &[0, 0]),
                vec![Message::Malformed(Malformed::ShortBody)],
            ),
            (
                "GSO and partial checksum",
                packet(6, b"abcd", Some(NFQA_SKB_GSO | NFQA_SKB_CSUMNOTREADY)),
                vec![Message::Packet(PacketMeta {
                    id: 6,
                    hw_protocol: 0x0800,
                    payload: PAYLOAD_AT..PAYLOAD_AT + 4,
                    gso: true,
                    csum_not_ready: true,
                    cap_len: None,
                })],
            ),
            (
                "checksum not verified only",
                packet(7, b"abcd", Some(4)),
                vec![meta(7, PAYLOAD_AT..PAYLOAD_AT + 4)],
            ),
            (
                "payload cut to the copy range",
                capped,
                vec![Message::Packet(PacketMeta {
                    id: 8,
                    hw_protocol: 0x0800,
                    payload: capped_payload,
                    gso: false,
                    csum_not_ready: false,
                    cap_len: Some(70000),
                })],
            ),
            (
                "other message types",
                [
                    message(NLMSG_DONE, 0, &[]),
                    message(0x0301, 0, &nfgenmsg(7)),
                ]
                .concat(),
                vec![
                    Message::Other { kind: NLMSG_DONE },
                    Message::Other { kind: 0x0301 },
                ],
            ),
        ];
        for (name, datagram, expected) in cases {
            let got: Vec<Message> = parse_datagram(&datagram).collect();
            assert_eq!(got, expected, "{name}");
            for m in &got {
                if let Message::Packet(p) = m {
                    assert!(p.payload.end <= datagram.len(), "{name}: payload in bounds");
                }
            }
        }
    }

    #[test]
    fn payload_bytes_are_the_packet() {
        let datagram = packet(11, b"\x45payload", None);
        let Some(Message::Packet(p)) = parse_datagram(&datagram).next() else {
            panic!("no packet parsed");
        };
        assert_eq!(&datagram[p.payload], b"\x45payload");
    }

    #[test]
    fn never_panics_on_any_prefix_or_corruption() {
        let mut datagram = packet(1, b"some payload bytes", Some(NFQA_SKB_GSO));
        datagram.extend(error(5, -1));
        for cut in 0..=datagram.len() {
            let _ = parse_datagram(&datagram[..cut]).count();
        }
        // Flip every byte to a few values: lengths, types and flags all get corrupted.
        for i in 0..datagram.len() {
            for value in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut bad = datagram.clone();
                bad[i] = value;
                for m in parse_datagram(&bad) {
                    if let Message::Packet(p) = m {
                        assert!(p.payload.start <= p.payload.end && p.payload.end <= bad.len());
                    }
                }
            }
        }
    }

    #[test]
    fn requests_are_well_formed() {
        let mut request = Request::new(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 9, 7);
        request.attr(NFQA_VERDICT_HDR, &[0, 0, 0, 1, 0, 0, 0, 42]);
        let bytes = request.finish().to_vec();
        assert_eq!(bytes.len(), 32);
        assert_eq!(read_u32_ne(&bytes, 0), Some(32));
        assert_eq!(read_u16_ne(&bytes, 4), Some(0x0303));
        assert_eq!(read_u16_ne(&bytes, 6), Some(NLM_F_REQUEST));
        assert_eq!(read_u32_ne(&bytes, 8), Some(9));
        assert_eq!(&bytes[16..20], &[0, 0, 0, 7]);
        assert_eq!(read_u16_ne(&bytes, 20), Some(12));
        assert_eq!(read_u16_ne(&bytes, 22), Some(NFQA_VERDICT_HDR));
        assert_eq!(read_u32_be(&bytes, 28), Some(42));

        // The 5-byte packed params attribute is padded, and the next one aligned.
        let mut config = Request::new(NFQNL_MSG_CONFIG, NLM_F_REQUEST, 1, 7);
        config.attr(NFQA_CFG_PARAMS, &[0, 0, 0xff, 0xff, NFQNL_COPY_PACKET]);
        config.attr(NFQA_CFG_QUEUE_MAXLEN, &1024u32.to_be_bytes());
        let bytes = config.finish().to_vec();
        assert_eq!(bytes.len(), 20 + 12 + 8);
        assert_eq!(read_u16_ne(&bytes, 20), Some(9));
        assert_eq!(read_u16_ne(&bytes, 34), Some(NFQA_CFG_QUEUE_MAXLEN));
    }
}
