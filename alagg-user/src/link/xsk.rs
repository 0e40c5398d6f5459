//! AF_XDP sockets (`xsk`): one UMEM and one socket per (link interface, rx queue), wrapping
//! xsk-rs.
//!
//! Owns the UMEM frames and splits them in two pools: receive frames live on the fill ring or in
//! the rx ring and are recycled to the fill ring right after the caller has read them; transmit
//! frames live in `free` until [`XskSocket::stage`] fills one, then on the tx ring until the
//! completion ring hands them back. Invariant: every frame is in exactly one of those places.
//! The socket never loads an XDP program of its own (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): the
//! caller registers its file descriptor in alagg's `XSKS` map (see [`crate::xdp`]).
//! Kernel reference: Documentation/networking/af_xdp.rst, include/uapi/linux/if_xdp.h.

use std::{
    io,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    thread,
    time::Duration,
};

use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::port::{RxLosses, TxLosses};

/// Most descriptors moved per ring operation.
pub const BATCH: usize = 64;

/// Kicks in a row that move nothing before a flush that does not wait for the device returns,
/// at once and without yielding the CPU, leaving the rest on the tx ring for a later kick
/// ([`XskTx::behind`]): the device or the queue behind it is taking frames slower than they
/// come (a rate-limited link in copy mode holds its frames' buffers, and the socket's send
/// budget, until its qdisc lets them go). Waiting for it there would pace every link by the
/// slowest, and, where one thread also receives (run to completion), hold back the ACKs that
/// clock the sender: one TCP flow over 200 + 100 Mbit/s redundant links got 96 Mbit/s.
const KICKS_WITHOUT_PROGRESS: u32 = 2;
/// Flushes in a row that move nothing after which a link whose tx ring still holds frames is
/// no longer [`XskTx::behind`] (a stopped device must not keep its worker waking): its frames
/// go when the next flush does.
const BEHIND_FLUSHES: u32 = 64;
/// Kicks in a row that move nothing before a flush that waits for the device gives up.
const MAX_STALLS: u32 = 1000;
/// Flushes in a row that move nothing before the staged frames are given up as stalled (the
/// interface went away, or its queue stopped).
const MAX_STALLED_FLUSHES: u32 = 1000;

/// Errors opening or driving an AF_XDP socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size in the configuration is not one the kernel accepts.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// The UMEM could not be created.
    #[error("creating the UMEM for {interface} failed: {reason}")]
    Umem {
        /// Interface the socket was for.
        interface: String,
        /// What failed.
        reason: String,
    },
    /// The socket could not be created or bound.
    #[error("creating the AF_XDP socket on {interface} queue {queue} failed: {reason}")]
    Socket {
        /// Interface.
        interface: String,
        /// Rx queue.
        queue: u32,
        /// What failed, with the kernel's error.
        reason: String,
    },
    /// The device took no frame from the tx ring for a while; the staged frames were dropped.
    #[error("AF_XDP transmit stalled; {dropped} frames dropped (interface gone or stopped?)")]
    Stalled {
        /// Frames given back unsent.
        dropped: usize,
    },
    /// A wakeup syscall failed.
    #[error("AF_XDP wakeup failed: {0}")]
    Io(#[from] io::Error),
}

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the UMEM; half receive, half transmit. A power of two.
    pub frames: u32,
    /// Bytes per frame (2048 or 4096).
    pub frame_size: u32,
    /// Descriptors in each of the rx, tx, fill and completion rings. A power of two.
    pub ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frames: 8192,
            frame_size: 4096,
            ring_size: 2048,
        }
    }
}

/// One AF_XDP socket with its own UMEM. [`XskSocket::split`] gives its receive and transmit
/// halves to different threads; they share the UMEM but never a frame.
#[derive(Debug)]
pub struct XskSocket {
    rx: XskRx,
    tx: XskTx,
}

/// The receive half: rx and fill rings and the receive frames.
#[derive(Debug)]
pub struct XskRx {
    umem: Umem,
    fill: FillQueue,
    rx: RxQueue,
    /// Scratch for ring operations.
    scratch: Vec<FrameDesc>,
    /// Receive frames waiting for room on the fill ring.
    spare: Vec<FrameDesc>,
}

