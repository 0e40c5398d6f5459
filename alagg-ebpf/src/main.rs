//! alagg's XDP program, one for every link.
//!
//! A frame whose ethertype is the link's alagg ethertype is redirected into the AF_XDP socket
//! registered for its (interface, rx queue) in the `XSKS` map; everything else (ARP, IP, other
//! ethertypes, frames too short for an Ethernet header) is passed to the kernel untouched, and so
//! is an alagg frame for which no socket is registered. Every decision is counted in the per-CPU
//! `COUNTERS` array, indexed by [`alagg_common::Action`].
//!
//! The program only means something for the BPF target; on the host this crate builds to an empty
//! stub so that `cargo test`/`cargo clippy --workspace` work without an eBPF toolchain.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

/// Host stub: the real program is only built for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
