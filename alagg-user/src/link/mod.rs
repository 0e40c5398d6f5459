//! The links: what carries alagg frames between the hosts. A link's sockets are AF_XDP
//! ([`xsk`], fed by alagg's XDP program, [`xdp`]) or AF_PACKET ([`packet`]), per link
//! (`link.io`). [`open`] makes a link's sockets for every capture worker; [`LinkRx`] and
//! [`LinkTx`] are its receive and transmit halves, whichever kind, as the stages' ports
//! ([`FrameRx`], [`FrameTx`]).

pub(crate) mod packet;
pub mod xdp;
pub mod xsk;

use std::{fmt, io, os::fd::RawFd};

use alagg_proto::wire::{EthernetRepr, MacAddr};

use crate::{
    netdev,
    port::{FrameRx, FrameTx, RxLosses, TxLosses},
};
use packet::{PacketError, PacketRx, PacketSocket, PacketTx};
use xdp::{XdpError, XdpMode, XdpSteering};
use xsk::{XskConfig, XskError, XskRx, XskSocket, XskTx};

const _: () = assert!(xsk::BATCH == crate::port::BATCH && packet::BATCH == crate::port::BATCH);

/// How a link's frames are sent and received (`link.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// `xdp`: AF_XDP sockets, with the XDP program steering received frames to them.
    #[default]
    Xdp,
    /// `af_packet`: AF_PACKET sockets, for NICs or virtual devices where XDP does not work.
    AfPacket,
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Xdp => "xdp",
            IoMode::AfPacket => "af_packet",
        })
    }
}

/// One link as the runtime needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkPlan {
    /// Local interface.
    pub(crate) interface: String,
    /// The peer's MAC on this link.
    pub(crate) peer_mac: MacAddr,
    /// XDP attach mode (for [`IoMode::Xdp`]).
    pub(crate) xdp_mode: XdpMode,
    /// How the link's frames are sent and received.
    pub(crate) io: IoMode,
    /// For the backup scheduler: lower is preferred.
    pub(crate) priority: u32,
    /// The sender's cap on the link's rate, bits per second; 0 for none.
    pub(crate) rate_cap_bps: u64,
}

/// Errors opening a link. Each names the interface.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The interface is missing or unusable.
    #[error("link {interface}: {message}")]
    Interface {
        /// The interface.
        interface: String,
        /// What is wrong.
        message: String,
    },
    /// XDP could not be loaded or attached.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// An AF_XDP socket could not be opened.
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// An AF_PACKET socket could not be opened.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// What a link's interface is on this host, checked for use: it exists and is up.
pub(crate) fn interface(interface: &str) -> Result<netdev::Interface, LinkError> {
    let error = |message: String| LinkError::Interface {
        interface: interface.to_owned(),
        message,
    };
    let found = netdev::interface(interface).map_err(error)?;
    if !found.up {
        return Err(error(format!(
            "the interface is down: bring it up with `ip link set {interface} up`"
        )));
    }
    if !found.carrier {
        // Carrier can come and go (a cable, the peer, an XDP attach on a veth peer): the link is
        // used once it is there.
        tracing::warn!(interface, "no carrier yet");
    }
    Ok(found)
}

/// The Ethernet header of a link's frames: from this host's MAC on it to the peer's.
pub(crate) fn ethernet(plan: &LinkPlan, local: MacAddr, ethertype: u16) -> EthernetRepr {
    EthernetRepr {
        dst: plan.peer_mac,
        src: local,
        ethertype,
    }
}

/// The most bytes of alagg frame (Ethernet header excluded) a link of `io` carries, whatever
/// its MTU: what one AF_XDP frame or one packet-socket slot holds.
pub(crate) fn frame_room(io: IoMode, xsk: &XskConfig) -> usize {
    let eth = alagg_proto::wire::ETH_HDR_LEN;
    match io {
        // The UMEM frame's headroom is 256 bytes.
        IoMode::Xdp => xsk.frame_size as usize - 256 - eth,
        IoMode::AfPacket => packet::MAX_FRAME - eth,
    }
}

/// A link's receive half, whichever socket carries it.
#[derive(Debug)]
pub(crate) enum LinkRx {
    Xsk(XskRx),
    Packet(PacketRx),
}

/// A link's transmit half, whichever socket carries it.
#[derive(Debug)]
pub(crate) enum LinkTx {
    Xsk(XskTx),
    Packet(PacketTx),
}

/// Errors of a link's sockets on the per-packet path, logged by the stages.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkIoError {
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error("AF_PACKET: {0}")]
    Packet(#[from] io::Error),
}

impl FrameRx for LinkRx {
    type Error = LinkIoError;

    fn fd(&self) -> RawFd {
        match self {
            LinkRx::Xsk(xsk) => xsk.fd(),
            LinkRx::Packet(packet) => packet.fd(),
        }
    }