/// The transmit half: tx and completion rings and the transmit frames.
#[derive(Debug)]
pub struct XskTx {
    umem: Umem,
    comp: CompQueue,
    tx: TxQueue,
    /// Transmit frames ready to be written.
    free: Vec<FrameDesc>,
    /// Transmit frames written by `stage` and not yet on the tx ring.
    staged: Vec<FrameDesc>,
    /// Scratch for ring operations.
    scratch: Vec<FrameDesc>,
    /// Frames on the tx ring whose completion has not come back yet.
    in_flight: usize,
    /// Flushes in a row that moved nothing ([`MAX_STALLED_FLUSHES`]).
    stalled_flushes: u32,
    /// Whether a flush waits for a device that takes frames slowly ([`XskTx::wait_for_device`]).
    patient: bool,
    /// Descriptors in the tx ring.
    ring_size: u32,
    /// Frames dropped after they were staged, since the socket opened.
    losses: TxLosses,
    /// The last flush left frames on the tx ring or staged ([`XskTx::behind`]).
    left: bool,
}

impl XskSocket {
    /// Opens a socket on `interface`, rx queue `queue`, and fills its fill ring.
    ///
    /// Binding retries for a short while on `EBUSY`: the kernel releases a queue some tens of
    /// milliseconds after the previous socket on it closed.
    pub fn open(interface: &str, queue: u32, config: XskConfig) -> Result<Self, XskError> {
        let frames = NonZeroU32::new(config.frames)
            .filter(|n| n.get().is_power_of_two() && n.get() >= 4)
            .ok_or_else(|| {
                XskError::Config(format!(
                    "frames {} is not a power of two >= 4",
                    config.frames
                ))
            })?;
        let ring = QueueSize::new(config.ring_size)
            .map_err(|e| XskError::Config(format!("ring size {}: {e}", config.ring_size)))?;
        let frame_size = FrameSize::new(config.frame_size)
            .map_err(|e| XskError::Config(format!("frame size {}: {e}", config.frame_size)))?;
        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let (umem, mut descs) =
            Umem::new(umem_config, frames, false).map_err(|e| XskError::Umem {
                interface: interface.to_owned(),
                reason: e.to_string(),
            })?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name: Interface = interface.parse().map_err(|_| XskError::Socket {
            interface: interface.to_owned(),
            queue,
            reason: "interface name contains a NUL byte".into(),
        })?;

        let mut attempt = 0;
        let (tx, rx, rings) = loop {
            // SAFETY: this UMEM is fresh and used by this socket only, so the (interface, queue)
            // pair is not already bound through it; INHIBIT_PROG_LOAD is set in any case.
            match unsafe { Socket::new(socket_config, &umem, &name, queue) } {
                Ok(parts) => break parts,
                Err(error) => {
                    let busy = error.to_string().contains("busy");
                    attempt += 1;
                    if !busy || attempt > 20 {
                        return Err(XskError::Socket {
                            interface: interface.to_owned(),
                            queue,
                            reason: error.to_string(),
                        });
                    }
                    thread::sleep(Duration::from_millis(25));
                }
            }
        };
        let (fill, comp) = rings.ok_or_else(|| XskError::Socket {
            interface: interface.to_owned(),
            queue,
            reason: "no fill/completion rings returned for a fresh UMEM".into(),
        })?;

        let half = descs.len() / 2;
        let free = descs.split_off(half);
        // The receive half goes to the fill ring, as much as fits; the rest waits as spare.
        let spare = descs;
        let mut socket = Self {
            rx: XskRx {
                umem: umem.clone(),
                fill,
                rx,
                scratch: vec![FrameDesc::default(); BATCH],
                spare,
            },
            tx: XskTx {
                umem,
                comp,
                tx,
                free,
                staged: Vec::with_capacity(BATCH),
                scratch: vec![FrameDesc::default(); BATCH],
                in_flight: 0,
                stalled_flushes: 0,
                patient: true,
                left: false,
                ring_size: config.ring_size,
                losses: TxLosses::default(),
            },
        };
        socket.rx.refill()?;
        Ok(socket)
    }

