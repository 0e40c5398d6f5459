//! Wire format v2: the Ethernet header and the alagg header, as zero-copy views and `Repr`s.
//!
//! The layout is specified in `docs/PROTOCOL.md`; this module is its executable form. In the
//! manner of smoltcp, [`Frame`] and [`EthernetFrame`] wrap any `T: AsRef<[u8]>` and read fields
//! straight from the bytes, the private `field` module names the byte ranges, `new_checked`
//! validates lengths once so the accessors cannot go out of bounds, and [`Repr`] is the parsed,
//! validated, owned form with `parse` and `emit`.
//!
//! Invariants:
//! - `new_checked` and `Repr::parse` never panic, whatever the bytes.
//! - All multi-byte fields are big-endian (network byte order, RFC 1700).
//! - A checked [`Frame`] has `header_len() >= min_header_len(frame_type())`, no unknown flag,
//!   and `buffer.len() >= header_len() + payload_len()`; trailing bytes beyond that are the tag
//!   ([`FLAG_AUTH`], checked by [`crate::auth`]) or Ethernet padding (IEEE 802.3 pads frames to
//!   60 bytes).

use core::fmt;

pub use alagg_common::{DEFAULT_ETHERTYPE, ETH_HDR_LEN};

/// The only wire-format version this crate speaks.
pub const VERSION: u8 = 2;
/// Length of the base header every alagg frame starts with.
pub const BASE_HEADER_LEN: usize = field::FLAGS + 1;
/// Header length of a [`FrameType::Data`] frame.
pub const DATA_HEADER_LEN: usize = BASE_HEADER_LEN;
/// Header length of a [`FrameType::Fragment`] frame.
pub const FRAGMENT_HEADER_LEN: usize = field::FRAG_COUNT.end;
/// Header length of a [`FrameType::Probe`] frame.
pub const PROBE_HEADER_LEN: usize = field::ECHO_DELAY.end;
/// Header length of a [`FrameType::Bundle`] frame.
pub const BUNDLE_HEADER_LEN: usize = field::BUNDLE_RESERVED.end;
/// Header length of a [`FrameType::Feedback`] frame.
pub const FEEDBACK_HEADER_LEN: usize = BASE_HEADER_LEN;
/// Bytes of one lane report in a feedback frame's payload.
pub const FEEDBACK_REPORT_LEN: usize = 32;
/// Header of a parity frame: the base header and the block's fields.
pub const PARITY_HEADER_LEN: usize = field::PARITY_COUNT + 1;
/// Bytes a data, fragment or bundle header grows by when the frame is a member of an FEC
/// block ([`Member`]).
pub const MEMBER_LEN: usize = 16;
/// Room FEC takes from every data frame of a sender that uses it: the member extension, and
/// what a parity frame adds around a shard (its header, the shard's length), so that the
/// parity of the longest data frame fits the same MTU.
pub const FEC_OVERHEAD: usize = MEMBER_LEN + PARITY_HEADER_LEN + SHARD_LEN_PREFIX;
/// Most data frames in an FEC block.
pub const MAX_FEC_K: u8 = 32;
/// Most parity frames in an FEC block.
pub const MAX_FEC_M: u8 = 8;
/// `flags` bit: a [`TAG_LEN`]-byte authentication tag follows the payload.
pub const FLAG_AUTH: u8 = 1 << 0;
/// `flags` bit (with [`FLAG_AUTH`] only): the payload is encrypted.
pub const FLAG_ENCRYPTED: u8 = 1 << 1;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// The flags this version defines; a frame with any other bit set is malformed.
const KNOWN_FLAGS: u8 = FLAG_AUTH | FLAG_ENCRYPTED;
/// Bytes before each packet in a bundle's payload: its length.
pub const BUNDLE_ENTRY_HEADER_LEN: usize = 2;
/// Most fragments one packet may be cut into (an implementation limit of v1 receivers).
pub const MAX_FRAGMENTS: usize = 256;

/// Identifier of a link, chosen by the sending side and carried in every frame.
pub type LinkId = u8;

/// A sender's epoch for a start at `unix_ms` (milliseconds since 1970) with 16 random bits:
/// the start time in the upper 48 bits, so epochs order by start (`docs/PROTOCOL.md`).
pub const fn epoch(unix_ms: u64, random: u16) -> u64 {
    (unix_ms << 16) | random as u64
}

/// When the sender of `epoch` started, milliseconds since 1970 ([`epoch`]).
pub const fn epoch_start_ms(epoch: u64) -> u64 {
    epoch >> 16
}

/// Where and when a frame is sent: the sender's link and lane (capture worker), the lane's frame
/// counter and the send time. Every frame carries one ([`Frame::lane_seq`], [`Frame::tx_time`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The sender's index of the link.
    pub link: LinkId,
    /// The sender's capture worker on that link.
    pub lane: u8,
    /// The lane's frame counter: 0 for its first frame, +1 for each after.
    pub lane_seq: u64,
    /// The sender's monotonic clock at staging, microseconds modulo 2^32.
    pub tx_time: u32,
}

impl Stamp {
    /// A stamp on `link`, lane 0, at counter 0 and time 0: for tests and tools that emit
    /// single frames.
    pub const fn on(link: LinkId) -> Stamp {
        Stamp {
            link,
            lane: 0,
            lane_seq: 0,
            tx_time: 0,
        }
    }
}

/// A lane of a link: numbers the frames a sender puts on it ([`Stamp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    link: LinkId,
    lane: u8,
    next: u64,
}

impl Lane {
    /// Lane `lane` of link `link`, before its first frame.
    pub const fn new(link: LinkId, lane: u8) -> Self {
        Lane {
            link,
            lane,
            next: 0,
        }
    }

    /// The stamp of the lane's next frame, sent at `now`.
    #[inline]
    pub fn stamp(&mut self, now: crate::Timestamp) -> Stamp {
        let lane_seq = self.next;
        self.next = self.next.wrapping_add(1);
        Stamp {
            link: self.link,
            lane: self.lane,
            lane_seq,
            // Modulo 2^32 by design (serial arithmetic on differences).
            tx_time: (now.as_nanos() / 1_000) as u32,
        }
    }

    /// Frames stamped so far.
    pub const fn frames(&self) -> u64 {
        self.next
    }
}

