//! AF_PACKET sockets: the link I/O for NICs without XDP support (`io = "af_packet"`).
//!
//! [`PacketSocket::open`] makes a `SOCK_RAW` packet socket (packet(7)) bound to one interface
//! and to alagg's ethertype, so the kernel hands it only alagg frames received on that link,
//! never frames this host sends (`PACKET_IGNORE_OUTGOING`), and sends its frames straight to
//! the driver (`PACKET_QDISC_BYPASS`). [`PacketSocket::split`] gives a receive half and a
//! transmit half (two descriptors of the one socket) to different threads.
//!
//! Both halves batch: [`PacketRx::recv`] takes up to [`BATCH`] frames with one `recvmmsg(2)`
//! into preallocated buffers, and [`PacketTx`] stages frames into preallocated slots and sends
//! them with one `sendmmsg(2)` per [`BATCH`]. No allocation per frame.
//!
//! Losses are counted, not only logged: frames cut short on receipt (`MSG_TRUNC`) and the
//! kernel's receive-buffer drops (`PACKET_STATISTICS`, reset by every read, so added up here)
//! in [`PacketRx::losses`]; frames a `sendmmsg(2)` did not send in [`PacketTx::losses`].

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use crate::{
    port::{RxLosses, TxLosses},
    sys::MmsgSlots,
};

/// Frames per `recvmmsg`/`sendmmsg`.
pub(crate) const BATCH: usize = 64;

/// The longest frame a slot holds: an Ethernet frame of a 9000-byte jumbo MTU, and then some.
pub(crate) const MAX_FRAME: usize = SLOT;

/// Bytes per frame slot.
const SLOT: usize = 9216;

/// Socket receive buffer asked for: room for bursts while the receive thread is busy.
const RECV_BUFFER: i32 = 8 << 20;

/// AF_PACKET failures, each naming the interface.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PacketError {
    /// The interface does not exist.
    #[error("AF_PACKET on {interface}: no such interface (check `ip link`)")]
    NoInterface {
        /// The interface.
        interface: String,
    },
    /// A socket call failed.
    #[error("AF_PACKET on {interface}: {what}: {source}")]
    Io {
        /// The interface.
        interface: String,
        /// What was being done.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A packet socket bound to one interface and ethertype.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    rx: PacketRx,
    tx: PacketTx,
}

impl PacketSocket {
    /// Opens a packet socket on `interface` for frames of `ethertype`.
    pub(crate) fn open(interface: &str, ethertype: u16) -> Result<Self, PacketError> {
        let fd = bound_socket(interface, ethertype)?;
        let tx_fd = fd.try_clone().map_err(|source| PacketError::Io {
            interface: interface.to_owned(),
            what: "duplicating the descriptor",
            source,
        })?;
        Ok(Self {
            rx: PacketRx::new(fd),
            tx: PacketTx::new(tx_fd),
        })
    }

    /// A transmit half alone: a packet socket on `interface` that receives nothing (protocol
    /// 0), for a capture worker other than the one whose socket receives the link's frames.
    pub(crate) fn open_tx_only(interface: &str) -> Result<PacketTx, PacketError> {
        Ok(PacketTx::new(bound_socket(interface, 0)?))
    }

    /// The receive and transmit halves.
    pub(crate) fn split(self) -> (PacketRx, PacketTx) {
        (self.rx, self.tx)
    }
}