    /// The socket's file descriptor, for the `XSKS` map and for `poll`.
    pub fn fd(&self) -> RawFd {
        self.rx.fd()
    }

    /// Receive and transmit halves, for two threads.
    pub fn split(self) -> (XskRx, XskTx) {
        (self.rx, self.tx)
    }

    /// See [`XskRx::recv`].
    pub fn recv(&mut self, each: impl FnMut(&[u8])) -> Result<usize, XskError> {
        self.rx.recv(each)
    }

    /// See [`XskRx::poll`].
    pub fn poll_rx(&mut self, timeout_ms: i32) -> Result<bool, XskError> {
        self.rx.poll(timeout_ms)
    }

    /// See [`XskTx::wait_for_device`].
    pub fn wait_for_device(&mut self, wait: bool) {
        self.tx.wait_for_device(wait);
    }

    /// See [`XskTx::stage`].
    pub fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.tx.stage(write)
    }

    /// See [`XskTx::flush`].
    pub fn flush(&mut self) -> Result<usize, XskError> {
        self.tx.flush()
    }

    /// See [`XskTx::behind`].
    pub fn behind(&self) -> bool {
        self.tx.behind()
    }
}

impl XskRx {
    /// The socket's file descriptor, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Hands up to [`BATCH`] received frames to `each` (the whole Ethernet frame) and recycles
    /// them to the fill ring. Returns how many frames were read.
    pub fn recv(&mut self, mut each: impl FnMut(&[u8])) -> Result<usize, XskError> {
        // SAFETY: `scratch` receives descriptors of frames of this UMEM.
        let count = unsafe { self.rx.consume(&mut self.scratch) };
        for desc in &mut self.scratch[..count] {
            // SAFETY: the kernel handed this frame to us through the rx ring; nothing else reads
            // or writes it until we put it back on the fill ring below.
            let data = unsafe { self.umem.data(desc) };
            each(data.contents());
        }
        if count > 0 {
            // In copy mode the rx address points inside the chunk; the fill ring of an aligned
            // UMEM masks it back to the chunk start (net/xdp/xsk_buff_pool.c), so the
            // descriptors go back as they came.
            self.spare.extend_from_slice(&self.scratch[..count]);
            self.refill()?;
        }
        Ok(count)
    }

