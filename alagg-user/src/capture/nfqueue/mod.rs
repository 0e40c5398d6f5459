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
//!   to the batch's datagrams, each into its own [`Batch::SLOT`]-byte slot of one
//!   preallocated buffer (the crate's one `recvmmsg` set-up, [`crate::sys::MmsgSlots`]). A slot holds the largest message the kernel builds for the copy range
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
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use alagg_packet::nfqueue::{Message, Request, parse_datagram, uapi::*};

use crate::{
    port::{Captured, PacketSource, SourceLosses},
    sys::MmsgSlots,
};

/// The copy range asked for: whole packets up to the kernel's cap (`NFQNL_MAX_COPY_RANGE`).
const COPY_RANGE: u32 = 0xffff;
/// How long [`NfQueue::open`] waits for the kernel to acknowledge the configuration.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most datagrams one [`Batch`] (and so one `recvmmsg`) takes.
const MAX_DATAGRAMS: usize = 64;

/// What the kernel does with a packet once user space has decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `NF_DROP`: the packet is discarded (alagg has stolen it and carries it itself).
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Self::Drop => NF_DROP,
        }
    }
}

/// How [`NfQueue::open`] configures the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOptions {
    /// `NFQA_CFG_QUEUE_MAXLEN`: packets the kernel holds waiting for a verdict; beyond it,
    /// new packets are dropped (or accepted with [`QueueOptions::fail_open`]).
    pub(crate) max_len: u32,
    /// `NFQA_CFG_F_FAIL_OPEN`: accept instead of drop when the queue is full or the socket's
    /// receive buffer overruns.
    pub(crate) fail_open: bool,
    /// `NFQA_CFG_F_GSO`: hand over GSO packets whole (up to 64 KiB) instead of segmenting them
    /// in the kernel; packets may then carry a partial checksum ([`Packet::csum_not_ready`]).
    pub(crate) gso: bool,
    /// The socket's receive buffer in bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`
    /// capped by `net.core.rmem_max`); 0 keeps the kernel default.
    pub(crate) recv_buffer: usize,
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
pub(crate) enum NfQueueError {
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
pub(crate) struct NfQueueCounters {
    /// Packets handed out by [`NfQueue::recv_batch`].
    pub(crate) received: u64,
    /// `recv_batch` calls that handed out at least one packet.
    pub(crate) batches: u64,
    /// Receive-buffer overruns the kernel reported (`ENOBUFS`): packets were lost (dropped, or
    /// accepted with fail-open) before reaching this socket.
    pub(crate) enobufs: u64,
    /// Messages or datagrams skipped because they did not parse.
    pub(crate) malformed: u64,
    /// Error reports from the kernel for messages sent without an acknowledgement request
    /// (such as a verdict for a packet id no longer queued).
    pub(crate) kernel_errors: u64,
    /// `NFQNL_MSG_VERDICT_BATCH` messages sent.
    pub(crate) verdict_batches: u64,
    /// Single `NFQNL_MSG_VERDICT` messages sent.
    pub(crate) verdicts: u64,
}

/// One queued packet, borrowed from a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    /// The kernel's packet id, to give a verdict on.
    pub(crate) id: u32,
    /// The packet from its network header on (an IPv4 or IPv6 packet for the IP hooks); empty
    /// if the kernel sent no payload.
    pub(crate) payload: &'a [u8],
    /// A GSO packet, larger than the MTU (`NFQA_SKB_GSO`; only with [`QueueOptions::gso`]).
    pub(crate) gso: bool,
    /// Its transport checksum is partial, to be completed by whoever sends it
    /// (`NFQA_SKB_CSUMNOTREADY`; only with [`QueueOptions::gso`]).
    pub(crate) csum_not_ready: bool,
    /// The packet was longer than the copy range and `payload` holds only its start
    /// (`NFQA_CAP_LEN`).
    pub(crate) truncated: bool,
    /// The link-layer protocol (ethertype) of the packet, `0x0800` for IPv4, `0x86dd` for IPv6.
    pub(crate) hw_protocol: u16,
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
pub(crate) struct Batch {
    slots: MmsgSlots,
    entries: Vec<Entry>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("datagrams", &self.slots.count())
            .field("packets", &self.entries.len())
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
    pub(crate) const SLOT: usize = 72 << 10;

    /// A batch taking up to `datagrams` packets per receive (clamped to 1..=64). Its buffer is
    /// `datagrams * SLOT` bytes, allocated zeroed so that only the pages packets touch are
    /// ever mapped.
    pub(crate) fn new(datagrams: usize) -> Self {
        let datagrams = datagrams.clamp(1, MAX_DATAGRAMS);
        Self {
            slots: MmsgSlots::new(datagrams, Self::SLOT),
            entries: Vec::with_capacity(datagrams),
        }
    }

    /// Packets in the batch.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The packet at `index`.
    pub(crate) fn get(&self, index: usize) -> Option<Packet<'_>> {
        self.entries.get(index).map(|e| self.packet(e))
    }

