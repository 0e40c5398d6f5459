//! The TUN device through which received packets enter the local stack (`IFF_TUN | IFF_NO_PI`:
//! each write is one bare IPv4 or IPv6 packet). Kernel reference: Documentation/networking/tuntap.rst,
//! include/uapi/linux/if_tun.h.
//!
//! The device is not persistent: it exists while this value holds its file descriptor, so a
//! crashed alagg leaves no device (and no route through it) behind.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::fd::{AsRawFd, RawFd},
};

/// `TUNSETIFF` from include/uapi/linux/if_tun.h: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

/// Errors opening or writing the TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// `/dev/net/tun` could not be opened.
    #[error("opening /dev/net/tun failed: {0} (is the tun module loaded, and are you root?)")]
    Open(#[source] io::Error),
    /// The kernel refused the device.
    #[error("creating TUN device {name:?} failed: {source} (does another program own that name?)")]
    Create {
        /// Requested name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The name does not fit `IFNAMSIZ`.
    #[error("TUN name {0:?} must be 1 to 15 bytes without NUL")]
    Name(String),
}

impl Tun {
    /// Creates the TUN device `name` (`IFF_TUN | IFF_NO_PI`). The device is down; bring it up and
    /// address it with the host setup.
    pub fn create(name: &str) -> Result<Self, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TunError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
        if rc < 0 {
            return Err(TunError::Create {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel wrote a NUL-terminated name into ifr_name (IFNAMSIZ bytes).
        let actual = unsafe { CStr::from_ptr(request.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Self { file, name: actual })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers one IP packet to the local stack.
    pub fn write(&self, packet: &[u8]) -> io::Result<()> {
        (&self.file).write_all(packet)
    }

    /// A second handle on the same device, for another thread.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// The file descriptor.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_interface_names_are_refused() {
        for name in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(
                matches!(Tun::create(name), Err(TunError::Name(_))),
                "{name:?}"
            );
        }
    }
}