/// Why bytes are not a valid frame, or an output buffer cannot take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes end before the header, or before the payload the header announces.
    #[error("frame truncated")]
    Truncated,
    /// The version field is not [`VERSION`]; the rest of the layout is unknown.
    #[error("unsupported alagg version {0}")]
    BadVersion(u8),
    /// A v1 frame of a type this receiver does not know (ignore it, see `docs/PROTOCOL.md`).
    #[error("unknown alagg frame type {0}")]
    UnknownType(u8),
    /// The header-length field is shorter than the frame type's fixed fields.
    #[error("header length field too small for the frame type")]
    BadHeaderLen,
    /// A flag this version does not define, or `ENCRYPTED` without `AUTH`.
    #[error("unknown alagg flags {0:#04x}")]
    BadFlags(u8),
    /// A feedback payload that is not whole reports.
    #[error("feedback payload not a whole number of reports")]
    BadFeedback,
    /// Fragment fields that do not describe the canonical layout (`docs/PROTOCOL.md`).
    #[error("inconsistent fragment fields")]
    BadFragment,
    /// A bundle whose entries do not exactly fill its payload, or number other than its count.
    #[error("inconsistent bundle entries")]
    BadBundle,
    /// FEC fields (a parity frame's, or a member extension) outside their bounds.
    #[error("inconsistent FEC fields")]
    BadFec,
    /// The output buffer is too small for what was asked to be emitted.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A value does not fit its field (payload over 65535 bytes, header over 255).
    #[error("value does not fit its wire field")]
    FieldOverflow,
}

/// Byte ranges of the fields, relative to the start of the alagg header.
mod field {
    pub type Field = core::ops::Range<usize>;

    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const LINK: usize = 2;
    pub const LANE: usize = 3;
    pub const EPOCH: Field = 4..12;
    pub const SEQ: Field = 12..20;
    pub const LANE_SEQ: Field = 20..28;
    pub const TX_TIME: Field = 28..32;
    pub const PAYLOAD_LEN: Field = 32..34;
    pub const HEADER_LEN: usize = 34;
    pub const FLAGS: usize = 35;

    // Fragment.
    pub const PACKET_LEN: Field = 36..40;
    pub const FRAG_OFFSET: Field = 40..44;
    pub const FRAG_INDEX: Field = 44..46;
    pub const FRAG_COUNT: Field = 46..48;

    // Probe.
    pub const ECHO_TIME: Field = 36..40;
    pub const ECHO_DELAY: Field = 40..44;

    // Bundle.
    pub const BUNDLE_COUNT: Field = 36..38;
    pub const BUNDLE_RESERVED: Field = 38..40;

    // Parity.
    pub const PARITY_BLOCK: Field = 36..40;
    pub const PARITY_INDEX: usize = 40;
    pub const PARITY_K: usize = 41;
    pub const PARITY_M: usize = 42;
    pub const PARITY_COUNT: usize = 43;

    // FEC member extension, relative to the end of the type's fixed fields.
    pub const MEMBER_BLOCK: Field = 0..4;
    pub const MEMBER_INDEX: usize = 4;
    pub const MEMBER_K: usize = 5;
    pub const MEMBER_M: usize = 6;
    pub const MEMBER_RESERVED: usize = 7;
    pub const MEMBER_FIRST: Field = 8..16;

    // Ethernet.
    pub const ETH_DST: Field = 0..6;
    pub const ETH_SRC: Field = 6..12;
    pub const ETH_TYPE: Field = 12..14;
}

/// Frame type, the second byte of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// A whole IP packet.
    Data,
    /// One fragment of an IP packet longer than the link allows.
    Fragment,
    /// Keepalive / link probe with timestamps; not part of the data sequence.
    Probe,
    /// Several whole IP packets with consecutive sequence numbers.
    Bundle,
    /// A receiver's reports on the lanes of one link, for their sender.
    Feedback,
    /// Parity over a block of data frames (forward error correction).
    Parity,
    /// A type this receiver does not know; value 0 is reserved and never sent.
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(value: u8) -> Self {
        match value {
            1 => FrameType::Data,
            2 => FrameType::Fragment,
            3 => FrameType::Probe,
            4 => FrameType::Bundle,
            5 => FrameType::Feedback,
            6 => FrameType::Parity,
            other => FrameType::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(value: FrameType) -> Self {
        match value {
            FrameType::Data => 1,
            FrameType::Fragment => 2,
            FrameType::Probe => 3,
            FrameType::Bundle => 4,
            FrameType::Feedback => 5,
            FrameType::Parity => 6,
            FrameType::Unknown(other) => other,
        }
    }
}

impl FrameType {
    /// The shortest valid header for this type: the base header plus the type's fixed fields.
    pub const fn min_header_len(self) -> usize {
        match self {
            FrameType::Data | FrameType::Unknown(_) => DATA_HEADER_LEN,
            FrameType::Feedback => FEEDBACK_HEADER_LEN,
            FrameType::Fragment => FRAGMENT_HEADER_LEN,
            FrameType::Probe => PROBE_HEADER_LEN,
            FrameType::Bundle => BUNDLE_HEADER_LEN,
            FrameType::Parity => PARITY_HEADER_LEN,
        }
    }
}

#[inline]
fn read_u16(b: &[u8], f: field::Field) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[f]);
    u16::from_be_bytes(a)
}

#[inline]
fn read_u32(b: &[u8], f: field::Field) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[f]);
    u32::from_be_bytes(a)
}

#[inline]
fn read_u64(b: &[u8], f: field::Field) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[f]);
    u64::from_be_bytes(a)
}

