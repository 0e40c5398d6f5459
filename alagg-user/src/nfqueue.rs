//! alagg's own nfnetlink_queue socket: the NFQUEUE capture edge.
//!
//! [`NfQueue`] owns one `NETLINK_NETFILTER` socket bound to one netfilter queue number and
//! speaks the nfnetlink_queue protocol of `include/uapi/linux/netfilter/nfnetlink_queue.h`
//! directly (framing from `netlink.h` and `nfnetlink.h`), so the capture loop gets what a
//! per-packet library cannot give: a file descriptor to `poll(2)` beside a shutdown eventfd,
//! many packets per receive syscall, one verdict message for a whole batch
//! (`NFQNL_MSG_VERDICT_BATCH`), a large `SO_RCVBUF`, and kernel overruns (`ENOBUFS`) reported
//! as counted events.
//!
//! Invariants:
//! - The kernel sends every queued packet as its own netlink datagram (one skb per
//!   `nfnetlink_unicast`), so batching on receive is done with one `recvmmsg(2)` that fills up
//!   to [`Batch::capacity`] datagrams, each into its own [`Batch::SLOT`]-byte slot of one
//!   preallocated buffer. A slot holds the largest message the kernel builds for the copy range
//!   `0xffff`, so a datagram is never truncated; one that is anyway is counted as malformed.
//! - Packets are handed out in the order the kernel queued them, which is the order of their
//!   ids, so [`NfQueue::verdict_batch`] with the last id of a batch settles exactly that batch
//!   and any packet before it that was lost on the way (counted in `malformed`).
//! - Nothing read from the socket is trusted: `parse_datagram` bounds-checks every length and
//!   skips (and counts) what does not parse; it never panics.
//! - No allocation per packet: [`Batch`] is reused; it records ids and payload ranges only.
//! - Configuration happens once, in [`NfQueue::open`], in one acknowledged request; packets that
//!   arrive before its acknowledgement are kept and handed out by the next
//!   [`NfQueue::recv_batch`]. Dropping the queue unbinds it (the kernel drops what is still
//!   queued) and closes the socket.

use std::{
    fmt, io,
    ops::Range,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

/// Constants of the kernel's netlink and nfnetlink_queue UAPI, named as in the headers.
mod uapi {
    // include/uapi/linux/netlink.h
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLA_HDRLEN: usize = 4;
    pub const NLMSG_NOOP: u16 = 1;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 0x01;
    pub const NLM_F_ACK: u16 = 0x04;
    /// `~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)`.
    pub const NLA_TYPE_MASK: u16 = 0x3fff;
    pub const SOL_NETLINK: i32 = 270;
    pub const NETLINK_NO_ENOBUFS: i32 = 5;
    pub const NETLINK_CAP_ACK: i32 = 10;

    // include/uapi/linux/netfilter/nfnetlink.h
    pub const NFNETLINK_V0: u8 = 0;
    pub const NFNL_SUBSYS_QUEUE: u16 = 3;
    /// `struct nfgenmsg`: family, version, big-endian resource id (the queue number).
    pub const NFGENMSG_LEN: usize = 4;

    // include/uapi/linux/netfilter/nfnetlink_queue.h
    pub const NFQNL_MSG_PACKET: u16 = 0;
    pub const NFQNL_MSG_VERDICT: u16 = 1;
    pub const NFQNL_MSG_CONFIG: u16 = 2;
    pub const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

    pub const NFQA_PACKET_HDR: u16 = 1;
    pub const NFQA_VERDICT_HDR: u16 = 2;
    pub const NFQA_PAYLOAD: u16 = 10;
    pub const NFQA_CAP_LEN: u16 = 13;
    pub const NFQA_SKB_INFO: u16 = 14;
    /// `struct nfqnl_msg_packet_hdr` (packed): be32 packet_id, be16 hw_protocol, u8 hook.
    pub const PACKET_HDR_LEN: usize = 7;

    pub const NFQA_SKB_CSUMNOTREADY: u32 = 1 << 0;
    pub const NFQA_SKB_GSO: u32 = 1 << 1;

    pub const NFQNL_CFG_CMD_BIND: u8 = 1;
    pub const NFQNL_CFG_CMD_UNBIND: u8 = 2;
    pub const NFQNL_COPY_PACKET: u8 = 2;

    pub const NFQA_CFG_CMD: u16 = 1;
    pub const NFQA_CFG_PARAMS: u16 = 2;
    pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
    pub const NFQA_CFG_MASK: u16 = 4;
    pub const NFQA_CFG_FLAGS: u16 = 5;
    pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
    pub const NFQA_CFG_F_GSO: u32 = 1 << 2;

    // include/uapi/linux/netfilter.h
    pub const NF_DROP: u32 = 0;
    pub const NF_ACCEPT: u32 = 1;
}

use uapi::*;

/// The copy range asked for: whole packets up to the kernel's cap (`NFQNL_MAX_COPY_RANGE`).
const COPY_RANGE: u32 = 0xffff;
/// How long [`NfQueue::open`] waits for the kernel to acknowledge the configuration.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most datagrams one [`Batch`] (and so one `recvmmsg`) takes.
const MAX_DATAGRAMS: usize = 64;

/// What the kernel does with a packet once user space has decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_DROP`: the packet is discarded (alagg has stolen it and carries it itself).
    Drop,
    /// `NF_ACCEPT`: the packet continues through the stack as if never queued.
    Accept,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Self::Drop => NF_DROP,
            Self::Accept => NF_ACCEPT,
        }
    }
}

