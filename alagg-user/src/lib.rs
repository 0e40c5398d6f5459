//! alagg: a protocol-agnostic, bidirectional link aggregator for Linux.
//!
//! Packets for configured destinations are captured with NFQUEUE, wrapped in alagg's link
//! protocol (`alagg-proto`) and sent over every link; the peer's XDP program steers them into
//! AF_XDP sockets, and the receive path drops duplicates, restores order and delivers them
//! through a TUN device. This library holds the I/O edges, each named after the kernel concept it
//! wraps and each owning its file descriptors:
//! - [`xdp`]: the XDP program loader and its maps;
//! - [`xsk`]: AF_XDP sockets and their UMEM;
//! - [`packet`]: AF_PACKET sockets, the link I/O for NICs without XDP;
//! - [`nfqueue`]: the nfnetlink_queue socket packets are captured from, batched both ways;
//! - [`signals`]: SIGINT/SIGTERM collected synchronously;
//! - [`config`]: the TOML configuration, validated, and the plan `alagg check` shows;
//! - [`tun`]: the TUN device packets are delivered through;
//! - [`host`]: routes, iptables NFQUEUE rules and sysctls, undone in reverse order;
//! - [`ip`]: sanity and source checks at the delivery edge;
//! - [`pmtu`]: the MTU of the route to a destination, for forwarded TCP's segment size;
//! - [`offload`]: the TUN's GSO offloads: large TCP announced with its segment size, and UDP
//!   datagrams of a flow joined into one write;
//! - [`datapath`]: the capture and receive threads that wire the edges to `alagg-proto`;
//! - [`report`]: a snapshot of every counter, rendered for `alagg status` and for Prometheus;
//! - [`control`]: the Unix control socket `alagg status` queries;
//! - [`metrics`]: the optional Prometheus endpoint over HTTP.

pub mod config;
pub mod control;
pub mod datapath;
pub mod host;
pub mod ip;
pub mod metrics;
pub mod nfqueue;
pub mod offload;
pub mod packet;
pub mod pmtu;
pub mod report;
pub mod signals;
pub mod tun;
pub mod xdp;
pub mod xsk;