/// A read/write view of an alagg header and its payload (the bytes after the Ethernet header).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without any check. Accessors may panic if the buffer is not a valid frame;
    /// use it only on buffers about to be filled by [`Repr::emit`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps `buffer` after checking the version and every length, so that no accessor of the
    /// frame's type can go out of bounds. Never panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Frame { buffer };
        frame.check_len()?;
        Ok(frame)
    }

    /// Validates version and lengths (see [`Frame::new_checked`]).
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < BASE_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::BadVersion(b[field::VERSION]));
        }
        let header_len = usize::from(b[field::HEADER_LEN]);
        if header_len < self.frame_type().min_header_len() {
            return Err(WireError::BadHeaderLen);
        }
        let flags = b[field::FLAGS];
        if flags & !KNOWN_FLAGS != 0 || (flags & FLAG_ENCRYPTED != 0 && flags & FLAG_AUTH == 0) {
            return Err(WireError::BadFlags(flags));
        }
        // The tag is not required here: a receiver without a key drops tagged frames anyway,
        // and one with a key checks the tag's presence before anything reads the frame.
        if b.len() < header_len + usize::from(self.payload_len()) {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Wire-format version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Frame type.
    pub fn frame_type(&self) -> FrameType {
        FrameType::from(self.buffer.as_ref()[field::TYPE])
    }

    /// The sender's index of the link it put this frame on.
    pub fn link_id(&self) -> LinkId {
        self.buffer.as_ref()[field::LINK]
    }

    /// The sender's lane (capture worker) on that link.
    pub fn lane(&self) -> u8 {
        self.buffer.as_ref()[field::LANE]
    }

    /// The lane's frame counter.
    pub fn lane_seq(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::LANE_SEQ)
    }

    /// The sender's clock when it staged the frame, microseconds modulo 2^32.
    pub fn tx_time(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::TX_TIME)
    }

    /// Link, lane, lane counter and send time together.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            link: self.link_id(),
            lane: self.lane(),
            lane_seq: self.lane_seq(),
            tx_time: self.tx_time(),
        }
    }

    /// The sender's per-start epoch.
    pub fn epoch(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::EPOCH)
    }

    /// Bytes of header, payload and (with [`FLAG_AUTH`]) tag. Panics unless the frame has at
    /// least a base header.
    pub fn frame_len(&self) -> usize {
        let tag = if self.flags() & FLAG_AUTH != 0 {
            TAG_LEN
        } else {
            0
        };
        usize::from(self.header_len()) + usize::from(self.payload_len()) + tag
    }

    /// Sequence number: the packet's for data and fragments, the link's probe counter for probes.
    pub fn seq(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::SEQ)
    }

    /// Length of the payload that follows the header.
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// Length of the header, fixed fields plus any extension a newer sender appended.
    pub fn header_len(&self) -> u8 {
        self.buffer.as_ref()[field::HEADER_LEN]
    }

    /// Flags byte ([`FLAG_AUTH`], [`FLAG_ENCRYPTED`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Fragment: length of the whole packet. Panics unless the frame is a checked fragment.
    pub fn packet_len(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::PACKET_LEN)
    }

    /// Fragment: offset of this fragment's payload in the packet.
    pub fn frag_offset(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::FRAG_OFFSET)
    }

    /// Fragment: index of this fragment, from 0.
    pub fn frag_index(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FRAG_INDEX)
    }

    /// Fragment: number of fragments of the packet.
    pub fn frag_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FRAG_COUNT)
    }

    /// Bundle: number of packets in the bundle.
    pub fn bundle_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::BUNDLE_COUNT)
    }

    /// Probe: the `tx_time` of the newest frame received from the peer on this link (0 if
    /// none).
    pub fn echo_time(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ECHO_TIME)
    }

    /// Probe: microseconds between receiving the echoed frame and sending this one.
    pub fn echo_delay(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ECHO_DELAY)
    }

    /// Parity: the block's fields, as sent (checked by [`Repr::parse`]).
    fn parity_fields(&self) -> ParityRepr {
        let b = self.buffer.as_ref();
        ParityRepr {
            block: read_u32(b, field::PARITY_BLOCK),
            index: b[field::PARITY_INDEX],
            k: b[field::PARITY_K],
            m: b[field::PARITY_M],
            count: b[field::PARITY_COUNT],
        }
    }

    /// The FEC member extension of a checked data, fragment or bundle frame, if its header
    /// carries one (`header_len` at least the type's fixed fields and [`MEMBER_LEN`]); `Err`
    /// if it carries one whose fields are out of bounds.
    pub fn member(&self) -> Result<Option<Member>, WireError> {
        let fixed = match self.frame_type() {
            t @ (FrameType::Data | FrameType::Fragment | FrameType::Bundle) => t.min_header_len(),
            _ => return Ok(None),
        };
        let b = self.buffer.as_ref();
        let Some(ext) = b.get(fixed..usize::from(self.header_len())) else {
            return Ok(None);
        };
        let Some(ext) = ext.get(..MEMBER_LEN) else {
            return Ok(None);
        };
        let (k, m, index) = (
            ext[field::MEMBER_K],
            ext[field::MEMBER_M],
            ext[field::MEMBER_INDEX],
        );
        let params = FecParams::new(k, m).ok_or(WireError::BadFec)?;
        if index >= k {
            return Err(WireError::BadFec);
        }
        Ok(Some(Member {
            block: read_u32(ext, field::MEMBER_BLOCK),
            index,
            params,
            first_seq: read_u64(ext, field::MEMBER_FIRST),
        }))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// The payload, borrowed for the buffer's lifetime. Panics unless the frame is checked.
    pub fn payload(&self) -> &'a [u8] {
        let start = usize::from(self.header_len());
        let end = start + usize::from(self.payload_len());
        &self.buffer.as_ref()[start..end]
    }
}

/// Zeroes what differs between copies of one frame on different links and lanes (`link`,
/// `lane`, `lane_seq`, `tx_time`) and the flags, in the alagg header at the start of `frame`:
/// the form FEC shards are computed over. Does nothing to a buffer shorter than a base header.
pub fn canonicalize(frame: &mut [u8]) {
    if frame.len() < BASE_HEADER_LEN {
        return;
    }
    frame[field::LINK] = 0;
    frame[field::LANE] = 0;
    frame[field::LANE_SEQ].fill(0);
    frame[field::TX_TIME].fill(0);
    frame[field::FLAGS] = 0;
}

/// Whether the alagg header at the start of `frame` is in the form [`canonicalize`] makes.
pub fn is_canonical(frame: &[u8]) -> bool {
    frame.len() >= BASE_HEADER_LEN
        && frame[field::LINK] == 0
        && frame[field::LANE] == 0
        && frame[field::LANE_SEQ].iter().all(|&b| b == 0)
        && frame[field::TX_TIME].iter().all(|&b| b == 0)
        && frame[field::FLAGS] == 0
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    fn set_u16(&mut self, f: field::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u32(&mut self, f: field::Field, v: u32) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u64(&mut self, f: field::Field, v: u64) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the version field.
    pub fn set_version(&mut self, v: u8) {
        self.buffer.as_mut()[field::VERSION] = v;
    }

    /// Sets the frame type.
    pub fn set_frame_type(&mut self, t: FrameType) {
        self.buffer.as_mut()[field::TYPE] = t.into();
    }

    /// Sets the link id.
    pub fn set_link_id(&mut self, v: LinkId) {
        self.buffer.as_mut()[field::LINK] = v;
    }

    /// Sets link, lane, lane counter and send time.
    pub fn set_stamp(&mut self, stamp: Stamp) {
        self.set_link_id(stamp.link);
        self.buffer.as_mut()[field::LANE] = stamp.lane;
        self.set_u64(field::LANE_SEQ, stamp.lane_seq);
        self.set_u32(field::TX_TIME, stamp.tx_time);
    }

    /// Sets the epoch.
    pub fn set_epoch(&mut self, v: u64) {
        self.set_u64(field::EPOCH, v);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, v: u64) {
        self.set_u64(field::SEQ, v);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, v: u16) {
        self.set_u16(field::PAYLOAD_LEN, v);
    }

    /// Sets the header length.
    pub fn set_header_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HEADER_LEN] = v;
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the fragment's packet length.
    pub fn set_packet_len(&mut self, v: u32) {
        self.set_u32(field::PACKET_LEN, v);
    }

    /// Sets the fragment offset.
    pub fn set_frag_offset(&mut self, v: u32) {
        self.set_u32(field::FRAG_OFFSET, v);
    }

    /// Sets the fragment index.
    pub fn set_frag_index(&mut self, v: u16) {
        self.set_u16(field::FRAG_INDEX, v);
    }

    /// Sets the fragment count.
    pub fn set_frag_count(&mut self, v: u16) {
        self.set_u16(field::FRAG_COUNT, v);
    }

    /// Sets the bundle's packet count (and clears the reserved field after it).
    pub fn set_bundle_count(&mut self, v: u16) {
        self.set_u16(field::BUNDLE_COUNT, v);
        self.set_u16(field::BUNDLE_RESERVED, 0);
    }

    /// Sets the probe's echoed time.
    pub fn set_echo_time(&mut self, v: u32) {
        self.set_u32(field::ECHO_TIME, v);
    }

    /// Sets the probe's echo delay.
    pub fn set_echo_delay(&mut self, v: u32) {
        self.set_u32(field::ECHO_DELAY, v);
    }

    /// The payload area, mutable. Panics unless header and payload length fit the buffer.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        let end = start + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The canonical cut of a packet into fragments: `count` pieces of `ceil(len / count)` bytes, the
/// last one shorter. Both the sender and the receiver derive offsets from it, so fragments can
/// neither overlap nor leave holes (compare the overlap attacks of RFC 5722 on IPv6 fragments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentLayout {
    packet_len: u32,
    count: u16,
    size: u32,
}