    fn packet(&self, e: &Entry) -> Packet<'_> {
        Packet {
            id: e.id,
            payload: self
                .slots
                .bytes()
                .get(e.start..e.start + e.len)
                .unwrap_or_default(),
            gso: e.gso,
            csum_not_ready: e.csum_not_ready,
            truncated: e.truncated,
            hw_protocol: e.hw_protocol,
        }
    }

    /// The payload of the packet at `index`, writable: to finish its checksum in place before
    /// it is sent on ([`crate::ip::finish_transport_checksum`]).
    pub(crate) fn payload_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let e = self.entries.get(index)?;
        self.slots.bytes_mut().get_mut(e.start..e.start + e.len)
    }

    /// The id of the last packet, to pass to [`NfQueue::verdict_batch`].
    pub(crate) fn last_id(&self) -> Option<u32> {
        self.entries.last().map(|e| e.id)
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// A bound nfnetlink_queue socket. See the module documentation.
pub(crate) struct NfQueue {
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
    pub(crate) fn open(queue: u16, options: &QueueOptions) -> Result<Self, NfQueueError> {
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

    /// The socket, to `poll(2)` for readability (packets queued) beside other descriptors.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What this queue has seen so far.
    pub(crate) fn counters(&self) -> NfQueueCounters {
        self.counters
    }

    /// Receives what is queued, without blocking, with one `recvmmsg(2)` of up to
    /// the batch's datagrams, and fills `out` with the packets in them. Returns the number of
    /// packets: 0 when nothing is waiting. A kernel overrun (`ENOBUFS`) is counted (`enobufs`)
    /// and the receive is retried once, so it never
    /// stops the caller's loop. Messages that do not parse are skipped and counted.
    pub(crate) fn recv_batch(&mut self, out: &mut Batch) -> Result<usize, NfQueueError> {
        out.clear();
        if !self.pending.is_empty() {
            return Ok(self.take_pending(out));
        }
        let mut retried_enobufs = false;
        let received = loop {
            match out.slots.recv(self.fd.as_raw_fd()) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.counters.enobufs += 1;
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
            let (len, truncated) = out.slots.received(slot);
            if truncated {
                self.counters.malformed += 1;
            }
            self.collect(out, slot * Batch::SLOT, len);
        }
        Ok(self.finish_batch(out))
    }

    /// Settles every queued packet with an id up to and including `up_to_id` with one
    /// `NFQNL_MSG_VERDICT_BATCH` message. The kernel compares ids modulo 2^32, so wrap-around
    /// is handled; it reports `ENOENT` (counted in `kernel_errors`) if no packet matched.
    pub(crate) fn verdict_batch(
        &mut self,
        up_to_id: u32,
        verdict: Verdict,
    ) -> Result<(), NfQueueError> {
        self.send_verdict(NFQNL_MSG_VERDICT_BATCH, up_to_id, verdict)?;
        self.counters.verdict_batches += 1;
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

    /// Parses the datagram at `start..start + len` of `out`'s buffer into its entries.
    fn collect(&mut self, out: &mut Batch, start: usize, len: usize) {
        let Some(datagram) = out.slots.bytes().get(start..start + len) else {
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
        let count = self.pending.len().min(out.slots.count());
        let pending: Vec<Vec<u8>> = self.pending.drain(..count).collect();
        for (slot, datagram) in pending.iter().enumerate() {
            let start = slot * Batch::SLOT;
            let len = datagram.len().min(Batch::SLOT);
            if let Some(dst) = out.slots.bytes_mut().get_mut(start..start + len) {
                dst.copy_from_slice(&datagram[..len]);
            }
            self.collect(out, start, len);
        }
        self.finish_batch(out)
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
            if !crate::sys::wait_readable(self.fd.as_raw_fd(), left.max(Duration::from_millis(1))) {
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
        crate::sys::set_int_option(self.fd.as_raw_fd(), level, name, value)
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

/// A queue and its receive batch: the [`PacketSource`] the capture stage reads.
#[derive(Debug)]
pub(crate) struct CaptureQueue {
    queue: NfQueue,
    batch: Batch,
}

impl CaptureQueue {
    /// `queue`, read [`crate::port::BATCH`] packets at a time.
    pub(crate) fn new(queue: NfQueue) -> Self {
        Self {
            queue,
            batch: Batch::new(crate::port::BATCH),
        }
    }
}

impl PacketSource for CaptureQueue {
    type Error = NfQueueError;

    fn fd(&self) -> RawFd {
        self.queue.fd().as_raw_fd()
    }

    fn recv(&mut self, mut each: impl FnMut(Captured<'_>)) -> Result<usize, NfQueueError> {
        let n = self.queue.recv_batch(&mut self.batch)?;
        for index in 0..self.batch.len() {
            let (csum_partial, truncated) = match self.batch.get(index) {
                Some(p) => (p.csum_not_ready, p.truncated),
                None => break,
            };
            // The parser kept every payload inside the buffer; were one not, it goes on empty,
            // so the capture stage counts it dropped: the batch's verdict steals it anyway.
            let payload = self.batch.payload_mut(index).unwrap_or_default();
            each(Captured {
                payload,
                csum_partial,
                truncated,
            });
        }
        Ok(n)
    }

    fn steal(&mut self) -> Result<(), NfQueueError> {
        match self.batch.last_id() {
            Some(last) => self.queue.verdict_batch(last, Verdict::Drop),
            None => Ok(()),
        }
    }

    fn losses(&self) -> SourceLosses {
        let seen = self.queue.counters();
        SourceLosses {
            overruns: seen.enobufs,
            errors: seen.malformed + seen.kernel_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
