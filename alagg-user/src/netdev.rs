//! What the crate reads about network interfaces, in one place: the ifindex
//! (`if_nametoindex(3)`) and the attributes under `/sys/class/net/<name>/` (Documentation/ABI/
//! testing/sysfs-class-net). Every look-up is of the calling thread's network namespace.

use std::{ffi::CString, fs, path::PathBuf};

use alagg_proto::wire::MacAddr;

/// The ifindex of `interface`, if it exists.
pub(crate) fn ifindex(interface: &str) -> Option<u32> {
    let name = CString::new(interface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn dir(interface: &str) -> PathBuf {
    PathBuf::from("/sys/class/net").join(interface)
}

/// Whether an interface of this name exists.
pub(crate) fn exists(interface: &str) -> bool {
    !interface.is_empty() && !interface.contains('/') && dir(interface).exists()
}

/// One attribute of `interface`, trimmed; the error names the file.
pub(crate) fn attribute(interface: &str, name: &str) -> Result<String, String> {
    let path = dir(interface).join(name);
    fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

/// What a link's interface is on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Its MAC address.
    pub(crate) mac: MacAddr,
    /// Its MTU.
    pub(crate) mtu: usize,
    /// Administratively up (`IFF_UP`).
    pub(crate) up: bool,
    /// Has carrier (`operstate` is not `down`).
    pub(crate) carrier: bool,
}

/// Reads `interface`'s MAC, MTU and state; the error says what is wrong, for a message that
/// names the interface.
pub(crate) fn interface(interface: &str) -> Result<Interface, String> {
    if !exists(interface) {
        return Err("no such interface (check `ip link`)".into());
    }
    let mac_text = attribute(interface, "address")?;
    let mac = mac_text
        .parse()
        .map_err(|_| format!("unreadable MAC {mac_text:?}"))?;
    let mtu = attribute(interface, "mtu")?
        .parse()
        .map_err(|_| "unreadable MTU".to_owned())?;
    Ok(Interface {
        mac,
        mtu,
        up: flags(interface) & libc::IFF_UP as u32 != 0,
        carrier: attribute(interface, "operstate")? != "down",
    })
}

/// The interface flags (`IFF_*`); 0 if unreadable.
fn flags(interface: &str) -> u32 {
    attribute(interface, "flags")
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// Whether `interface` is administratively up and has carrier.
pub(crate) fn carries(interface: &str) -> bool {
    flags(interface) & libc::IFF_UP as u32 != 0
        && attribute(interface, "carrier").is_ok_and(|c| c == "1")
}

/// The number of queues of `interface` an AF_XDP socket can use for both receiving and
/// sending (the smaller of its rx and tx queue counts; 1 if unreadable).
pub(crate) fn queues(interface: &str) -> usize {
    let Ok(entries) = fs::read_dir(dir(interface).join("queues")) else {
        return 1;
    };
    let (mut rx, mut tx) = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rx-") {
            rx += 1;
        } else if name.starts_with("tx-") {
            tx += 1;
        }
    }
    rx.min(tx).max(1)
}

/// Whether `interface` is virtual: no device behind it (`/sys/class/net/X/device`).
pub(crate) fn is_virtual(interface: &str) -> bool {
    let dir = dir(interface);
    dir.exists() && !dir.join("device").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_read_and_missing_interfaces_are_named() {
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifindex("alagg-no-such"), None);
        assert_eq!(ifindex("bad\0name"), None);
        let lo = interface("lo").unwrap_or_else(|e| panic!("lo: {e}"));
        assert!(lo.mac.is_zero() && lo.mtu >= 1500, "{lo:?}");
        assert!(is_virtual("lo"));
        assert_eq!(queues("lo"), 1);
        assert!(!exists("../lo") && !exists(""));
        let missing = interface("alagg-no-such").err().unwrap_or_default();
        assert!(missing.contains("no such interface"), "{missing}");
    }
}