/// A packet socket bound to `interface`, receiving frames of `ethertype` (0: none).
fn bound_socket(interface: &str, ethertype: u16) -> Result<OwnedFd, PacketError> {
    let io_error = |what| {
        let interface = interface.to_owned();
        move |source| PacketError::Io {
            interface,
            what,
            source,
        }
    };
    let ifindex = crate::netdev::ifindex(interface).ok_or_else(|| PacketError::NoInterface {
        interface: interface.to_owned(),
    })?;
    let protocol = ethertype.to_be();
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(protocol),
        )
    };
    if raw < 0 {
        return Err(io_error("creating the socket (needs CAP_NET_RAW)")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Best effort: each only makes the socket faster or quieter.
    let _ = set_option(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    let _ = set_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
    if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECV_BUFFER).is_err() {
        let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECV_BUFFER);
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: `address` is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_error("binding to the interface")(
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

fn set_option(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    crate::sys::set_int_option(fd.as_raw_fd(), level, name, value)
}

/// The receive half of a [`PacketSocket`].
#[derive(Debug)]
pub(crate) struct PacketRx {
    fd: OwnedFd,
    slots: MmsgSlots,
    /// Frames lost since the socket opened.
    losses: RxLosses,
}

impl PacketRx {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            slots: MmsgSlots::new(BATCH, SLOT),
            losses: RxLosses::default(),
        }
    }

    /// What the socket lost since it opened: frames cut short, and the kernel's drops for a
    /// full receive buffer, read now (one `getsockopt(2)`, which resets the kernel's count).
    pub(crate) fn losses(&mut self) -> RxLosses {
        if let Ok(stats) = crate::sys::packet_statistics(self.fd()) {
            add_statistics(&mut self.losses, &stats);
        }
        self.losses
    }

    /// The socket, for `poll(2)`.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Hands up to [`BATCH`] received frames to `each` (whole Ethernet frames), with one
    /// `recvmmsg(2)` that does not block. Returns how many frames were read.
    pub(crate) fn recv(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
        let n = match self.slots.recv(self.fd.as_raw_fd()) {
            Ok(n) => n,
            Err(error) => {
                return match error.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                    _ => Err(error),
                };
            }
        };
        for i in 0..n {
            let (len, truncated) = self.slots.received(i);
            if truncated {
                // Longer than a slot: only its start arrived, which is no frame.
                self.losses.truncated += 1;
            } else {
                each(&self.slots.slot(i)[..len]);
            }
        }
        Ok(n)
    }
}

/// The transmit half of a [`PacketSocket`].
#[derive(Debug)]
pub(crate) struct PacketTx {
    fd: OwnedFd,
    slots: MmsgSlots,
    staged: usize,
    /// Staged frames not sent, since the socket opened.
    losses: TxLosses,
}

impl PacketTx {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            slots: MmsgSlots::new(BATCH, SLOT),
            staged: 0,
            losses: TxLosses::default(),
        }
    }

    /// Staged frames that were not sent, since the socket opened.
    pub(crate) fn losses(&self) -> TxLosses {
        self.losses
    }

    /// Writes one frame through `write`, which gets a slot and returns the length it wrote
    /// (0: nothing to send). A full batch is sent at once. Returns whether a frame was staged.
    pub(crate) fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.staged == BATCH {
            // What this flush does not send is counted in `losses`; its error, if any, comes
            // again on the next explicit flush, which logs it.
            let _ = self.flush();
            if self.staged == BATCH {
                return false;
            }
        }
        let i = self.staged;
        let written = write(self.slots.slot_mut(i)).min(SLOT);
        if written == 0 {
            return false;
        }
        self.slots.set_send_len(i, written);
        self.staged += 1;
        true
    }

    /// Sends every staged frame (one `sendmmsg(2)`, repeated while it makes progress). Frames
    /// the device does not take (its queue full, the interface down) are dropped and counted
    /// ([`PacketTx::losses`]: refused frames, failed calls). Returns the frames sent; an error
    /// only when the socket itself failed (not a full or briefly unavailable device).
    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        let total = self.staged;
        let mut sent = 0;
        let mut result = Ok(());
        while sent < total {
            match self.slots.send(self.fd.as_raw_fd(), sent, total) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.losses.send_errors += 1;
                    result = Err(error);
                    break;
                }
                // No progress and no error: the rest is not sent.
                Ok(0) => break,
                Ok(n) => sent += n,
            }
        }
        self.staged = 0;
        self.losses.refused += (total - sent) as u64;
        match result {
            Err(error) if !is_transient(&error) => Err(error),
            _ => Ok(sent),
        }
    }
}

