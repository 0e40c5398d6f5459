//! Raw system calls the crate makes outside its socket edges, each behind a typed, safe
//! wrapper: waiting (`poll(2)`, `ppoll(2)`), socket options and statistics (`XDP_STATISTICS`,
//! `PACKET_STATISTICS`), the AF_XDP transmit kick, batches of datagrams (`recvmmsg(2)`,
//! `sendmmsg(2)` over [`MmsgSlots`], for AF_PACKET links and NFQUEUE alike), randomness, the
//! process's CPU time and the machine's monotonic clock, the caller's privileges and alagg's
//! runtime directory in this network namespace. The edges that own a kernel object (AF_XDP,
//! AF_PACKET, NFQUEUE, TUN) keep the calls tied to their own buffers; everything that stands
//! alone, or that two edges share, is here.

use std::{
    io,
    os::fd::RawFd,
    path::{Path, PathBuf},
    time::Duration,
};

/// CPU time this process has used so far, all its threads, user and system
/// (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`); zero if the clock cannot be read.
pub(crate) fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `CLOCK_MONOTONIC` as it is, not relative to this process: the same clock in every process
/// of the machine (network namespaces do not change it), so two processes' readings compare.
pub(crate) fn monotonic() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime(id)`; zero if the clock cannot be read.
fn clock(id: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant of the kernel.
    let rc = unsafe { libc::clock_gettime(id, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Waits until `fd` is readable or `timeout` passes (or a signal arrives); returns whether it
/// is readable.
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pollfd` is one valid pollfd that outlives the call, and the count passed is 1.
    unsafe { libc::poll(&mut pollfd, 1, ms) > 0 }
}

/// `poll(2)` on `fds` for at most `timeout`, to the nanosecond (`ppoll(2)`). Fills in each
/// entry's `revents`; returns how many entries have events. A signal ends the wait early
/// (`Ok(0)`).
pub(crate) fn ppoll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let timespec = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits a c_long everywhere.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of pollfd of the length passed; `timespec` is a valid
    // timespec; a null signal mask leaves the mask as it is.
    let ready = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &timespec,
            std::ptr::null(),
        )
    };
    match usize::try_from(ready) {
        Ok(ready) => Ok(ready),
        Err(_) => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(error)
            }
        }
    }
}

/// Sets an `int` socket option (`setsockopt(2)`).
pub(crate) fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size; the kernel checks the
    // descriptor.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a socket option into `value` (`getsockopt(2)`); returns the length the kernel wrote.
///
/// # Safety
///
/// `T` must be plain data for which every bit pattern is a valid value (a `#[repr(C)]` struct
/// of integers), as the kernel may write any bytes into it.
unsafe fn get_option<T>(fd: RawFd, level: i32, name: i32, value: &mut T) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable `T` of the length passed, and the caller vouches that
    // any bytes the kernel writes make a valid `T`; the kernel checks the descriptor.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut *value).cast(), &mut len) };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An AF_XDP socket's statistics (`getsockopt(SOL_XDP, XDP_STATISTICS)`,
/// include/uapi/linux/if_xdp.h): counts since the socket was bound, never reset. A kernel
/// older than 5.9 answers with the first three fields only (`struct xdp_statistics_v1`); the
/// others then read 0.
pub(crate) fn xdp_statistics(fd: RawFd) -> io::Result<libc::xdp_statistics> {
    let mut stats = libc::xdp_statistics {
        rx_dropped: 0,
        rx_invalid_descs: 0,
        tx_invalid_descs: 0,
        rx_ring_full: 0,
        rx_fill_ring_empty_descs: 0,
        tx_ring_empty_descs: 0,
    };
    // SAFETY: xdp_statistics is a repr(C) struct of u64 counters: any bytes are valid.
    let len = unsafe { get_option(fd, libc::SOL_XDP, libc::XDP_STATISTICS, &mut stats)? };
    if len < size_of::<libc::xdp_statistics_v1>() {
        return Err(io::Error::other(format!(
            "XDP_STATISTICS answered {len} bytes, fewer than any struct xdp_statistics"
        )));
    }
    Ok(stats)
}

/// A packet socket's statistics since the previous call (`getsockopt(SOL_PACKET,
/// PACKET_STATISTICS)`, packet(7)): the kernel resets them on every read, so the caller adds
/// them up. `tp_drops` counts frames lost because the socket's receive buffer was full.
pub(crate) fn packet_statistics(fd: RawFd) -> io::Result<libc::tpacket_stats> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    // SAFETY: tpacket_stats is a repr(C) struct of two c_uint counters: any bytes are valid.
    unsafe { get_option(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut stats)? };
    Ok(stats)
}

/// Kicks an AF_XDP socket's transmit ring: a `sendto(2)` of nothing that does not block
/// (Documentation/networking/af_xdp.rst, `XDP_USE_NEED_WAKEUP`). The kernel's error is handed
/// back as it came: in copy mode `EBUSY` means the device dropped a frame it was given
/// (`NET_XMIT_DROP`), `EAGAIN` and `ENOBUFS` that it took what it could for now (net/xdp/xsk.c).
pub(crate) fn kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a send of zero bytes from a null buffer to no address: the kernel reads nothing.
    let rc = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Fills `bytes` from the kernel's random source (`getrandom(2)`); whether it did.