/// How [`NfQueue::open`] configures the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// `NFQA_CFG_QUEUE_MAXLEN`: packets the kernel holds waiting for a verdict; beyond it,
    /// new packets are dropped (or accepted with [`QueueOptions::fail_open`]).
    pub max_len: u32,
    /// `NFQA_CFG_F_FAIL_OPEN`: accept instead of drop when the queue is full or the socket's
    /// receive buffer overruns.
    pub fail_open: bool,
    /// `NFQA_CFG_F_GSO`: hand over GSO packets whole (up to 64 KiB) instead of segmenting them
    /// in the kernel; packets may then carry a partial checksum ([`Packet::csum_not_ready`]).
    pub gso: bool,
    /// The socket's receive buffer in bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`
    /// capped by `net.core.rmem_max`); 0 keeps the kernel default.
    pub recv_buffer: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            max_len: 4096,
            fail_open: false,
            gso: false,
            recv_buffer: 8 << 20,
        }
    }
}

/// Why an NFQUEUE operation failed. Each message names the queue number.
#[derive(Debug, thiserror::Error)]
pub enum NfQueueError {
    /// A socket call failed.
    #[error("NFQUEUE {queue}: {what}: {source}")]
    Io {
        /// The queue number.
        queue: u16,
        /// What was being done.
        what: &'static str,
        /// The error the kernel gave.
        #[source]
        source: io::Error,
    },
    /// The kernel refused for lack of privilege.
    #[error(
        "NFQUEUE {queue}: permission denied: binding a netfilter queue needs root or CAP_NET_ADMIN"
    )]
    PermissionDenied {
        /// The queue number.
        queue: u16,
    },
    /// Another socket (another program, or another `NfQueue`) has bound the queue.
    #[error(
        "NFQUEUE {queue} is already bound by another program{}; stop it or choose another queue number",
        owner.map(|p| format!(" (netlink port id {p})")).unwrap_or_default()
    )]
    QueueInUse {
        /// The queue number.
        queue: u16,
        /// The netlink port id of the socket that holds it, when the kernel lists it.
        owner: Option<u32>,
    },
    /// The kernel has no nfnetlink_queue support, or not for the requested flags.
    #[error(
        "NFQUEUE {queue}: the kernel does not support the queue configuration (nfnetlink_queue \
         missing, or the fail-open/GSO flags unknown to it): {source}"
    )]
    Unsupported {
        /// The queue number.
        queue: u16,
        /// The error the kernel gave.
        #[source]
        source: io::Error,
    },
    /// The kernel rejected the configuration for another reason.
    #[error("NFQUEUE {queue}: the kernel rejected the queue configuration: {source}")]
    Rejected {
        /// The queue number.
        queue: u16,
        /// The error the kernel gave.
        #[source]
        source: io::Error,
    },
    /// The kernel did not acknowledge the configuration in time.
    #[error("NFQUEUE {queue}: no acknowledgement from the kernel within {timeout:?}")]
    NoAnswer {
        /// The queue number.
        queue: u16,
        /// How long was waited.
        timeout: Duration,
    },
}

