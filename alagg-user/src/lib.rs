//! alagg: a protocol-agnostic, bidirectional link aggregator for Linux.
//!
//! Packets for configured destinations are captured with NFQUEUE, wrapped in alagg's link
//! protocol (`alagg-proto`) and sent over every link; the peer's XDP program steers them into
//! AF_XDP sockets, and the receive path drops duplicates, restores order and delivers them
//! through a TUN device. The modules follow a packet's path (see `docs/ARCHITECTURE.md`):
//! - [`capture`]: the capture stage, reading NFQUEUE (`capture::nfqueue`);
//! - [`engine`]: the transmit and receive stages around `alagg-proto`;
//! - [`link`]: the links' sockets, AF_XDP (`link::xsk`, with the XDP program, `link::xdp`) or
//!   AF_PACKET (`link::packet`);
//! - [`deliver`]: the delivery stage: admission, the TUN's offloads, the TUN device;
//! - [`runtime`]: the only place that wires stages together: start and stop, the worker loop,
//!   the link monitor;
//!
//! and beside them [`config`] (the TOML file and the plan), [`ops`] (counters as `alagg status`
//! and Prometheus show them, the control socket, the metrics endpoint), [`host`] (routes,
//! capture rules, the undo journal, signals) and [`cli`] (the commands). Shared leaves, which
//! import nothing else from the crate: [`counters`], [`port`] (the traits stages talk through),
//! [`ip`] (IP header arithmetic), [`sys`] (raw system calls), [`netdev`] (interface look-ups),
//! [`stamps`] (latency stamps for the budget per hop).
//!
//! Items are `pub(crate)` unless the binary or the integration tests need them.

pub(crate) mod capture;
pub mod cli;
pub mod config;
pub(crate) mod counters;
pub(crate) mod deliver;
pub(crate) mod engine;
pub(crate) mod host;
/// IP checks and checksums: the pure code lives in `alagg-packet`, so that it fuzzes alone.
pub(crate) use alagg_packet::ip;
pub mod link;
pub(crate) mod netdev;
pub mod ops;
pub(crate) mod port;
pub(crate) mod runtime;
pub(crate) mod stamps;
pub(crate) mod sys;
