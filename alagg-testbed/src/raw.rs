//! A raw AF_PACKET socket bound to one interface, for injecting and observing Ethernet frames
//! (linux/if_packet.h, packet(7)).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use crate::{Error, Result};

/// An AF_PACKET socket bound to one interface in the calling thread's network namespace.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a socket on `interface` that receives frames of `ethertype` (or every frame with
    /// `ETH_P_ALL`, 0x0003) and can send any frame.
    pub fn open(interface: &str, ethertype: u16) -> Result<Self> {
        let io_error = |what: &str| Error::Io {
            what: format!("{what} on {interface}"),
            source: io::Error::last_os_error(),
        };
        let name = CString::new(interface).map_err(|_| Error::Io {
            what: format!("interface name {interface:?}"),
            source: io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: `name` is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io_error("looking up the interface"));
        }
        let protocol = ethertype.to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        if raw < 0 {
            return Err(io_error("opening an AF_PACKET socket"));
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ifindex = i32::try_from(ifindex).unwrap_or(i32::MAX);
        let address = sockaddr_ll(ifindex, protocol);
        // SAFETY: `address` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_error("binding an AF_PACKET socket"));
        }
        Ok(Self { fd, ifindex })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let address = sockaddr_ll(self.ifindex, 0);
        // SAFETY: `frame` is valid for its length; `address` is a valid sockaddr_ll.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one frame into `buf`, waiting at most `timeout`. `Ok(None)` on timeout. Frames
    /// this host sent itself (PACKET_OUTGOING) are skipped.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, ms) };
            if ready < 0 {
                return Err(io::Error::last_os_error());
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: a zeroed sockaddr_ll is valid; recvfrom writes at most `len` bytes.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` is valid for writes of its length; `from`/`len` are valid.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(usize::try_from(got).unwrap_or(0)));
        }
    }

    /// Counts frames received until `idle` passes with none.
    pub fn drain_count(&self, idle: Duration) -> io::Result<usize> {
        let mut buf = [0u8; 2048];
        let mut count = 0;
        while self.recv(&mut buf, idle)?.is_some() {
            count += 1;
        }
        Ok(count)
    }
}

fn sockaddr_ll(ifindex: i32, protocol_be: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol_be;
    address.sll_ifindex = ifindex;
    address
}
