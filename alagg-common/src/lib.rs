//! Types and constants shared by the alagg XDP program (`alagg-ebpf`) and user space.
//!
//! Everything here is `#[repr(C)]`/`Copy` and `no_std`: the eBPF program and the loader must agree
//! on these byte for byte. The full alagg header layout lives in `alagg-proto::wire`; the XDP
//! program needs only the ethertype to steer frames.
#![no_std]
#![deny(unsafe_code)]

/// Default ethertype of alagg frames: 0x88B5, "IEEE 802 local experimental ethertype 1"
/// (IEEE Std 802, clause 9.2.4), free for private protocols.
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;

/// Length of an Ethernet II header without VLAN tags: destination, source, ethertype.
pub const ETH_HDR_LEN: usize = 14;

/// Number of entries in the `XSKS` map: one slot per (interface, rx queue) pair that alagg serves.
/// The loader computes the slot as `link_index * MAX_QUEUES_PER_LINK + rx_queue`.
pub const XSKS_MAX_ENTRIES: u32 = 1024;

/// Upper bound of rx queues served per link in the `XSKS` slot scheme.
pub const MAX_QUEUES_PER_LINK: u32 = 64;

/// Name of the XSKMAP in the eBPF object.
pub const XSKS_MAP: &str = "XSKS";
/// Name of the per-CPU counters array in the eBPF object.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the per-interface configuration hash map in the eBPF object.
pub const LINKS_MAP: &str = "LINKS";
/// Name of the XDP program in the eBPF object.
pub const PROGRAM_NAME: &str = "alagg";

/// Per-interface configuration the loader writes into the `LINKS` map, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// First slot of this interface in the `XSKS` map; the rx queue index is added to it.
    pub xsk_base: u32,
    /// Ethertype of alagg frames on this link, in host byte order.
    pub ethertype: u16,
    /// Reserved, zero.
    pub _pad: u16,
}

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
// SAFETY: `LinkConfig` is `repr(C)`, `Copy`, made of integers only and has no padding bytes
// (u32 + u16 + u16), so every bit pattern is valid and it can be copied to and from a BPF map.
unsafe impl aya::Pod for LinkConfig {}

/// What the XDP program did with a frame: the index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// An alagg frame redirected into the link's AF_XDP socket.
    Redirected = 0,
    /// Not an alagg frame (ARP, IP, other ethertypes): passed to the kernel untouched.
    PassedOther = 1,
    /// An alagg frame on an interface or rx queue with no socket registered: passed to the kernel.
    PassedNoSocket = 2,
    /// A frame too short to carry an Ethernet header: passed to the kernel.
    PassedShort = 3,
}

impl Action {
    /// Every action, in counter-index order.
    pub const ALL: [Action; 4] = [
        Action::Redirected,
        Action::PassedOther,
        Action::PassedNoSocket,
        Action::PassedShort,
    ];

    /// Short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Redirected => "redirected",
            Action::PassedOther => "passed_other",
            Action::PassedNoSocket => "passed_no_socket",
            Action::PassedShort => "passed_short",
        }
    }
}

/// Number of entries in the `COUNTERS` map.
pub const COUNTERS_LEN: u32 = Action::ALL.len() as u32;

/// One per-CPU counter slot: frames and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Frames seen.
    pub packets: u64,
    /// Bytes seen (frame length at XDP).
    pub bytes: u64,
}

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
// SAFETY: `Counter` is `repr(C)`, `Copy`, two u64s with no padding; any bit pattern is valid.
unsafe impl aya::Pod for Counter {}
