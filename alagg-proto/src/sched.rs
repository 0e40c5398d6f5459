//! Scheduling: which links carry a packet.
//!
//! A [`Scheduler`] looks at the links' state and the packet and returns a [`LinkSet`], a bit set
//! of indexes into the caller's link table. The engine never looks inside: redundant sending,
//! weighted striping, active-backup and adaptive redundancy are all a `select` away, and link
//! observations (up/down, round-trip time, loss) reach a scheduler through
//! [`Scheduler::observe`], which the simple schedulers ignore.
//!
//! All copies of one packet must use the same fragment boundaries, so the sender plans a packet
//! with the smallest MTU of the chosen links ([`LinkSet::min_mtu`]).

use core::time::Duration;

use crate::Timestamp;
use crate::wire::LinkId;

/// Most links a [`LinkSet`] can name.
pub const MAX_LINKS: usize = 64;

/// What the datapath knows about one link, as schedulers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// The id this side writes into frames sent on the link.
    pub id: LinkId,
    /// Whether the link may carry traffic (carrier up, probes answered).
    pub usable: bool,
    /// Relative share for weighted schedulers; ignored by [`Redundant`].
    pub weight: u32,
    /// Bytes available after the Ethernet header: the interface MTU.
    pub mtu: usize,
}

/// A set of link indexes (positions in the caller's link table), at most [`MAX_LINKS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkSet(u64);

impl LinkSet {
    /// No link.
    pub const EMPTY: LinkSet = LinkSet(0);

    /// Adds link `index`; indexes at or over [`MAX_LINKS`] are ignored.
    pub fn insert(&mut self, index: usize) {
        if index < MAX_LINKS {
            self.0 |= 1 << index;
        }
    }

    /// Whether link `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        index < MAX_LINKS && self.0 & (1 << index) != 0
    }

    /// Number of links.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The link indexes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + use<> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }

    /// The smallest MTU among the chosen links of `links`, or `None` if none is chosen.
    pub fn min_mtu(&self, links: &[LinkState]) -> Option<usize> {
        self.iter()
            .filter_map(|i| links.get(i))
            .map(|l| l.mtu)
            .min()
    }
}

/// Something the datapath learned about a link, for schedulers that adapt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkEvent {
    /// The link became usable.
    Up,
    /// The link stopped being usable.
    Down,
    /// A round-trip time measured with probes.
    Rtt(Duration),
    /// Share of this link's copies that arrived first at the peer, 0.0 to 1.0.
    FirstShare(f32),
    /// Estimated loss ratio of the link, 0.0 to 1.0.
    Loss(f32),
}

/// Decides, packet by packet, which links carry it.
pub trait Scheduler {
    /// The links to send a `packet_len`-byte packet on; indexes into `links`. An empty set means
    /// the packet is dropped (no usable link).
    fn select(&mut self, packet_len: usize, links: &[LinkState], now: Timestamp) -> LinkSet;

    /// Feeds an observation about link `index`; ignored unless the scheduler adapts.
    fn observe(&mut self, index: usize, event: LinkEvent, now: Timestamp) {
        let _ = (index, event, now);
    }
}

/// Sends every packet on every usable link: a packet survives if any one link delivers it
/// (the replication of IEEE 802.1CB, without the tags). alagg's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Redundant;

impl Scheduler for Redundant {
    fn select(&mut self, _packet_len: usize, links: &[LinkState], _now: Timestamp) -> LinkSet {
        let mut set = LinkSet::EMPTY;
        for (i, link) in links.iter().enumerate().take(MAX_LINKS) {
            if link.usable {
                set.insert(i);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: LinkId, usable: bool, mtu: usize) -> LinkState {
        LinkState {
            id,
            usable,
            weight: 1,
            mtu,
        }
    }

    #[test]
    fn redundant_picks_every_usable_link() {
        let links = [
            link(0, true, 1500),
            link(1, false, 1400),
            link(2, true, 9000),
        ];
        let set = Redundant.select(100, &links, Timestamp::ZERO);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.min_mtu(&links), Some(1500));
        let none = Redundant.select(100, &[link(0, false, 1500)], Timestamp::ZERO);
        assert!(none.is_empty());
        assert_eq!(none.min_mtu(&links), None);
    }

    #[test]
    fn link_set_bounds() {
        let mut set = LinkSet::EMPTY;
        set.insert(63);
        set.insert(64);
        assert!(set.contains(63));
        assert!(!set.contains(64));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![63]);
    }
}