/// What an [`NfQueue`] has seen since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NfQueueCounters {
    /// Packets handed out by [`NfQueue::recv_batch`].
    pub received: u64,
    /// `recv_batch` calls that handed out at least one packet.
    pub batches: u64,
    /// Receive-buffer overruns the kernel reported (`ENOBUFS`): packets were lost (dropped, or
    /// accepted with fail-open) before reaching this socket.
    pub enobufs: u64,
    /// Messages or datagrams skipped because they did not parse.
    pub malformed: u64,
    /// Error reports from the kernel for messages sent without an acknowledgement request
    /// (such as a verdict for a packet id no longer queued).
    pub kernel_errors: u64,
    /// `NFQNL_MSG_VERDICT_BATCH` messages sent.
    pub verdict_batches: u64,
    /// Single `NFQNL_MSG_VERDICT` messages sent.
    pub verdicts: u64,
}

/// One queued packet, borrowed from a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The kernel's packet id, to give a verdict on.
    pub id: u32,
    /// The packet from its network header on (an IPv4 or IPv6 packet for the IP hooks); empty
    /// if the kernel sent no payload.
    pub payload: &'a [u8],
    /// A GSO packet, larger than the MTU (`NFQA_SKB_GSO`; only with [`QueueOptions::gso`]).
    pub gso: bool,
    /// Its transport checksum is partial, to be completed by whoever sends it
    /// (`NFQA_SKB_CSUMNOTREADY`; only with [`QueueOptions::gso`]).
    pub csum_not_ready: bool,
    /// The packet was longer than the copy range and `payload` holds only its start
    /// (`NFQA_CAP_LEN`).
    pub truncated: bool,
    /// The link-layer protocol (ethertype) of the packet, `0x0800` for IPv4, `0x86dd` for IPv6.
    pub hw_protocol: u16,
}

/// A packet's place in a [`Batch`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u32,
    start: usize,
    len: usize,
    hw_protocol: u16,
    gso: bool,
    csum_not_ready: bool,
    truncated: bool,
}

/// A reusable receive buffer and the packets the last [`NfQueue::recv_batch`] found in it.
pub struct Batch {
    buf: Vec<u8>,
    datagrams: usize,
    entries: Vec<Entry>,
    dropped_by_kernel: bool,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("datagrams", &self.datagrams)
            .field("packets", &self.entries.len())
            .field("dropped_by_kernel", &self.dropped_by_kernel)
            .finish()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new(MAX_DATAGRAMS)
    }
}

impl Batch {
    /// Bytes reserved for one datagram: the largest packet message the kernel builds for the
    /// copy range `0xffff`, with room for every metadata attribute.
    pub const SLOT: usize = 72 << 10;

    /// A batch taking up to `datagrams` packets per receive (clamped to 1..=64). Its buffer is
    /// `datagrams * SLOT` bytes, allocated zeroed so that only the pages packets touch are
    /// ever mapped.
    pub fn new(datagrams: usize) -> Self {
        let datagrams = datagrams.clamp(1, MAX_DATAGRAMS);
        Self {
            buf: vec![0; datagrams * Self::SLOT],
            datagrams,
            entries: Vec::with_capacity(datagrams),
            dropped_by_kernel: false,
        }
    }

    /// The most datagrams (so packets, in practice) one receive takes.
    pub fn capacity(&self) -> usize {
        self.datagrams
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The packets, in the order the kernel queued them.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Packet<'_>> + '_ {
        self.entries.iter().map(|e| self.packet(e))
    }

    /// The packet at `index`.
    pub fn get(&self, index: usize) -> Option<Packet<'_>> {
        self.entries.get(index).map(|e| self.packet(e))
    }