    /// Puts spare receive frames on the fill ring, as many as it has room for.
    fn refill(&mut self) -> Result<(), XskError> {
        let wanted = u32::try_from(self.spare.len()).unwrap_or(u32::MAX);
        let room = (self.fill.nb_free(wanted) as usize).min(self.spare.len());
        if room > 0 {
            let from = self.spare.len() - room;
            // SAFETY: spare frames belong to this UMEM and are on no ring; ring reservation is
            // all-or-nothing and `room` entries are free.
            let produced = unsafe { self.fill.produce(&self.spare[from..]) };
            self.spare.truncate(self.spare.len() - produced);
        }
        if self.fill.needs_wakeup() {
            self.fill.wakeup(self.rx.fd_mut(), 0)?;
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for frames to arrive. Returns whether any are ready.
    pub fn poll(&mut self, timeout_ms: i32) -> Result<bool, XskError> {
        Ok(self.rx.poll(timeout_ms)?)
    }

    /// What the kernel counted lost on this socket since it was bound (`XDP_STATISTICS`, one
    /// system call); all zero if the kernel does not answer.
    pub(crate) fn losses(&self) -> RxLosses {
        crate::sys::xdp_statistics(self.fd())
            .map(|stats| losses_of(&stats))
            .unwrap_or_default()
    }
}

/// The kernel's statistics of an AF_XDP socket as the losses a link counts.
pub(crate) fn losses_of(stats: &libc::xdp_statistics) -> RxLosses {
    RxLosses {
        xsk_rx_dropped: stats.rx_dropped,
        xsk_rx_ring_full: stats.rx_ring_full,
        xsk_rx_invalid: stats.rx_invalid_descs,
        xsk_fill_empty: stats.rx_fill_ring_empty_descs,
        xsk_tx_invalid: stats.tx_invalid_descs,
        xsk_tx_ring_empty: stats.tx_ring_empty_descs,
        ..RxLosses::default()
    }
}

impl XskTx {
    /// Writes one frame through `write`, which gets the frame's whole buffer and returns the
    /// length it wrote (0: nothing to send). Returns `false` when nothing was staged: no transmit
    /// frame was free (the caller may [`flush`](Self::flush) and retry, or drop and count), or
    /// `write` wrote nothing.
    pub fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(mut desc) = self.free.pop() else {
            return false;
        };
        // SAFETY: `desc` is a free transmit frame of this UMEM: on no ring and not staged.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let capacity = data.cursor().buf_len();
        data.cursor().set_pos(capacity);
        let written = write(data.contents_mut()).min(capacity);
        data.cursor().set_pos(written);
        if written == 0 {
            // Nothing to send: the frame goes back to the pool.
            self.free.push(desc);
            return false;
        }
        self.staged.push(desc);
        if self.staged.len() >= BATCH {
            // A full batch goes out at once. What it drops is counted in `losses`; a failed
            // kick leaves the frames on the ring, and the next explicit flush reports it.
            let _ = self.flush();
        }
        true
    }

    /// Puts every staged frame on the tx ring and kicks the kernel until the ring is drained
    /// into the device (copy mode sends at most 32 frames per wakeup). Returns the frames queued.
    pub fn flush(&mut self) -> Result<usize, XskError> {
        let result = self.drain();
        self.left = (!self.staged.is_empty() || self.tx.nb_free_exact() < self.ring_size)
            && self.stalled_flushes < BEHIND_FLUSHES;
        result
    }

    /// Whether the last flush left frames for the device to take (one that does not wait for
    /// it, [`XskTx::wait_for_device`]): they go out only when the socket is kicked again, so
    /// the caller flushes again soon even when nothing new comes. False once many flushes in a
    /// row have moved nothing.
    pub fn behind(&self) -> bool {
        self.left
    }

    /// [`XskTx::flush`]'s work.
    fn drain(&mut self) -> Result<usize, XskError> {
        let mut queued = 0;
        let mut stalls = 0;
        let mut moved = false;
        loop {
            if !self.staged.is_empty() {
                // SAFETY: staged frames belong to this UMEM and are on no ring.
                let produced = unsafe { self.tx.produce(&self.staged) };
                self.staged.drain(..produced);
                self.in_flight += produced;
                queued += produced;
            }
            let free_before = self.tx.nb_free_exact();
            if self.staged.is_empty() && free_before >= self.ring_size {
                return Ok(queued);
            }
            // Copy mode sends at most a few dozen descriptors per kick: kick until the kernel
            // has taken every descriptor off the ring.
            self.kick()?;
            self.reclaim();
            if self.tx.nb_free_exact() > free_before {
                stalls = 0;
                moved = true;
                self.stalled_flushes = 0;
            } else {
                stalls += 1;
                if self.patient && stalls > MAX_STALLS {
                    // The device takes nothing (its interface went away, or its queue is
                    // stopped): give the staged frames back instead of spinning.
                    let dropped = self.staged.len();
                    self.free.append(&mut self.staged);
                    self.losses.stalled += dropped as u64;
                    return Err(XskError::Stalled { dropped });
                }
                if !self.patient && stalls > KICKS_WITHOUT_PROGRESS {
                    if moved {
                        return Ok(queued);
                    }
                    self.stalled_flushes += 1;
                    if self.stalled_flushes <= MAX_STALLED_FLUSHES {
                        return Ok(queued);
                    }
                    // The device has taken nothing for many flushes (its interface went away,
                    // or its queue is stopped): give the staged frames back.
                    self.stalled_flushes = 0;
                    let dropped = self.staged.len();
                    self.free.append(&mut self.staged);
                    self.losses.stalled += dropped as u64;
                    return Err(XskError::Stalled { dropped });
                }
                if self.patient {
                    thread::yield_now();
                }
            }
        }
    }

    /// Whether [`XskTx::flush`] waits for a device that takes frames slower than they come
    /// (the default): right when this link alone carries its packets, where the wait paces the
    /// sender to what the link can take. Off when other links carry copies of the same packets
    /// (redundant sending): then a slow link must not hold the others back, and what it cannot
    /// take waits on its ring and, when no transmit frame is left, is dropped and counted.
    pub fn wait_for_device(&mut self, wait: bool) {
        self.patient = wait;
    }

    /// Takes completed transmit frames back into the free pool.
    pub fn reclaim(&mut self) -> usize {
        let mut total = 0;
        loop {
            // SAFETY: the completion ring hands back frames of this UMEM that we transmitted.
            let count = unsafe { self.comp.consume(&mut self.scratch) };
            // Completions carry the address we submitted (a frame's data start) and length 0.
            self.free.extend_from_slice(&self.scratch[..count]);
            self.in_flight -= count.min(self.in_flight);
            total += count;
            if count < self.scratch.len() {
                return total;
            }
        }
    }

    /// Frames on the tx ring not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// What this half dropped of the frames it staged, since the socket opened.
    pub(crate) fn losses(&self) -> TxLosses {
        self.losses
    }

    /// Kicks the kernel to send what is on the tx ring, and counts what it reports.
    fn kick(&mut self) -> Result<(), XskError> {
        let result = crate::sys::kick_tx(self.tx.fd().as_raw_fd());
        match kick_outcome(result.as_ref().err().and_then(io::Error::raw_os_error)) {
            Kick::Sent => Ok(()),
            Kick::DeviceDropped => {
                self.losses.refused += 1;
                Ok(())
            }
            Kick::Failed => {
                self.losses.send_errors += 1;
                result.map_err(XskError::Io)
            }
        }
    }
}

/// What a transmit kick's answer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kick {
    /// The kernel took what it could for now (or the interface is down: the frames wait).
    Sent,
    /// The device dropped the frame it was handed (`NET_XMIT_DROP`); its completion comes
    /// back, so the frame is lost, not leaked.
    DeviceDropped,
    /// Another error: the socket is in trouble.
    Failed,
}