impl FragmentLayout {
    /// The layout of a `packet_len`-byte packet cut into `count` fragments; `None` if `count` is
    /// zero, over [`MAX_FRAGMENTS`], or leaves a fragment empty.
    pub fn new(packet_len: u32, count: u16) -> Option<Self> {
        if count == 0 || usize::from(count) > MAX_FRAGMENTS || packet_len == 0 {
            return None;
        }
        let size = packet_len.div_ceil(u32::from(count));
        // Every fragment, the last included, must carry at least one byte.
        if u64::from(size) * u64::from(count - 1) >= u64::from(packet_len) {
            return None;
        }
        Some(FragmentLayout {
            packet_len,
            count,
            size,
        })
    }

    /// The fewest fragments of at most `max_payload` bytes for `packet_len` bytes; `None` if that
    /// needs more than [`MAX_FRAGMENTS`] or `max_payload` is zero.
    pub fn for_payload(packet_len: u32, max_payload: u32) -> Option<Self> {
        if max_payload == 0 {
            return None;
        }
        let count = u16::try_from(packet_len.div_ceil(max_payload)).ok()?;
        Self::new(packet_len, count)
    }

    /// Length of the whole packet.
    pub const fn packet_len(&self) -> u32 {
        self.packet_len
    }

    /// Number of fragments.
    pub const fn count(&self) -> u16 {
        self.count
    }

    /// Offset and length of fragment `index`; `None` if out of range.
    pub fn fragment(&self, index: u16) -> Option<(u32, u32)> {
        if index >= self.count {
            return None;
        }
        let offset = u32::from(index) * self.size;
        let len = self.size.min(self.packet_len - offset);
        Some((offset, len))
    }
}

/// Fields of a [`FrameType::Fragment`] frame beyond the base header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentRepr {
    /// Length of the whole packet.
    pub packet_len: u32,
    /// Offset of this fragment's payload in the packet.
    pub offset: u32,
    /// Index of this fragment.
    pub index: u16,
    /// Number of fragments of the packet.
    pub count: u16,
}

/// Bytes before a frame in an FEC shard: its length, big-endian.
pub const SHARD_LEN_PREFIX: usize = 2;

/// The shape of an FEC block: `k` data frames protected by `m` parity frames, any `m` of the
/// `k + m` recoverable. `1 <= k <=` [`MAX_FEC_K`], `1 <= m <=` [`MAX_FEC_M`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FecParams {
    /// Data frames per block.
    pub k: u8,
    /// Parity frames per block.
    pub m: u8,
}

impl FecParams {
    /// `k + m`, if within bounds.
    pub const fn new(k: u8, m: u8) -> Option<Self> {
        if k >= 1 && k <= MAX_FEC_K && m >= 1 && m <= MAX_FEC_M {
            Some(Self { k, m })
        } else {
            None
        }
    }

    /// Frames per block, data and parity.
    pub const fn total(self) -> usize {
        self.k as usize + self.m as usize
    }
}

impl fmt::Display for FecParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

/// Text that is not `K+M` within bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not an FEC block shape: write K+M, K data frames (1 to {MAX_FEC_K}) and M parity frames (1 to {MAX_FEC_M}), e.g. \"8+2\""
)]
pub struct ParseFecParamsError {
    /// The rejected text.
    pub input: String,
}

impl core::str::FromStr for FecParams {
    type Err = ParseFecParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseFecParamsError { input: text.into() };
        let (k, m) = text.split_once('+').ok_or_else(error)?;
        let (k, m) = (
            k.trim().parse().map_err(|_| error())?,
            m.trim().parse().map_err(|_| error())?,
        );
        FecParams::new(k, m).ok_or_else(error)
    }
}

/// Fields of a [`FrameType::Parity`] frame beyond the base header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParityRepr {
    /// The block's number, per sender lane (worker).
    pub block: u32,
    /// The shard's index in the block: `k..k + m`.
    pub index: u8,
    /// Data frames per block.
    pub k: u8,
    /// Parity frames per block.
    pub m: u8,
    /// Data frames the block holds, `1..=k` (fewer than `k` when it was closed early; the
    /// shards of the absent ones are zero).
    pub count: u8,
}

impl ParityRepr {
    /// The block's shape.
    pub fn params(&self) -> FecParams {
        FecParams {
            k: self.k,
            m: self.m,
        }
    }
}

/// The FEC member extension of a data, fragment or bundle frame: which block it belongs to
/// and where. It follows the type's fixed fields; `header_len` grows by [`MEMBER_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The block's number, per sender lane (worker).
    pub block: u32,
    /// The frame's index in the block, `0..k`.
    pub index: u8,
    /// The block's shape.
    pub params: FecParams,
    /// `seq` of the block's first data frame.
    pub first_seq: u64,
}

