//! The engine stages around `alagg-proto`: [`transmit`] numbers, schedules, bundles and stages
//! frames on the links; [`receive`] takes frames from the links through the receiver (dedup,
//! reorder, reassembly) to the delivery stage.

pub(crate) mod receive;
pub(crate) mod transmit;