    fn packet(&self, e: &Entry) -> Packet<'_> {
        Packet {
            id: e.id,
            payload: self.buf.get(e.start..e.start + e.len).unwrap_or_default(),
            gso: e.gso,
            csum_not_ready: e.csum_not_ready,
            truncated: e.truncated,
            hw_protocol: e.hw_protocol,
        }
    }

    /// The payload of the packet at `index`, writable: to finish its checksum in place before
    /// it is sent on ([`crate::ip::finish_transport_checksum`]).
    pub fn payload_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let e = self.entries.get(index)?;
        self.buf.get_mut(e.start..e.start + e.len)
    }

    /// Whether the packet at `index` carries a partial transport checksum
    /// ([`Packet::csum_not_ready`]).
    pub fn csum_not_ready(&self, index: usize) -> bool {
        self.entries.get(index).is_some_and(|e| e.csum_not_ready)
    }

    /// The id of the last packet, to pass to [`NfQueue::verdict_batch`].
    pub fn last_id(&self) -> Option<u32> {
        self.entries.last().map(|e| e.id)
    }

    /// Whether the kernel reported, during the receive that filled this batch, that it had
    /// dropped packets for want of receive-buffer space (`ENOBUFS`).
    pub fn dropped_by_kernel(&self) -> bool {
        self.dropped_by_kernel
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.dropped_by_kernel = false;
    }
}

/// A bound nfnetlink_queue socket. See the module documentation.
pub struct NfQueue {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    counters: NfQueueCounters,
    /// Datagrams that arrived while [`NfQueue::open`] waited for its acknowledgement.
    pending: Vec<Vec<u8>>,
}

impl fmt::Debug for NfQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfQueue")
            .field("fd", &self.fd)
            .field("queue", &self.queue)
            .field("counters", &self.counters)
            .finish()
    }
}

