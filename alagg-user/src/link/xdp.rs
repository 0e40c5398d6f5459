//! The XDP loader: loads alagg's embedded XDP program, attaches it to link interfaces and keeps
//! the maps that steer alagg frames into AF_XDP sockets.
//!
//! Invariants: one [`XdpSteering`] owns the program and its maps; every attachment is a bpf_link
//! (or a netlink attachment on old kernels) owned by the program, so dropping the
//! [`XdpSteering`], or the process exiting, detaches everything it attached. The slot of the
//! socket for `(link, rx queue)` in the `XSKS` map is `link * MAX_QUEUES_PER_LINK + queue`, and
//! the program finds `link`'s base through the `LINKS` map keyed by ifindex.

use std::{
    collections::HashMap as StdHashMap,
    fmt,
    os::fd::{AsRawFd, RawFd},
};

use alagg_common::{
    Action, COUNTERS_MAP, Counter, LINKS_MAP, LinkConfig, MAX_QUEUES_PER_LINK, PROGRAM_NAME,
    XSKS_MAP, XSKS_MAX_ENTRIES,
};
use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, MapData, MapError, PerCpuArray, XskMap},
    programs::{ProgramError, Xdp, XdpMode as AyaMode, xdp::XdpLinkId},
};

/// The XDP object built by `build.rs`, empty when built with `ALAGG_SKIP_EBPF=1`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/alagg"));

/// Errors of the XDP loader. Each names the interface or map at fault.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The binary was built with `ALAGG_SKIP_EBPF=1` and carries no XDP program.
    #[error(
        "this alagg binary was built without its XDP program (ALAGG_SKIP_EBPF=1); rebuild with \
         `cargo xtask build`"
    )]
    NotBuilt,
    /// Loading the object or a map failed.
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] EbpfError),
    /// The kernel refused the program or an attachment.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The kernel's or aya's error.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// The object lacks a map or program this loader expects.
    #[error("the XDP object has no {0}; binary and eBPF program are out of step")]
    Missing(&'static str),
    /// No interface of that name exists (in this network namespace).
    #[error("no network interface named {0:?}; check the name with `ip link`")]
    UnknownInterface(String),
    /// More links or queues than the map scheme has room for.
    #[error("link {link} queue {queue} does not fit the XSKS map ({XSKS_MAX_ENTRIES} slots)")]
    SlotOutOfRange {
        /// Link index.
        link: u32,
        /// Rx queue.
        queue: u32,
    },
}

/// How the XDP program is attached to a link (`XDP_FLAGS_*`, `include/uapi/linux/if_link.h`):
/// `link.xdp_mode` in the configuration, `--mode` of `alagg attach`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// `auto`: on a NIC (an interface backed by a device), native (driver) mode, falling back
    /// to generic mode when the driver has no XDP support. On a virtual interface (veth and the
    /// like, with no device behind it), generic mode first: there native XDP is emulated in
    /// software too, and veth's copies every frame into a page pool before running the program
    /// (one TCP flow over two veth links measured about 25 % faster in generic mode).
    #[default]
    Auto,
    /// `native`: in the driver only (`XDP_FLAGS_DRV_MODE`); fails where unsupported.
    Native,
    /// `generic`: on the kernel's socket buffers (`XDP_FLAGS_SKB_MODE`); works everywhere, slower.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// An interface the program is attached to.
#[derive(Debug)]
struct Attached {
    ifindex: u32,
    link: XdpLinkId,
    mode: AyaMode,
}

/// alagg's XDP program, loaded, with its maps.
pub struct XdpSteering {
    ebpf: Ebpf,
    xsks: XskMap<MapData>,
    links: HashMap<MapData, u32, LinkConfig>,
    counters: PerCpuArray<MapData, Counter>,
    attached: StdHashMap<String, Attached>,
}