impl Member {
    /// Inserts the extension into the frame of `len` bytes (alagg header first, no tag yet)
    /// at the start of `buf`, after the type's fixed fields and before the payload, which
    /// moves [`MEMBER_LEN`] bytes on. Returns the new length.
    pub fn insert(&self, buf: &mut [u8], len: usize) -> Result<usize, WireError> {
        let frame = Frame::new_checked(buf.get(..len).ok_or(WireError::BufferTooSmall)?)?;
        let fixed = match frame.frame_type() {
            t @ (FrameType::Data | FrameType::Fragment | FrameType::Bundle) => t.min_header_len(),
            _ => return Err(WireError::BadFec),
        };
        let header_len = usize::from(frame.header_len());
        if header_len != fixed {
            return Err(WireError::BadFec);
        }
        let new_header =
            u8::try_from(header_len + MEMBER_LEN).map_err(|_| WireError::FieldOverflow)?;
        let out = buf
            .get_mut(..len + MEMBER_LEN)
            .ok_or(WireError::BufferTooSmall)?;
        out.copy_within(header_len..len, header_len + MEMBER_LEN);
        let ext = &mut out[header_len..header_len + MEMBER_LEN];
        ext[field::MEMBER_BLOCK].copy_from_slice(&self.block.to_be_bytes());
        ext[field::MEMBER_INDEX] = self.index;
        ext[field::MEMBER_K] = self.params.k;
        ext[field::MEMBER_M] = self.params.m;
        ext[field::MEMBER_RESERVED] = 0;
        ext[field::MEMBER_FIRST].copy_from_slice(&self.first_seq.to_be_bytes());
        Frame::new_unchecked(out).set_header_len(new_header);
        Ok(len + MEMBER_LEN)
    }
}

/// Fields of a [`FrameType::Probe`] frame beyond the base header (one-way and round-trip time
/// measurement in the manner of the TWAMP timestamps of RFC 5357).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeRepr {
    /// `tx_time` of the newest frame received from the peer on this link, 0 if none yet.
    pub echo_time: u32,
    /// Microseconds between receiving that frame and sending this probe.
    pub echo_delay: u32,
}

/// One report of a [`FrameType::Feedback`] frame: what the receiver saw of one lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneReport {
    /// The reported lane (of the link the feedback travels on).
    pub lane: u8,
    /// The highest `lane_seq` received on it.
    pub highest: u64,
    /// Frames received on it, modulo 2^32.
    pub received: u32,
    /// Bytes of frames received on it, in units of 64 bytes, modulo 2^32.
    pub bytes_64: u32,
    /// `tx_time` of the frame with `highest`.
    pub echo_time: u32,
    /// Microseconds between that frame's arrival and the feedback's `tx_time`.
    pub echo_delay: u32,
    /// Interarrival jitter (RFC 3550 6.4.1), microseconds.
    pub jitter: u32,
}

impl LaneReport {
    /// Parses one report from the first [`FEEDBACK_REPORT_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<LaneReport> {
        let b = b.get(..FEEDBACK_REPORT_LEN)?;
        Some(LaneReport {
            lane: b[0],
            highest: read_u64(b, 4..12),
            received: read_u32(b, 12..16),
            bytes_64: read_u32(b, 16..20),
            echo_time: read_u32(b, 20..24),
            echo_delay: read_u32(b, 24..28),
            jitter: read_u32(b, 28..32),
        })
    }

    /// Writes the report into the first [`FEEDBACK_REPORT_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), WireError> {
        let out = out
            .get_mut(..FEEDBACK_REPORT_LEN)
            .ok_or(WireError::BufferTooSmall)?;
        out[0] = self.lane;
        out[1..4].fill(0);
        out[4..12].copy_from_slice(&self.highest.to_be_bytes());
        out[12..16].copy_from_slice(&self.received.to_be_bytes());
        out[16..20].copy_from_slice(&self.bytes_64.to_be_bytes());
        out[20..24].copy_from_slice(&self.echo_time.to_be_bytes());
        out[24..28].copy_from_slice(&self.echo_delay.to_be_bytes());
        out[28..32].copy_from_slice(&self.jitter.to_be_bytes());
        Ok(())
    }
}

/// Fields of a [`FrameType::Bundle`] frame beyond the base header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleRepr {
    /// Number of packets in the bundle, at least 1.
    pub count: u16,
}

/// The packets of a bundle's payload: each a 2-byte big-endian length, then that many bytes.
/// Yields the packets; stops at the first entry that does not fit (never panics). For a payload
/// [`Repr::parse`] accepted, it yields exactly `count` non-empty packets.
#[derive(Clone, Debug)]
pub struct BundleEntries<'a> {
    rest: &'a [u8],
}

impl<'a> BundleEntries<'a> {
    /// The entries of `payload`.
    pub const fn new(payload: &'a [u8]) -> Self {
        BundleEntries { rest: payload }
    }

    /// Whether `payload` holds exactly `count` non-empty entries and nothing else.
    pub fn check(payload: &[u8], count: u16) -> Result<(), WireError> {
        let mut entries = BundleEntries::new(payload);
        let mut seen = 0u32;
        for packet in entries.by_ref() {
            if packet.is_empty() {
                return Err(WireError::BadBundle);
            }
            seen += 1;
        }
        if count == 0 || seen != u32::from(count) || !entries.rest.is_empty() {
            return Err(WireError::BadBundle);
        }
        Ok(())
    }
}

impl<'a> Iterator for BundleEntries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<BUNDLE_ENTRY_HEADER_LEN>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let packet = rest.get(..len)?;
        self.rest = &rest[len..];
        Some(packet)
    }
}

/// What an alagg frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole packet.
    Data,
    /// A fragment of a packet.
    Fragment(FragmentRepr),
    /// A keepalive / probe.
    Probe(ProbeRepr),
    /// Several whole packets, numbered `seq`, `seq + 1`, ...; the payload is their
    /// [`BundleEntries`].
    Bundle(BundleRepr),
    /// Reports on the lanes of the link it travels on: the payload is whole
    /// [`LaneReport`]s.
    Feedback,
    /// Parity shard `index` of an FEC block; `seq` is the block's first number and the
    /// payload the shard.
    Parity(ParityRepr),
}

/// A parsed, validated alagg header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Link, lane, lane counter and send time.
    pub stamp: Stamp,
    /// The sender's per-start epoch.
    pub epoch: u64,
    /// Packet sequence number (data, fragment, bundle); 0 for probes and feedback.
    pub seq: u64,
    /// Length of the payload following the header (the tag not counted).
    pub payload_len: u16,
    /// [`FLAG_AUTH`], [`FLAG_ENCRYPTED`].
    pub flags: u8,
    /// Type-specific fields.
    pub kind: Kind,
}

