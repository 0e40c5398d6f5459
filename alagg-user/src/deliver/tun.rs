//! The TUN device through which received packets enter the local stack
//! (`IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`: each write is a `virtio_net_hdr`, then one IPv4 or
//! IPv6 packet, which the header may announce as GSO, see [`super::offload`]). Kernel
//! reference: Documentation/networking/tuntap.rst, include/uapi/linux/if_tun.h,
//! include/uapi/linux/virtio_net.h.
//!
//! The device is not persistent: it exists while this value holds its file descriptor, so a
//! crashed alagg leaves no device (and no route through it) behind.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io::{self, IoSlice, Write as _},
    os::fd::AsRawFd,
};

pub(crate) use super::offload::{PLAIN_HEADER, VNET_HDR_LEN};

/// Where the delivery stage writes packets: the TUN device, or a test's memory.
pub(crate) trait TunWrite {
    /// Delivers one packet, made of `parts` (at most four) in order, announced by `header` (a
    /// `virtio_net_hdr`, which may say GSO). The kernel refuses (`EINVAL`) a GSO kind it does
    /// not know.
    fn write_parts(&self, header: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<()>;

    /// Delivers one IP packet as it is.
    fn write(&self, packet: &[u8]) -> io::Result<()> {
        self.write_parts(&PLAIN_HEADER, &[packet])
    }
}

/// `TUNSETIFF` from include/uapi/linux/if_tun.h: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// An open TUN device.
#[derive(Debug)]
pub(crate) struct Tun {
    file: File,
    name: String,
}

/// Errors opening or writing the TUN device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunError {
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
    /// Creates the TUN device `name`. The device is down; bring it up and address it with the
    /// host setup.
    pub(crate) fn create(name: &str) -> Result<Self, TunError> {
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
        request.ifr_ifru.ifru_flags =
            (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
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
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the same device, for another thread.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

impl TunWrite for Tun {
    fn write_parts(&self, header: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<()> {
        let mut slices = [IoSlice::new(&[]); 5];
        let Some(slots) = slices.get_mut(..=parts.len()) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        slots[0] = IoSlice::new(header);
        for (slot, part) in slots[1..].iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
        }
        let written = (&self.file).write_vectored(slots)?;
        // A TUN write takes all or nothing.
        if written == slots.iter().map(|s| s.len()).sum::<usize>() {
            Ok(())
        } else {
            Err(io::ErrorKind::WriteZero.into())
        }
    }
}

/// Whether GSO UDP packets (`VIRTIO_NET_HDR_GSO_UDP_L4`) written to a TUN device are safe on
/// the running kernel: Linux 6.2 takes them, and from 6.9 on the kernel also splits those bound
/// for a UDP tunnel socket (VXLAN, Geneve) instead of handing them over whole ("udp: do not
/// accept non-tunnel GSO skbs landing in a tunnel").
pub(crate) fn gso_udp_supported() -> bool {
    at_least(&kernel_release(), (6, 9))
}

/// The running kernel's release (`uname -r`), empty if unreadable.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default()
}

/// Whether a kernel release such as `6.18.4-foo` is at least `major.minor`.
fn at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
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

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        for (release, expected) in [
            ("6.9.0", true),
            ("6.18.44-fc-v595\n", true),
            ("7.0", true),
            ("6.8.12-generic", false),
            ("5.15.0", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(at_least(release, (6, 9)), expected, "{release:?}");
        }
    }
}