impl NfQueue {
    /// Opens a `NETLINK_NETFILTER` socket in the calling thread's network namespace, binds it
    /// to netfilter queue `queue` and configures it (`NFQNL_CFG_CMD_BIND`, `NFQNL_COPY_PACKET`
    /// with range `0xffff`, the queue length and flags of `options`) in one acknowledged request.
    /// The obsolete `PF_BIND`/`PF_UNBIND` commands are not sent: kernels since 3.8 ignore them.
    pub fn open(queue: u16, options: &QueueOptions) -> Result<Self, NfQueueError> {
        let io_err = |what| {
            move |source| NfQueueError::Io {
                queue,
                what,
                source,
            }
        };
        // SAFETY: socket(2) takes no pointers; the return value is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io_err("creating a netlink socket")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut this = Self {
            fd,
            queue,
            seq: 0,
            counters: NfQueueCounters::default(),
            pending: Vec::new(),
        };
        if options.recv_buffer > 0 {
            let size = i32::try_from(options.recv_buffer).unwrap_or(i32::MAX);
            if this
                .set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
                .is_err()
            {
                // Without CAP_NET_ADMIN: as much as net.core.rmem_max allows.
                this.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, size)
                    .map_err(io_err("setting SO_RCVBUF"))?;
            }
        }
        // Off is the default; set it anyway so that overruns are always reported.
        this.set_option(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            .map_err(io_err("clearing NETLINK_NO_ENOBUFS"))?;
        // Acknowledgements need not echo the request back.
        let _ = this.set_option(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        this.bind().map_err(io_err("binding the netlink socket"))?;

        let mut flags = 0;
        if options.fail_open {
            flags |= NFQA_CFG_F_FAIL_OPEN;
        }
        if options.gso {
            flags |= NFQA_CFG_F_GSO;
        }
        let mut params = [0u8; 5];
        params[..4].copy_from_slice(&COPY_RANGE.to_be_bytes());
        params[4] = NFQNL_COPY_PACKET;
        let seq = this.next_seq();
        let mut request = Request::new(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
        request.attr(NFQA_CFG_CMD, &config_cmd(NFQNL_CFG_CMD_BIND));
        request.attr(NFQA_CFG_PARAMS, &params);
        request.attr(NFQA_CFG_QUEUE_MAXLEN, &options.max_len.to_be_bytes());
        request.attr(
            NFQA_CFG_MASK,
            &(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO).to_be_bytes(),
        );
        request.attr(NFQA_CFG_FLAGS, &flags.to_be_bytes());
        this.send(request.finish())
            .map_err(io_err("sending the queue configuration"))?;
        match this.wait_ack(seq)? {
            0 => Ok(this),
            errno => Err(config_error(queue, errno)),
        }
    }

    /// The queue number this socket is bound to.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The socket, to `poll(2)` for readability (packets queued) beside other descriptors.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What this queue has seen so far.
    pub fn counters(&self) -> NfQueueCounters {
        self.counters
    }

    /// Receives what is queued, without blocking, with one `recvmmsg(2)` of up to
    /// [`Batch::capacity`] datagrams, and fills `out` with the packets in them. Returns the
    /// number of packets: 0 when nothing is waiting. A kernel overrun (`ENOBUFS`) is counted
    /// and flagged in [`Batch::dropped_by_kernel`], and the receive is retried once, so it never
    /// stops the caller's loop. Messages that do not parse are skipped and counted.
    pub fn recv_batch(&mut self, out: &mut Batch) -> Result<usize, NfQueueError> {
        out.clear();
        if !self.pending.is_empty() {
            return Ok(self.take_pending(out));
        }
        let mut lens = [0usize; MAX_DATAGRAMS];
        let mut truncated = [false; MAX_DATAGRAMS];
        let mut retried_enobufs = false;
        let received = loop {
            match self.recv_many(out, &mut lens, &mut truncated) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.counters.enobufs += 1;
                    out.dropped_by_kernel = true;
                    if retried_enobufs {
                        return Ok(0);
                    }
                    retried_enobufs = true;
                }
                Err(source) => {
                    return Err(NfQueueError::Io {
                        queue: self.queue,
                        what: "receiving queued packets",
                        source,
                    });
                }
            }
        };
        for slot in 0..received {
            if truncated[slot] {
                self.counters.malformed += 1;
            }
            let start = slot * Batch::SLOT;
            self.collect(out, start, lens[slot]);
        }
        Ok(self.finish_batch(out))
    }

    /// Settles every queued packet with an id up to and including `up_to_id` with one
    /// `NFQNL_MSG_VERDICT_BATCH` message. The kernel compares ids modulo 2^32, so wrap-around
    /// is handled; it reports `ENOENT` (counted in `kernel_errors`) if no packet matched.
    pub fn verdict_batch(&mut self, up_to_id: u32, verdict: Verdict) -> Result<(), NfQueueError> {
        self.send_verdict(NFQNL_MSG_VERDICT_BATCH, up_to_id, verdict)?;
        self.counters.verdict_batches += 1;
        Ok(())
    }

    /// Settles the one queued packet `id` (`NFQNL_MSG_VERDICT`).
    pub fn verdict(&mut self, id: u32, verdict: Verdict) -> Result<(), NfQueueError> {
        self.send_verdict(NFQNL_MSG_VERDICT, id, verdict)?;
        self.counters.verdicts += 1;
        Ok(())
    }

    fn send_verdict(&mut self, kind: u16, id: u32, verdict: Verdict) -> Result<(), NfQueueError> {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&verdict.code().to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        let seq = self.next_seq();
        let mut request = Request::new(kind, NLM_F_REQUEST, seq, self.queue);
        request.attr(NFQA_VERDICT_HDR, &hdr);
        self.send(request.finish())
            .map_err(|source| NfQueueError::Io {
                queue: self.queue,
                what: "sending a verdict",
                source,
            })
    }

    /// Parses the datagram at `out.buf[start..start + len]` into `out`'s entries.
    fn collect(&mut self, out: &mut Batch, start: usize, len: usize) {
        let Some(datagram) = out.buf.get(start..start + len) else {
            self.counters.malformed += 1;
            return;
        };
        for message in parse_datagram(datagram) {
            match message {
                Message::Packet(meta) => out.entries.push(Entry {
                    id: meta.id,
                    start: start + meta.payload.start,
                    len: meta.payload.len(),
                    hw_protocol: meta.hw_protocol,
                    gso: meta.gso,
                    csum_not_ready: meta.csum_not_ready,
                    truncated: meta
                        .cap_len
                        .is_some_and(|c| c as usize > meta.payload.len()),
                }),
                Message::Error { .. } => self.counters.kernel_errors += 1,
                Message::Malformed(_) => self.counters.malformed += 1,
                Message::Ack { .. } | Message::Other { .. } => {}
            }
        }
    }

    fn finish_batch(&mut self, out: &Batch) -> usize {
        let n = out.entries.len();
        if n > 0 {
            self.counters.received += n as u64;
            self.counters.batches += 1;
        }
        n
    }

    /// Hands out the datagrams kept while waiting for the configuration's acknowledgement.
    fn take_pending(&mut self, out: &mut Batch) -> usize {
        let count = self.pending.len().min(out.datagrams);
        let pending: Vec<Vec<u8>> = self.pending.drain(..count).collect();
        for (slot, datagram) in pending.iter().enumerate() {
            let start = slot * Batch::SLOT;
            let len = datagram.len().min(Batch::SLOT);
            if let Some(dst) = out.buf.get_mut(start..start + len) {
                dst.copy_from_slice(&datagram[..len]);
            }
            self.collect(out, start, len);
        }
        self.finish_batch(out)
    }

    /// One `recvmmsg(2)` into the slots of `out`.
    fn recv_many(
        &self,
        out: &mut Batch,
        lens: &mut [usize; MAX_DATAGRAMS],
        truncated: &mut [bool; MAX_DATAGRAMS],
    ) -> io::Result<usize> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovecs = [empty; MAX_DATAGRAMS];
        // SAFETY: `mmsghdr` (and the `msghdr` in it) is a C struct of integers and raw
        // pointers, for which all-zero bytes are a valid value (null pointers, zero lengths).
        let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut headers = [zero; MAX_DATAGRAMS];
        let slots = out.datagrams;
        for ((chunk, iov), header) in out
            .buf
            .chunks_exact_mut(Batch::SLOT)
            .zip(iovecs.iter_mut())
            .zip(headers.iter_mut())
            .take(slots)
        {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `headers[..slots]` each point at one iovec in `iovecs`, which points at a
        // distinct `SLOT`-byte chunk of `out.buf`; all of them outlive the call, and the kernel
        // writes at most `iov_len` bytes into each. No address or control buffer is passed.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                headers.as_mut_ptr(),
                slots as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (rc as usize).min(slots);
        for i in 0..n {
            lens[i] = (headers[i].msg_len as usize).min(Batch::SLOT);
            truncated[i] = headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Waits for the kernel's answer to request `seq`: 0 for an acknowledgement, else the
    /// errno it reported. Packets that arrive meanwhile are kept for `recv_batch`.
    fn wait_ack(&mut self, seq: u32) -> Result<i32, NfQueueError> {
        let queue = self.queue;
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut buf = vec![0u8; Batch::SLOT];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NfQueueError::NoAnswer {
                    queue,
                    timeout: ACK_TIMEOUT,
                });
            }
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: `pollfd` is one valid, initialised pollfd that outlives the call.
            let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if rc <= 0 {
                continue; // timeout (checked above) or EINTR
            }
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::EAGAIN) => continue,
                    Some(libc::ENOBUFS) => {
                        self.counters.enobufs += 1;
                        continue;
                    }
                    _ => {
                        return Err(NfQueueError::Io {
                            queue,
                            what: "waiting for the kernel's acknowledgement",
                            source: e,
                        });
                    }
                }
            }
            let datagram = buf.get(..n as usize).unwrap_or_default();
            let mut answer = None;
            let mut has_packet = false;
            for message in parse_datagram(datagram) {
                match message {
                    Message::Ack { seq: s } if s == seq => answer = Some(0),
                    Message::Error { seq: s, errno } if s == seq => answer = Some(errno),
                    Message::Error { .. } => self.counters.kernel_errors += 1,
                    Message::Packet(_) => has_packet = true,
                    Message::Malformed(_) => self.counters.malformed += 1,
                    Message::Ack { .. } | Message::Other { .. } => {}
                }
            }
            if has_packet {
                self.pending.push(datagram.to_vec());
            }
            if let Some(errno) = answer {
                return Ok(errno);
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn set_option(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: `value` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn bind(&self) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` is a C struct of integers; all-zero is valid (port id 0: the
        // kernel assigns one; no multicast groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a live sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sends one netlink datagram to the kernel (port id 0, the default destination).
    fn send(&self, message: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `message` is a live buffer of `message.len()` bytes, only read.
            let rc = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for NfQueue {
    fn drop(&mut self) {
        // Best effort, no acknowledgement: closing the socket releases the queue as well.
        let seq = self.next_seq();
        let mut request = Request::new(NFQNL_MSG_CONFIG, NLM_F_REQUEST, seq, self.queue);
        request.attr(NFQA_CFG_CMD, &config_cmd(NFQNL_CFG_CMD_UNBIND));
        let _ = self.send(request.finish());
    }
}

impl AsFd for NfQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NfQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `struct nfqnl_msg_config_cmd`: command, padding, be16 protocol family (unused since 3.8).
fn config_cmd(command: u8) -> [u8; 4] {
    [command, 0, 0, 0]
}

/// Maps the errno of a rejected configuration to what the user should do about it.
fn config_error(queue: u16, errno: i32) -> NfQueueError {
    let source = io::Error::from_raw_os_error(errno);
    match errno {
        // The kernel answers EPERM both to a caller without CAP_NET_ADMIN and when the queue
        // belongs to another socket (nfqnl_recv_config); the queue list tells them apart.
        libc::EPERM => match queue_owner(queue) {
            Some(owner) => NfQueueError::QueueInUse {
                queue,
                owner: Some(owner),
            },
            None => NfQueueError::PermissionDenied { queue },
        },
        libc::EBUSY => NfQueueError::QueueInUse {
            queue,
            owner: queue_owner(queue),
        },
        libc::EOPNOTSUPP | libc::EPROTONOSUPPORT => NfQueueError::Unsupported { queue, source },
        _ => NfQueueError::Rejected { queue, source },
    }
}

/// The netlink port id bound to `queue` in the calling thread's network namespace, from
/// `/proc/thread-self/net/netfilter/nfnetlink_queue` (queue number, then port id, per line).
fn queue_owner(queue: u16) -> Option<u32> {
    let list = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()?;
    list.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let number: u16 = fields.next()?.parse().ok()?;
        let owner: u32 = fields.next()?.parse().ok()?;
        (number == queue).then_some(owner)
    })
}

/// A netlink request being built on the stack: header, `nfgenmsg`, attributes.
struct Request {
    buf: [u8; 128],
    len: usize,
}

impl Request {
    fn new(kind: u16, flags: u16, seq: u32, queue: u16) -> Self {
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
    fn attr(&mut self, kind: u16, value: &[u8]) {
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

    fn finish(&mut self) -> &[u8] {
        let len = self.len as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf[..self.len]
    }
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What one netlink message of a received datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
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
pub(crate) enum Malformed {
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
pub(crate) struct PacketMeta {
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
pub(crate) fn parse_datagram(datagram: &[u8]) -> Messages<'_> {
    Messages {
        datagram,
        offset: 0,
    }
}

/// Iterator returned by [`parse_datagram`].
#[derive(Debug)]
pub(crate) struct Messages<'a> {
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

fn read_u16_ne(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32_ne(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn read_u16_be(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32_be(buf: &[u8], at: usize) -> Option<u32> {
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

    #[test]
    fn config_errors_name_the_queue_and_the_fix() {
        let busy = config_error(7, libc::EBUSY).to_string();
        assert!(
            busy.contains("NFQUEUE 7") && busy.contains("already bound"),
            "{busy}"
        );
        let unsupported = config_error(7, libc::EOPNOTSUPP).to_string();
        assert!(unsupported.contains("does not support"), "{unsupported}");
        let other = config_error(7, libc::EINVAL).to_string();
        assert!(other.contains("rejected"), "{other}");
    }
}