/// Errors a full or briefly unavailable device gives: the frames are lost, the socket is fine.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN | libc::ENOBUFS | libc::ENETDOWN | libc::ENXIO)
    )
}

/// Adds one `PACKET_STATISTICS` read (counts since the previous read) to `losses`.
fn add_statistics(losses: &mut RxLosses, stats: &libc::tpacket_stats) {
    losses.buffer_full += u64::from(stats.tp_drops);
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn receive_buffer_drops_add_up_over_reads_that_reset_them() {
        let mut losses = RxLosses::default();
        for drops in [3, 0, 4, u32::MAX] {
            let stats = libc::tpacket_stats {
                tp_packets: drops.saturating_add(10),
                tp_drops: drops,
            };
            add_statistics(&mut losses, &stats);
        }
        assert_eq!(losses.buffer_full, 7 + u64::from(u32::MAX));
        assert_eq!(losses.truncated, 0);
    }

    #[test]
    fn a_frame_longer_than_a_slot_is_counted_truncated_and_not_handed_on() {
        // A datagram socket stands in for the packet socket: recvmmsg and MSG_TRUNC alike.
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut rx = PacketRx::new(OwnedFd::from(b));
        a.send(&vec![7u8; SLOT + 100]).unwrap();
        a.send(&[1, 2, 3]).unwrap();
        let mut seen = Vec::new();
        assert_eq!(rx.recv(|frame| seen.push(frame.to_vec())).unwrap(), 2);
        assert_eq!(seen, vec![vec![1, 2, 3]]);
        // Not a packet socket: PACKET_STATISTICS fails and adds nothing.
        let losses = rx.losses();
        assert_eq!((losses.truncated, losses.buffer_full), (1, 0));
    }

    #[test]
    fn frames_a_full_peer_refuses_are_counted_with_the_failed_call() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        crate::sys::set_int_option(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 32 * 1024)
            .unwrap();
        let mut tx = PacketTx::new(OwnedFd::from(a));
        let staged = BATCH - 1;
        for _ in 0..staged {
            assert!(tx.stage(|buf| buf.len()));
        }
        // A full send buffer is the transient kind of failure: no error, the frames counted.
        let sent = tx.flush().unwrap();
        let mut arrived = 0;
        let mut buf = vec![0u8; SLOT];
        while b.recv(&mut buf).is_ok() {
            arrived += 1;
        }
        let losses = tx.losses();
        assert_eq!(arrived, sent);
        assert!(losses.refused > 0, "{losses:?}");
        assert_eq!(sent as u64 + losses.refused, staged as u64);
        assert_eq!(losses.send_errors, 1);
        assert_eq!(tx.staged, 0);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let error = PacketSocket::open("alagg-none9", 0x88b5).unwrap_err();
        assert!(matches!(error, PacketError::NoInterface { .. }), "{error}");
        assert!(error.to_string().contains("alagg-none9"));
    }

    #[test]
    fn staging_fills_slots_and_refuses_empty_frames() {
        // A transmit half on a datagram socket: staging, then what one flush sends.
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut tx = PacketTx::new(OwnedFd::from(a));
        assert!(!tx.stage(|_| 0));
        assert!(tx.stage(|buf| {
            buf[..4].copy_from_slice(&[1, 2, 3, 4]);
            4
        }));
        assert_eq!(tx.staged, 1);
        assert_eq!(&tx.slots.slot(0)[..4], &[1, 2, 3, 4]);
        // What is sent is the length written, not the slot.
        assert_eq!(tx.flush().unwrap(), 1);
        let mut buf = vec![0u8; SLOT];
        assert_eq!(b.recv(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], &[1, 2, 3, 4]);
    }
}