/// A kick's meaning from its `errno` (`None`: it succeeded). net/xdp/xsk.c,
/// `__xsk_generic_xmit`: `EAGAIN` asks for another kick (device busy, completion ring full),
/// `ENOBUFS` a full device, `ENETDOWN` a device down; `EBUSY` reports a frame the device
/// dropped.
fn kick_outcome(errno: Option<i32>) -> Kick {
    match errno {
        None | Some(libc::EAGAIN | libc::ENOBUFS | libc::ENETDOWN) => Kick::Sent,
        Some(libc::EBUSY) => Kick::DeviceDropped,
        Some(_) => Kick::Failed,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn xdp_statistics_map_to_the_link_counters_one_to_one() {
        let stats = libc::xdp_statistics {
            rx_dropped: 1,
            rx_invalid_descs: 2,
            tx_invalid_descs: 3,
            rx_ring_full: 4,
            rx_fill_ring_empty_descs: 5,
            tx_ring_empty_descs: 6,
        };
        let losses = losses_of(&stats);
        assert_eq!(
            losses,
            RxLosses {
                truncated: 0,
                buffer_full: 0,
                xsk_rx_dropped: 1,
                xsk_rx_ring_full: 4,
                xsk_rx_invalid: 2,
                xsk_fill_empty: 5,
                xsk_tx_invalid: 3,
                xsk_tx_ring_empty: 6,
            }
        );
    }

    #[test]
    fn a_kick_that_reports_a_dropped_frame_is_told_from_a_busy_device_and_a_failure() {
        let cases = [
            (None, Kick::Sent),
            (Some(libc::EAGAIN), Kick::Sent),
            (Some(libc::ENOBUFS), Kick::Sent),
            (Some(libc::ENETDOWN), Kick::Sent),
            (Some(libc::EBUSY), Kick::DeviceDropped),
            (Some(libc::ENXIO), Kick::Failed),
            (Some(libc::EBADF), Kick::Failed),
        ];
        for (errno, kick) in cases {
            assert_eq!(kick_outcome(errno), kick, "{errno:?}");
        }
    }

    #[test]
    fn xdp_statistics_of_a_socket_that_is_not_af_xdp_fail_cleanly() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(crate::sys::xdp_statistics(socket.as_raw_fd()).is_err());
    }
}
