//! The link monitor, run on the caller's thread: looks at every link's interface and tells the
//! stages (through the link control) which links may carry traffic; reopens a link whose
//! interface disappeared and came back; copies the XDP program's counters.

use std::{
    sync::{PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use alagg_common::{Action, Counter};

use super::Datapath;
use crate::{counters::LinkStatus, link, link::LinkPlan, netdev};

/// A link as the monitor tracks it.
#[derive(Debug)]
pub(super) struct MonitoredLink {
    pub(super) plan: LinkPlan,
    ifindex: u32,
    status: LinkStatus,
}

impl MonitoredLink {
    /// A link just opened, up on its interface's current index.
    pub(super) fn new(plan: &LinkPlan) -> Self {
        Self {
            plan: plan.clone(),
            ifindex: netdev::ifindex(&plan.interface).unwrap_or(0),
            status: LinkStatus::Up,
        }
    }
}

impl Datapath {
    /// Looks at every link's interface once and reacts to changes: a link that went down (or
    /// lost carrier) stops carrying traffic, one that came back up carries it again, and one
    /// whose interface disappeared and returned (a new ifindex) gets the XDP program and a fresh
    /// AF_XDP socket, handed to the worker threads. Each change is logged once. Call it
    /// periodically; it returns the links' status.
    pub(crate) fn monitor(&mut self) -> Vec<LinkStatus> {
        for (index, link) in self.links.iter_mut().enumerate() {
            let name = link.plan.interface.clone();
            let ifindex = netdev::ifindex(&name);
            let status = match ifindex {
                None => LinkStatus::Gone,
                Some(_) if netdev::carries(&name) => LinkStatus::Up,
                Some(_) => LinkStatus::Down,
            };
            if let Some(ifindex) = ifindex.filter(|&i| i != link.ifindex) {
                // A new interface under the old name: set it up like at start.
                let workers = self.control.workers();
                match link::reopen(
                    self.steering.as_mut(),
                    index,
                    &link.plan,
                    self.ethertype,
                    workers,
                ) {
                    Ok((rx, tx, eth)) => {
                        self.control.replace(index, rx, tx, eth);
                        link.ifindex = ifindex;
                        tracing::info!(
                            interface = name,
                            ifindex,
                            "link is back: XDP and AF_XDP socket reopened"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(interface = name, %error, "link is back but could not be reopened; retrying");
                        self.control.set_usable(index, false);
                        continue;
                    }
                }
            }
            if status != link.status {
                match status {
                    LinkStatus::Up => tracing::info!(interface = name, "link up: carrying traffic"),
                    LinkStatus::Down => tracing::warn!(interface = name, "link down: skipped"),
                    LinkStatus::Gone => tracing::warn!(
                        interface = name,
                        "link gone: skipped until its interface returns"
                    ),
                }
                link.status = status;
            }
            self.counters.link_status[index].store(status.code(), Relaxed);
            self.control.set_usable(index, status == LinkStatus::Up);
        }
        if let Some(Ok(xdp)) = self.steering.as_ref().map(|s| s.counters()) {
            self.warn_no_socket(&xdp);
            *self
                .counters
                .xdp
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = xdp.to_vec();
        }
        self.links.iter().map(|l| l.status).collect()
    }

    /// Warns (at most once a minute) when alagg frames arrived on an interface queue with no
    /// AF_XDP socket: the kernel got them, so they are lost to alagg. The usual cause is a peer
    /// with more capture workers (on virtual links, its worker `w`'s frames arrive on queue `w`).
    fn warn_no_socket(&mut self, xdp: &[(Action, Counter)]) {
        let frames: u64 = xdp
            .iter()
            .filter(|(action, _)| *action == Action::PassedNoSocket)
            .map(|(_, counter)| counter.packets)
            .sum();
        let (seen, warned) = self.no_socket;
        let seen = seen.unwrap_or(frames);
        if frames > seen && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                frames = frames - seen,
                "alagg frames arrived on an interface queue that has no AF_XDP socket and were \
                 lost; set the same capture.queues on both hosts"
            );
            self.no_socket = (Some(frames), Some(Instant::now()));
        } else {
            self.no_socket.0 = Some(frames);
        }
    }
}