impl fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpSteering")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpSteering {
    /// Loads the embedded program into the kernel (through the verifier) without attaching it.
    pub fn load() -> Result<Self, XdpError> {
        if OBJECT.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::Missing("program `alagg`"))?
            .try_into()
            .map_err(|source| XdpError::Program {
                what: "the `alagg` program is not an XDP program".into(),
                source,
            })?;
        program.load().map_err(|source| XdpError::Program {
            what: "the kernel refused the XDP program".into(),
            source,
        })?;
        let xsks = take_map(&mut ebpf, XSKS_MAP, "map XSKS")?;
        let links = take_map(&mut ebpf, LINKS_MAP, "map LINKS")?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP, "map COUNTERS")?;
        Ok(Self {
            ebpf,
            xsks,
            links,
            counters,
            attached: StdHashMap::new(),
        })
    }

    /// Attaches the program to `interface` as link number `link` with the given alagg
    /// `ethertype`. Returns the mode the kernel accepted.
    pub fn attach(
        &mut self,
        interface: &str,
        link: u32,
        ethertype: u16,
        mode: XdpMode,
    ) -> Result<XdpMode, XdpError> {
        let ifindex = ifindex(interface)?;
        let xsk_base = slot(link, 0)?;
        let config = LinkConfig {
            xsk_base,
            ethertype,
            _pad: 0,
        };
        self.links
            .insert(ifindex, config, 0)
            .map_err(|source| XdpError::Map {
                what: format!("registering {interface} in the LINKS map"),
                source,
            })?;
        let program = self.program()?;
        let attempts: &[AyaMode] = match mode {
            XdpMode::Auto if crate::netdev::is_virtual(interface) => {
                &[AyaMode::Skb, AyaMode::Driver]
            }
            XdpMode::Auto => &[AyaMode::Driver, AyaMode::Skb],
            XdpMode::Native => &[AyaMode::Driver],
            XdpMode::Generic => &[AyaMode::Skb],
        };
        let mut last_error = None;
        for &xdp_mode in attempts {
            match program.attach_to_if_index(ifindex, xdp_mode) {
                Ok(link_id) => {
                    self.attached.insert(
                        interface.to_owned(),
                        Attached {
                            ifindex,
                            link: link_id,
                            mode: xdp_mode,
                        },
                    );
                    return Ok(if xdp_mode == AyaMode::Skb {
                        XdpMode::Generic
                    } else {
                        XdpMode::Native
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        // Nothing attached: leave no trace in LINKS either.
        let _ = self.links.remove(&ifindex);
        Err(XdpError::Program {
            what: format!("attaching XDP to {interface} failed (another XDP program there?)"),
            source: last_error.unwrap_or(ProgramError::NotAttached),
        })
    }

    /// Detaches the program from `interface` and forgets its sockets. A no-op when it is not
    /// attached there.
    pub fn detach(&mut self, interface: &str) -> Result<(), XdpError> {
        let Some(attached) = self.attached.remove(interface) else {
            return Ok(());
        };
        let _ = self.links.remove(&attached.ifindex);
        self.program()?
            .detach(attached.link)
            .map_err(|source| XdpError::Program {
                what: format!("detaching XDP from {interface}"),
                source,
            })
    }

    /// The interfaces the program is attached to, with the mode of each.
    pub fn attached(&self) -> impl Iterator<Item = (&str, XdpMode)> {
        self.attached.iter().map(|(name, a)| {
            let mode = if a.mode == AyaMode::Skb {
                XdpMode::Generic
            } else {
                XdpMode::Native
            };
            (name.as_str(), mode)
        })
    }

    /// Steers alagg frames arriving on `queue` of link `link` into the AF_XDP socket `fd`.
    pub fn register_socket(
        &mut self,
        link: u32,
        queue: u32,
        fd: impl AsRawFd,
    ) -> Result<(), XdpError> {
        let index = slot(link, queue)?;
        let fd: RawFd = fd.as_raw_fd();
        self.xsks.set(index, fd, 0).map_err(|source| XdpError::Map {
            what: format!("registering the AF_XDP socket of link {link} queue {queue}"),
            source,
        })
    }

    /// Stops steering frames of `queue` on link `link` into a socket: they pass to the kernel.
    pub fn unregister_socket(&mut self, link: u32, queue: u32) -> Result<(), XdpError> {
        let index = slot(link, queue)?;
        self.xsks.unset(index).map_err(|source| XdpError::Map {
            what: format!("unregistering the AF_XDP socket of link {link} queue {queue}"),
            source,
        })
    }

    /// The program's counters, summed over CPUs, in [`Action::ALL`] order.
    pub fn counters(&self) -> Result<[(Action, Counter); Action::ALL.len()], XdpError> {
        let mut out = Action::ALL.map(|action| (action, Counter::default()));
        for (action, total) in &mut out {
            let per_cpu =
                self.counters
                    .get(&(*action as u32), 0)
                    .map_err(|source| XdpError::Map {
                        what: "reading the COUNTERS map".into(),
                        source,
                    })?;
            for counter in per_cpu.iter() {
                total.packets += counter.packets;
                total.bytes += counter.bytes;
            }
        }
        Ok(out)
    }

    fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::Missing("program `alagg`"))?
            .try_into()
            .map_err(|source| XdpError::Program {
                what: "the `alagg` program is not an XDP program".into(),
                source,
            })
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str, what: &'static str) -> Result<M, XdpError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(XdpError::Missing(what))?;
    M::try_from(map).map_err(|source| XdpError::Map {
        what: format!("opening {what}"),
        source,
    })
}

/// The `XSKS` slot of `(link, queue)`.
fn slot(link: u32, queue: u32) -> Result<u32, XdpError> {
    let index = link
        .checked_mul(MAX_QUEUES_PER_LINK)
        .and_then(|base| base.checked_add(queue))
        .filter(|&index| queue < MAX_QUEUES_PER_LINK && index < XSKS_MAX_ENTRIES);
    index.ok_or(XdpError::SlotOutOfRange { link, queue })
}

/// The ifindex of `interface` in the calling thread's network namespace.
fn ifindex(interface: &str) -> Result<u32, XdpError> {
    crate::netdev::ifindex(interface)
        .ok_or_else(|| XdpError::UnknownInterface(interface.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_per_link_and_bounded() {
        assert_eq!(slot(0, 0).ok(), Some(0));
        assert_eq!(slot(0, 5).ok(), Some(5));
        assert_eq!(slot(1, 0).ok(), Some(MAX_QUEUES_PER_LINK));
        assert!(slot(0, MAX_QUEUES_PER_LINK).is_err());
        assert!(slot(XSKS_MAX_ENTRIES / MAX_QUEUES_PER_LINK, 0).is_err());
        assert!(slot(u32::MAX, u32::MAX).is_err());
    }

    #[test]
    fn unknown_interface_is_named() {
        let error = ifindex("alagg-no-such-if").err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("alagg-no-such-if")));
        assert!(ifindex("bad\0name").is_err());
    }
}