    /// An AF_XDP socket's `POLLERR` means its interface went away. A packet socket's reports
    /// its interface going down (`ENETDOWN`), and the next receive clears it; the socket works
    /// again once the interface is up, under the same index, so no replacement would come.
    fn fatal_events(&self) -> i16 {
        match self {
            LinkRx::Xsk(_) => libc::POLLNVAL | libc::POLLHUP | libc::POLLERR,
            LinkRx::Packet(_) => libc::POLLNVAL | libc::POLLHUP,
        }
    }

    fn recv(&mut self, each: impl FnMut(&[u8])) -> Result<usize, LinkIoError> {
        Ok(match self {
            LinkRx::Xsk(xsk) => xsk.recv(each)?,
            LinkRx::Packet(packet) => packet.recv(each)?,
        })
    }

    fn losses(&mut self) -> RxLosses {
        match self {
            LinkRx::Xsk(xsk) => xsk.losses(),
            LinkRx::Packet(packet) => packet.losses(),
        }
    }
}

impl FrameTx for LinkTx {
    type Error = LinkIoError;

    fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        match self {
            LinkTx::Xsk(xsk) => xsk.stage(write),
            LinkTx::Packet(packet) => packet.stage(write),
        }
    }

    fn flush(&mut self) -> Result<(), LinkIoError> {
        match self {
            LinkTx::Xsk(xsk) => xsk.flush().map(drop).map_err(Into::into),
            LinkTx::Packet(packet) => packet.flush().map(drop).map_err(Into::into),
        }
    }

    fn losses(&self) -> TxLosses {
        match self {
            LinkTx::Xsk(xsk) => xsk.losses(),
            LinkTx::Packet(packet) => packet.losses(),
        }
    }

    fn wait_for_device(&mut self, wait: bool) {
        // AF_PACKET sends what the kernel takes and counts the rest: it never waits.
        if let LinkTx::Xsk(xsk) = self {
            xsk.wait_for_device(wait);
        }
    }

    fn behind(&self) -> bool {
        match self {
            LinkTx::Xsk(xsk) => xsk.behind(),
            LinkTx::Packet(_) => false,
        }
    }
}

/// Opens link `index`'s sockets for `workers` capture workers: the receive halves (for the
/// receive thread) and one transmit half per worker, in worker order. For XDP, attaches the
/// program to the link's interface and opens an AF_XDP socket per worker, on the interface's
/// queue of the worker's number; for AF_PACKET, one packet socket receives and the other
/// workers' only send.
pub(crate) fn open(
    steering: Option<&mut XdpSteering>,
    index: usize,
    plan: &LinkPlan,
    ethertype: u16,
    (xsk_config, workers): (XskConfig, usize),
) -> Result<(Vec<LinkRx>, Vec<LinkTx>), LinkError> {
    let (mut rx_halves, mut tx_halves) = (Vec::new(), Vec::new());
    match plan.io {
        IoMode::AfPacket => {
            let (rx, tx) = PacketSocket::open(&plan.interface, ethertype)?.split();
            rx_halves.push(LinkRx::Packet(rx));
            tx_halves.push(LinkTx::Packet(tx));
            for _ in 1..workers {
                tx_halves.push(LinkTx::Packet(PacketSocket::open_tx_only(&plan.interface)?));
            }
        }
        IoMode::Xdp => {
            let steering = steering.ok_or_else(|| LinkError::Interface {
                interface: plan.interface.clone(),
                message: "an XDP link needs the XDP program, which is not loaded".into(),
            })?;
            let queues = netdev::queues(&plan.interface);
            if workers > queues {
                return Err(LinkError::Interface {
                    interface: plan.interface.clone(),
                    message: format!(
                        "capture.queues = {workers} needs an AF_XDP socket per capture worker, \
                         each on a queue of its own, but the interface has {queues} queue(s): \
                         lower capture.queues, raise the interface's queues (`ethtool -L`), or \
                         use io = \"af_packet\" on this link"
                    ),
                });
            }
            let id = index as u32;
            steering.attach(&plan.interface, id, ethertype, plan.xdp_mode)?;
            for queue in 0..workers as u32 {
                let socket = XskSocket::open(&plan.interface, queue, xsk_config)?;
                steering.register_socket(id, queue, socket.fd())?;
                let (rx, tx) = socket.split();
                rx_halves.push(LinkRx::Xsk(rx));
                tx_halves.push(LinkTx::Xsk(tx));
            }
        }
    }
    Ok((rx_halves, tx_halves))
}

/// Opens a link's sockets again on its (new) interface: the receive halves, a transmit half
/// per worker, and the Ethernet header (the new interface may have another MAC).
pub(crate) fn reopen(
    mut steering: Option<&mut XdpSteering>,
    index: usize,
    plan: &LinkPlan,
    ethertype: u16,
    workers: usize,
) -> Result<(Vec<LinkRx>, Vec<LinkTx>, EthernetRepr), LinkError> {
    let local = interface(&plan.interface)?;
    if let Some(steering) = steering.as_deref_mut() {
        // The old attachment died with the old interface; forget it.
        let _ = steering.detach(&plan.interface);
    }
    let (rx, tx) = open(
        steering,
        index,
        plan,
        ethertype,
        (XskConfig::default(), workers),
    )?;
    Ok((rx, tx, ethernet(plan, local.mac, ethertype)))
}
