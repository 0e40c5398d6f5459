//! alagg's protocol core, sans I/O.
//!
//! Everything here is plain data structures and functions from bytes and time to actions, in the
//! manner of boringtun's `Tunn`: no sockets, no threads, no clock read inside. The caller passes a
//! [`Timestamp`] from its monotonic clock and owns every buffer that touches the wire.
//!
//! - [`wire`]: wire format v2 (Ethernet + alagg header), zero-copy views with checked parsing.
//! - [`auth`]: frame authentication and encryption (AES-256-GCM, a key per sender start).
//! - [`seq`]: sequence-number arithmetic and the [`SeqWindow`] duplicate filter.
//! - [`reorder`]: the [`ReorderBuffer`] that restores order within a bounded hold time.
//! - [`frag`]: the canonical fragment layout ([`Fragmenter`]) and the [`Reassembler`].
//! - [`sched`]: the [`Scheduler`] trait deciding which links carry a packet, and [`Redundant`].
//! - [`fec`]: forward error correction, parity over blocks of frames ([`fec::Encoder`],
//!   [`fec::Decoder`]).
//! - [`engine`]: the [`Sender`] and [`Receiver`] a datapath drives.
//! - [`stats`]: plain counter structs, named after IEEE 802.1CB FRER where the concept matches.
//!
//! The wire format itself is specified in `docs/PROTOCOL.md`.
#![deny(unsafe_code)]

pub mod auth;
mod candidate;
pub mod engine;
pub mod fec;
pub mod frag;
pub mod health;
mod lanes;
pub mod reorder;
pub mod sched;
pub mod seq;
pub mod stats;
pub mod time;
pub mod wire;

pub use engine::{
    Admission, Bundler, ConfigError, Order, Plan, PlanError, Receiver, ReceiverConfig, RxOutcome,
    SealedBundle, Sender,
};
pub use frag::{Fragmenter, Reassembler};
pub use reorder::ReorderBuffer;
pub use sched::{Adaptive, AnyScheduler, Backup, LinkSet, LinkState, Redundant, Scheduler, Stripe};
pub use seq::{SeqCheck, SeqWindow};
pub use time::Timestamp;
pub use wire::{Lane, LinkId, Stamp};
