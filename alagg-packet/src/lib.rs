//! The pure, sans-I/O code over the bytes alagg's host-side edges handle, none of which is
//! trusted: the IP packets it captures and delivers, and the kernel's NFQUEUE messages.
//!
//! - [`ip`]: admission of a received packet (a sane header, a source in the peer's networks)
//!   and the checksum arithmetic capture and delivery share;
//! - [`nfqueue`]: the nfnetlink_queue message codec (requests built, datagrams parsed) and the
//!   UAPI constants;
//! - [`offload`]: the TUN device's offloads, UDP datagrams joined into GSO packets and TCP cut
//!   into segments.
//!
//! The `alagg` crate uses them in its stages (`capture::nfqueue`, `deliver`), which own the
//! sockets and the TUN device. They live apart so that the fuzz targets (`fuzz/`) build them
//! without the kernel edges (aya, the vendored libxdp, the XDP program): nothing here makes a
//! system call, allocates per packet, or panics on any input.
#![deny(unsafe_code)]

pub mod ip;
pub mod nfqueue;
pub mod offload;