impl Repr {
    /// Parses and validates a checked frame: known type, and fragment fields that match the
    /// canonical [`FragmentLayout`]. Never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr, WireError> {
        frame.check_len()?;
        let kind = match frame.frame_type() {
            FrameType::Data => Kind::Data,
            FrameType::Fragment => {
                let f = FragmentRepr {
                    packet_len: frame.packet_len(),
                    offset: frame.frag_offset(),
                    index: frame.frag_index(),
                    count: frame.frag_count(),
                };
                let layout =
                    FragmentLayout::new(f.packet_len, f.count).ok_or(WireError::BadFragment)?;
                let expect = layout.fragment(f.index).ok_or(WireError::BadFragment)?;
                if expect != (f.offset, u32::from(frame.payload_len())) {
                    return Err(WireError::BadFragment);
                }
                Kind::Fragment(f)
            }
            FrameType::Probe => Kind::Probe(ProbeRepr {
                echo_time: frame.echo_time(),
                echo_delay: frame.echo_delay(),
            }),
            FrameType::Feedback => {
                if usize::from(frame.payload_len()) % FEEDBACK_REPORT_LEN != 0 {
                    return Err(WireError::BadFeedback);
                }
                Kind::Feedback
            }
            FrameType::Bundle => {
                let count = frame.bundle_count();
                BundleEntries::check(frame.payload(), count)?;
                Kind::Bundle(BundleRepr { count })
            }
            FrameType::Parity => {
                let p = frame.parity_fields();
                let bounded = FecParams::new(p.k, p.m).is_some_and(|params| {
                    p.index >= params.k
                        && p.index - params.k < params.m
                        && (1..=params.k).contains(&p.count)
                });
                if !bounded || usize::from(frame.payload_len()) < SHARD_LEN_PREFIX + BASE_HEADER_LEN
                {
                    return Err(WireError::BadFec);
                }
                Kind::Parity(p)
            }
            FrameType::Unknown(t) => return Err(WireError::UnknownType(t)),
        };
        Ok(Repr {
            stamp: frame.stamp(),
            epoch: frame.epoch(),
            seq: frame.seq(),
            payload_len: frame.payload_len(),
            flags: frame.flags(),
            kind,
        })
    }

    /// The frame type of this header.
    pub const fn frame_type(&self) -> FrameType {
        match self.kind {
            Kind::Data => FrameType::Data,
            Kind::Fragment(_) => FrameType::Fragment,
            Kind::Probe(_) => FrameType::Probe,
            Kind::Bundle(_) => FrameType::Bundle,
            Kind::Feedback => FrameType::Feedback,
            Kind::Parity(_) => FrameType::Parity,
        }
    }

    /// Length of the header this repr emits.
    pub const fn header_len(&self) -> usize {
        self.frame_type().min_header_len()
    }

    /// Length of header plus payload (what [`Repr::emit_with_payload`] writes; a tag, with
    /// [`FLAG_AUTH`], comes after).
    pub const fn frame_len(&self) -> usize {
        self.header_len() + self.payload_len as usize
    }

    /// Length of the whole frame on the wire: [`Repr::frame_len`] and the tag, if any.
    pub const fn wire_len(&self) -> usize {
        self.frame_len()
            + if self.flags & FLAG_AUTH != 0 {
                TAG_LEN
            } else {
                0
            }
    }

    /// Writes the header into the start of `buf` (the payload is the caller's, see
    /// [`Repr::emit_with_payload`]). Returns the header length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let header_len = self.header_len();
        let Some(head) = buf.get_mut(..header_len) else {
            return Err(WireError::BufferTooSmall);
        };
        let mut frame = Frame::new_unchecked(head);
        frame.set_version(VERSION);
        frame.set_frame_type(self.frame_type());
        frame.set_stamp(self.stamp);
        frame.set_epoch(self.epoch);
        frame.set_seq(self.seq);
        frame.set_payload_len(self.payload_len);
        // Header lengths are compile-time constants under 256.
        frame.set_header_len(header_len as u8);
        frame.set_flags(self.flags);
        match self.kind {
            Kind::Data => {}
            Kind::Fragment(f) => {
                frame.set_packet_len(f.packet_len);
                frame.set_frag_offset(f.offset);
                frame.set_frag_index(f.index);
                frame.set_frag_count(f.count);
            }
            Kind::Probe(p) => {
                frame.set_echo_time(p.echo_time);
                frame.set_echo_delay(p.echo_delay);
            }
            Kind::Bundle(b) => frame.set_bundle_count(b.count),
            Kind::Feedback => {}
            Kind::Parity(p) => {
                let b = &mut frame.buffer;
                b[field::PARITY_BLOCK].copy_from_slice(&p.block.to_be_bytes());
                b[field::PARITY_INDEX] = p.index;
                b[field::PARITY_K] = p.k;
                b[field::PARITY_M] = p.m;
                b[field::PARITY_COUNT] = p.count;
            }
        }
        Ok(header_len)
    }

    /// Writes header and `payload` into `buf`; `payload.len()` must equal `payload_len`.
    /// Returns the frame length.
    pub fn emit_with_payload(&self, payload: &[u8], buf: &mut [u8]) -> Result<usize, WireError> {
        if payload.len() != usize::from(self.payload_len) {
            return Err(WireError::FieldOverflow);
        }
        let total = self.frame_len();
        if buf.len() < total {
            return Err(WireError::BufferTooSmall);
        }
        let header_len = self.emit(buf)?;
        buf[header_len..total].copy_from_slice(payload);
        Ok(total)
    }
}

/// A 48-bit IEEE 802 MAC address. Parsed from six two-digit hexadecimal bytes separated by `:`
/// or `-` (either case); shown as lower-case `02:00:00:00:01:02`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The bytes, in transmission order.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the group bit (the least significant bit of the first byte) is set: multicast or
    /// broadcast (IEEE 802, clause 8.2).
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Whether this is `ff:ff:ff:ff:ff:ff`.
    pub const fn is_broadcast(self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// Whether this is `00:00:00:00:00:00`.
    pub const fn is_zero(self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a MAC address: write six two-digit hexadecimal bytes such as 02:00:00:00:01:02"
)]
pub struct ParseMacAddrError {
    /// The rejected text.
    pub input: String,
}