pub(crate) fn random_bytes(bytes: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    usize::try_from(got).is_ok_and(|got| got == bytes.len())
}

/// Takes an exclusive `flock(2)` on `file` without waiting: `Ok(true)` when this open file
/// now holds it, `Ok(false)` when another holds it. The lock lasts until the file (every
/// duplicate of its descriptor) is closed, which the kernel does when the process ends,
/// however it ends.
pub(crate) fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => {}
            _ => return Err(error),
        }
    }
}

/// The machine's RAM in bytes (`MemTotal` of `/proc/meminfo`), if readable.
pub(crate) fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`getrlimit(2)`); `None` when unlimited or unreadable.
pub(crate) fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Whether the process has `CAP_IPC_LOCK` in its effective set (`CapEff` of
/// `/proc/self/status`, bit 14 in include/uapi/linux/capability.h), which lifts
/// `RLIMIT_MEMLOCK`.
pub(crate) fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            let hex = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Whether the process runs as root (effective user id 0).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// alagg's runtime directory.
pub(crate) const RUN_DIR: &str = "/run/alagg";

/// The runtime directory of this network namespace: [`RUN_DIR`] in the host's own namespace,
/// `RUN_DIR/net-<inode>` in any other, so that instances in different namespaces (which may
/// use the same TUN name) never share state.
pub(crate) fn run_dir() -> PathBuf {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let init = std::fs::read_link("/proc/1/ns/net").ok();
    match ours {
        Some(ours) if Some(&ours) != init.as_ref() => {
            let id: String = ours
                .to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            Path::new(RUN_DIR).join(format!("net-{id}"))
        }
        _ => PathBuf::from(RUN_DIR),
    }
}

/// A netlink route socket subscribed to link notifications (`RTMGRP_LINK`, rtnetlink(7)): the
/// kernel sends a message on it whenever an interface changes (carrier, up/down, added,
/// removed). alagg only wakes on them and then reads the interfaces' state from sysfs, so the
/// messages are drained unread.
#[derive(Debug)]
pub(crate) struct LinkEvents(std::os::fd::OwnedFd);

impl LinkEvents {
    /// Opens and binds the socket (non-blocking).
    pub(crate) fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket just created and owned by nothing else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data, valid when zeroed.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: `address` is a valid sockaddr_nl for the length passed, alive for the call.
        let bound = unsafe {
            libc::bind(
                fd,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(owned))
    }

    /// Waits up to `timeout` for notifications; drains them and returns whether any came
    /// (a receive-buffer overrun, `ENOBUFS`, counts as one: something changed).
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd as _;
        let fd = self.0.as_raw_fd();
        if !wait_readable(fd, timeout) {
            return false;
        }
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: `buf` is valid for writes of its length for the call.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                any = true;
                continue;
            }
            let error = io::Error::last_os_error();
            if n < 0 && error.raw_os_error() == Some(libc::ENOBUFS) {
                any = true;
                continue;
            }
            return any;
        }
    }
}