impl core::str::FromStr for MacAddr {
    type Err = ParseMacAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseMacAddrError { input: text.into() };
        let separator = if text.contains('-') { '-' } else { ':' };
        let mut octets = [0u8; 6];
        let mut parts = text.split(separator);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(error)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A view of an Ethernet II header and what follows it (IEEE 802.3 clause 3.2, no VLAN tag).
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` if it holds at least an Ethernet header. Never panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < ETH_HDR_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// Destination address.
    pub fn dst(&self) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::ETH_DST]);
        MacAddr(a)
    }

    /// Source address.
    pub fn src(&self) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::ETH_SRC]);
        MacAddr(a)
    }

    /// Ethertype.
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETH_TYPE)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// Everything after the Ethernet header: the alagg header and payload for alagg frames.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[ETH_HDR_LEN..]
    }
}

/// The Ethernet header alagg puts before its own: peer MAC on this link, local MAC, ethertype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Destination: the peer's MAC on this link.
    pub dst: MacAddr,
    /// Source: the local MAC of this link.
    pub src: MacAddr,
    /// Ethertype, [`DEFAULT_ETHERTYPE`] unless configured otherwise.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Parses a checked Ethernet frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Self {
        EthernetRepr {
            dst: frame.dst(),
            src: frame.src(),
            ethertype: frame.ethertype(),
        }
    }

    /// Writes the 14-byte header into the start of `buf`. Returns [`ETH_HDR_LEN`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let Some(head) = buf.get_mut(..ETH_HDR_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        head[field::ETH_DST].copy_from_slice(&self.dst.0);
        head[field::ETH_SRC].copy_from_slice(&self.src.0);
        head[field::ETH_TYPE].copy_from_slice(&self.ethertype.to_be_bytes());
        Ok(ETH_HDR_LEN)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        link: 0x01,
        lane: 0x02,
        lane_seq: 0x1122_3344_5566_7788,
        tx_time: 0x99aa_bbcc,
    };

    fn data_repr() -> Repr {
        Repr {
            stamp: STAMP,
            epoch: 0xdead_beef_0000_0001,
            seq: 0x0123_4567_89ab_cdef,
            payload_len: 4,
            flags: 0,
            kind: Kind::Data,
        }
    }

    #[test]
    fn data_layout_is_byte_exact() {
        let mut buf = [0u8; 40];
        let n = data_repr()
            .emit_with_payload(&[9, 8, 7, 6], &mut buf)
            .unwrap();
        assert_eq!(n, 40);
        assert_eq!(
            buf,
            [
                2, 1, 0x01, 0x02, // version, type, link, lane
                0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, // epoch
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, // seq
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // lane_seq
                0x99, 0xaa, 0xbb, 0xcc, // tx_time
                0, 4, 36, 0, // payload_len, header_len, flags
                9, 8, 7, 6
            ]
        );
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.version(), 2);
        assert_eq!(frame.frame_type(), FrameType::Data);
        assert_eq!(frame.stamp(), STAMP);
        assert_eq!(frame.epoch(), 0xdead_beef_0000_0001);
        assert_eq!(frame.seq(), 0x0123_4567_89ab_cdef);
        assert_eq!(frame.payload_len(), 4);
        assert_eq!(frame.header_len(), 36);
        assert_eq!(frame.flags(), 0);
        assert_eq!(frame.payload(), &[9, 8, 7, 6]);
        assert_eq!(Repr::parse(&frame).unwrap(), data_repr());
    }

    #[test]
    fn fragment_round_trip() {
        let layout = FragmentLayout::new(3000, 3).unwrap();
        let (offset, len) = layout.fragment(2).unwrap();
        assert_eq!((offset, len), (2000, 1000));
        let repr = Repr {
            stamp: Stamp::on(7),
            epoch: 1,
            seq: u64::MAX,
            payload_len: len as u16,
            flags: 0,
            kind: Kind::Fragment(FragmentRepr {
                packet_len: 3000,
                offset,
                index: 2,
                count: 3,
            }),
        };
        let mut buf = vec![0u8; 2000];
        let payload = vec![0xaa; len as usize];
        let n = repr.emit_with_payload(&payload, &mut buf).unwrap();
        assert_eq!(n, FRAGMENT_HEADER_LEN + 1000);
        let frame = Frame::new_checked(&buf[..n]).unwrap();
        assert_eq!(frame.packet_len(), 3000);
        assert_eq!(frame.frag_offset(), 2000);
        assert_eq!(frame.frag_index(), 2);
        assert_eq!(frame.frag_count(), 3);
        assert_eq!(Repr::parse(&frame).unwrap(), repr);
    }

    #[test]
    fn probe_round_trip() {
        let repr = Repr {
            stamp: STAMP,
            epoch: 42,
            seq: 0,
            payload_len: 0,
            flags: 0,
            kind: Kind::Probe(ProbeRepr {
                echo_time: u32::MAX,
                echo_delay: 5,
            }),
        };
        let mut buf = [0u8; PROBE_HEADER_LEN];
        assert_eq!(repr.emit(&mut buf).unwrap(), PROBE_HEADER_LEN);
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.tx_time(), STAMP.tx_time);
        assert_eq!(frame.echo_time(), u32::MAX);
        assert_eq!(frame.echo_delay(), 5);
        assert_eq!(Repr::parse(&frame).unwrap(), repr);
    }

    /// A bundle frame of `count` (claimed) packets with these entries.
    fn bundle_bytes(count: u16, entries: &[u8]) -> Vec<u8> {
        let repr = Repr {
            stamp: Stamp::on(1),
            epoch: 9,
            seq: 100,
            payload_len: entries.len() as u16,
            flags: 0,
            kind: Kind::Bundle(BundleRepr { count }),
        };
        let mut buf = vec![0u8; BUNDLE_HEADER_LEN + entries.len()];
        repr.emit_with_payload(entries, &mut buf).unwrap();
        buf
    }

    #[test]
    fn bundle_round_trip() {
        let entries = [0, 3, 1, 2, 3, 0, 1, 9];
        let buf = bundle_bytes(2, &entries);
        assert_eq!(&buf[..2], &[VERSION, 4]);
        assert_eq!(&buf[36..40], &[0, 2, 0, 0]);
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.bundle_count(), 2);
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(repr.kind, Kind::Bundle(BundleRepr { count: 2 }));
        let packets: Vec<&[u8]> = BundleEntries::new(frame.payload()).collect();
        assert_eq!(packets, [&[1u8, 2, 3][..], &[9][..]]);
    }

    #[test]
    fn inconsistent_bundles_are_rejected() {
        let bad: &[(u16, &[u8])] = &[
            (0, &[]),                 // no packet
            (0, &[0, 1, 7]),          // count says none
            (2, &[0, 1, 7]),          // one entry short
            (1, &[0, 1, 7, 0, 1, 8]), // one entry too many
            (1, &[0, 2, 7]),          // entry runs past the payload
            (1, &[0, 1, 7, 0]),       // a stray byte after the last entry
            (2, &[0, 0, 0, 1, 7]),    // an empty packet
        ];
        for &(count, entries) in bad {
            let buf = bundle_bytes(count, entries);
            let frame = Frame::new_checked(&buf[..]).unwrap();
            assert_eq!(
                Repr::parse(&frame),
                Err(WireError::BadBundle),
                "{count} {entries:?}"
            );
        }
        // Shorter than the bundle header: refused before any field is read.
        let buf = bundle_bytes(1, &[0, 1, 7]);
        let mut short = buf[..BUNDLE_HEADER_LEN - 1].to_vec();
        short[field::HEADER_LEN] = BASE_HEADER_LEN as u8;
        short[field::PAYLOAD_LEN.end - 1] = 0;
        assert_eq!(
            Frame::new_checked(&short[..]).err(),
            Some(WireError::BadHeaderLen)
        );
    }

    #[test]
    fn padding_after_payload_is_ignored() {
        let mut buf = [0u8; 60];
        data_repr()
            .emit_with_payload(&[1, 2, 3, 4], &mut buf)
            .unwrap();
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn longer_header_from_newer_sender_is_skipped() {
        // A sender may append fields; receivers find the payload through header_len.
        let mut buf = [0u8; 44];
        data_repr().emit(&mut buf).unwrap();
        let mut frame = Frame::new_unchecked(&mut buf[..]);
        frame.set_header_len(40);
        frame.payload_mut().copy_from_slice(&[5, 6, 7, 8]);
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.payload(), &[5, 6, 7, 8]);
        assert_eq!(Repr::parse(&frame).unwrap(), data_repr());
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let mut good = [0u8; 40];
        data_repr()
            .emit_with_payload(&[1, 2, 3, 4], &mut good)
            .unwrap();
        type Mutate = fn(&mut [u8; 40]) -> usize;
        let cases: [(&str, Mutate, WireError); 9] = [
            ("empty", |_| 0, WireError::Truncated),
            ("short header", |_| 35, WireError::Truncated),
            ("short payload", |_| 39, WireError::Truncated),
            (
                "version 1",
                |b| {
                    b[0] = 1;
                    40
                },
                WireError::BadVersion(1),
            ),
            (
                "header_len 35",
                |b| {
                    b[34] = 35;
                    40
                },
                WireError::BadHeaderLen,
            ),
            (
                "header_len past end",
                |b| {
                    b[34] = 255;
                    40
                },
                WireError::Truncated,
            ),
            (
                "unknown flag",
                |b| {
                    b[35] = 0x04;
                    40
                },
                WireError::BadFlags(0x04),
            ),
            (
                "encrypted without auth",
                |b| {
                    b[35] = FLAG_ENCRYPTED;
                    40
                },
                WireError::BadFlags(FLAG_ENCRYPTED),
            ),
            (
                "a feedback payload of no whole report",
                |b| {
                    b[1] = 5;
                    40
                },
                WireError::BadFeedback,
            ),
        ];
        for (name, mutate, want) in cases {
            let mut b = good;
            let len = mutate(&mut b);
            let got = Frame::new_checked(&b[..len]).and_then(|f| Repr::parse(&f).map(|_| ()));
            assert_eq!(got.err(), Some(want), "{name}");
        }
        let mut b = good;
        b[1] = 9;
        let frame = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&frame), Err(WireError::UnknownType(9)));
        b[1] = 2; // a fragment needs a 48-byte header
        assert_eq!(
            Frame::new_checked(&b[..]).err(),
            Some(WireError::BadHeaderLen)
        );
    }

    #[test]
    fn lane_reports_round_trip_and_lanes_count_their_frames() {
        let report = LaneReport {
            lane: 3,
            highest: u64::MAX - 1,
            received: 7,
            bytes_64: 8,
            echo_time: 9,
            echo_delay: 10,
            jitter: 11,
        };
        let mut buf = [0u8; FEEDBACK_REPORT_LEN];
        report.emit(&mut buf).unwrap();
        assert_eq!(LaneReport::parse(&buf), Some(report));
        assert_eq!(LaneReport::parse(&buf[..31]), None);
        let mut lane = Lane::new(4, 1);
        let first = lane.stamp(crate::Timestamp::from_nanos(5_000_000));
        let second = lane.stamp(crate::Timestamp::from_nanos(6_000_000));
        assert_eq!(
            (first.link, first.lane, first.lane_seq, first.tx_time),
            (4, 1, 0, 5_000)
        );
        assert_eq!((second.lane_seq, second.tx_time), (1, 6_000));
        assert_eq!(lane.frames(), 2);
        assert_eq!(
            epoch_start_ms(epoch(1_700_000_000_000, 0xbeef)),
            1_700_000_000_000
        );
    }

    #[test]
    fn inconsistent_fragments_are_rejected() {
        let emit = |f: FragmentRepr, payload_len: u16| {
            let mut buf = vec![0u8; FRAGMENT_HEADER_LEN + usize::from(payload_len)];
            let repr = Repr {
                stamp: Stamp::on(0),
                epoch: 0,
                seq: 0,
                payload_len,
                flags: 0,
                kind: Kind::Fragment(f),
            };
            repr.emit(&mut buf).unwrap();
            let frame = Frame::new_checked(&buf[..]).unwrap();
            Repr::parse(&frame).map(|_| ())
        };
        let ok = FragmentRepr {
            packet_len: 100,
            offset: 50,
            index: 1,
            count: 2,
        };
        assert_eq!(emit(ok, 50), Ok(()));
        let bad = [
            (FragmentRepr { count: 0, ..ok }, 50),
            (FragmentRepr { index: 2, ..ok }, 50),
            (FragmentRepr { offset: 49, ..ok }, 50),
            (
                FragmentRepr {
                    packet_len: 0,
                    offset: 0,
                    index: 0,
                    ..ok
                },
                0,
            ),
            (ok, 49),
            (FragmentRepr { count: 300, ..ok }, 50),
        ];
        for (f, len) in bad {
            assert_eq!(emit(f, len), Err(WireError::BadFragment), "{f:?} len {len}");
        }
    }

    #[test]
    fn fragment_layout_never_leaves_a_fragment_empty() {
        for len in 1..600u32 {
            for mtu in 1..70u32 {
                let Some(layout) = FragmentLayout::for_payload(len, mtu) else {
                    assert!(len.div_ceil(mtu) as usize > MAX_FRAGMENTS);
                    continue;
                };
                let mut next = 0;
                for i in 0..layout.count() {
                    let (offset, flen) = layout.fragment(i).unwrap();
                    assert_eq!(offset, next);
                    assert!(flen > 0 && flen <= mtu);
                    next += flen;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn emit_refuses_small_buffers() {
        let mut buf = [0u8; 23];
        assert_eq!(
            data_repr().emit_with_payload(&[0; 4], &mut buf),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            data_repr().emit(&mut buf[..19]),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            data_repr().emit_with_payload(&[0; 3], &mut buf),
            Err(WireError::FieldOverflow)
        );
    }

    #[test]
    fn ethernet_round_trip() {
        let repr = EthernetRepr {
            dst: MacAddr([2, 0, 0, 0, 0, 1]),
            src: MacAddr([2, 0, 0, 0, 0, 2]),
            ethertype: DEFAULT_ETHERTYPE,
        };
        let mut buf = [0u8; 20];
        assert_eq!(repr.emit(&mut buf).unwrap(), ETH_HDR_LEN);
        assert_eq!(&buf[12..14], &[0x88, 0xb5]);
        let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame), repr);
        assert_eq!(frame.payload().len(), 6);
        assert_eq!(repr.src.to_string(), "02:00:00:00:00:02");
        assert!(EthernetFrame::new_checked(&buf[..13]).is_err());
    }
}