/// One preallocated buffer cut into equal slots, and the `mmsghdr`s and `iovec`s that point
/// into them: the set-up `recvmmsg(2)` and `sendmmsg(2)` need, made once and reused, so a
/// batch of datagrams costs one syscall and no allocation. Each header names one slot alone
/// (no address, no control data).
///
/// Receiving ([`MmsgSlots::recv`]) offers every slot whole; sending ([`MmsgSlots::send`])
/// sends each slot's first [`MmsgSlots::set_send_len`] bytes. The buffer is allocated zeroed,
/// so only the pages datagrams touch are ever mapped.
pub(crate) struct MmsgSlots {
    buf: Box<[u8]>,
    slot: usize,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

impl MmsgSlots {
    /// `count` slots of `slot` bytes each.
    pub(crate) fn new(count: usize, slot: usize) -> Self {
        let mut buf = vec![0u8; count * slot].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = buf
            .chunks_exact_mut(slot.max(1))
            .take(count)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: slot,
            })
            .collect();
        let headers = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr (and the msghdr in it) is a C struct of integers and raw
                // pointers, for which all-zero bytes are a valid value (no name, no control
                // data); the iovec pointer is set below.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        // The boxes' heap storage never moves, so the pointers stay valid as the struct moves.
        Self {
            buf,
            slot,
            iovecs,
            headers,
        }
    }

    /// How many slots there are: the most datagrams one call takes.
    pub(crate) fn count(&self) -> usize {
        self.headers.len()
    }

    /// The whole buffer, slot `i` at `i * slot` bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The whole buffer, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Slot `i`, whole.
    pub(crate) fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * self.slot..(i + 1) * self.slot]
    }

    /// Slot `i`, whole and writable.
    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * self.slot..(i + 1) * self.slot]
    }

    /// Receives up to [`MmsgSlots::count`] datagrams from `fd` with one `recvmmsg(2)` that
    /// does not block, one per slot in order; returns how many arrived. Nothing waiting is
    /// the kernel's `EAGAIN`, as every other error, handed back as it came.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (header, iov) in self.headers.iter_mut().zip(self.iovecs.iter_mut()) {
            iov.iov_len = self.slot;
            header.msg_len = 0;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at one iovec of `iovecs`, which points at its own
        // `slot`-byte chunk of `buf`; all are owned by `self` and outlive the call, and the
        // kernel writes at most `iov_len` bytes into each. No address or control buffer.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        match usize::try_from(rc) {
            Ok(n) => Ok(n.min(self.count())),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// What the last [`MmsgSlots::recv`] put in slot `i`: its length (at most the slot's) and
    /// whether the datagram was longer than the slot (`MSG_TRUNC`), so that only its start
    /// is there.
    pub(crate) fn received(&self, i: usize) -> (usize, bool) {
        let header = &self.headers[i];
        (
            (header.msg_len as usize).min(self.slot),
            header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        )
    }

    /// Makes slot `i` send its first `len` bytes (at most the slot).
    pub(crate) fn set_send_len(&mut self, i: usize, len: usize) {
        self.iovecs[i].iov_len = len.min(self.slot);
    }

    /// Sends slots `from..to` to `fd` with one `sendmmsg(2)` that does not block, each its
    /// [`MmsgSlots::set_send_len`] bytes; returns how many the kernel took (from `from` on).
    pub(crate) fn send(&mut self, fd: RawFd, from: usize, to: usize) -> io::Result<usize> {
        let to = to.min(self.count());
        if from >= to {
            return Ok(0);
        }
        // SAFETY: headers `from..to` exist (checked above), each points at one iovec of
        // `iovecs`, which points into `buf` for at most a slot; all are owned by `self` and
        // outlive the call. The kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr().add(from),
                (to - from) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(rc) {
            Ok(n) => Ok(n),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

impl std::fmt::Debug for MmsgSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgSlots")
            .field("slots", &self.count())
            .field("slot", &self.slot)
            .finish()
    }
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into this struct's own boxed
// buffers, which move with it, and are used only through `&mut self`.
unsafe impl Send for MmsgSlots {}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::os::{fd::AsRawFd as _, unix::net::UnixDatagram};

    use super::*;

    #[test]
    fn mmsg_slots_receive_one_datagram_per_slot_and_flag_the_long_ones() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut slots = MmsgSlots::new(4, 8);
        assert!(matches!(
            slots.recv(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        ));
        a.send(&[1, 2, 3]).unwrap();
        a.send(&[9; 12]).unwrap();
        a.send(&[]).unwrap();
        a.send(&[4; 8]).unwrap();
        a.send(&[5]).unwrap();
        // Four slots: the fifth datagram waits for the next call.
        assert_eq!(slots.recv(b.as_raw_fd()).unwrap(), 4);
        assert_eq!(slots.received(0), (3, false));
        assert_eq!(&slots.slot(0)[..3], &[1, 2, 3]);
        assert_eq!(slots.received(1), (8, true));
        assert_eq!(slots.slot(1), &[9; 8]);
        assert_eq!(slots.received(2), (0, false));
        assert_eq!(slots.received(3), (8, false));
        assert_eq!(&slots.bytes()[24..32], &[4; 8]);
        assert_eq!(slots.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(slots.received(0), (1, false));
        assert_eq!(slots.slot(0)[0], 5);
        // A flag of the previous call does not linger.
        assert_eq!(slots.received(1), (0, false));
    }

    #[test]
    fn mmsg_slots_send_the_lengths_set_from_the_slot_asked() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut slots = MmsgSlots::new(3, 8);
        for i in 0..3 {
            slots.slot_mut(i).fill(i as u8 + 1);
            slots.set_send_len(i, i + 1);
        }
        slots.set_send_len(2, 100);
        assert_eq!(slots.send(a.as_raw_fd(), 1, 3).unwrap(), 2);
        assert_eq!(slots.send(a.as_raw_fd(), 2, 1).unwrap(), 0);
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[2, 2]);
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[3; 8], "a length beyond the slot is the slot");
        b.set_nonblocking(true).unwrap();
        assert!(b.recv(&mut buf).is_err(), "slot 0 was not sent");
    }

    #[test]
    fn random_bytes_fill_the_buffer() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        assert!(random_bytes(&mut a) && random_bytes(&mut b));
        assert_ne!(a, b, "two draws of 128 random bits are equal");
    }

    #[test]
    fn ppoll_times_out_on_a_silent_descriptor() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut pollfd = [libc::pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(ppoll(&mut pollfd, Duration::from_millis(1)).ok(), Some(0));
        assert!(!wait_readable(fds[0], Duration::from_millis(1)));
        // SAFETY: writes one byte from a live buffer into the pipe made above.
        assert_eq!(unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) }, 1);
        assert_eq!(ppoll(&mut pollfd, Duration::from_millis(1)).ok(), Some(1));
        assert!(wait_readable(fds[0], Duration::ZERO));
        for fd in fds {
            // SAFETY: closes the descriptors made above, once.
            unsafe { libc::close(fd) };
        }
    }
}
